"""The queue layer of the distributed path (Celery over Redis, files in storage).

``app`` the one Celery app, configured at process start (``configure``);
``config`` its configuration as a function of ``service.ServiceSettings``;
``celeryconfig`` the same for the ``celery`` command line; ``jobs`` the three
steps (split, process, reassemble) as plain functions and the thin tasks
around them; ``state`` job state in Redis; ``storage`` local-folder and S3
backends; ``client`` submit and follow jobs; ``runtime`` a worker process's
caches. Nothing video-specific lives here: the steps call ``pipeline``.
"""
