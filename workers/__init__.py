"""Worker entry points (``anonymize worker``): process start-up and queues."""
