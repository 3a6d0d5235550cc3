"""Evaluation of detections against annotated images.

Two views of quality, both per label:

* detection quality: one-to-one greedy matching by score at IoU 0.5, giving
  precision and recall as in the research scripts (and their ``matches``
  list in the pickle), on the detection boxes as the pickle stores them
  (whole pixels): a reader who matches the pickle's boxes again finds the
  same pairs, also at an IoU of exactly 0.5;
* anonymization quality, which is what the product promises: **coverage
  recall**, the share of ground-truth boxes of which at least 90 % of the
  area lies inside the union of the regions that would be blurred (the
  detections of that label grown by the mask scale, clipped to the image).
  A detection that is shifted or too tight can match at IoU 0.5 and still
  leave part of a face readable; two overlapping detections can together
  hide a plate neither matches alone. Coverage sees both.

The union is rasterised as a boolean mask per image exactly as the blurring
step does it (boxes rounded outwards to whole pixels; faces optionally as
the inscribed ellipse, the ``shape`` setting). The ground-truth box is
measured with exact fractional pixel areas, so a box with fractional
corners is weighed by how much of each pixel it really holds.

Labels are compared in groups: ``face``, ``plate`` and ``car``, where ``car``
holds every vehicle class (car, motorcycle, bus, truck), because vehicle
annotations (e.g. Open Images "vehicle") do not separate them.

Everything here but :func:`evaluate_dataset` is a pure function over numpy
arrays and :class:`~models.detections.Detections`, testable without models.
"""

from __future__ import annotations

import json
import pickle
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from itertools import islice
from pathlib import Path

import numpy as np

from models.boxes import box_iou_np
from models.detections import FACE, LABELS, PLATE, VEHICLE_IDS, Detections, label_id
from pipeline.blur import region_mask
from pipeline.datasets import GTBox, ImageRecord, iter_samples
from pipeline.video.output import write_atomic

IOU_THRESH = 0.5
COVERAGE_THRESH = 0.9
MIN_WIDTH = 16  # ground truth at least this wide (px) gets its own coverage figure

#: evaluation label -> detection class ids counted for it
LABEL_GROUPS: dict[str, tuple[int, ...]] = {"face": (FACE,), "plate": (PLATE,), "car": VEHICLE_IDS}
#: what each ``--mode`` detects, hence evaluates
MODE_LABELS: dict[str, tuple[str, ...]] = {
    "faces": ("face",),
    "one-stage": ("plate",),
    "two-stage": ("plate", "car"),
    "both": ("plate", "car"),
}
SHAPES = ("box", "ellipse")

Pair = tuple[int | None, int | None]


#: annotated labels of common exports that name no detector class, in the key form of
#: :func:`~models.detections.label_id` (lower case, words joined by '_') -> our label:
#: Open Images' class names, the face-mask sets' labels (a masked face is a face to
#: blur), other plate spellings and plurals. Only evaluation reads them: a detector's
#: own class names keep the stricter mapping
EXPORT_LABELS = {
    "vehicle_registration_plate": "plate", "registration_plate": "plate",
    "car_plate": "plate", "vehicle_plate": "plate", "plates": "plate",
    "license_plates": "plate", "licence_plates": "plate", "number_plates": "plate",
    "human_face": "face", "faces": "face", "with_mask": "face", "without_mask": "face",
    "mask_weared_incorrect": "face", "mask_worn_incorrectly": "face",
    "land_vehicle": "car", "vehicle": "car", "van": "car", "taxi": "car",
    "ambulance": "car", "limousine": "car", "cars": "car", "buses": "bus",
    "trucks": "truck", "motorcycles": "motorcycle", "motorbikes": "motorcycle",
}


def group_of_label(label: str) -> str | None:
    """Evaluation group of an annotated label ('license_plate' -> plate, 'bus' -> car,
    'Vehicle registration plate' -> plate); ``None`` for labels no detector produces."""
    key = "_".join(label.lower().replace("-", " ").replace("_", " ").split())
    try:
        cid = label_id(EXPORT_LABELS.get(key, label))
    except ValueError:
        return None
    return group_of_class(cid)


def group_of_class(class_id: int) -> str | None:
    for name, ids in LABEL_GROUPS.items():
        if class_id in ids:
            return name
    return None


# -- matching -----------------------------------------------------------------

def match_greedy(det_xyxy: np.ndarray, det_scores: np.ndarray, gt_xyxy: np.ndarray,
                 iou_thresh: float = IOU_THRESH) -> list[int | None]:
    """For each detection, the ground-truth index it matches, or ``None``.

    Detections are taken by descending score (ties: original order); each
    takes the still unmatched ground truth with the highest IoU if that IoU
    is at least ``iou_thresh``. A second detection of an already matched
    object therefore stays unmatched: duplicates are false positives.
    """
    n = len(np.asarray(det_scores).reshape(-1))
    assigned: list[int | None] = [None] * n
    if n == 0 or len(np.asarray(gt_xyxy).reshape(-1, 4)) == 0:
        return assigned
    ious = box_iou_np(det_xyxy, gt_xyxy)
    taken = np.zeros(ious.shape[1], dtype=bool)
    for d in np.argsort(-np.asarray(det_scores, np.float64), kind="stable"):
        row = np.where(taken, -1.0, ious[d])
        g = int(np.argmax(row))
        if row[g] >= iou_thresh:
            taken[g] = True
            assigned[int(d)] = g
    return assigned


def match_image(dets: Detections, gt: Sequence[GTBox],
                iou_thresh: float = IOU_THRESH) -> list[Pair]:
    """The research ``matches`` list of one image.

    Matching runs within each label group. Every detection index appears
    exactly once, as ``(d, g)`` or ``(d, None)``, in detection order; then
    every unmatched ground-truth index as ``(None, g)``.
    """
    det_groups = [group_of_class(int(c)) for c in dets.class_id]
    gt_groups = [group_of_label(b.label) for b in gt]
    assigned: dict[int, int] = {}
    for group in {g for g in det_groups if g is not None}:
        d_idx = [i for i, g in enumerate(det_groups) if g == group]
        g_idx = [i for i, g in enumerate(gt_groups) if g == group]
        if not g_idx:
            continue
        gt_xyxy = np.array([gt[i].xyxy for i in g_idx], np.float64)
        local = match_greedy(dets.xyxy[d_idx], dets.confidence[d_idx], gt_xyxy, iou_thresh)
        for d_local, g_local in enumerate(local):
            if g_local is not None:
                assigned[d_idx[d_local]] = g_idx[g_local]
    pairs: list[Pair] = [(d, assigned.get(d)) for d in range(len(dets))]
    matched_gt = set(assigned.values())
    pairs += [(None, g) for g in range(len(gt)) if g not in matched_gt]
    return pairs


# -- coverage -------------------------------------------------------------------

def blur_mask(dets: Detections, height: int, width: int, mask_scale: float = 1.0,
              shape: str = "box") -> np.ndarray:
    """Boolean (H, W) mask of the pixels the blurring step would rewrite.

    :func:`pipeline.blur.region_mask` itself, over every label (vehicle boxes
    too, for the ``car`` coverage): boxes grown by ``mask_scale``, clipped,
    rounded outwards; with ``shape="ellipse"`` only faces become ellipses.
    """
    if shape not in SHAPES:
        raise ValueError(f"shape must be one of {', '.join(SHAPES)}")
    return region_mask(dets, width, height, mask_scale, shape, labels=tuple(range(len(LABELS))))


def _pixel_weights(lo: float, hi: float, size: int) -> tuple[int, np.ndarray]:
    """First pixel index and the share of each pixel in [lo, hi) along one axis."""
    lo, hi = min(max(lo, 0.0), size), min(max(hi, 0.0), size)
    first, last = int(np.floor(lo)), int(np.ceil(hi))
    edges = np.arange(first, last + 1, dtype=np.float64)
    w = np.minimum(edges[1:], hi) - np.maximum(edges[:-1], lo)
    return first, np.clip(w, 0, None)


def covered_fraction(mask: np.ndarray, xyxy: Sequence[float]) -> float:
    """Share of the box area (clipped to the image) that lies on ``True`` pixels.

    A box with no area inside the image counts as covered when the pixel it
    sits on is masked.
    """
    height, width = mask.shape
    x1, y1, x2, y2 = (float(v) for v in xyxy)
    c0, wx = _pixel_weights(x1, x2, width)
    r0, wy = _pixel_weights(y1, y2, height)
    area = wx.sum() * wy.sum()
    if area <= 0:
        r = min(max(int(y1), 0), height - 1)
        c = min(max(int(x1), 0), width - 1)
        return float(mask[r, c])
    window = mask[r0:r0 + len(wy), c0:c0 + len(wx)].astype(np.float64)
    return float(wy @ window @ wx / area)


# -- per image / per dataset -------------------------------------------------------

@dataclass
class LabelCounts:
    """Counts of one label; add images together with ``+=``."""

    gt: int = 0
    detections: int = 0
    tp: int = 0
    covered: int = 0
    gt_min_width: int = 0
    covered_min_width: int = 0

    def __iadd__(self, other: LabelCounts) -> LabelCounts:
        for name in self.__dataclass_fields__:
            setattr(self, name, getattr(self, name) + getattr(other, name))
        return self

    def summary(self, annotated: bool = True) -> dict:
        """Counts plus precision / recall / coverage recall (``None`` where undefined:
        no detections, no ground truth, or a label the dataset never annotates)."""

        def ratio(num: int, den: int) -> float | None:
            return round(num / den, 4) if den and annotated else None

        return {
            **asdict(self),
            "fp": self.detections - self.tp,
            "fn": self.gt - self.tp,
            "precision": ratio(self.tp, self.detections),
            "recall": ratio(self.tp, self.gt),
            "coverage_recall": ratio(self.covered, self.gt),
            "coverage_recall_min_width": ratio(self.covered_min_width, self.gt_min_width),
            "annotated": annotated,
        }


@dataclass
class ImageEval:
    """Everything measured on one image."""

    matches: list[Pair]
    counts: dict[str, LabelCounts]
    coverage: list[float | None] = field(default_factory=list)  # per GT box; None: not evaluated


def evaluate_image(dets: Detections, gt: Sequence[GTBox], height: int, width: int,
                   labels: Iterable[str], mask_scale: float = 1.0, shape: str = "box",
                   iou_thresh: float = IOU_THRESH, coverage_thresh: float = COVERAGE_THRESH,
                   min_width: float = MIN_WIDTH) -> ImageEval:
    """Match ``dets`` to ``gt`` and count, for each evaluated label, ground truth,
    detections, IoU matches and ground truth covered by that label's blur mask.
    Matching uses the boxes rounded as the research pickle stores them
    (:meth:`Detections.rounded`); coverage uses them as blurred."""
    matches = match_image(dets.rounded(), gt, iou_thresh)
    det_groups = np.array([group_of_class(int(c)) for c in dets.class_id], dtype=object)
    gt_groups = [group_of_label(b.label) for b in gt]
    counts: dict[str, LabelCounts] = {}
    coverage: list[float | None] = [None] * len(gt)
    for label in labels:
        if label not in LABEL_GROUPS:
            raise ValueError(f"cannot evaluate label {label!r}; known: {', '.join(LABEL_GROUPS)}")
        c = LabelCounts()
        own = det_groups == label if len(dets) else np.zeros(0, bool)
        c.detections = int(own.sum())
        c.tp = sum(1 for d, g in matches if d is not None and g is not None
                   and gt_groups[g] == label)
        g_idx = [i for i, g in enumerate(gt_groups) if g == label]
        c.gt = len(g_idx)
        if g_idx:
            mask = blur_mask(dets[own], height, width, mask_scale, shape)
            for i in g_idx:
                frac = covered_fraction(mask, gt[i].xyxy)
                coverage[i] = frac
                hit = frac >= coverage_thresh - 1e-9
                c.covered += hit
                x1, _, x2, _ = gt[i].xyxy
                if x2 - x1 >= min_width:
                    c.gt_min_width += 1
                    c.covered_min_width += hit
        counts[label] = c
    return ImageEval(matches, counts, coverage)


def to_mdict(filename: str, dets: Detections, gt: Sequence[GTBox], matches: list[Pair]) -> dict:
    """One entry of the research ``<mode>_mdict_list.pkl``."""
    return {
        "det": dets.to_imageai(),
        "filename": filename,
        "gt": [{"bbox": list(b.xyxy), "class": b.label} for b in gt],
        "matches": [tuple(p) for p in matches],
    }


def draw(image: np.ndarray, dets: Detections, gt: Sequence[GTBox]) -> np.ndarray:
    """RGB copy of ``image`` with ground truth in green and detections in red."""
    import cv2

    out = np.ascontiguousarray(image.copy())
    thick = max(1, round(max(out.shape[:2]) / 640))
    for b in gt:
        x1, y1, x2, y2 = (int(round(v)) for v in b.xyxy)
        cv2.rectangle(out, (x1, y1), (x2, y2), (0, 255, 0), thick)
    for box, score, cid in zip(dets.xyxy, dets.confidence, dets.class_id, strict=True):
        x1, y1, x2, y2 = (int(round(float(v))) for v in box)
        cv2.rectangle(out, (x1, y1), (x2, y2), (255, 0, 0), thick)
        cv2.putText(out, f"{LABELS[int(cid)]} {score:.2f}", (x1, max(y1 - 3, 10)),
                    cv2.FONT_HERSHEY_SIMPLEX, 0.4 * thick, (255, 0, 0), thick)
    return out


def pickle_path(out_dir: str | Path, mode: str) -> Path:
    return Path(out_dir) / f"{mode}_mdict_list.pkl"


def evaluate_dataset(records: Sequence[ImageRecord],
                     detect: Callable[[list[np.ndarray]], list[Detections]],
                     out_dir: str | Path, mode: str, *, labels: Sequence[str] | None = None,
                     mask_scale: float = 1.0, shape: str = "box", batch_size: int = 8,
                     min_width: float = MIN_WIDTH, draw_dir: str | Path | None = None,
                     progress: bool = True, meta: dict | None = None) -> dict:
    """Run ``detect`` over ``records`` in batches, write the research pickle and
    ``metrics.json`` to ``out_dir``, and return the metrics dict.

    ``detect`` takes a list of RGB uint8 images and returns one
    :class:`Detections` per image (``DetectionStack.detect``). ``meta``
    (settings, model names, load time, ...) is stored in metrics.json as is.
    """
    if mode not in MODE_LABELS:
        raise ValueError(f"mode must be one of {', '.join(MODE_LABELS)}")
    labels = tuple(labels or MODE_LABELS[mode])
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if draw_dir is not None:
        Path(draw_dir).mkdir(parents=True, exist_ok=True)
    annotated = {group_of_label(b.label) for r in records for b in r.boxes}
    unrecognised = Counter(b.label for r in records for b in r.boxes
                           if group_of_label(b.label) is None)
    totals = {label: LabelCounts() for label in labels}
    mdicts: list[dict] = []
    drawn: set[str] = set()  # names written to draw_dir
    detect_s = 0.0
    start = time.perf_counter()

    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(records), desc=f"eval {mode}", unit="img", file=sys.stderr)
    undecodable: list[tuple[ImageRecord, str]] = []
    no_area: list[tuple[ImageRecord, GTBox]] = []
    samples = iter_samples(records, undecodable, no_area)
    try:
        while batch := list(islice(samples, batch_size)):
            t0 = time.perf_counter()
            results = detect([s.image for s in batch])
            detect_s += time.perf_counter() - t0
            if len(results) != len(batch):
                raise RuntimeError(f"detector returned {len(results)} results for {len(batch)} images")
            for sample, dets in zip(batch, results, strict=True):
                h, w = sample.image.shape[:2]
                ev = evaluate_image(dets, sample.gt, h, w, labels, mask_scale, shape,
                                    min_width=min_width)
                for label in labels:
                    totals[label] += ev.counts[label]
                mdicts.append(to_mdict(sample.name, dets, sample.gt, ev.matches))
                if draw_dir is not None:
                    _write_drawn(Path(draw_dir) / drawn_name(sample.name, drawn),
                                 draw(sample.image, dets, sample.gt))
            if bar is not None:
                bar.n = len(mdicts) + len(undecodable)
                bar.refresh()
    finally:  # also when it stops: an error line then starts a line of its own
        if bar is not None:
            bar.n = len(mdicts) + len(undecodable)
            bar.close()
    total_s = time.perf_counter() - start

    # each output whole or not at all (write_atomic): an interrupted run leaves
    # the previous run's files, never half of one
    write_atomic(pickle_path(out_dir, mode), pickle.dumps(mdicts, protocol=4))
    metrics = {
        "mode": mode,
        "images": len(mdicts),
        "labels": {label: totals[label].summary(label in annotated) for label in labels},
        # annotated labels no detector produces (not evaluated): boxes per label
        "unrecognised_labels": dict(sorted(unrecognised.items())),
        # listed images that did not decode: left out of every count above
        "undecodable": [{"file": rec.name or rec.path.name, "reason": reason}
                        for rec, reason in undecodable],
        # annotated boxes with no area inside their image (outside it, or no width or
        # height), in pixels as annotated: not in the ground truth above
        "boxes_without_area": [{"file": rec.name or rec.path.name, "label": box.label,
                                "xyxy": [round(v, 3) for v in box.xyxy]}
                               for rec, box in no_area],
        "evaluation": {"iou_thresh": IOU_THRESH, "coverage_thresh": COVERAGE_THRESH,
                       "mask_scale": mask_scale, "coverage_shape": shape,
                       "min_width": min_width, "batch_size": batch_size},
        **{k: v for k, v in (meta or {}).items() if k != "timing"},
        # the caller's timings (model loading) join ours
        "timing": {**(meta or {}).get("timing", {}), "total_s": round(total_s, 3),
                   "detect_s": round(detect_s, 3),
                   "detect_ms_per_image": round(1000 * detect_s / max(len(mdicts), 1), 2)},
    }
    write_atomic(out_dir / "metrics.json", (json.dumps(metrics, indent=2) + "\n").encode())
    return metrics


def drawn_name(name: str, taken: set[str]) -> str:
    """File name in ``drawn/`` for the image ``name``, not in ``taken`` (then added).

    ``images/a.png`` becomes ``images__a.jpg``; when that is taken (by
    ``images/a.jpg``, or ``images__a.png``) the source suffix stays in the
    name (``images__a.png.jpg``), then a number is added: one drawn file
    never replaces another."""
    flat = name.replace("\\", "/").strip("/").replace("/", "__")
    out = next((c for c in (Path(flat).stem + ".jpg", flat + ".jpg") if c not in taken), None)
    n = 2
    while out is None:
        out = f"{flat}-{n}.jpg" if f"{flat}-{n}.jpg" not in taken else None
        n += 1
    taken.add(out)
    return out


def _write_drawn(target: Path, image_rgb: np.ndarray) -> None:
    import cv2

    # encoded in memory and written by Python: OpenCV's path functions crash on a
    # name that is not UTF-8
    ok, data = cv2.imencode(".jpg", np.ascontiguousarray(image_rgb[:, :, ::-1]))
    if not ok:
        raise OSError(f"cannot write {target}")
    write_atomic(target, data.tobytes())


def format_table(metrics: dict) -> str:
    """Short per-label table for the terminal."""

    def fmt(v) -> str:
        return "-" if v is None else (f"{v:.3f}" if isinstance(v, float) else str(v))

    cols = ("gt", "detections", "precision", "recall", "coverage_recall",
            "coverage_recall_min_width")
    min_width = metrics.get("evaluation", {}).get("min_width", MIN_WIDTH)
    heads = ("label", "gt", "dets", "prec@.5", "rec@.5", "coverage", f"cov(w>={min_width:g})")
    rows = [heads]
    for label, m in metrics["labels"].items():
        rows.append((label, *(fmt(m[c]) for c in cols)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(heads))]
    lines = ["  ".join(cell.rjust(w) if i else cell.ljust(w)
                       for i, (cell, w) in enumerate(zip(row, widths, strict=True)))
             for row in rows]
    return "\n".join(lines)
