"""The three tasks of a job: split (cpu) -> process x N (gpu) -> reassemble (cpu).

Each step is a plain function of a :class:`Context` (storage, job state, a
way to enqueue the next step), so it can run and be tested without a broker;
the Celery tasks at the bottom only build the Context and leave retries to
Celery (:class:`JobTask`).

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

Zones (``submit --zones``) and the detections of a re-render (``submit
--detections``) travel like the source: the client checks them and stores
them as ``jobs/<job>/edits.json``; ``split`` copies the zones into the
manifest and, for a re-render, enqueues ``render`` (cpu queue) instead of
``process`` for each segment: the same step, with the boxes read from
``edits.json`` instead of detected.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from celery import Task
from celery.exceptions import Reject

from models.errors import one_line

from .app import app, service
from .config import PROCESS, REASSEMBLE, RENDER, SPLIT
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


def edits_key(job: str) -> str:
    """The zones and, for a re-render, the detections of a job (see module doc)."""
    return f"jobs/{job}/edits.json"


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

    storage: object  # tasks.storage.Storage
    state: JobState
    enqueue: Callable[[str, tuple], None]  # (task name, args)
    workdir: str | None = None


# ----------------------------------------------------------------------------- steps


def _fetch_source(ctx: Context, job: dict, dest_dir: Path) -> Path:
    from .storage import open_storage, split_url

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
            raise video.VideoError(str(exc).replace(str(source), name)) from None
        manifest.source_name = job.get("source_name") or manifest.source_name
        if job.get("edits"):
            _apply_edits(ctx, job_id, job, manifest)
        for seg in manifest.segments:
            part = video.split_segment(source, manifest.info, seg, tmp / f"{seg.index}.mkv")
            ctx.storage.put_file(part, segment_key(job_id, seg.index))
            part.unlink()
        # the user's name, not this worker's temporary copy: a redelivered split
        # writes the same manifest
        manifest.info.path = manifest.source_name
        ctx.storage.put_json(manifest.to_dict(), manifest_key(job_id))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    n = len(manifest.segments)
    if not ctx.state.set_status(job_id, "processing", segments_total=n,
                                frames_total=manifest.info.n_frames):
        return 0  # cancelled meanwhile
    step = RENDER if manifest.detections_file else PROCESS
    for seg in manifest.segments:
        ctx.enqueue(step, (job_id, seg.index))
    return n


def _apply_edits(ctx: Context, job_id: str, job: dict, manifest) -> None:
    """Zones into the manifest; for a re-render, the detections checked against the
    video (an ``s3://`` input is seen here first) and named in the manifest."""
    from pipeline.render import check_zones, edits_from

    doc = ctx.storage.get_json(edits_key(job_id))
    name = job.get("detections_file") or "detections.json"
    if job["edits"] == "detections":
        edits = edits_from(doc, name, manifest.info)
        manifest.detections_file = edits.name
    else:
        check_zones(doc.get("zones", []), name, manifest.info)
    manifest.zones = list(doc.get("zones", []))


_edits: dict[str, object] = {}


def _recorded(ctx: Context, job_id: str, manifest):
    """The re-render's detections of a job, read once per process."""
    from pipeline.render import edits_from

    if job_id not in _edits:
        if len(_edits) > 8:
            _edits.clear()
        doc = ctx.storage.get_json(edits_key(job_id))
        _edits[job_id] = edits_from(doc, manifest.detections_file, manifest.info)
    return _edits[job_id]


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
    from pipeline.video import VideoError

    from . import runtime

    job = _load_job(ctx, job_id)
    if job is None:
        return False
    manifest = _manifest(ctx, job_id)
    if manifest.detections_file:  # a re-render: boxes from the job's file, no model
        from pipeline.render import RecordedDetections

        stack = RecordedDetections.from_edits(_recorded(ctx, job_id, manifest))
    elif stack is None:
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
        try:
            result = process_segment(part, manifest, index, stack, tmp / "out.mp4", progress)
        except VideoError as exc:  # name the user's file, not this worker's temporary copy
            raise VideoError(str(exc).replace(str(part), manifest.source_name)) from None
        ctx.storage.put_file(tmp / "out.mp4", out_key(job_id, index))
        ctx.storage.put_json(result.to_dict(), detections_key(job_id, index))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if pending[0]:
        ctx.state.add_frames(job_id, pending[0])
    done = ctx.state.segment_done(job_id, index)
    if done >= len(manifest.segments) and not ctx.state.is_final(job_id):
        ctx.enqueue(REASSEMBLE, (job_id,))
    return True


def run_reassemble(ctx: Context, job_id: str) -> dict | None:
    """Join the processed segments into the output video; write pickles, JSON and report."""
    from pipeline.process import SegmentResult, finalize
    from pipeline.records import write_report
    from pipeline.review import write_page

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
        extra = {"job": job_id}
        if manifest.detections_file:
            from pipeline.render import RecordedDetections

            edits = _recorded(ctx, job_id, manifest)
            extra.update(models=RecordedDetections.from_edits(edits).model_names,
                         render=edits.summary())
        else:
            extra["models"] = job_models(manifest.settings)
        report = finalize(manifest, videos, results, source, output, records,
                          extra_report=extra)
        out_url = ctx.storage.put_file(output, output_key(job_id, ext))
        prefix = job_prefix(job_id)
        files = {k: ctx.storage.url(prefix + Path(v).name) for k, v in report["files"].items()}
        report.update(output=out_url, files=files)
        write_report(records, report)
        write_page(records, output, report)  # thumbnails from the joined output
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
        state = _context(args[-1]).state
        if isinstance(exc, PermanentError):
            reason = f"{what}: {exc}"
        else:
            attempts = self.request.retries + 1
            reason = f"{what} failed after {attempts} attempts: {one_line(exc, 500)}"
            if self.name in (PROCESS, RENDER):
                state.segment_failed(job_id, args[1], one_line(exc, 500), attempts)
        log.warning("job %s failed: %s", job_id, reason)
        state.fail(job_id, reason)

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
