"""The anonymization of one video, as steps that run in-process or in workers.

``plan`` -> ``video.split_segment`` per segment -> ``process_segment`` per
segment -> ``finalize``. :func:`run_local` chains them on one machine; the
Celery tasks in ``tasks/`` run the very same functions on different
machines, with the segment files and results travelling through object
storage. Because the segmentation, the context frames and the per-frame
work are identical, both paths give the same blurred boxes on the same
frames, also at segment boundaries.

Memory stays flat: a segment is decoded once, frames are held only until
the detections of ``context_frames(fill)`` later frames are known, then
blurred, encoded and dropped.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np

from models.detections import FACE, LABELS, PLATE, Detections

from . import video
from .blur import anonymize_frame
from .records import write_records, write_report
from .settings import Settings
from .temporal import context_frames, fill_segment

Progress = Callable[[int], None]  # called with the number of frames just finished


@dataclass
class Manifest:
    """Everything a worker needs to process a segment of a job (JSON)."""

    source_name: str
    info: video.VideoInfo
    segments: list[video.Segment]
    settings: dict
    context: int

    def to_dict(self) -> dict:
        return {"source_name": self.source_name, "info": self.info.to_dict(),
                "segments": [s.to_dict() for s in self.segments],
                "settings": self.settings, "context": self.context}

    @classmethod
    def from_dict(cls, d: dict) -> Manifest:
        return cls(d["source_name"], video.VideoInfo.from_dict(d["info"]),
                   [video.Segment.from_dict(s) for s in d["segments"]], d["settings"],
                   d["context"])

    @property
    def time_base(self) -> Fraction:
        return Fraction(str(self.info.time_base))


@dataclass
class SegmentResult:
    """Owned frames' final detections (after filling) and counts of one segment."""

    index: int
    frames: dict[int, Detections]
    n_filled: int = 0
    timings: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"index": self.index, "n_filled": self.n_filled, "timings": self.timings,
                "frames": {str(k): v.to_dicts() for k, v in sorted(self.frames.items())}}

    @classmethod
    def from_dict(cls, d: dict) -> SegmentResult:
        return cls(d["index"], {int(k): Detections.from_dicts(v) for k, v in d["frames"].items()},
                   d.get("n_filled", 0), d.get("timings", {}))


def plan(source: Path, settings: Settings) -> Manifest:
    info = video.probe(source)
    ctx = context_frames(settings.fill_frames)
    segments = video.plan_segments(info, settings.segment_frames, ctx)
    return Manifest(Path(source).name, info, segments, settings.to_dict(), ctx)


def process_segment(segment_file: Path, manifest: Manifest, index: int, stack,
                    out_video: Path, progress: Progress | None = None) -> SegmentResult:
    """Detect, fill, blur and encode the frames segment ``index`` owns.

    ``segment_file`` holds the segment's frames plus its context frames (as
    written by :func:`video.split_segment`); ``stack`` is a
    :class:`pipeline.detect.DetectionStack` built from the manifest's settings.
    """
    settings = Settings.from_dict(manifest.settings)
    seg = manifest.segments[index]
    info = manifest.info
    fill = settings.fill_frames
    ctx = manifest.context
    index_of = {pts: i for i, pts in enumerate(info.frame_pts)}
    t0 = time.perf_counter()
    timings = {"detect_s": 0.0, "blur_encode_s": 0.0}

    dets: dict[int, Detections] = {}
    pending: deque[tuple[int, int, np.ndarray]] = deque()  # (frame idx, pts, rgb) awaiting output
    batch: list[tuple[int, int, np.ndarray]] = []
    final: dict[int, Detections] = {}
    n_filled = 0

    def flush_ready(last_detected: int, at_end: bool) -> None:
        """Blur and encode the pending frames whose fill context is complete."""
        nonlocal n_filled
        ready = []
        while pending and (at_end or pending[0][0] + ctx <= last_detected):
            ready.append(pending.popleft())
        if not ready:
            return
        filled = fill_segment(dets, [idx for idx, _, _ in ready], fill)
        for idx, pts, rgb in ready:
            boxes = filled[idx]
            tb = time.perf_counter()
            writer.write(anonymize_frame(rgb, boxes, settings.mode, settings.shape,
                                         settings.mask_scale), pts)
            timings["blur_encode_s"] += time.perf_counter() - tb
            kept = boxes.with_class(FACE, PLATE)
            final[idx] = kept
            n_filled += int(kept.filled.sum())
            if progress:
                progress(1)
        for old in [k for k in dets if k < ready[-1][0] - ctx]:
            del dets[old]

    def run_batch() -> None:
        td = time.perf_counter()
        found = stack.detect([b[2] for b in batch])
        timings["detect_s"] += time.perf_counter() - td
        for (idx, pts, rgb), d in zip(batch, found, strict=True):
            dets[idx] = d
            if seg.start <= idx < seg.stop:
                pending.append((idx, pts, rgb))
        batch.clear()

    out_video.parent.mkdir(parents=True, exist_ok=True)
    with video.VideoWriter(out_video, info, crf=settings.crf, preset=settings.preset) as writer:
        last = -1
        for pts, rgb in video.iter_frames(segment_file, info):
            idx = index_of.get(pts)
            if idx is None or not (seg.start - ctx <= idx < seg.stop + ctx):
                continue
            batch.append((idx, pts, rgb))
            last = max(last, idx)
            if len(batch) >= settings.batch_size:
                run_batch()
                flush_ready(last, at_end=False)
        if batch:
            run_batch()
        flush_ready(last, at_end=True)
    missing = [i for i in range(seg.start, seg.stop) if i not in final]
    if missing:
        raise video.VideoError(
            f"segment {index}: {len(missing)} frame(s) could not be decoded (first: {missing[0]})")
    timings["total_s"] = time.perf_counter() - t0
    return SegmentResult(index, final, n_filled, timings)


def finalize(manifest: Manifest, segment_videos: list[Path], results: list[SegmentResult],
             source: Path, output: Path, detections_dir: Path,
             extra_report: dict | None = None) -> dict:
    """Join the segments, mux the source's other streams, write the records;
    return the report, which the caller completes (wall time, storage URLs) and
    writes with :func:`records.write_report`."""
    settings = Settings.from_dict(manifest.settings)
    results = sorted(results, key=lambda r: r.index)
    if [r.index for r in results] != list(range(len(manifest.segments))):
        raise ValueError("finalize needs exactly one result per segment")
    video.join_segments(segment_videos, source, manifest.info, output,
                        keep_metadata=settings.keep_metadata)
    frames: dict[int, Detections] = {}
    for r in results:
        frames.update(r.frames)
    paths = write_records(detections_dir, frames, manifest.info.frame_pts, manifest.time_base,
                          manifest.source_name)
    out_info = video.probe(output)
    counts = {LABELS[c]: 0 for c in (FACE, PLATE)}
    filled = {LABELS[c]: 0 for c in (FACE, PLATE)}
    frames_filled = 0
    for d in frames.values():
        for c in (FACE, PLATE):
            sel = d.class_id == c
            counts[LABELS[c]] += int((sel & ~d.filled).sum())
            filled[LABELS[c]] += int((sel & d.filled).sum())
        frames_filled += int(d.filled.any())
    timing_keys = sorted({k for r in results for k in r.timings})
    report = {
        "source": manifest.source_name,
        "output": str(output),
        "input": _stream_facts(manifest.info),
        "output_stream": _stream_facts(out_info),
        "frames": manifest.info.n_frames,
        "frames_match": same_frame_times(manifest.info, out_info),
        "segments": len(manifest.segments),
        "detections": counts,
        "filled_boxes": filled,
        "frames_with_filled_boxes": frames_filled,
        "frames_with_detections": sum(1 for d in frames.values() if len(d)),
        "settings": manifest.settings,
        "timings": {k: round(sum(r.timings.get(k, 0.0) for r in results), 3)
                    for k in timing_keys},
        "files": {k: str(v) for k, v in paths.items()},
    }
    report.update(extra_report or {})
    return report


def same_frame_times(a: video.VideoInfo, b: video.VideoInfo) -> bool:
    """Same number of frames at exactly the same times (pts × time base): a
    container may store the source's time base as an equal finer one."""
    if a.n_frames != b.n_frames:
        return False
    ta, tb = Fraction(a.time_base), Fraction(b.time_base)
    return all(p * ta == q * tb for p, q in zip(a.frame_pts, b.frame_pts, strict=True))


def _stream_facts(info: video.VideoInfo) -> dict:
    return {"codec": info.codec, "width": info.width, "height": info.height,
            "pix_fmt": info.pix_fmt, "time_base": str(info.time_base),
            "avg_fps": info.avg_fps, "frames": info.n_frames, "duration_s": info.duration_s,
            "rotation": info.rotation, "other_streams": info.other_streams}


def run_local(source: Path, output: Path, settings: Settings, detections_dir: Path | None = None,
              stack=None, progress: Progress | None = None, workdir: Path | None = None) -> dict:
    """``anonymize run``: the whole job on this machine, segment by segment."""
    from .detect import DetectionStack

    source, output = Path(source), Path(output)
    if output.resolve() == source.resolve():
        raise ValueError("output must not overwrite the input")
    detections_dir = Path(detections_dir) if detections_dir else output.parent
    t0 = time.perf_counter()
    manifest = plan(source, settings)
    t_load = time.perf_counter()
    stack = stack or DetectionStack.from_settings(settings)
    load_s = time.perf_counter() - t_load
    tmp = Path(tempfile.mkdtemp(prefix="anonymize-", dir=workdir))
    try:
        videos, results = [], []
        for seg in manifest.segments:
            part = video.split_segment(source, manifest.info, seg, tmp / f"seg{seg.index:05d}.mkv")
            out = tmp / f"out{seg.index:05d}.mp4"
            results.append(process_segment(part, manifest, seg.index, stack, out, progress))
            videos.append(out)
            part.unlink()
        output.parent.mkdir(parents=True, exist_ok=True)
        report = finalize(manifest, videos, results, source, output, detections_dir,
                          extra_report={"models": stack.model_names,
                                        "model_load_s": round(load_s, 3)})
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    wall = time.perf_counter() - t0
    report["wall_s"] = round(wall, 3)
    report["fps"] = round(manifest.info.n_frames / wall, 2) if wall > 0 else None
    write_report(detections_dir, report)
    return report
