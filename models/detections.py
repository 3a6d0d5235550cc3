"""The one value type that every stage passes around.

Detectors return it, two-stage mapping, temporal filling, blurring and the
pickle writers consume it. The research formats (ImageAI-style dicts, the
face pickle) are produced from it at the edges only.

Boxes are ``xyxy`` in pixel coordinates of the frame the detector was given
(float32, x2/y2 exclusive in the sense of ``x2 - x1`` = width). Labels are
indices into :data:`LABELS` so that every detector speaks the same
vocabulary whatever its training classes were.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

#: Canonical labels. Detectors map their own classes onto these.
LABELS: tuple[str, ...] = ("face", "plate", "car", "motorcycle", "bus", "truck")
FACE, PLATE, CAR, MOTORCYCLE, BUS, TRUCK = range(len(LABELS))
VEHICLE_IDS: tuple[int, ...] = (CAR, MOTORCYCLE, BUS, TRUCK)
LABEL_IDS: dict[str, int] = {name: i for i, name in enumerate(LABELS)}


def label_id(name: str) -> int:
    """Canonical id of a label name, in any case, with spaces, hyphens or
    underscores ('License Plate', 'licence-plate', 'number_plate', 'motorbike')."""
    aliases = {"license_plate": "plate", "licence_plate": "plate", "number_plate": "plate",
               "numberplate": "plate", "licenseplate": "plate", "lp": "plate",
               "motorbike": "motorcycle", "vehicle": "car"}
    key = "_".join(name.lower().replace("-", " ").replace("_", " ").split())
    key = aliases.get(key, key)
    if key not in LABEL_IDS:
        raise ValueError(f"unknown label {name!r}; known: {', '.join(LABELS)}")
    return LABEL_IDS[key]


@dataclass
class Detections:
    """Boxes of one image or frame.

    ``xyxy`` (n, 4) float32, ``confidence`` (n,) float32 in 0..1,
    ``class_id`` (n,) int64 into :data:`LABELS`. ``filled`` (n,) bool marks
    boxes added by temporal filling rather than seen by a detector.
    """

    xyxy: np.ndarray
    confidence: np.ndarray
    class_id: np.ndarray
    filled: np.ndarray = field(default=None)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        self.xyxy = np.asarray(self.xyxy, dtype=np.float32).reshape(-1, 4)
        n = len(self.xyxy)
        self.confidence = np.asarray(self.confidence, dtype=np.float32).reshape(-1)
        self.class_id = np.asarray(self.class_id, dtype=np.int64).reshape(-1)
        if self.filled is None:
            self.filled = np.zeros(n, dtype=bool)
        self.filled = np.asarray(self.filled, dtype=bool).reshape(-1)
        for name in ("confidence", "class_id", "filled"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"Detections.{name} has {len(getattr(self, name))} rows, xyxy has {n}")

    # -- construction -------------------------------------------------
    @classmethod
    def empty(cls) -> Detections:
        return cls(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64))

    @classmethod
    def merge(cls, parts: list[Detections]) -> Detections:
        parts = [p for p in parts if len(p)]
        if not parts:
            return cls.empty()
        return cls(
            np.concatenate([p.xyxy for p in parts]),
            np.concatenate([p.confidence for p in parts]),
            np.concatenate([p.class_id for p in parts]),
            np.concatenate([p.filled for p in parts]),
        )

    @classmethod
    def from_dicts(cls, rows: list[dict]) -> Detections:
        """From ``{"xyxy", "confidence", "label", "filled"?}`` dicts (our JSON)."""
        if not rows:
            return cls.empty()
        return cls(
            [r["xyxy"] for r in rows],
            [r["confidence"] for r in rows],
            [label_id(r["label"]) for r in rows],
            [bool(r.get("filled", False)) for r in rows],
        )

    # -- access -------------------------------------------------------
    def __len__(self) -> int:
        return len(self.xyxy)

    def __getitem__(self, index) -> Detections:
        """Boolean mask, integer array or slice indexing, always a Detections."""
        if isinstance(index, (int, np.integer)):
            index = [int(index)]
        return Detections(self.xyxy[index], self.confidence[index], self.class_id[index],
                          self.filled[index])

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Detections):
            return NotImplemented
        return (len(self) == len(other)
                and np.array_equal(self.xyxy, other.xyxy)
                and np.array_equal(self.confidence, other.confidence)
                and np.array_equal(self.class_id, other.class_id)
                and np.array_equal(self.filled, other.filled))

    @property
    def labels(self) -> list[str]:
        return [LABELS[i] for i in self.class_id]

    def with_class(self, *class_ids: int) -> Detections:
        return self[np.isin(self.class_id, class_ids)]

    def above(self, thresh: float) -> Detections:
        return self[self.confidence >= thresh]

    # -- geometry -----------------------------------------------------
    def scaled(self, sx: float, sy: float | None = None) -> Detections:
        sy = sx if sy is None else sy
        xyxy = self.xyxy * np.array([sx, sy, sx, sy], np.float32)
        return Detections(xyxy, self.confidence, self.class_id, self.filled)

    def shifted(self, dx: float, dy: float) -> Detections:
        xyxy = self.xyxy + np.array([dx, dy, dx, dy], np.float32)
        return Detections(xyxy, self.confidence, self.class_id, self.filled)

    def clipped(self, width: int, height: int) -> Detections:
        xyxy = self.xyxy.copy()
        xyxy[:, [0, 2]] = xyxy[:, [0, 2]].clip(0, width)
        xyxy[:, [1, 3]] = xyxy[:, [1, 3]].clip(0, height)
        keep = (xyxy[:, 2] > xyxy[:, 0]) & (xyxy[:, 3] > xyxy[:, 1])
        return Detections(xyxy, self.confidence, self.class_id, self.filled)[keep]

    def unrotated(self, k: int, width: int, height: int) -> Detections:
        """Boxes found on ``np.rot90(frame, k)`` (the frame turned k quarter
        turns counter-clockwise) mapped back into ``frame``, which is
        ``width`` x ``height``: detectors see a rotated video upright, its
        boxes stay in the stored pixels that are blurred."""
        x1, y1, x2, y2 = self.xyxy.T
        k %= 4
        if k == 0:
            return self
        if k == 1:
            xyxy = np.stack([width - y2, x1, width - y1, x2], axis=1)
        elif k == 2:
            xyxy = np.stack([width - x2, height - y2, width - x1, height - y1], axis=1)
        else:
            xyxy = np.stack([y1, height - x2, y2, height - x1], axis=1)
        return Detections(xyxy, self.confidence, self.class_id, self.filled)

    def dilated(self, scale: float) -> Detections:
        """Boxes grown about their centres by ``scale`` (the ``--mask-scale``)."""
        c = (self.xyxy[:, :2] + self.xyxy[:, 2:]) / 2
        half = (self.xyxy[:, 2:] - self.xyxy[:, :2]) / 2 * scale
        return Detections(np.concatenate([c - half, c + half], axis=1), self.confidence,
                          self.class_id, self.filled)

    # -- edges: serialisation -------------------------------------------
    def to_dicts(self) -> list[dict]:
        """JSON-friendly rows; the exact inverse of :meth:`from_dicts` (values as
        :func:`f32` writes them: a worker's boxes reach the reassembly, and its
        records, as ``anonymize run`` writes them)."""
        return [
            {"label": LABELS[int(c)], "xyxy": [f32(v) for v in box],
             "confidence": f32(s), "filled": bool(f)}
            for box, s, c, f in zip(self.xyxy, self.confidence, self.class_id, self.filled,
                                    strict=True)
        ]

    def rounded(self) -> Detections:
        """Corners rounded to whole pixels (halves to even), as :meth:`to_imageai`
        stores them: what is measured against a research pickle must use the
        boxes the pickle holds."""
        return Detections(np.rint(self.xyxy), self.confidence, self.class_id, self.filled)

    def to_imageai(self) -> list[dict]:
        """Research ``det`` format: name, percentage_probability (0-100), box_points."""
        return [
            {"name": LABELS[int(c)], "percentage_probability": float(s) * 100.0,
             "box_points": [int(v) for v in box]}
            for box, s, c in zip(self.rounded().xyxy, self.confidence, self.class_id, strict=True)
        ]


def f32(value) -> float:
    """The shortest decimal that reads back to the same float32: boxes and scores
    written as JSON read back to the very values they were (rounded to 0.01 px
    and 1e-4, a re-render's boxes were not the run's)."""
    return float(np.format_float_positional(np.float32(value), unique=True, trim="-"))
