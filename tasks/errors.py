"""The failures of a job step that retrying cannot fix.

Apart from the Celery tasks, which decline to retry them, because the steps
and the stored-model references raise them too, and those need no Celery.
"""

from __future__ import annotations


class PermanentError(Exception):
    """A failure that retrying cannot fix (bad input, bad settings, bad weights)."""


def permanent_errors() -> tuple[type[BaseException], ...]:
    """The classes of the errors that fail a job at once (imported only when needed:
    they live in modules that load PyAV and torch)."""
    from pipeline.video import VideoError

    errors: list[type[BaseException]] = [PermanentError, VideoError, ValueError, TypeError]
    try:
        from models.fetch import WeightsError

        errors.append(WeightsError)
    except ImportError:  # pragma: no cover
        pass
    return tuple(errors)
