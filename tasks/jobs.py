"""The Celery tasks of a job: split (cpu) -> process x N (gpu) -> reassemble (cpu),
and ``render`` (cpu), the ``process`` of a re-render.

Each task only builds the :class:`~tasks.steps.Context` of its step and calls
the step (``tasks/steps.py``, which runs without a broker); retries are left
to Celery (:class:`JobTask`). The task names that workers register come from
``tasks/config.py``. This is the module the app includes (``tasks/app.py``).
"""

from __future__ import annotations

import logging
from contextlib import contextmanager, suppress

from celery import Task
from celery.exceptions import Reject

from models.errors import one_line

from .app import app, service
from .config import PROCESS, REASSEMBLE, RENDER, SPLIT
from .errors import PermanentError, permanent_errors
from .keys import drop_intermediates
from .steps import Context, run_process, run_reassemble, run_split

log = logging.getLogger(__name__)


def _context(store_url: str) -> Context:
    from . import runtime

    def enqueue(name: str, args: tuple) -> None:
        app.send_task(name, args=(*args, store_url))

    return Context(runtime.storage(store_url), runtime.job_state(), enqueue)


@contextmanager
def _permanent_as_such():
    """Turn errors that retrying cannot fix into :class:`PermanentError`, which Celery
    does not retry. Done here rather than in ``dont_autoretry_for`` because those
    classes live in modules that load PyAV and torch, which the worker's parent
    process (where Celery builds its tasks) must not import."""
    try:
        yield
    except PermanentError:
        raise
    except permanent_errors() as exc:
        raise PermanentError(one_line(exc)) from exc


class JobTask(Task):
    """Celery's own retry policy, and the job's bookkeeping around it.

    A permanent error fails the job at once with its one line. Anything else is
    retried by Celery (``autoretry_for``) after 2, 4, 8 … 60 s, up to
    ``ANONYMIZE_TASK_MAX_RETRIES`` times, each failed attempt of a segment
    recorded in the job; the last failure fails the job with the reason.
    """

    autoretry_for = (Exception,)
    dont_autoretry_for = (PermanentError,)
    retry_backoff = 2
    retry_backoff_max = 60
    retry_jitter = False
    throws = (PermanentError,)  # expected: logged as one line, not as a crash

    @property
    def max_retries(self) -> int:  # read at each failure, from the worker's settings
        return service().task_max_retries

    def step(self, args) -> str:
        return (f"segment {args[1]}" if self.name in (PROCESS, RENDER)
                else self.name.rpartition(".")[2])

    def on_retry(self, exc, task_id, args, kwargs, einfo):
        attempt, reason = self.request.retries + 1, one_line(exc, 500)
        if self.name in (PROCESS, RENDER):
            _context(args[-1]).state.segment_failed(args[0], args[1], reason, attempt)
        log.warning("job %s: %s failed (%s); retry %d/%d", args[0], self.step(args), reason,
                    attempt, self.max_retries)

    def on_failure(self, exc, task_id, args, kwargs, einfo):
        job_id, what = args[0], self.step(args)
        ctx = _context(args[-1])
        state = ctx.state
        if isinstance(exc, PermanentError):
            reason = f"{what}: {exc}"
        else:
            attempts = self.request.retries + 1
            reason = f"{what} failed after {attempts} attempts: {one_line(exc, 500)}"
            if self.name in (PROCESS, RENDER):
                state.segment_failed(job_id, args[1], one_line(exc, 500), attempts)
        log.warning("job %s failed: %s", job_id, reason)
        state.fail(job_id, reason)
        with suppress(Exception):  # storage away too: the failure stands
            drop_intermediates(ctx.storage, job_id)

    def retry(self, *args, **kwargs):
        try:
            return super().retry(*args, **kwargs)
        except Reject as exc:
            if exc.requeue:
                raise
            # the retry could not be published (broker away longer than the publish
            # retries): Celery would drop the message and leave the job unfinished for
            # ever; put it back instead (or, if the broker cannot hear that either, it
            # stays unacknowledged and returns after the visibility timeout)
            raise Reject(exc.reason, requeue=True) from None


@app.task(bind=True, base=JobTask, name=SPLIT)
def split(self, job_id: str, store_url: str) -> int:
    with _permanent_as_such():
        return run_split(_context(store_url), job_id)


@app.task(bind=True, base=JobTask, name=PROCESS)
def process(self, job_id: str, index: int, store_url: str) -> bool:
    with _permanent_as_such():
        return run_process(_context(store_url), job_id, index)


@app.task(bind=True, base=JobTask, name=RENDER)
def render(self, job_id: str, index: int, store_url: str) -> bool:
    """``process`` of a re-render (cpu queue): boxes from the job's detections file."""
    with _permanent_as_such():
        return run_process(_context(store_url), job_id, index)


@app.task(bind=True, base=JobTask, name=REASSEMBLE)
def reassemble(self, job_id: str, store_url: str) -> dict | None:
    with _permanent_as_such():
        report = run_reassemble(_context(store_url), job_id)
    return None if report is None else {"output": report["output"]}
