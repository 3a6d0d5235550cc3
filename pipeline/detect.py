"""Detection orchestration: faces plus plates in one of three plate modes.

* ``two-stage`` (the research method): vehicles above ``vehicle_thresh`` ->
  crops grown by ``crop_margin`` -> the plate detector over all crops of all
  frames in one batched call -> boxes shifted back into frame pixels.
* ``one-stage``: the plate detector on whole frames (it tiles very large
  frames itself), at ``plate_size`` and again, never tiled, at
  ``plate_second_size``: the two input sizes find different plates
  (docs/benchmarks.md, "Second plate input size").
* ``both``: the union of the two. Recall-first, so it is the default (see
  README, "Plate modes").

Every source of plates (each input size, each vehicle crop) is joined by
:func:`models.tiling.absorb`, as the face passes are: two views of one plate
become their enclosing box, not the higher-scored one.

Models are loaded once per :class:`DetectionStack`; workers keep one per
process and reuse it for every segment.

On a CPU with 2+ cores the frames of a batch are detected on lanes
(:class:`models.graph_runners.LanePool`, one lane per core up to four): each
lane takes a frame and runs all of it, resizing, every network on a
single-threaded runner of its own, decoding and merging, so every core
works on its own frame. Before, the frame preparation between network
calls ran on one thread while the networks' lanes waited for it
(docs/benchmarks.md, "Frames on lanes").
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from models.base import tiling_options
from models.detections import Detections
from models.graph_runners import LanePool, lane_split, on_lane_thread
from models.tiling import absorb

from . import changes
from .settings import Settings
from .threads import resolve_threads

MIN_CROP = 8  # vehicle boxes smaller than this (px) cannot hold a readable plate


def load_detector(name: str, device: str | None, half: bool, task: str | None = None,
                  fmt: str = "auto", **opts):
    """A detector for ``task`` from a registry name or a weights file (models/loader.py).

    Never downloads: a registry model must have been fetched (`anonymize
    models fetch`), so a worker never reaches the network mid-job.
    ``fmt`` forces a file's format; ``opts`` are pipeline hints (min_face, threads).
    """
    from models.loader import load

    return load(name, task, fmt, device=device, half=half, **opts)


def crop_rects(vehicles: Detections, margin: float, width: int, height: int) -> np.ndarray:
    """Each vehicle's crop in a width×height frame: its box grown by ``margin``
    of its size on every side (plates sit at the edge of a vehicle box),
    rounded outward to whole pixels and clipped to the frame; (n, 4) integer
    x0, y0, x1, y1."""
    xyxy = vehicles.xyxy
    grow = (xyxy[:, 2:] - xyxy[:, :2]) * margin
    rects = np.concatenate([np.floor(xyxy[:, :2] - grow), np.ceil(xyxy[:, 2:] + grow)], axis=1)
    return np.clip(rects, 0, [width, height, width, height]).astype(np.int64)


def vehicle_crops(frame: np.ndarray, vehicles: Detections, margin: float
                  ) -> tuple[list[np.ndarray], list[tuple[int, int]]]:
    """Crops of one frame around each vehicle (:func:`crop_rects`), with their
    origins; crops under :data:`MIN_CROP` pixels on a side are left out."""
    h, w = frame.shape[:2]
    crops, origins = [], []
    for cx1, cy1, cx2, cy2 in crop_rects(vehicles, margin, w, h):
        if cx2 - cx1 < MIN_CROP or cy2 - cy1 < MIN_CROP:
            continue
        crops.append(frame[cy1:cy2, cx1:cx2])
        origins.append((int(cx1), int(cy1)))
    return crops, origins


def reaching_into(vehicles: Detections, rects: Sequence[tuple[int, int, int, int]],
                  margin: float, width: int, height: int) -> Detections:
    """The vehicles of a width×height frame whose crop (:func:`crop_rects`)
    overlaps one of ``rects`` (x0, y0, x1, y1)."""
    if len(vehicles) == 0 or not rects:
        return vehicles[np.zeros(len(vehicles), bool)]
    c = crop_rects(vehicles, margin, width, height)
    r = np.asarray(rects)
    overlap = ((c[:, None, 0] < r[None, :, 2]) & (r[None, :, 0] < c[:, None, 2])
               & (c[:, None, 1] < r[None, :, 3]) & (r[None, :, 1] < c[:, None, 3]))
    return vehicles[overlap.any(axis=1)]


def merge_plates(parts: Sequence[Detections], iou: float) -> Detections:
    """Union of plate detections from several sources (each already free of
    duplicates): a box overlapping a kept one (IoU ≥ ``iou``) grows it to
    enclose both, others are added.

    Why not NMS: two sources often box one plate differently (a crop sees its
    edge the whole frame missed), and the higher score is not the better box.
    On the Open Images plates the enclosing box raised coverage 0.917 -> 0.922
    (fp32) while recall@0.5 fell 0.854 -> 0.805, the boxes being larger than
    the annotations (docs/benchmarks.md, "Joining plate sources").
    """
    out = Detections.empty()
    for part in parts:
        out = absorb(out, part, iou)
    return out


def detect_upright(stack, frames, rotation: int) -> list[Detections]:
    """``stack.detect`` on frames turned as a player shows them (``rotation``:
    the video's display rotation, counter-clockwise degrees), boxes mapped
    back into the stored frames.

    Why: phones store portrait video as landscape frames plus a rotation, and
    the detectors are trained on upright faces: on the dlib photos turned a
    quarter, face coverage fell from 1.000 to 0.907. Costs one copy of each
    frame. ``frames``: H×W×3 arrays, or one N×H×W×3 tensor."""
    k = (rotation // 90) % 4
    if k == 0 or len(frames) == 0:
        return stack.detect(frames)
    if isinstance(frames, torch.Tensor):
        h, w = frames.shape[1:3]
        upright = torch.rot90(frames, k, dims=(1, 2)).contiguous()
    else:
        h, w = frames[0].shape[:2]
        upright = [np.ascontiguousarray(np.rot90(f, k)) for f in frames]
    return [d.unrotated(k, w, h) for d in stack.detect(upright)]


class DetectionStack:
    """Faces + plates (+ the vehicles of the two-stage path) for batches of frames."""

    def __init__(self, settings: Settings, faces=None, plates=None, vehicles=None):
        self.settings = settings
        self.face_detector = faces
        self.plate_detector = plates
        self.vehicle_detector = vehicles
        detectors = [d for d in (faces, plates, vehicles) if d is not None]
        #: every detector runs on the CPU
        self.on_cpu = all(getattr(getattr(d, "device", None), "type", "cpu") == "cpu"
                          for d in detectors)
        devices = {str(getattr(d, "device", "cpu")) for d in detectors}
        #: where the networks run ("cpu", "cuda", "cuda:1"): on one CUDA device a
        #: batch is copied there once as a tensor and blurred there (SegmentJob);
        #: detectors on several devices get host frames and each copies its own
        self.device = devices.pop() if len(devices) == 1 else "cpu"
        count = lane_split(resolve_threads(settings.threads))[0] if self.on_cpu else 1
        #: lanes the frames of a batch are spread over (None: the calling thread does all)
        self.lanes = LanePool(count, "detect-lane") if count > 1 else None

    @classmethod
    def from_settings(cls, settings: Settings, device: str | None = None,
                      faces: bool | None = None, plates: bool | None = None) -> DetectionStack:
        s = settings
        device = device or s.device
        want_faces = s.faces if faces is None else faces
        want_plates = (s.plate_mode is not None) if plates is None else plates
        face_det = plate_det = vehicle_det = None
        # the networks run one after another, so each may use the whole budget
        threads = resolve_threads(s.threads)
        if want_faces:
            face_det = load_detector(s.face_model, device, s.half, "faces", s.face_model_format,
                                     min_face=s.min_face, threads=threads)
        if want_plates:
            plate_det = load_detector(s.plate_model, device, s.half, "plates",
                                      s.plate_model_format, threads=threads)
            if s.plate_mode in ("two-stage", "both"):
                vehicle_det = load_detector(s.vehicle_model, device, s.half, "vehicles",
                                            s.vehicle_model_format, threads=threads)
        return cls(s, face_det, plate_det, vehicle_det)

    @property
    def model_names(self) -> dict[str, str]:
        out = {}
        for task, det in (("faces", self.face_detector), ("plates", self.plate_detector),
                          ("vehicles", self.vehicle_detector)):
            if det is not None:
                out[task] = det.name
        return out

    def detect(self, frames: Sequence[np.ndarray] | np.ndarray | torch.Tensor,
               vehicles: bool = True) -> list[Detections]:
        """One Detections per frame: faces, plates, and (when ``vehicles`` and the
        two-stage search ran) the vehicles it cropped. Frames: H×W×3 uint8 RGB
        numpy arrays, or one N×H×W×3 uint8 tensor already on the device."""
        n = len(frames)
        if n == 0:
            return []
        if self.lanes is not None and n > 1 and not on_lane_thread():
            return self.lanes.map(lambda k: self._detect(frames[k:k + 1], vehicles)[0], range(n))
        return self._detect(frames, vehicles)

    def on_lanes(self, fn, items) -> list:
        """``[fn(item) for item in items]``, on the lanes when there are some (and
        this is not already a lane thread), else on this thread."""
        if self.lanes is not None and not on_lane_thread():
            return self.lanes.map(fn, items)
        return [fn(item) for item in items]

    def regions_supported(self) -> bool:
        """Whether :meth:`detect_regions` can look at parts of a frame: the face
        and plate detectors offer ``detect_windows`` (CenterFace, YOLOv8), on a
        CPU (a GPU runs whole frames in batches for less than windows one by
        one would cost)."""
        return self.on_cpu and all(hasattr(d, "detect_windows")
                                   for d in (self.face_detector, self.plate_detector)
                                   if d is not None)

    def detect_regions(self, frame: np.ndarray, rects: Sequence[tuple[int, int, int, int]],
                       vehicles: bool = True) -> Detections:
        """One frame's detections with the face and one-stage plate networks run
        only on ``rects`` (x0, y0, x1, y1 frame pixels; ``pipeline.changes``), on
        windows of the input the whole frame would get (``detect_windows``), so a
        face or plate there is seen as in the whole frame. The vehicles are
        searched on the whole frame as :meth:`detect` does, and the crop of each
        vehicle that reaches into ``rects`` is searched for plates (a vehicle
        wholly outside them stands on unchanged pixels: its plates are the ones
        the caller keeps). A detector that would tile this frame runs on all of
        it."""
        s = self.settings
        parts: list[Detections] = []
        with torch.inference_mode():
            if self.face_detector is not None:
                det = self.face_detector
                found = det.detect_windows(frame, rects, s.face_thresh * changes.WINDOW_SCORE)
                parts.append(det.detect([frame], s.face_thresh)[0] if found is None else found)
            if self.plate_detector is not None:
                plates, found_vehicles = self._plates([frame], rects)[0]
                parts.append(plates)
                if vehicles:
                    parts.append(found_vehicles)
        return Detections.merge(parts)

    def _detect(self, frames, vehicles: bool) -> list[Detections]:
        n = len(frames)
        s = self.settings
        parts: list[list[Detections]] = [[] for _ in range(n)]
        with torch.inference_mode():
            if self.face_detector is not None:
                for i, d in enumerate(self.face_detector.detect(frames, s.face_thresh)):
                    parts[i].append(d)
            if self.plate_detector is not None:
                for i, (plates, found_vehicles) in enumerate(self._plates(frames)):
                    parts[i].append(plates)
                    if vehicles:
                        parts[i].append(found_vehicles)
        return [Detections.merge(p) for p in parts]

    def _plates(self, frames, rects=None) -> list[tuple[Detections, Detections]]:
        """Per frame: the plates of the plate mode, every source (one-stage boxes,
        boxes of every vehicle crop) joined by :func:`merge_plates`, and the vehicles.
        ``rects`` (one frame only, :meth:`detect_regions`): the one-stage passes
        look only there."""
        s = self.settings
        n = len(frames)
        sources: list[list[Detections]] = [[] for _ in range(n)]
        vehicles = [Detections.empty() for _ in range(n)]
        if s.plate_mode in ("one-stage", "both"):
            det = self.plate_detector
            for k, size in enumerate(s.plate_sizes):
                # the second size is another view of the whole frame, never tiled: its
                # tiles (always at x0.5) would repeat, or nearly, a scale the main pass
                # already covers (docs/benchmarks.md, "Second plate input size")
                options = tiling_options(det, k == 0)
                found = None
                if rects is not None:
                    found = det.detect_windows(frames[0], rects,
                                               s.lp_thresh * changes.WINDOW_SCORE, size,
                                               **options)
                    found = None if found is None else [found]
                if found is None:
                    found = det.detect(frames, s.lp_thresh, size=size, **options)
                for i, d in enumerate(found):
                    sources[i].append(d)
        if s.plate_mode in ("two-stage", "both"):
            vehicles = self.vehicle_detector.detect(frames, s.vehicle_thresh)
            searched = vehicles
            if rects is not None:
                h, w = frames[0].shape[:2]
                searched = [reaching_into(vehicles[0], rects, s.crop_margin, w, h)]
            for i, d in self._two_stage(frames, searched):
                sources[i].append(d)
        out = []
        for i in range(n):
            h, w = frames[i].shape[:2]
            out.append((merge_plates(sources[i], s.nms_thresh).clipped(w, h), vehicles[i]))
        return out

    def _two_stage(self, frames, vehicles: list[Detections]) -> list[tuple[int, Detections]]:
        """Plates inside every vehicle crop of every frame, found in one batched
        call; returns (frame index, plates in frame pixels) per crop."""
        s = self.settings
        crops, owners = [], []
        for i, veh in enumerate(vehicles):
            c, origins = vehicle_crops(frames[i], veh, s.crop_margin)
            crops += c
            owners += [(i, o) for o in origins]
        if not crops:
            return []
        found = self.plate_detector.detect_crops(crops, s.lp_thresh, size=s.crop_size)
        return [(i, d.shifted(ox, oy)) for (i, (ox, oy)), d in zip(owners, found, strict=True)
                if len(d)]
