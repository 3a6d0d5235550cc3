"""Temporal filling: blur what a detector saw just before and just after.

A detector that finds a face on frames t-k and t+j but misses it in between
leaks the face for those frames. Filling closes such gaps (k, j and the gap
at most ``fill_frames``) with boxes interpolated between the two sightings,
and holds the first and last sighting of an object for ``fill_frames``
frames before/after, so a face entering or leaving is covered too; a held
box grows along the object's motion (:func:`_held`).

The rule is local on purpose: the boxes of frame f depend only on the
detections of frames f-fill-1 .. f+fill+1. A segment processed with that
many context frames on each side therefore gets exactly the boxes the whole
video would give it, which is what lets distributed workers process
segments independently and still equal ``anonymize run``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np

from models.boxes import box_iou_np
from models.detections import FACE, PLATE, Detections

FILLED_LABELS = (FACE, PLATE)


def context_frames(fill_frames: int) -> int:
    """Detections needed on each side of a frame to fill it (see module doc)."""
    return fill_frames + 1 if fill_frames > 0 else 0


def _centres(xyxy: np.ndarray) -> np.ndarray:
    return (xyxy[:, :2] + xyxy[:, 2:]) / 2


def match_matrix(a: Detections, b: Detections, gap: int) -> np.ndarray:
    """Which boxes of ``a`` may be the same object as boxes of ``b`` ``gap`` frames later.

    Same label, and either overlapping (IoU >= 0.1) or with centres closer
    than the mean box diagonal times (1 + gap/4) — objects move; plates on
    passing cars can shift by their own width between frames. Sizes must
    agree within a factor 2.5 so a face never links to a far larger one.
    Returns a score matrix (higher = better match, 0 = no match).
    """
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)), np.float32)
    same = a.class_id[:, None] == b.class_id[None, :]
    iou = box_iou_np(a.xyxy, b.xyxy)
    diag_a = np.hypot(*(a.xyxy[:, 2:] - a.xyxy[:, :2]).T)
    diag_b = np.hypot(*(b.xyxy[:, 2:] - b.xyxy[:, :2]).T)
    mean_diag = (diag_a[:, None] + diag_b[None, :]) / 2
    dist = np.linalg.norm(_centres(a.xyxy)[:, None] - _centres(b.xyxy)[None, :], axis=2)
    near = dist <= mean_diag * (1.0 + gap / 4.0)
    ratio = np.maximum(diag_a[:, None], diag_b[None, :]) / np.maximum(
        np.minimum(diag_a[:, None], diag_b[None, :]), 1e-6)
    ok = same & ((iou >= 0.1) | near) & (ratio <= 2.5)
    score = np.where(ok, iou + 1.0 / (1.0 + dist / np.maximum(mean_diag, 1e-6)), 0.0)
    return score.astype(np.float32)


def _next_match(dets: Mapping[int, Detections], frame: int, row: int, fill: int,
                direction: int, memo: dict) -> tuple[int, int] | None:
    """Nearest frame (in ``direction``) within fill+1 frames holding a match for
    box ``row`` of ``frame``; returns (frame, box index) or None. ``memo``
    keeps the answers within one :func:`fill_segment` call, whose frames ask
    about the same sightings up to fill+1 times."""
    key = (frame, row, direction)
    if key in memo:
        return memo[key]
    memo[key] = None
    src = dets[frame][[row]]
    for step in range(1, fill + 2):
        other = frame + direction * step
        cand = dets.get(other)
        if cand is None or len(cand) == 0:
            continue
        score = match_matrix(src, cand, step)[0]
        if score.max() > 0:
            memo[key] = (other, int(score.argmax()))
            break
    return memo[key]


def _held(src: Mapping[int, Detections], seen: int, row: int, f: int, fill: int,
          memo: dict) -> Detections:
    """Box ``row`` of frame ``seen`` (a last sighting held forward to ``f``, or a
    first sighting held back to it), grown along the object's motion.

    A held box that stays put leaves a moving object as it moves on: a plate
    on a passing car shifts by about its own width per frame. So when the
    sighting before a last one (after a first one) lies within the window of
    ``f`` (``f - fill - 1 .. f + fill + 1``, which keeps the rule local), the
    box is also moved on at that speed for ``|f - seen|`` frames, and the
    held box encloses both places: the object is inside whether it went on
    or stopped. Without such a sighting the box is held where it was."""
    box = src[seen][[row]]
    direction = 1 if f > seen else -1  # forward: a last sighting; back: a first one
    before = _next_match(src, seen, row, fill, -direction, memo)
    if before is None or abs(f - before[0]) > fill + 1:
        return box
    other, col = before
    step = (box.xyxy[0] - src[other].xyxy[col]) / abs(seen - other)
    moved = box.xyxy[0] + step * abs(f - seen)
    grown = np.concatenate([np.minimum(box.xyxy[0, :2], moved[:2]),
                            np.maximum(box.xyxy[0, 2:], moved[2:])])
    return Detections([grown], box.confidence, box.class_id)


def fill_segment(dets: Mapping[int, Detections], frames: Iterable[int], fill: int
                 ) -> dict[int, Detections]:
    """Detected + filled boxes for every frame in ``frames``.

    ``dets`` maps frame index -> detections (faces/plates are filled, other
    labels pass through untouched) and must cover ``context_frames(fill)``
    frames on each side of ``frames`` wherever the video has them.
    """
    frames = list(frames)
    src = {f: d.with_class(*FILLED_LABELS) for f, d in dets.items()}
    memo: dict = {}
    out: dict[int, Detections] = {}
    for f in frames:
        own = dets.get(f, Detections.empty())
        if fill <= 0:
            out[f] = own
            continue
        added: list[Detections] = []
        # sightings before f: interpolate across f, or hold a last sighting
        for a in range(f - fill - 1, f):
            da = src.get(a)
            if da is None or len(da) == 0:
                continue
            for row in range(len(da)):
                nxt = _next_match(src, a, row, fill, +1, memo)
                if nxt is None:
                    if f - a <= fill:
                        added.append(_held(src, a, row, f, fill, memo))
                    continue
                b, col = nxt
                if b > f:
                    t = (f - a) / (b - a)
                    box = da.xyxy[row] * (1 - t) + src[b].xyxy[col] * t
                    conf = min(da.confidence[row], src[b].confidence[col])
                    added.append(Detections([box], [conf], [da.class_id[row]]))
        # sightings after f: hold a first sighting backwards
        for b in range(f + 1, f + fill + 1):
            db = src.get(b)
            if db is None or len(db) == 0:
                continue
            for row in range(len(db)):
                if _next_match(src, b, row, fill, -1, memo) is None:
                    added.append(_held(src, b, row, f, fill, memo))
        if added:
            extra = Detections.merge(added)
            extra.filled[:] = True
            out[f] = Detections.merge([own, extra])
        else:
            out[f] = own
    return out
