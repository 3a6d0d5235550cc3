"""The client side of the distributed path: submit a video, follow it, fetch the result.

Used by ``anonymize submit|status|cancel`` and by the benchmarks. Where the
servers are comes from the environment (``ServiceSettings``); when
``ANONYMIZE_BROKER_URL`` is not set, the file ``.cluster/env`` written by
``make up`` (``deploy/local/cluster.sh``) is read first, so that on a
one-machine cluster ``anonymize submit video.mp4 --wait`` just works.
``ANONYMIZE_CLUSTER_ENV=/path/env`` names another file; variables already in
the environment always win over the file.
"""

from __future__ import annotations

import os
import shlex
import time
from collections.abc import Callable
from pathlib import Path, PurePosixPath

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
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.removeprefix("export ").partition("=")
        parts = shlex.split(value) if value else [""]
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
    """Submits and follows jobs against one broker/state Redis and one storage."""

    def __init__(self, service=None):
        from pipeline.settings import ServiceSettings
        from pipeline.storage import open_storage

        from . import runtime
        from .app import make_app

        self.service = service or ServiceSettings.from_env()
        # an app of its own: the module-level one was configured from the
        # environment at import time, which may predate this client's settings
        self.app = make_app(self.service)
        self.storage_url = self.service.storage_url
        self.storage = open_storage(self.storage_url)
        self.state = runtime.job_state()

    def submit(self, source: str, settings, output: str | None = None) -> str:
        """Upload (or reference an ``s3://`` input in place), record and enqueue one job."""
        from .jobs import source_key, upload_models
        from .state import new_job_id

        job = new_job_id()
        name = PurePosixPath(source).name
        if source.startswith("s3://"):
            source_url = source
        else:
            path = Path(source)
            if not path.is_file():
                raise FileNotFoundError(f"input not found: {source}")
            source_url = self.storage.put_file(path, source_key(job, path.suffix.lower()))
        settings = upload_models(self.storage, job, settings)  # model files travel with the job
        self.state.create(job, source_url=source_url, source_name=name,
                          settings=settings.to_dict(), storage_url=self.storage.url(),
                          output_ext=output_ext(name, output))
        self.app.send_task("anonymize.split", args=(job, self.storage_url))
        return job

    def get(self, job: str) -> dict:
        info = self.state.get(job)
        if info is None:
            raise ValueError(f"unknown job: {job}")
        return info

    def wait(self, job: str, on_update: Callable[[dict], None] | None = None,
             poll: float = 0.5, timeout: float | None = None) -> dict:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            info = self.get(job)
            if on_update:
                on_update(info)
            if info["status"] in ("done", "failed", "cancelled"):
                return info
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {job} not finished after {timeout:.0f}s")
            time.sleep(poll)

    def cancel(self, job: str, delete: bool = False) -> bool:
        from .jobs import job_prefix

        self.get(job)
        changed = self.state.cancel(job)
        if delete:
            self.storage.delete_prefix(job_prefix(job))
        return changed

    def download(self, job: str, output: str | Path, records_dir: str | Path | None = None
                 ) -> dict[str, Path]:
        """Fetch the result video to ``output`` and the records (pickles, JSON, report)
        beside it or into ``records_dir``."""
        from pipeline.storage import open_storage, split_url
        from pipeline.video.output import atomic_output

        info = self.get(job)
        if info["status"] != "done":
            raise ValueError(f"job {job} is {info['status']}, not done")
        output = Path(output)
        records_dir = Path(records_dir) if records_dir else output.parent
        got = {}
        base, key = split_url(info["output_url"])
        with atomic_output(output) as partial:  # never a half-downloaded file under its name
            open_storage(base).get_file(key, partial)
        got["output"] = output
        for name, url in {**info.get("files", {}), "report": info["report_url"]}.items():
            base, key = split_url(url)
            got[name] = open_storage(base).get_file(key, records_dir / key)
        return got
