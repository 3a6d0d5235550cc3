"""The three tasks of a job: split (cpu) -> process x N (gpu) -> reassemble (cpu).

Each step is a plain function of a :class:`Context` (storage, job state, a
way to enqueue the next step), so it can run and be tested without a broker;
the Celery tasks at the bottom only add retries and failure handling.

Object keys are deterministic (``jobs/<job>/segments/<i>.mkv``,
``jobs/<job>/out/<i>.mp4``, ``jobs/<job>/detections/<i>.json``, …): a task
that is delivered twice overwrites its own outputs. The last segment to
finish (by the count of distinct finished segments in Redis) enqueues
``reassemble``; a duplicate ``reassemble`` finds the job done and returns.

Model files a user passes (``--plate-model plates.weights``) travel with the
job: :func:`upload_models` stores each one, and what goes beside it (a
darknet ``.cfg``), under ``jobs/<job>/models/<sha256><ext>`` and rewrites the
job's setting to a :func:`stored_model` reference naming that key and the
file's sha256; a worker downloads it once per process and checks the
sha256 before loading (``tasks/runtime.py``). Registry names travel as
names: workers must have them fetched (``anonymize models fetch`` is part
of a worker's set-up), or the job fails with the command to run.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from .app import app
from .state import JobState

log = logging.getLogger(__name__)

INTERMEDIATE = ("segments/", "out/", "models/")


def job_prefix(job: str) -> str:
    return f"jobs/{job}/"


def source_key(job: str, ext: str) -> str:
    return f"jobs/{job}/source{ext}"


def segment_key(job: str, i: int) -> str:
    return f"jobs/{job}/segments/{i}.mkv"


def out_key(job: str, i: int) -> str:
    return f"jobs/{job}/out/{i}.mp4"


def detections_key(job: str, i: int) -> str:
    return f"jobs/{job}/detections/{i}.json"


def manifest_key(job: str) -> str:
    return f"jobs/{job}/manifest.json"


def output_key(job: str, ext: str) -> str:
    return f"jobs/{job}/output{ext}"


def model_key(job: str, sha256: str, ext: str) -> str:
    return f"jobs/{job}/models/{sha256}{ext}"


#: prefix of a model setting that names a file in the job's storage
STORED = "stored:"


def stored_model(key: str, sha256: str, name: str, companions: dict[str, str]) -> str:
    """The setting value of an uploaded model file: ``stored:<key>?sha256=…&name=…``,
    plus ``&<role>=<key>`` per companion file (whose key's stem is its sha256)."""
    from urllib.parse import urlencode

    return f"{STORED}{key}?" + urlencode({"sha256": sha256, "name": name, **companions})


def parse_stored_model(value: str) -> tuple[str, str, str, dict[str, str]]:
    """(key, sha256, file name, {role: key}) of a :func:`stored_model` value."""
    from urllib.parse import parse_qsl

    key, _, query = value[len(STORED):].partition("?")
    params = dict(parse_qsl(query))
    sha256, name = params.pop("sha256", ""), params.pop("name", "")
    if not key or len(sha256) != 64:
        raise PermanentError(f"malformed stored model setting: {value[:120]}")
    return key, sha256, name, params


def job_models(settings) -> dict[str, str]:
    """{task: model} of a job's settings as the report names them (the name of a
    stored file, its format and sha256; a registry name as it is), read from the
    settings alone: the reassembling worker loads no model."""
    from models.loader import file_display, models_in_use

    out = {}
    for task, (value, fmt) in models_in_use(settings).items():
        if value.startswith(STORED):
            _, sha256, name, _ = parse_stored_model(value)
            value = file_display(name, fmt, sha256)
        out[task] = value
    return out


def upload_models(storage, job: str, settings):
    """Upload the model files ``settings`` name; return the settings naming them by
    their storage key and sha256 (registry names stay as they are).

    The resolved format is written into the job's settings too, so workers
    load the file the way this machine recognised it.
    """
    from models.fetch import sha256_file
    from models.loader import SETTING, check_settings
    from pipeline.settings import Settings

    changes = {}
    for task, ref in check_settings(settings, fetched=False).items():
        if not ref.is_file:
            continue
        key = model_key(job, ref.sha256, ref.path.suffix.lower())
        storage.put_file(ref.path, key)
        companions = {}
        for role, path in ref.companions.items():
            companions[role] = model_key(job, sha256_file(path), path.suffix.lower())
            storage.put_file(path, companions[role])
        changes[SETTING[task]] = stored_model(key, ref.sha256, ref.path.name, companions)
        changes[SETTING[task] + "_format"] = ref.format
    if not changes:
        return settings
    return Settings.from_dict({**settings.to_dict(), **changes})


class PermanentError(Exception):
    """A failure that retrying cannot fix (bad input, bad settings, bad weights)."""


def permanent_errors() -> tuple[type[BaseException], ...]:
    from pipeline.video import VideoError

    errors: list[type[BaseException]] = [PermanentError, VideoError, ValueError, TypeError]
    try:
        from models.fetch import WeightsError

        errors.append(WeightsError)
    except ImportError:  # pragma: no cover
        pass
    return tuple(errors)


@dataclass
class Context:
    """What a step needs from the outside world."""

    storage: object  # pipeline.storage.Storage
    state: JobState
    enqueue: Callable[[str, tuple], None]  # (task name, args)
    workdir: str | None = None


# ----------------------------------------------------------------------------- steps


def _fetch_source(ctx: Context, job: dict, dest_dir: Path) -> Path:
    from pipeline.storage import open_storage, split_url

    name = PurePosixPath(job.get("source_name") or "source").name
    local = dest_dir / ("source" + PurePosixPath(name).suffix)
    url = job["source_url"]
    if url.startswith(ctx.storage.url().rstrip("/") + "/"):
        ctx.storage.get_file(url[len(ctx.storage.url().rstrip("/")) + 1:], local)
    else:  # an s3:// (or file://) input taken in place
        base, key = split_url(url)
        open_storage(base).get_file(key, local)
    return local


def _load_job(ctx: Context, job_id: str) -> dict | None:
    job = ctx.state.get(job_id)
    if job is None:
        log.warning("job %s: unknown (expired or deleted); task dropped", job_id)
        return None
    if job["status"] in ("done", "failed", "cancelled"):
        log.info("job %s is %s; task skipped", job_id, job["status"])
        return None
    return job


def run_split(ctx: Context, job_id: str) -> int:
    """Probe, plan and cut the source into segment files; enqueue one process per segment.
    Returns the number of segments (0 when the job was skipped)."""
    from pipeline import video
    from pipeline.process import plan
    from pipeline.settings import Settings

    job = _load_job(ctx, job_id)
    if job is None:
        return 0
    ctx.state.set_status(job_id, "splitting")
    settings = Settings.from_dict(job["settings"])
    tmp = Path(tempfile.mkdtemp(prefix=f"split-{job_id}-", dir=ctx.workdir))
    try:
        source = _fetch_source(ctx, job, tmp)
        try:
            manifest = plan(source, settings, job.get("output_ext") or ".mp4")
        except video.VideoError as exc:  # name the user's file, not our temporary copy
            name = job.get("source_name") or "input"
            raise video.VideoError(str(exc).replace(f"'{source}'", name)
                                   .replace(str(source), name)) from None
        manifest.source_name = job.get("source_name") or manifest.source_name
        for seg in manifest.segments:
            part = video.split_segment(source, manifest.info, seg, tmp / f"{seg.index}.mkv")
            ctx.storage.put_file(part, segment_key(job_id, seg.index))
            part.unlink()
        ctx.storage.put_json(manifest.to_dict(), manifest_key(job_id))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    n = len(manifest.segments)
    if not ctx.state.set_status(job_id, "processing", segments_total=n,
                                frames_total=manifest.info.n_frames):
        return 0  # cancelled meanwhile
    for seg in manifest.segments:
        ctx.enqueue("anonymize.process", (job_id, seg.index))
    return n


_manifests: dict[str, object] = {}


def _manifest(ctx: Context, job_id: str):
    from pipeline.process import Manifest

    if job_id not in _manifests:
        if len(_manifests) > 32:
            _manifests.clear()
        _manifests[job_id] = Manifest.from_dict(ctx.storage.get_json(manifest_key(job_id)))
    return _manifests[job_id]


def run_process(ctx: Context, job_id: str, index: int, stack=None) -> bool:
    """Anonymize one segment and upload its video and detections. Returns whether the
    job still wanted it."""
    from pipeline.process import process_segment

    from . import runtime

    job = _load_job(ctx, job_id)
    if job is None:
        return False
    manifest = _manifest(ctx, job_id)
    if stack is None:
        settings = runtime.local_models(manifest.settings, ctx.storage)
        stack = runtime.detection_stack(settings)
    tmp = Path(tempfile.mkdtemp(prefix=f"proc-{job_id}-{index}-", dir=ctx.workdir))
    pending = [0]

    def progress(n: int) -> None:
        pending[0] += n
        if pending[0] >= 10:
            ctx.state.add_frames(job_id, pending[0])
            pending[0] = 0

    try:
        part = ctx.storage.get_file(segment_key(job_id, index), tmp / "segment.mkv")
        result = process_segment(part, manifest, index, stack, tmp / "out.mp4", progress)
        ctx.storage.put_file(tmp / "out.mp4", out_key(job_id, index))
        ctx.storage.put_json(result.to_dict(), detections_key(job_id, index))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if pending[0]:
        ctx.state.add_frames(job_id, pending[0])
    done = ctx.state.segment_done(job_id, index)
    if done >= len(manifest.segments) and not ctx.state.is_final(job_id):
        ctx.enqueue("anonymize.reassemble", (job_id,))
    return True


def run_reassemble(ctx: Context, job_id: str) -> dict | None:
    """Join the processed segments into the output video; write pickles, JSON and report."""
    from pipeline.process import SegmentResult, finalize
    from pipeline.records import write_report

    job = _load_job(ctx, job_id)
    if job is None:
        return None
    manifest = _manifest(ctx, job_id)
    n = len(manifest.segments)
    ctx.state.set_status(job_id, "reassembling")
    ext = job.get("output_ext") or ".mp4"
    tmp = Path(tempfile.mkdtemp(prefix=f"join-{job_id}-", dir=ctx.workdir))
    try:
        source = _fetch_source(ctx, job, tmp)
        videos, results = [], []
        for i in range(n):
            videos.append(ctx.storage.get_file(out_key(job_id, i), tmp / f"out{i}.mp4"))
            results.append(SegmentResult.from_dict(ctx.storage.get_json(detections_key(job_id, i))))
        records = tmp / "records"
        records.mkdir()
        output = tmp / f"output{ext}"
        models = job_models(manifest.settings)
        report = finalize(manifest, videos, results, source, output, records,
                          extra_report={"job": job_id, "models": models})
        out_url = ctx.storage.put_file(output, output_key(job_id, ext))
        prefix = job_prefix(job_id)
        files = {k: ctx.storage.url(prefix + Path(v).name) for k, v in report["files"].items()}
        report.update(output=out_url, files=files)
        write_report(records, report)
        ctx.storage.put_tree(records, prefix)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    ctx.state.set_status(job_id, "done", output_url=out_url,
                         report_url=ctx.storage.url(prefix + "report.json"),
                         files=files, frames_match=report["frames_match"],
                         detections=report["detections"])
    for sub in INTERMEDIATE:
        ctx.storage.delete_prefix(prefix + sub)
    return report


# ----------------------------------------------------------------------------- tasks


def _context(store_url: str) -> Context:
    from . import runtime

    def enqueue(name: str, args: tuple) -> None:
        app.send_task(name, args=(*args, store_url))

    return Context(runtime.storage(store_url), runtime.job_state(), enqueue)


def _backoff(attempt: int) -> float:
    return min(2.0 * 2 ** attempt, 60.0)


def _guarded(task, what: str, job_id: str, fn):
    """Run a step: permanent errors fail the job; others are retried with backoff,
    a bounded number of times, then fail the job with the reason."""
    from pipeline.settings import ServiceSettings

    state = task._ctx.state
    try:
        return fn()
    except permanent_errors() as exc:
        log.warning("job %s: %s failed permanently: %s", job_id, what, exc)
        state.fail(job_id, f"{what}: {_one_line(exc)}")
        return None
    except Exception as exc:
        attempt = task.request.retries
        limit = ServiceSettings.from_env().task_max_retries
        reason = _one_line(exc)
        if what.startswith("segment "):
            state.segment_failed(job_id, int(what.split()[1]), reason, attempt + 1)
        if attempt >= limit:
            log.error("job %s: %s failed after %d attempts: %s", job_id, what, attempt + 1, reason)
            state.fail(job_id, f"{what} failed after {attempt + 1} attempts: {reason}")
            return None
        log.warning("job %s: %s failed (%s); retry %d/%d", job_id, what, reason, attempt + 1,
                    limit)
        raise task.retry(countdown=_backoff(attempt), exc=exc, max_retries=limit) from None


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:500]


class _JobTask(app.Task):
    """Keeps the task's Context for the duration of one run."""

    _ctx: Context


@app.task(bind=True, base=_JobTask, name="anonymize.split", max_retries=None)
def split(self, job_id: str, store_url: str) -> int | None:
    self._ctx = _context(store_url)
    return _guarded(self, "split", job_id, lambda: run_split(self._ctx, job_id))


@app.task(bind=True, base=_JobTask, name="anonymize.process", max_retries=None)
def process(self, job_id: str, index: int, store_url: str) -> bool | None:
    self._ctx = _context(store_url)
    return _guarded(self, f"segment {index}", job_id,
                    lambda: run_process(self._ctx, job_id, index))


@app.task(bind=True, base=_JobTask, name="anonymize.reassemble", max_retries=None)
def reassemble(self, job_id: str, store_url: str) -> dict | None:
    self._ctx = _context(store_url)
    report = _guarded(self, "reassemble", job_id, lambda: run_reassemble(self._ctx, job_id))
    return None if report is None else {"output": report["output"]}
