"""The anonymization of one video, as steps that run in-process or in workers.

``plan`` -> ``video.split_segment`` per segment -> :class:`SegmentJob` per
segment -> ``finalize``. :func:`run_local` chains them on one machine; the
Celery tasks in ``tasks/`` run the very same functions on different
machines, with the segment files and results travelling through object
storage. Because the segmentation, the context frames and the per-frame
work are identical, both paths give the same blurred boxes on the same
frames, also at segment boundaries.

Memory stays flat: a segment is decoded once, frames are held only until
the detections of ``context_frames(fill)`` later frames are known, then
blurred, encoded and dropped; every queue between the stages is bounded.
"""

from __future__ import annotations

import queue
import shutil
import tempfile
import threading
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
from .memory import release_free_memory
from .plan import Manifest, plan, prepare_local  # noqa: F401  (the steps of a job, re-exported)
from .records import write_records, write_report
from .render import RECORDED_SETTINGS
from .review import REPORT_HTML, review_flags, write_page
from .settings import Settings
from .temporal import fill_segment
from .threads import ThreadBudget, apply_torch_threads, resolve_threads
from .video.damage import damage_report, segment_damage, skipped_indices
from .video.output import atomic_output
from .zones import ZoneSet

Progress = Callable[[int], None]  # called with the number of frames just finished


@dataclass
class SegmentResult:
    """Owned frames' final detections (after filling) and counts of one segment;
    ``damage``: owned frames skipped or concealed (see ``video.damage``)."""

    index: int
    frames: dict[int, Detections]
    n_filled: int = 0
    timings: dict[str, float] = field(default_factory=dict)
    damage: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"index": self.index, "n_filled": self.n_filled, "timings": self.timings,
                "damage": self.damage,
                "frames": {str(k): v.to_dicts() for k, v in sorted(self.frames.items())}}

    @classmethod
    def from_dict(cls, d: dict) -> SegmentResult:
        return cls(d["index"], {int(k): Detections.from_dicts(v) for k, v in d["frames"].items()},
                   d.get("n_filled", 0), d.get("timings", {}), d.get("damage", {}))


# ------------------------------------------------------------------------- segment


_END = object()  # end of a stage's stream


class _Stage(threading.Thread):
    """A pipeline stage in its own thread; an exception is kept and re-raised
    in the caller by :meth:`check` (a failing stage must stop the run, not hang it)."""

    def __init__(self, name: str, target: Callable[[], None]):
        super().__init__(name=name, daemon=True)
        self._target_fn = target
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self._target_fn()
        except BaseException as exc:  # re-raised in the caller's thread
            self.error = exc

    def check(self) -> None:
        if self.error is not None:
            raise self.error


class SegmentJob:
    """Detect, fill, blur and encode the frames segment ``index`` owns.

    Three stages overlap: a decode thread fills a bounded queue of frames;
    the calling thread takes batches and runs the detectors; an encode thread
    blurs and encodes every frame whose temporal-fill context is complete.
    Frame order is kept by every stage. On CUDA a batch goes to the device
    once and is blurred there; only the blurred frame comes back.

    The stack is a :class:`pipeline.detect.DetectionStack`, or anything with its
    ``detect(frames)``; a stack with ``detect_at(indices, frames)`` is asked
    with the frame indexes (``pipeline.render.RecordedDetections``: boxes read
    from a file), and one marked ``video_only`` runs no model, so the threads
    go to decoding and encoding. Zones (``manifest.zones``) apply after
    filling, when a frame is blurred.
    """

    def __init__(self, manifest: Manifest, index: int, stack, out_video: Path,
                 progress: Progress | None = None, budget: ThreadBudget | None = None):
        self.manifest = manifest
        self.settings = manifest.settings
        self.seg = manifest.segments[index]
        self.index = index
        self.stack = stack
        self.out_video = Path(out_video)
        self.progress = progress
        self.device = str(getattr(stack, "device", "cpu"))
        total = resolve_threads(self.settings.threads)
        if budget is None and getattr(stack, "video_only", False):
            budget = ThreadBudget(total, detect=1, encode=max(1, total - 1), decode=1)
        self.budget = budget or ThreadBudget.split(total, self.device)
        info = manifest.info
        self.zones = ZoneSet.from_dicts(manifest.zones, info.width, info.height,
                                        manifest.time_base) if manifest.zones else None
        ctx = manifest.context
        lo, hi = self.seg.start - ctx, self.seg.stop + ctx
        first = max(0, self.seg.ctx_start)
        pts = manifest.info.frame_pts[first:self.seg.ctx_stop]
        #: frame index of each decodable pts, only for frames this segment needs
        self.index_of = {p: first + i for i, p in enumerate(pts) if lo <= first + i < hi}
        self.dets: dict[int, Detections] = {}  # faces/plates per frame, until no longer context
        self.pending: deque = deque()  # (idx, pts, frame) detected, waiting for fill context
        self.final: dict[int, Detections] = {}
        self.n_filled = 0
        self.timings = {"decode_s": 0.0, "detect_s": 0.0, "blur_encode_s": 0.0}
        self.decode_log = video.DecodeLog()
        self._encode_q: queue.Queue = queue.Queue(maxsize=4)
        self._stages: list[_Stage] = []

    # -- the run ------------------------------------------------------------
    def run(self, segment_file: Path) -> SegmentResult:
        t0 = time.perf_counter()
        apply_torch_threads(self.budget.detect)
        frames_q: queue.Queue = queue.Queue(maxsize=max(2, self.settings.batch_size))
        self.out_video.parent.mkdir(parents=True, exist_ok=True)
        with video.VideoWriter(self.out_video, self.manifest.info, crf=self.settings.crf,
                               preset=self.settings.preset, threads=self.budget.encode) as writer:
            decoder = _Stage("decode", lambda: self._decode(Path(segment_file), frames_q))
            encoder = _Stage("encode", lambda: self._encode(writer))
            self._stages = [decoder, encoder]
            decoder.start()
            encoder.start()
            try:
                self._detect_all(frames_q)
                self._put(self._encode_q, _END)
                encoder.join()
            finally:
                self._stop = True
                for stage in self._stages:
                    stage.join(timeout=5)
            stages, self._stages = self._stages, []  # no cycle keeps the encoder alive
            for stage in stages:
                stage.check()
        # frames that do not decode are left out and counted, as a player skips them
        s = self.seg
        damage = segment_damage(self.manifest.info, s.start, s.stop, s.ctx_start, s.ctx_stop,
                                self.decode_log)
        skipped = set(damage["skipped"])
        lost = [i for i in range(s.start, s.stop) if i not in self.final and i not in skipped]
        if lost:
            raise RuntimeError(f"segment {self.index}: frame {lost[0]} decoded but not encoded")
        self.timings = {k: round(v, 3) for k, v in self.timings.items()}
        self.timings["total_s"] = round(time.perf_counter() - t0, 3)
        return SegmentResult(self.index, self.final, self.n_filled, self.timings, damage)

    _stop = False

    def _put(self, q: queue.Queue, item) -> None:
        """Hand ``item`` to the next stage, failing (not hanging) if a stage died."""
        while True:
            for stage in self._stages:
                stage.check()
            if self._stop:
                raise RuntimeError("segment job stopped")
            try:
                q.put(item, timeout=0.2)
                return
            except queue.Full:
                continue

    def _get(self, q: queue.Queue):
        """The next item from the previous stage, failing (not hanging) if a stage
        died or the job was stopped."""
        while True:
            try:
                return q.get(timeout=0.2)
            except queue.Empty:
                if self._stop:
                    return _END
                for stage in self._stages:
                    stage.check()

    # -- step 1: decode (own thread) ------------------------------------------
    def _decode(self, segment_file: Path, out: queue.Queue) -> None:
        t = time.perf_counter()
        for pts, rgb in video.iter_frames(segment_file, self.manifest.info,
                                          threads=self.budget.decode, log=self.decode_log,
                                          name=self.manifest.source_name):
            idx = self.index_of.get(pts)
            if idx is None:
                continue
            self.timings["decode_s"] += time.perf_counter() - t
            self._put(out, (idx, pts, rgb))
            t = time.perf_counter()
        self._put(out, _END)

    # -- step 2: detect (calling thread) ----------------------------------------
    def _detect_all(self, frames_q: queue.Queue) -> None:
        batch: list[tuple[int, int, np.ndarray]] = []
        last = -1
        while True:
            item = self._get(frames_q)
            if item is _END:
                break
            batch.append(item)
            last = max(last, item[0])
            if len(batch) >= self.settings.batch_size:
                self._detect(batch)
                self._release(last, at_end=False)
                batch = []
        if batch:
            self._detect(batch)
        self._release(last, at_end=True)

    def _detect(self, batch: list[tuple[int, int, np.ndarray]]) -> None:
        td = time.perf_counter()
        frames = self._to_device([rgb for _, _, rgb in batch])
        detect_at = getattr(self.stack, "detect_at", None)
        if detect_at is not None:
            found = detect_at([idx for idx, _, _ in batch], frames)
        else:
            found = self.stack.detect(frames)
        self.timings["detect_s"] += time.perf_counter() - td
        for (idx, pts, _), frame, d in zip(batch, frames, found, strict=True):
            self.dets[idx] = d.with_class(FACE, PLATE)
            if self.seg.start <= idx < self.seg.stop:
                self.pending.append((idx, pts, frame))

    def _to_device(self, frames: list[np.ndarray]):
        """On CUDA: the batch as one uint8 tensor on the device (a single copy)."""
        if not self.device.startswith("cuda"):
            return frames
        import torch

        host = torch.from_numpy(np.stack(frames)).pin_memory()
        return host.to(self.device, non_blocking=True)

    # -- step 3: fill, then hand ready frames to the encoder ---------------------
    def _release(self, last_detected: int, at_end: bool) -> None:
        ctx = self.manifest.context
        ready = []
        while self.pending and (at_end or self.pending[0][0] + ctx <= last_detected):
            ready.append(self.pending.popleft())
        if not ready:
            return
        filled = fill_segment(self.dets, [idx for idx, _, _ in ready],
                              self.settings.fill_frames)
        for idx, pts, frame in ready:
            boxes = filled[idx]
            self.final[idx] = boxes
            self.n_filled += int(boxes.filled.sum())
            self._put(self._encode_q, (idx, pts, frame, boxes))
        for old in [k for k in self.dets if k < ready[-1][0] - ctx]:
            del self.dets[old]

    # -- step 4: blur + encode (own thread) --------------------------------------
    def _encode(self, writer: video.VideoWriter) -> None:
        s = self.settings
        while True:
            item = self._get(self._encode_q)
            if item is _END:
                return
            idx, pts, frame, boxes = item
            t = time.perf_counter()
            out = anonymize_frame(frame, boxes, s.mode, s.shape, s.mask_scale)
            if not isinstance(out, np.ndarray):
                out = out.cpu().numpy()
            if self.zones:
                original = frame if isinstance(frame, np.ndarray) else frame.cpu().numpy()
                out = self.zones.apply(out, original, idx, pts, s.mode)
            writer.write(out, pts)
            self.timings["blur_encode_s"] += time.perf_counter() - t
            if self.progress:
                self.progress(1)


def process_segment(segment_file: Path, manifest: Manifest, index: int, stack,
                    out_video: Path, progress: Progress | None = None) -> SegmentResult:
    """Run :class:`SegmentJob` for segment ``index`` of ``manifest``."""
    return SegmentJob(manifest, index, stack, out_video, progress).run(segment_file)


# ------------------------------------------------------------------------- finish


def finalize(manifest: Manifest, segment_videos: list[Path], results: list[SegmentResult],
             source: Path, output: Path, detections_dir: Path,
             extra_report: dict | None = None, output_name: str | None = None) -> dict:
    """Join the segments, mux the source's other streams, write the records;
    return the report, which the caller completes (wall time, storage URLs) and
    writes with :func:`records.write_report`. ``output_name`` is what the report
    calls the output when ``output`` is a temporary name."""
    settings = manifest.settings
    results = sorted(results, key=lambda r: r.index)
    if [r.index for r in results] != list(range(len(manifest.segments))):
        raise ValueError("finalize needs exactly one result per segment")
    info = manifest.info
    # the frames a player shows: those listed by the source, less those that do not decode
    skipped = skipped_indices([r.damage for r in results])
    shown = [p for i, p in enumerate(info.frame_pts) if i not in skipped]
    if not shown:
        raise video.VideoError(f"no frame of {manifest.source_name} could be decoded")
    video.join_segments(segment_videos, source, info, output,
                        keep_metadata=settings.keep_metadata, frame_pts=shown)
    frames: dict[int, Detections] = {}
    for r in results:
        frames.update(r.frames)
    header = {"width": info.width, "height": info.height,
              "settings": {k: getattr(settings, k) for k in RECORDED_SETTINGS},
              "zones": manifest.zones}
    paths = write_records(detections_dir, frames, manifest.info.frame_pts, manifest.time_base,
                          manifest.source_name, header)
    paths["report_html"] = Path(detections_dir) / REPORT_HTML  # written by the caller
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
        "output": output_name or str(output),
        "input": _stream_facts(manifest.info),
        "output_stream": _stream_facts(out_info),
        "frames": len(shown),
        "frames_match": same_frame_times(shown, info.time_base, out_info),
        **damage_report(info, [r.damage for r in results]),
        "segments": len(manifest.segments),
        "detections": counts,
        "filled_boxes": filled,
        "frames_with_filled_boxes": frames_filled,
        "frames_with_detections": sum(1 for d in frames.values() if len(d)),
        "dropped_streams": manifest.dropped_streams,
        "zones": manifest.zones,
        "settings": settings.to_dict(),
        "timings": {k: round(sum(r.timings.get(k, 0.0) for r in results), 3)
                    for k in timing_keys},
        "files": {k: str(v) for k, v in paths.items()},
    }
    times = {i: Fraction(info.frame_pts[i]) * manifest.time_base for i in frames}
    report.update(review_flags(frames, times, settings.to_dict(), info.width, info.height))
    report.update(extra_report or {})
    return report


def same_frame_times(shown: list[int], time_base, b: video.VideoInfo) -> bool:
    """Whether ``b`` holds exactly the frames ``shown`` (source pts in
    ``time_base``: the source's frames that decode) at exactly their times
    (pts × time base): a container may store the time base as an equal finer one."""
    if len(shown) != b.n_frames:
        return False
    ta, tb = Fraction(time_base), Fraction(b.time_base)
    return all(p * ta == q * tb for p, q in zip(shown, b.frame_pts, strict=True))


def _stream_facts(info: video.VideoInfo) -> dict:
    return {"codec": info.codec, "width": info.width, "height": info.height,
            "pix_fmt": info.pix_fmt, "time_base": str(info.time_base),
            "avg_fps": info.avg_fps, "frames": info.n_frames, "duration_s": info.duration_s,
            "rotation": info.rotation, "other_streams": info.other_streams}


# ---------------------------------------------------------------------- one machine


def run_local(source: Path, output: Path, settings: Settings, detections_dir: Path | None = None,
              stack=None, progress: Progress | None = None, workdir: Path | None = None,
              manifest: Manifest | None = None, zones: list[dict] | None = None,
              extra_report: dict | None = None) -> dict:
    """``anonymize run``: the whole job on this machine, segment by segment. The
    output appears under its name only when complete (written beside it under a
    temporary name, then renamed). ``zones``: checked zone dicts (``pipeline/zones.py``)
    for a manifest made here. ``report.html`` is written beside ``report.json``."""
    source, output = Path(source), Path(output)
    detections_dir = Path(detections_dir) if detections_dir else output.parent
    t0 = time.perf_counter()
    if manifest is None:
        manifest = prepare_local(source, output, settings, detections_dir)
        manifest.zones = list(zones or [])
    t_load = time.perf_counter()
    if stack is None:
        from .detect import DetectionStack

        stack = DetectionStack.from_settings(settings)
    load_s = time.perf_counter() - t_load
    tmp = Path(tempfile.mkdtemp(prefix="anonymize-", dir=workdir))
    try:
        videos, results = [], []
        for seg in manifest.segments:
            part = video.split_segment(source, manifest.info, seg, tmp / f"seg{seg.index:05d}.mkv")
            out = tmp / f"out{seg.index:05d}.mp4"
            results.append(process_segment(part, manifest, seg.index, stack, out, progress))
            release_free_memory()
            videos.append(out)
            part.unlink()
        with atomic_output(output) as partial:
            report = finalize(manifest, videos, results, source, partial, detections_dir,
                              extra_report={"models": stack.model_names,
                                            "model_load_s": round(load_s, 3),
                                            **(extra_report or {})},
                              output_name=str(output))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    wall = time.perf_counter() - t0
    report["wall_s"] = round(wall, 3)
    report["fps"] = round(manifest.info.n_frames / wall, 2) if wall > 0 else None
    write_report(detections_dir, report)
    write_page(detections_dir, output, report)
    return report
