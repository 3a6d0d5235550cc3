"""The three steps of a job: split (cpu) -> process x N (gpu) -> reassemble (cpu).

Each step is a plain function of a :class:`Context` (storage, job state, a
way to enqueue the next step), so it can run and be tested without a broker;
the Celery tasks (``tasks/jobs.py``) only build the Context and leave
retries to Celery.

Object keys are deterministic (``tasks/keys.py``): a task that is delivered
twice overwrites its own outputs. The last segment to finish (by the count
of distinct finished segments in Redis) enqueues ``reassemble``; a
duplicate ``reassemble`` finds the job done and returns.

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
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from .config import PROCESS, REASSEMBLE, RENDER
from .keys import (
    detections_key,
    drop_intermediates,
    edits_key,
    job_prefix,
    manifest_key,
    out_key,
    output_key,
    segment_key,
)
from .state import JobState
from .stored_models import job_models

log = logging.getLogger(__name__)


@dataclass
class Context:
    """What a step needs from the outside world."""

    storage: object  # tasks.storage.Storage
    state: JobState
    enqueue: Callable[[str, tuple], None]  # (task name, args)
    workdir: str | None = None


def _fetch_source(ctx: Context, job: dict, dest_dir: Path, notes: list[str] | None = None
                  ) -> Path:
    """The job's source in ``dest_dir``, put in a container first where it has no
    timestamps (as `anonymize run` reads it); the note for the user then goes to
    the log and into ``notes``."""
    from models.errors import one_line
    from pipeline.video import VideoError
    from pipeline.video.contain import contain, without_timestamps

    from .errors import PermanentError
    from .storage import open_storage, split_url

    name = PurePosixPath(job.get("source_name") or "source").name
    local = dest_dir / ("source" + PurePosixPath(name).suffix)
    url = job["source_url"]
    base, key = split_url(url)  # an object, not a bucket or folder
    prefix = ctx.storage.url().rstrip("/") + "/"
    try:
        if url.startswith(prefix):
            ctx.storage.get_file(url[len(prefix):], local)
        else:  # an s3:// (or file://) input taken in place
            open_storage(base).get_file(key, local)
    except FileNotFoundError as exc:  # retrying does not make the input appear
        raise PermanentError(f"the input is {one_line(exc)}") from None
    if without_timestamps(local):  # a raw stream, read as `anonymize run` reads it
        try:
            contained, note = contain(local, dest_dir / "contained.mkv")
        except VideoError as exc:  # name the user's file, not our temporary copy
            raise VideoError(str(exc).replace(str(local), name)) from None
        note = note.replace(local.name, name, 1)
        log.info("%s", note)
        if notes is not None:
            notes.append(note)
        return contained
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
    from pipeline.plan import plan
    from pipeline.settings import Settings

    job = _load_job(ctx, job_id)
    if job is None:
        return 0
    ctx.state.set_status(job_id, "splitting")
    settings = Settings.from_dict(job["settings"])
    tmp = Path(tempfile.mkdtemp(prefix=f"split-{job_id}-", dir=ctx.workdir))
    try:
        notes: list[str] = []
        source = _fetch_source(ctx, job, tmp, notes)
        try:
            manifest = plan(source, settings, job.get("output_ext") or ".mp4")
        except video.VideoError as exc:  # name the user's file, not our temporary copy
            name = job.get("source_name") or "input"
            raise video.VideoError(str(exc).replace(str(source), name)) from None
        manifest.source_name = job.get("source_name") or manifest.source_name
        manifest.input_note = notes[0] if notes else None  # told by `submit --wait`
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
        drop_intermediates(ctx.storage, job_id)  # cancelled meanwhile: the segments just cut
        return 0
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
    from pipeline.plan import Manifest

    if job_id not in _manifests:
        if len(_manifests) > 32:
            _manifests.clear()
        _manifests[job_id] = Manifest.from_dict(ctx.storage.get_json(manifest_key(job_id)))
    return _manifests[job_id]


def run_process(ctx: Context, job_id: str, index: int, stack=None) -> bool:
    """Anonymize one segment and upload its video and detections. Returns whether the
    job still wanted it."""
    from pipeline.segment_job import process_segment
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
    if ctx.state.is_final(job_id):
        # cancelled or failed while this segment ran (or done, and this a late
        # redelivery): what was uploaded and cut for it must not stay behind
        drop_intermediates(ctx.storage, job_id)
    elif done >= len(manifest.segments):
        ctx.enqueue(REASSEMBLE, (job_id,))
    return True


def run_reassemble(ctx: Context, job_id: str) -> dict | None:
    """Join the processed segments into the output video; write pickles, JSON and report."""
    from pipeline.finalize import finalize
    from pipeline.records import write_report
    from pipeline.review import write_page
    from pipeline.segment_job import SegmentResult

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
    drop_intermediates(ctx.storage, job_id)
    return report

