"""The one Celery app of the distributed path (Celery's ``proj/celery.py``).

Importing this module connects nowhere and reads no environment: the app is
configured by whoever starts a process, from the ServiceSettings it read at
start: ``anonymize worker`` (``workers.main``) and the client
(``tasks.client.Client``) call :func:`configure`. The ``celery`` command line
(Flower, ``inspect ping`` health checks) names the configuration module
instead: ``celery -A tasks.app --config tasks.celeryconfig flower``.

The task definitions live in ``tasks.jobs`` (Celery's ``proj/tasks.py``),
imported by the worker through ``include``.
"""

from __future__ import annotations

from celery import Celery

from .config import CPU_QUEUE, GPU_QUEUE, celery_config
from .service import ServiceSettings

__all__ = ["CPU_QUEUE", "GPU_QUEUE", "app", "configure", "service"]

app = Celery("anonymize", include=["tasks.jobs"])

_service: ServiceSettings | None = None


def configure(settings: ServiceSettings) -> Celery:
    """Configure the app for this process from ``settings``; returns it."""
    global _service
    app.config_from_object(celery_config(settings), force=True)
    _service = settings
    return app


def service() -> ServiceSettings:
    """The ServiceSettings this process was configured with."""
    if _service is None:
        raise RuntimeError("tasks.app.configure(ServiceSettings) was not called in this process")
    return _service
