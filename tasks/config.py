"""The Celery configuration of the distributed path, as a function of ServiceSettings.

Pure: nothing here connects or reads anything at import time. ``tasks.app``
applies it; ``tasks.celeryconfig`` applies it for the ``celery`` command line.

Reliability choices (why each is set):

- ``task_acks_late`` + ``task_reject_on_worker_lost``: a message is acknowledged
  only after its task returned, so a worker killed mid-batch (OOM, preemption,
  SIGKILL) leaves the message to be redelivered; tasks are idempotent (their
  outputs have deterministic keys), so running one twice is harmless.
- ``worker_prefetch_multiplier = 1``: a GPU worker holds one batch at a time,
  so a slow worker never sits on work an idle one could take.
- ``visibility_timeout`` (``ANONYMIZE_VISIBILITY_TIMEOUT``, seconds): with the
  Redis broker, a message unacknowledged for this long is handed to another
  worker. It **must exceed the longest batch** (one segment's processing on
  the slowest worker, plus retry countdowns), or healthy long tasks get run
  twice. The redelivery of a killed worker's message happens at the first
  sweep after that, every ``unacked_restore_interval x unacked_restore_throttle``
  seconds (kombu 5.7; set by ``ANONYMIZE_UNACKED_RESTORE_INTERVAL`` /
  ``ANONYMIZE_UNACKED_RESTORE_THROTTLE``; tests use small values).
- Broker outages: a worker reconnects by itself, for as long as it takes
  (``broker_connection_max_retries = None``); a batch running meanwhile goes
  on (``worker_cancel_long_running_tasks_on_connection_loss = False``, stated
  because Celery 6 turns it on: cancelling would throw away a GPU batch that
  can still be acknowledged after the reconnect, as the Redis-restart test
  shows); a task that enqueues the next step while the broker restarts keeps
  trying for about half a minute (``task_publish_retry_policy``).
- json only: no pickles from the network.
"""

from __future__ import annotations

import os

from kombu import Queue

from .service import ServiceSettings, whole_number

#: extra environment knobs of the broker transport (kombu Redis), beside ServiceSettings
TRANSPORT_ENV = {
    "unacked_restore_interval": "ANONYMIZE_UNACKED_RESTORE_INTERVAL",
    "unacked_restore_throttle": "ANONYMIZE_UNACKED_RESTORE_THROTTLE",
    "unacked_mutex_expire": "ANONYMIZE_UNACKED_MUTEX_EXPIRE",
}

GPU_QUEUE = "gpu"
CPU_QUEUE = "cpu"
SPLIT, PROCESS, REASSEMBLE = "anonymize.split", "anonymize.process", "anonymize.reassemble"
#: a segment of a job re-rendered from detections (`submit --detections`): no detector,
#: so no GPU is needed
RENDER = "anonymize.render"
ROUTES = {
    SPLIT: {"queue": CPU_QUEUE},
    PROCESS: {"queue": GPU_QUEUE},
    RENDER: {"queue": CPU_QUEUE},
    REASSEMBLE: {"queue": CPU_QUEUE},
}

#: a worker publishing the next step rides out a broker restart (0+1+2+3+4+5x5 = 35 s)
WORKER_PUBLISH_RETRY = {"max_retries": 10, "interval_start": 0, "interval_step": 1,
                        "interval_max": 5}


def celery_config(service: ServiceSettings, environ: dict[str, str] | None = None) -> dict:
    """The whole Celery configuration for ``service`` (plus the transport knobs in
    ``environ``, the process environment by default)."""
    env = os.environ if environ is None else environ
    transport = {"visibility_timeout": service.visibility_timeout,
                 # a publish to a vanished broker must fail, not hang forever
                 "socket_timeout": 30, "socket_connect_timeout": 5,
                 "health_check_interval": 10}
    for name, var in TRANSPORT_ENV.items():
        if env.get(var):
            transport[name] = whole_number(var, env[var], 1)
    return {
        "broker_url": service.broker_url,
        "result_backend": service.result_backend or service.broker_url,
        "broker_transport_options": transport,
        "result_backend_transport_options": {"visibility_timeout": service.visibility_timeout},
        "redis_socket_connect_timeout": 5,
        "redis_socket_timeout": 30,
        "broker_connection_retry": True,
        "broker_connection_retry_on_startup": True,
        "broker_connection_max_retries": None,  # a worker waits for its broker to return
        "worker_cancel_long_running_tasks_on_connection_loss": False,
        "task_publish_retry": True,
        "task_publish_retry_policy": WORKER_PUBLISH_RETRY,
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "task_queues": (Queue(GPU_QUEUE), Queue(CPU_QUEUE)),
        "task_default_queue": CPU_QUEUE,
        "task_routes": ROUTES,
        "task_track_started": True,
        "task_send_sent_event": True,
        "worker_send_task_events": True,  # Flower shows tasks live
        "result_expires": 7 * 24 * 3600,
        "worker_max_memory_per_child": (service.worker_max_memory_mb * 1024) or None,
    }
