"""The client side of the distributed path: submit a video, follow it, fetch the result.

Used by ``anonymize submit|status|cancel`` and by the benchmarks. Where the
servers are comes from the environment (``tasks.service.ServiceSettings``); when
``ANONYMIZE_BROKER_URL`` is not set, the file ``.cluster/env`` written by
``make up`` (``deploy/local/cluster.sh``) is read first, so that on a
one-machine cluster ``anonymize submit video.mp4 --wait`` just works.
``ANONYMIZE_CLUSTER_ENV=/path/env`` names another file; variables already in
the environment always win over the file.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import time
from collections.abc import Callable
from contextlib import contextmanager
from functools import cached_property
from pathlib import Path, PurePosixPath

from models.errors import one_line

CLUSTER_ENV = Path(".cluster") / "env"
VIDEO_EXTS = (".mp4", ".mkv", ".mov", ".m4v")


def load_cluster_env(path: str | Path | None = None, environ: dict | None = None) -> Path | None:
    """Fill unset variables from a ``KEY=VALUE`` file; returns the file read, if any."""
    env = os.environ if environ is None else environ
    if path is None:
        path = env.get("ANONYMIZE_CLUSTER_ENV")
        if path is None:
            if env.get("ANONYMIZE_BROKER_URL"):
                return None
            path = CLUSTER_ENV
    path = Path(path)
    if not path.is_file():
        return None
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"cluster settings {path}: not UTF-8 text ({exc.reason} at byte "
                         f"{exc.start})") from None
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.removeprefix("export ").partition("=")
        try:
            parts = shlex.split(value) if value else [""]
        except ValueError as exc:  # an unclosed quote
            raise ValueError(f"cluster settings {path}, line {number}: {exc}") from None
        env.setdefault(key.strip(), parts[0] if parts else "")
    return path


def output_ext(source_name: str, output: str | None) -> str:
    """The result container: OUTPUT's if given, else the source's when it is a common one."""
    for name in (output, source_name):
        if name and PurePosixPath(name).suffix.lower() in VIDEO_EXTS:
            return PurePosixPath(name).suffix.lower()
        if name == output and output and not Path(output).is_dir() and PurePosixPath(output).suffix:
            raise ValueError(f"output must end in one of {', '.join(VIDEO_EXTS)}: {output}")
    return ".mp4"


class Client:
    """Submits and follows jobs against one broker/state Redis and one storage.

    Built from ServiceSettings (the environment's by default); checks at once that
    the broker and the job-state Redis answer, and checks the storage on first use,
    so an unreachable server is a one-line :class:`~tasks.service.ServiceError`
    within seconds. Nothing here retries for long: a client is a person waiting.
    """

    def __init__(self, service=None, check: bool = True):
        from .app import configure
        from .service import ServiceSettings, check_services
        from .state import JobState

        self.service = service or ServiceSettings.from_env()
        if check:
            check_services(self.service, storage=False)
        self.app = configure(self.service)
        self.storage_url = self.service.storage_url
        self.state = JobState(self.service.state_url)

    @cached_property
    def storage(self):
        from .service import check_storage

        check_storage(self.storage_url, self.service.s3_endpoint_url)
        return self._open(self.storage_url)

    def _open(self, url: str):
        from .storage import open_storage

        return open_storage(url, endpoint_url=self.service.s3_endpoint_url or None,
                            **({"retry_seconds": 10} if url.startswith("s3://") else {}))

    @contextmanager
    def _reaching(self, what: str, url: str):
        """Redis or storage failing after the start-up check: still one line."""
        import redis

        from .service import ServiceError, redact
        from .storage import StorageError

        try:
            yield
        except (redis.RedisError, StorageError) as exc:
            raise ServiceError(f"lost the {what} at {redact(url)} ({one_line(exc)})") from None

    def _send(self, name: str, args: tuple) -> None:
        """Publish one task on a connection of this client's own: one attempt, no
        retry loop, nothing left open."""
        with self._reaching("broker", self.service.broker_url), \
                self.app.connection_for_write(self.service.broker_url) as conn:
            self.app.send_task(name, args=args, connection=conn, retry=False,
                               ignore_result=True)

    def submit(self, source: str, settings, output: str | None = None,
               zones: list[dict] | None = None, detections: dict | None = None,
               detections_file: str | None = None) -> str:
        """Upload (or reference an ``s3://`` input in place), record and enqueue one job.

        ``zones``: checked zone dicts, applied at blur time. ``detections``: a checked
        detections document (``anonymize render``'s input, named ``detections_file``):
        the job re-renders from it on the cpu queue, with no detector."""
        from .config import SPLIT
        from .keys import edits_key, source_key
        from .state import new_job_id
        from .stored_models import upload_models

        store = self.storage  # checked now, even for an input used in place: results go there
        job = new_job_id()
        name = PurePosixPath(source).name
        if source.startswith("s3://"):
            self.check_in_storage(source)
            source_url = source
        else:
            path = Path(source)
            if not path.is_file():
                raise FileNotFoundError(f"input not found: {source}")
            with self._reaching("storage", self.storage_url):
                source_url = store.put_file(path, source_key(job, path.suffix.lower()))
        edits = {}
        if detections is not None or zones:
            doc = dict(detections or {})
            doc["zones"] = list(doc.get("zones", [])) + list(zones or [])
            edits = {"edits": "detections" if detections is not None else "zones",
                     "detections_file": PurePosixPath(detections_file or "zones.json").name}
            with self._reaching("storage", self.storage_url):
                store.put_json(doc, edits_key(job))  # travels like the source
        with self._reaching("storage", self.storage_url):
            if detections is None:  # a re-render loads no model
                settings = upload_models(store, job, settings)  # model files travel with the job
        with self._reaching("job state", self.service.state_url):
            self.state.create(job, source_url=source_url, source_name=name,
                              settings=settings.to_dict(), storage_url=store.url(),
                              output_ext=output_ext(name, output), **edits)
        self._send(SPLIT, (job, self.storage_url))
        return job

    def check_in_storage(self, source: str) -> None:
        """An ``s3://`` input, used in place, must be there: the split task would fail
        the job, seen only by ``status``, after ``submit`` said its id and exited 0."""
        from .storage import split_url

        base, key = split_url(source)
        with self._reaching("storage", base):
            if not self._open(base).exists(key):
                raise FileNotFoundError(f"the input is not in storage: {source}")

    def workers(self, timeout: float = 2.0) -> list[dict]:
        """Ping replies of the workers listening on this broker."""
        with self._reaching("broker", self.service.broker_url), \
                self.app.connection_for_write(self.service.broker_url) as conn:
            return self.app.control.ping(timeout=timeout, connection=conn)

    def get(self, job: str) -> dict:
        if not job or not all(ch.isalnum() or ch in "-_" for ch in job):
            # job ids are made of these (tasks.state.new_job_id); another one would be
            # read as one of a job's own keys ("JOB:done"), and Redis's answer as an outage
            raise ValueError(f"not a job id: {job!r}")
        with self._reaching("job state", self.service.state_url):
            info = self.state.get(job)
        if info is None:
            raise ValueError(f"unknown job: {job}")
        return info

    def jobs(self) -> list[str]:
        with self._reaching("job state", self.service.state_url):
            return self.state.jobs()

    def wait(self, job: str, on_update: Callable[[dict], None] | None = None,
             poll: float = 0.5, timeout: float | None = None, outage: float = 60.0) -> dict:
        """Poll until the job is final. A job-state Redis that stops answering (a
        restart) is waited for up to ``outage`` seconds before giving up."""
        from .service import ServiceError

        deadline = None if timeout is None else time.monotonic() + timeout
        lost_since = None
        while True:
            try:
                info = self.get(job)
                lost_since = None
            except ServiceError:
                lost_since = lost_since or time.monotonic()
                if time.monotonic() - lost_since > outage:
                    raise
                info = None
            if info is not None:
                if on_update:
                    on_update(info)
                if info["status"] in ("done", "failed", "cancelled"):
                    return info
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {job} not finished after {timeout:g} s")
            time.sleep(poll)

    def cancel(self, job: str, delete: bool = False) -> bool:
        """Stop ``job``; its intermediate objects (segments: copies of the source's
        unblurred video) are deleted now, and ``delete`` deletes everything of it
        (source, outputs). A worker busy with a segment deletes what it uploads
        once it sees the job cancelled (tasks/steps.py)."""
        from .keys import drop_intermediates, job_prefix

        self.get(job)
        with self._reaching("job state", self.service.state_url):
            changed = self.state.cancel(job)
        with self._reaching("storage", self.storage_url):
            if delete:
                self.storage.delete_prefix(job_prefix(job))
            elif changed:
                drop_intermediates(self.storage, job)
        if delete:  # status must not go on naming objects that are gone
            with self._reaching("job state", self.service.state_url):
                self.state.mark_deleted(job)
        return changed

    def report(self, info: dict) -> dict:
        """The report.json of a finished job (``info``: its state, :meth:`get`)."""
        import json

        from .storage import split_url

        base, key = split_url(info["report_url"])
        with self._reaching("storage", base):
            return json.loads(self._open(base).get_bytes(key))

    def download(self, job: str, output: str | Path, records_dir: str | Path | None = None
                 ) -> dict[str, Path]:
        """Fetch the result video to ``output`` and the records (pickles, JSON, report)
        beside it or into ``records_dir``."""
        from pipeline.video.output import atomic_output

        from .storage import split_url

        info = self.get(job)
        if info["status"] != "done":
            raise ValueError(f"job {job} is {info['status']}, not done")
        if info.get("deleted"):
            raise ValueError(f"job {job} is done, but its objects were deleted from storage "
                             "(cancel --delete)")
        output = Path(output)
        records_dir = Path(records_dir) if records_dir else output.parent
        wanted = {"output": (info["output_url"], output)}
        for name, url in {**info.get("files", {}), "report": info["report_url"]}.items():
            wanted[name] = (url, records_dir / split_url(url)[1])
        got = {}
        # never half a file under its name, and all of them or none: a folder that
        # filled up part-way left the new video beside some of the earlier records
        with contextlib.ExitStack() as stack:
            for name, (url, dest) in wanted.items():
                base, key = split_url(url)
                partial = stack.enter_context(atomic_output(dest))
                with self._reaching("storage", base):
                    self._open(base).get_file(key, partial)
                got[name] = dest
        return got
