"""Configuration module for the ``celery`` command line, read from the environment.

    celery -A tasks.app --config tasks.celeryconfig flower
    celery -A tasks.app --config tasks.celeryconfig inspect ping

Celery imports it (by name, when the app's configuration is first needed) in
processes that did not call ``tasks.app.configure``: Flower and the
containers' health check. Nothing else imports it.
"""

from __future__ import annotations

from .config import celery_config
from .service import ServiceSettings

globals().update(celery_config(ServiceSettings.from_env()))
