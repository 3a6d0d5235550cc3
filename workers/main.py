"""Worker process start-up: queues, device, pool, and per-process model loading.

A worker is the Celery prefork pool: a parent that only talks to the broker
and N children that run tasks. The parent never imports a model or touches
CUDA (a CUDA context does not survive ``fork``); each child resets the
per-process caches in ``worker_process_init`` and loads the models on its
first task, or at once with ``preload=True``.

Shutdown: SIGTERM (or Ctrl-C once) is Celery's warm shutdown: no new tasks
are taken and the current batch finishes before exit. A hard kill loses
nothing either: the unacknowledged message goes back to the queue after the
visibility timeout (``tasks/config.py``).
"""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger(__name__)

QUEUES = ("gpu", "cpu")


def parse_queues(text: str) -> list[str]:
    queues = [q.strip() for q in text.split(",") if q.strip()]
    bad = [q for q in queues if q not in QUEUES]
    if not queues or bad:
        raise ValueError(f"queues must be gpu, cpu or gpu,cpu (got {text!r})")
    return queues


def _on_process_init(preload: bool):
    def init(**_):
        from pipeline.memory import limit_heap_growth
        from tasks import runtime

        limit_heap_growth()  # flat memory over many segments
        runtime.reset()  # nothing inherited from the parent is reused
        if preload:
            from pipeline.settings import Settings

            settings = Settings.load()
            runtime.detection_stack(settings)
            log.info("models loaded on %s", runtime.worker_device(settings.device))

    return init


def run_worker(queues: str = "gpu,cpu", device: str | None = None, concurrency: int = 1,
               loglevel: str = "INFO", hostname: str | None = None, preload: bool = False,
               pool: str = "prefork", service=None) -> int:
    """Start a worker in this process and return when it has shut down. ``service``
    (a ``tasks.service.ServiceSettings``, the environment's by default) says where
    the servers are; ``anonymize worker`` checks that they answer before this."""
    from tasks.service import ServiceSettings

    names = parse_queues(queues)
    service = service or ServiceSettings.from_env()
    if device:
        os.environ["ANONYMIZE_WORKER_DEVICE"] = device  # read by the pool children
    if "gpu" not in names:
        os.environ.setdefault("ANONYMIZE_WORKER_DEVICE", "cpu")
    from celery.signals import worker_process_init

    from tasks.app import configure

    app = configure(service)
    worker_process_init.connect(_on_process_init(preload), weak=False)
    hostname = hostname or f"{'-'.join(names)}@{socket.gethostname()}"
    argv = ["worker", "--queues", ",".join(names), "--concurrency", str(concurrency),
            "--loglevel", loglevel, "--hostname", hostname, "--pool", pool,
            "--task-events", "--without-mingle", "--without-gossip"]
    app.worker_main(argv)
    return 0
