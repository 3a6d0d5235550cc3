"""The Celery app and its whole configuration, read from the environment.

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
- json only: no pickles from the network.
"""

from __future__ import annotations

import os

from celery import Celery
from kombu import Queue

from pipeline.settings import ServiceSettings

#: extra environment knobs of the broker transport (kombu Redis), beside ServiceSettings
TRANSPORT_ENV = {
    "unacked_restore_interval": "ANONYMIZE_UNACKED_RESTORE_INTERVAL",
    "unacked_restore_throttle": "ANONYMIZE_UNACKED_RESTORE_THROTTLE",
    "unacked_mutex_expire": "ANONYMIZE_UNACKED_MUTEX_EXPIRE",
}

GPU_QUEUE = "gpu"
CPU_QUEUE = "cpu"
ROUTES = {
    "anonymize.split": {"queue": CPU_QUEUE},
    "anonymize.process": {"queue": GPU_QUEUE},
    "anonymize.reassemble": {"queue": CPU_QUEUE},
}


def celery_config(service: ServiceSettings, environ: dict[str, str] | None = None) -> dict:
    env = os.environ if environ is None else environ
    transport = {"visibility_timeout": service.visibility_timeout,
                 # a publish to a vanished broker must fail, not hang forever
                 "socket_timeout": 30, "socket_connect_timeout": 10,
                 "health_check_interval": 10}
    for name, var in TRANSPORT_ENV.items():
        if env.get(var):
            transport[name] = int(env[var])
    return {
        "broker_url": service.broker_url,
        "result_backend": service.result_backend or service.broker_url,
        "broker_transport_options": transport,
        "result_backend_transport_options": {"visibility_timeout": service.visibility_timeout},
        "broker_connection_retry_on_startup": True,
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


def make_app(service: ServiceSettings | None = None) -> Celery:
    service = service or ServiceSettings.from_env()
    app = Celery("anonymize", include=["tasks.jobs"])
    app.conf.update(celery_config(service))
    return app


app = make_app()
