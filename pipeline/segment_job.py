"""One segment's frames: decode, detect, fill, blur and encode, overlapped.

This is the whole frame path of a job: a frame is decoded (``video.decode``),
detected (``pipeline.detect``), blurred (``pipeline.blur``) and encoded
(``video.encode``) here, and nowhere else. ``anonymize run`` calls it once
per segment on this machine; a Celery worker calls it for the segment it
was given (``tasks/steps.py``). Both therefore blur the same boxes on the
same frames, also at segment boundaries.

Memory stays flat: a segment is decoded once, frames are held only until
the detections of ``context_frames(fill)`` later frames are known, then
blurred, encoded and dropped; every queue between the stages is bounded.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from models.detections import FACE, PLATE, Detections

from . import video
from .blur import anonymize_frame
from .changes import detect_group
from .detect import detect_upright
from .plan import Manifest
from .temporal import fill_segment
from .threads import ThreadBudget, apply_detect_threads, resolve_threads
from .video.damage import segment_damage
from .zones import ZoneSet

Progress = Callable[[int], None]  # called with the number of frames just finished



@dataclass
class SegmentResult:
    """Owned frames' final detections (after filling) and counts of one segment;
    ``damage``: owned frames skipped or concealed (see ``video.damage``).
    ``detected``: the detector's own boxes of the segment's last frames and
    trailing context, which the next segment needs as its context and owned
    frames (kept in this process only, never stored)."""

    index: int
    frames: dict[int, Detections]
    n_filled: int = 0
    timings: dict[str, float] = field(default_factory=dict)
    damage: dict = field(default_factory=dict)
    detected: dict[int, Detections] = field(default_factory=dict, repr=False)

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
                 progress: Progress | None = None, budget: ThreadBudget | None = None,
                 known: dict[int, Detections] | None = None):
        self.manifest = manifest
        #: frames already detected (by the previous segment, in this process):
        #: their boxes are taken, the frames are not detected again
        self.known = dict(known or {})
        self.settings = manifest.settings
        self.seg = manifest.segments[index]
        self.index = index
        self.stack = stack
        self.out_video = Path(out_video)
        self.progress = progress
        self.device = str(getattr(stack, "device", "cpu"))
        #: batches go to the device as one tensor, are detected and blurred there
        self.on_device = batches_on_device(self.device)
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
        #: frames per group of pipeline.changes (0: every frame detected whole); groups
        #: count from the first frame this segment needs, so its boxes do not depend
        #: on what the previous segment detected
        self.group_frames = self._group_frames()
        self.first_index = min(self.index_of.values(), default=0)
        self.dets: dict[int, Detections] = {}  # faces/plates per frame, until no longer context
        self.pending: deque = deque()  # (idx, pts, frame) detected, waiting for fill context
        self.final: dict[int, Detections] = {}
        self.n_filled = 0
        self.timings = {"decode_s": 0.0, "detect_s": 0.0, "blur_encode_s": 0.0}
        self.decode_log = video.DecodeLog()
        self._encode_q: queue.Queue = queue.Queue(maxsize=4)
        self._stages: list[_Stage] = []

    def _group_frames(self) -> int:
        s = self.settings
        regions = getattr(self.stack, "regions_supported", None)
        if (s.reference_every <= 1 or s.detect_every > 1 or regions is None
                or self.on_device or not regions()):
            return 0
        return s.reference_every

    def _group(self, idx: int) -> int:
        return (idx - self.first_index) // self.group_frames if self.group_frames else 0

    # -- the run ------------------------------------------------------------
    def run(self, segment_file: Path) -> SegmentResult:
        t0 = time.perf_counter()
        apply_detect_threads(self.budget.detect)
        frames_q: queue.Queue = queue.Queue(maxsize=max(2, self.settings.batch_size))
        self.out_video.parent.mkdir(parents=True, exist_ok=True)
        with video.VideoWriter(self.out_video, self.manifest.info, crf=self.settings.crf,
                               preset=self.settings.preset, threads=self.budget.encode) as writer:
            decoder = _Stage("decode", lambda: self._decode(Path(segment_file), frames_q))
            encoder = _Stage("encode", lambda: self._encode(writer))
            self._stages = [decoder, encoder]
            try:
                # inside: a stage that cannot start (a thread or pids limit) must still
                # stop the one started before it, which would wait for room for ever
                decoder.start()
                encoder.start()
                self._detect_all(frames_q)
                self._put(self._encode_q, _END)
                encoder.join()
            finally:
                self._stop = True
                for stage in self._stages:
                    if stage.ident is not None:  # started
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
        return SegmentResult(self.index, self.final, self.n_filled, self.timings, damage,
                             detected=dict(self.dets))

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
        """Take the decoded frames in batches and detect them, in order.

        With a lane pool (``stack.lanes``: CPU detection spread over cores) the
        next batch is handed to the lanes before the current one is finished,
        so a lane that is done with its last frame of a batch starts on the
        next batch instead of waiting for the other lanes: that wait was about a
        tenth of the lanes' time (a sampling profile of a default run). A
        group of ``reference_every`` frames runs on one lane, so as many groups
        as lanes are in flight.
        On CUDA the next batch is likewise copied to the device and started
        while this one's detections come back, so the device is not left idle
        during the host's share of each batch (the copy, the decoding of
        boxes). ``detect_s`` is the time this stage spent detecting or waiting
        for a batch's detections."""
        lanes = getattr(self.stack, "lanes", None)
        ahead = 0 if lanes is None and not self.on_device else 1
        if lanes is not None and self.group_frames:
            # a group runs on one lane (pipeline.changes): one group in flight per lane
            ahead = max(1, lanes.count - 1)
        pool = ThreadPoolExecutor(ahead + 1, thread_name_prefix="detect-batch") if ahead else None
        inflight: deque = deque()  # (batch, future of its frames and detections)
        batch: list[tuple[int, int, np.ndarray]] = []
        # with groups (pipeline.changes) a batch is one group: its first frame the reference
        size = self.group_frames or self.settings.batch_size
        last = -1

        def submit(batch: list) -> None:
            td = time.perf_counter()
            inflight.append((batch, self._start(pool, batch)))
            self.timings["detect_s"] += time.perf_counter() - td

        try:
            while True:
                item = self._get(frames_q)
                if (batch and item is not _END and self.group_frames
                        and self._group(item[0]) != self._group(batch[0][0])):
                    submit(batch)  # a frame was lost to damage: the group ends early
                    batch = []
                if item is not _END:
                    batch.append(item)
                if batch and (item is _END or len(batch) >= size):
                    submit(batch)
                    batch = []
                while inflight and (item is _END or len(inflight) > ahead):
                    done, future = inflight.popleft()
                    td = time.perf_counter()
                    found = future.result()
                    self.timings["detect_s"] += time.perf_counter() - td
                    self._take(done, *found)
                    last = max(last, max(idx for idx, _, _ in done))
                    self._release(last, at_end=False)
                if item is _END:
                    break
        finally:
            if pool is not None:
                pool.shutdown(cancel_futures=True)
        self._release(last, at_end=True)

    def _start(self, pool: ThreadPoolExecutor | None, batch) -> Future:
        """The batch's detection, running on ``pool``, or done here without one."""
        if pool is not None:
            return pool.submit(self._detect, batch)
        done: Future = Future()
        done.set_result(self._detect(batch))
        return done

    def _detect(self, batch: list[tuple[int, int, np.ndarray]]) -> tuple[list, list[Detections]]:
        """The batch's frames (on the device) and their detections."""
        frames = self._to_device([rgb for _, _, rgb in batch])
        detect_at = getattr(self.stack, "detect_at", None)
        if detect_at is not None:
            return frames, detect_at([idx for idx, _, _ in batch], frames)
        return frames, self._detect_needed(batch, frames)

    def _take(self, batch: list[tuple[int, int, np.ndarray]], frames,
              found: list[Detections]) -> None:
        """Keep a detected batch's boxes; its owned frames wait for fill context."""
        for (idx, pts, _), frame, d in zip(batch, frames, found, strict=True):
            self.dets[idx] = d.with_class(FACE, PLATE)
            if self.seg.start <= idx < self.seg.stop:
                self.pending.append((idx, pts, frame))

    def _detect_needed(self, batch: list[tuple[int, int, np.ndarray]], frames
                       ) -> list[Detections]:
        """The stack's detections of the batch's frames that need them: those
        whose index is a multiple of ``detect_every`` (the index in the whole
        video, so every segment and every worker samples the same frames) and
        that are not ``known`` (detected by the previous segment in this
        process, whose boxes they keep). Frames between samples get none and
        are covered by temporal filling, like frames a detector missed. A
        frame identical pixel for pixel to the one before it in the batch
        takes that frame's boxes (:func:`repeats_of`). With groups
        (``--reference-every``) the batch is one group, detected by
        :func:`pipeline.changes.detect_group`, ``known`` boxes unused."""
        rotation = self.manifest.info.rotation
        if self.group_frames:
            return detect_upright(_Group(self.stack), frames, rotation)
        every = self.settings.detect_every
        picked = [k for k, (idx, _, _) in enumerate(batch)
                  if idx % every == 0 and idx not in self.known]
        # a known frame between samples has no boxes because it was never detected,
        # not because nothing is on it: a sample repeating its picture is detected
        # (as a worker, which has no known frames, detects it)
        boxed = picked + [k for k, (idx, _, _) in enumerate(batch)
                          if idx in self.known and idx % every == 0]
        repeats = repeats_of([rgb for _, _, rgb in batch], picked, boxed)
        run = [k for k in picked if k not in repeats]
        if len(run) == len(batch):
            return detect_upright(self.stack, frames, rotation)
        found = [self.known.get(idx, Detections.empty()) for idx, _, _ in batch]
        if run:
            sub = frames[run] if not isinstance(frames, list) else [frames[k] for k in run]
            for k, d in zip(run, detect_upright(self.stack, sub, rotation), strict=True):
                found[k] = d
        for k in sorted(repeats):  # in order: a run of repeats takes its first frame's boxes
            found[k] = found[repeats[k]][:]
        return found

    def _to_device(self, frames: list[np.ndarray]):
        """On CUDA: the batch as one uint8 tensor on the device (a single copy,
        from pinned memory)."""
        if not self.on_device:
            return frames
        import torch

        host = torch.from_numpy(np.stack(frames))
        if torch.device(self.device).type != "cpu":  # the CPU test suite runs this path too
            host = host.pin_memory()
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


def batches_on_device(device: str) -> bool:
    """Whether a segment hands each batch to the stack's device as one tensor,
    detects and blurs it there (on CUDA). The CPU test suite turns it on for
    the CPU to run that path on real video."""
    return device.startswith("cuda")


def repeats_of(pictures: list[np.ndarray], picked: list[int], boxed: list[int]
               ) -> dict[int, int]:
    """Which of the ``picked`` pictures repeat the one before them pixel for
    pixel, that one being ``boxed`` (detected or with known boxes): k → k - 1.
    The same pixels give the same boxes, so a repeat is not detected again:
    lossless and screen recordings, frame rates some encoders pad by repeating
    a picture exactly (most lossy encoders re-code a repeated picture slightly
    differently: docs/benchmarks.md, "Repeated frames detected once"). One
    row is compared first, so frames that differ cost little."""
    boxed_set = set(boxed)
    out = {}
    for k in picked:
        if k - 1 in boxed_set and same_picture(pictures[k], pictures[k - 1]):
            out[k] = k - 1
    return out


def same_picture(a: np.ndarray, b: np.ndarray) -> bool:
    if a.shape != b.shape:
        return False
    mid = a.shape[0] // 2
    return bool(np.array_equal(a[mid], b[mid]) and np.array_equal(a, b))


class _Group:
    """A stack whose ``detect`` takes one group of frames (pipeline.changes)."""

    def __init__(self, stack):
        self.stack = stack

    def detect(self, frames) -> list[Detections]:
        return detect_group(self.stack, frames)


def process_segment(segment_file: Path, manifest: Manifest, index: int, stack,
                    out_video: Path, progress: Progress | None = None,
                    known: dict[int, Detections] | None = None) -> SegmentResult:
    """Run :class:`SegmentJob` for segment ``index`` of ``manifest``; ``known``:
    the previous segment's ``SegmentResult.detected`` when it ran in this process."""
    return SegmentJob(manifest, index, stack, out_video, progress,
                      known=known).run(segment_file)
