"""Exclusion zones and forced regions: fixed areas a person decides about once.

No detector knows that the blurred "plate" at the bottom of every frame is
the camera car's own bonnet, or that a dash cam burns the driver's name into
its overlay. A zone says so, as a box or polygon in frame pixels, for every
frame or a range of frames (by index or by time):

* ``exclude``: never blurred. The zone is cut out of every region that
  overlaps it (its pixels keep the decoded frame's values).
* ``force``: always blurred, whatever was detected.

Zones apply at blur time, after temporal filling, so filling still sees
every detection and the records keep them. Where a forced region and an
exclusion zone overlap, the forced region wins: a missed blur leaks, an
extra one costs little (DESIGN.md, quality bar).

A pixel belongs to a zone when its centre lies inside the shape (even-odd
rule for polygons). Masks are rasterised once per zone, within the zone's
bounding box, and reused for every frame.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from models.detections import PLATE, Detections

KINDS = ("exclude", "force")


@dataclass
class Zone:
    """One zone as read from a file (see ``detections.schema.json``, ``$defs/zone``)."""

    kind: str
    polygon: np.ndarray  # (k, 2) float, pixels
    frames: tuple[int, int] | None = None  # first, last (both included)
    time_s: tuple[float, float] | None = None  # start, end (both included)
    note: str = ""
    is_box: bool = False

    @classmethod
    def from_dict(cls, d: dict) -> Zone:
        if "box" in d:
            x1, y1, x2, y2 = (float(v) for v in d["box"])
            poly = np.array([[x1, y1], [x2, y1], [x2, y2], [x1, y2]], np.float64)
        else:
            poly = np.array(d["polygon"], np.float64).reshape(-1, 2)
        frames = tuple(int(v) for v in d["frames"]) if "frames" in d else None
        times = tuple(float(v) for v in d["time_s"]) if "time_s" in d else None
        return cls(d["kind"], poly, frames, times, str(d.get("note", "")), "box" in d)

    def to_dict(self) -> dict:
        d: dict = {"kind": self.kind}
        if self.is_box:
            (x1, y1), (x2, y2) = self.polygon[0], self.polygon[2]
            d["box"] = [_num(x1), _num(y1), _num(x2), _num(y2)]
        else:
            d["polygon"] = [[_num(x), _num(y)] for x, y in self.polygon]
        if self.frames is not None:
            d["frames"] = list(self.frames)
        if self.time_s is not None:
            d["time_s"] = list(self.time_s)
        if self.note:
            d["note"] = self.note
        return d

    def bounds(self) -> tuple[float, float, float, float]:
        (x1, y1), (x2, y2) = self.polygon.min(axis=0), self.polygon.max(axis=0)
        return float(x1), float(y1), float(x2), float(y2)

    def active(self, index: int, time_s: float) -> bool:
        """Whether the zone applies to frame ``index`` shown at ``time_s``."""
        if self.frames is not None:
            return self.frames[0] <= index <= self.frames[1]
        if self.time_s is not None:
            return self.time_s[0] <= time_s <= self.time_s[1]
        return True


def _num(v: float) -> float | int:
    return int(v) if float(v).is_integer() else float(v)


def polygon_mask(polygon: np.ndarray, x0: int, y0: int, w: int, h: int) -> np.ndarray:
    """h×w bool mask of the pixels (x0.., y0..) whose centres lie inside ``polygon``
    (even-odd rule)."""
    xs = np.arange(x0, x0 + w, dtype=np.float64) + 0.5
    ys = (np.arange(y0, y0 + h, dtype=np.float64) + 0.5)[:, None]
    inside = np.zeros((h, w), bool)
    pts = np.asarray(polygon, np.float64)
    for (xi, yi), (xj, yj) in zip(pts, np.roll(pts, -1, axis=0), strict=True):
        if yi == yj:
            continue  # a horizontal edge never crosses a pixel row's centre line
        # only the rows the edge spans (a row more each side against rounding): over
        # every row, a traced polygon of 1000 points took 4 s a 1080p frame, per segment
        r0 = max(0, int(np.floor(min(yi, yj) - y0)) - 1)
        r1 = min(h, int(np.ceil(max(yi, yj) - y0)) + 1)
        if r1 <= r0:
            continue
        y = ys[r0:r1]
        crosses = (yi > y) != (yj > y)  # (rows, 1)
        x_at = xi + (y - yi) * (xj - xi) / (yj - yi)  # (rows, 1)
        inside[r0:r1] ^= crosses & (xs[None, :] < x_at)
    return inside


@dataclass
class RasterZone:
    """A zone's mask within the frame: the pixel box it touches and its mask there."""

    zone: Zone
    box: tuple[int, int, int, int]  # x1, y1, x2, y2 (x2/y2 exclusive), clipped to the frame
    mask: np.ndarray  # (y2-y1, x2-x1) bool


class ZoneSet:
    """The zones of a job, rasterised for one frame size, applied frame by frame."""

    def __init__(self, zones: list[Zone], width: int, height: int,
                 time_base: Fraction | None = None):
        self.zones = list(zones)
        self.time_base = Fraction(time_base) if time_base is not None else Fraction(0)
        self.raster: list[RasterZone] = []
        for z in self.zones:
            x1, y1, x2, y2 = z.bounds()
            bx1, by1 = max(0, int(np.floor(x1))), max(0, int(np.floor(y1)))
            bx2, by2 = min(width, int(np.ceil(x2))), min(height, int(np.ceil(y2)))
            if bx2 <= bx1 or by2 <= by1:
                mask = np.zeros((0, 0), bool)
            else:
                mask = polygon_mask(z.polygon, bx1, by1, bx2 - bx1, by2 - by1)
            self.raster.append(RasterZone(z, (bx1, by1, bx2, by2), mask))

    @classmethod
    def from_dicts(cls, rows: list[dict], width: int, height: int,
                   time_base: Fraction | None = None) -> ZoneSet:
        return cls([Zone.from_dict(r) for r in rows], width, height, time_base)

    def __bool__(self) -> bool:
        return bool(self.zones)

    def at(self, index: int, pts: int) -> list[RasterZone]:
        """The zones that apply to frame ``index`` (timestamp ``pts``)."""
        t = float(pts * self.time_base)
        return [r for r in self.raster if r.mask.size and r.zone.active(index, t)]

    def apply(self, out: np.ndarray, original: np.ndarray, index: int, pts: int,
              mode: str = "blur") -> np.ndarray:
        """``out`` (the frame with its regions anonymized) with exclusion zones put
        back to ``original`` and forced regions anonymized by ``mode``; in place."""
        from .blur import anonymize_frame  # torch: not for checking zones (`submit`)

        here = self.at(index, pts)
        for r in here:
            if r.zone.kind == "exclude":
                x1, y1, x2, y2 = r.box
                view = out[y1:y2, x1:x2]
                view[r.mask] = original[y1:y2, x1:x2][r.mask]
        for r in here:
            if r.zone.kind == "force":
                x1, y1, x2, y2 = r.box
                patch = np.ascontiguousarray(out[y1:y2, x1:x2])
                whole = Detections([[0, 0, x2 - x1, y2 - y1]], [1.0], [PLATE])
                hidden = anonymize_frame(patch, whole, mode, "box", 1.0)
                out[y1:y2, x1:x2][r.mask] = hidden[r.mask]
        return out

    def mask(self, index: int, pts: int, kind: str, width: int, height: int) -> np.ndarray:
        """Full-frame bool mask of the ``kind`` zones on one frame (tests, review)."""
        m = np.zeros((height, width), bool)
        for r in self.at(index, pts):
            if r.zone.kind == kind:
                x1, y1, x2, y2 = r.box
                m[y1:y2, x1:x2] |= r.mask
        return m
