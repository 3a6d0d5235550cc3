"""Looking again only where the picture changed (``--reference-every``).

On a fixed camera most of a frame holds the same pixels from one frame to
the next, and a region whose pixels have not changed holds the same faces
and plates. So frames are taken in groups of ``reference_every``: the first
frame of a group (the reference) is detected whole; on each later frame the
face and one-stage plate networks, which are most of the work
(docs/benchmarks.md, "Without bf16 the networks are the whole story"), look
only at the regions that changed, on windows of the input the whole frame
would get (``detect_windows``: the same pixels on the same network grid),
and the faces and plates of the frame before are kept where nothing
changed. The vehicle network still sees the whole frame, and every vehicle
crop is searched for plates, as on a reference frame, unless not one block
changed: then the frame keeps all the detections of the frame before.

Changed since when: each 16×16 block is compared with the picture the
networks last examined there (the reference's, or a later frame's where a
region covered the block), so a car crossing the scene is searched where
it is now, not over all the road it crossed since the reference, and slow
drift (a face turning, light changing) still counts once it adds up. A
block changed when its mean absolute grey difference exceeds
:data:`THRESHOLD` grey levels (compression noise of a still picture stays
below it); it is grown by one block (:func:`changed_blocks`). A region
(:func:`regions`) is the changed blocks plus every box that touches them
(a face whose mouth moves is searched whole, not by its mouth;
:func:`examined_blocks`), grown by :data:`MARGIN_BLOCKS` blocks of
context; when regions would cover more than :data:`WHOLE_ABOVE` of the
frame (a moving camera, a cut) the frame is detected whole.

The frames of a group are detected one after another on one lane (each
needs the boxes of the frame before); the groups in flight keep the lanes
busy. Groups start every ``reference_every`` frames from the first frame a
segment decodes, so the boxes of a segment do not depend on what ran
before it: a worker and ``anonymize run`` give the same boxes
(pipeline/segment_job.py).
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from models.detections import FACE, PLATE, Detections
from models.tiling import absorb, join_overlapping

BLOCK = 16
#: mean absolute grey difference (levels) above which a block counts as changed
THRESHOLD = 6.0
#: blocks of context added around each region
MARGIN_BLOCKS = 2
#: regions covering more than this share of the frame: the frame is detected whole
WHOLE_ABOVE = 0.5
#: a window keeps boxes scored at this share of the threshold a whole frame uses:
#: a window lacks some of the context the whole frame gives, and a face or plate
#: scored just over the threshold there can fall just under it in a window
#: (docs/benchmarks.md, "Looking only where the picture changed")
WINDOW_SCORE = 0.7

Rect = tuple[int, int, int, int]  # x0, y0, x1, y1 in frame pixels


def grey(frame: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(np.ascontiguousarray(frame), cv2.COLOR_RGB2GRAY)


def changed_blocks(frame_grey: np.ndarray, ref_grey: np.ndarray,
                   threshold: float = THRESHOLD) -> np.ndarray:
    """Block grid (ceil(H/BLOCK) × ceil(W/BLOCK), bool) of the blocks whose mean
    |grey - ref| exceeds ``threshold``, grown by one block (an object straddling a
    block edge changes both blocks, perhaps each by little). Edge blocks that
    the frame only partly fills are averaged over the part it fills."""
    diff = cv2.absdiff(frame_grey, ref_grey).astype(np.float32)
    h, w = diff.shape
    hb, wb = -(-h // BLOCK), -(-w // BLOCK)
    sums = np.zeros((hb * BLOCK, wb * BLOCK), np.float32)
    sums[:h, :w] = diff
    counts = np.zeros_like(sums)
    counts[:h, :w] = 1
    total = sums.reshape(hb, BLOCK, wb, BLOCK).sum(axis=(1, 3))
    area = counts.reshape(hb, BLOCK, wb, BLOCK).sum(axis=(1, 3))
    blocks = (total > threshold * area).astype(np.uint8)
    return cv2.dilate(blocks, np.ones((3, 3), np.uint8)) > 0


def _box_blocks(xyxy: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Block index ranges (bx0, by0, bx1, by1) each box covers, clipped to the grid."""
    hb, wb = shape
    lo = np.floor(xyxy[:, :2] / BLOCK).astype(int)
    hi = np.ceil(xyxy[:, 2:] / BLOCK).astype(int)
    lo = np.clip(lo, 0, [wb, hb])
    hi = np.clip(hi, 0, [wb, hb])
    return np.concatenate([lo, hi], axis=1)


def touching(boxes: Detections, changed: np.ndarray) -> np.ndarray:
    """Which boxes overlap a changed block (bool per box)."""
    out = np.zeros(len(boxes), bool)
    for i, (x0, y0, x1, y1) in enumerate(_box_blocks(boxes.xyxy, changed.shape)):
        out[i] = bool(changed[y0:max(y1, y0 + 1), x0:max(x1, x0 + 1)].any())
    return out


def examined_blocks(changed: np.ndarray, boxes: Detections) -> np.ndarray:
    """The blocks the networks must look at again: the changed ones and those of
    every box touching them (the object is searched whole)."""
    mask = changed.copy()
    for bx0, by0, bx1, by1 in _box_blocks(boxes[touching(boxes, changed)].xyxy, changed.shape):
        mask[by0:max(by1, by0 + 1), bx0:max(bx1, bx0 + 1)] = True
    return mask


def regions(examined: np.ndarray, width: int, height: int) -> list[Rect] | None:
    """Rectangles (frame pixels) holding the ``examined`` blocks with
    :data:`MARGIN_BLOCKS` of context, overlapping ones joined. ``[]`` when no
    block is examined; None when they cover more than :data:`WHOLE_ABOVE` of
    the frame (detect it whole)."""
    if not examined.any():
        return []
    k = 2 * MARGIN_BLOCKS + 1
    mask = cv2.dilate(examined.astype(np.uint8), np.ones((k, k), np.uint8))
    n, _, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    rects = join_overlapping([(x * BLOCK, y * BLOCK, min(width, (x + w) * BLOCK),
                               min(height, (y + h) * BLOCK)) for x, y, w, h, _ in stats[1:n]])
    if sum((x1 - x0) * (y1 - y0) for x0, y0, x1, y1 in rects) > WHOLE_ABOVE * width * height:
        return None
    return rects


def join_kept(found: Detections, kept: Detections, iou: float) -> Detections:
    """A frame's new detections joined by the faces and plates kept where nothing
    changed: one label at a time, a kept box overlapping a new one (IoU ≥
    ``iou``) grows it (:func:`models.tiling.absorb`), others are added; other
    labels (vehicles) are the new detections'."""
    parts = [found[~np.isin(found.class_id, (FACE, PLATE))]]
    for label in (FACE, PLATE):
        parts.append(absorb(found.with_class(label), kept.with_class(label), iou))
    return Detections.merge(parts)


def _pixels(blocks: np.ndarray, height: int, width: int) -> np.ndarray:
    return np.repeat(np.repeat(blocks, BLOCK, axis=0), BLOCK, axis=1)[:height, :width]


def detect_group(stack, frames: Sequence[np.ndarray], vehicles: bool = True
                 ) -> list[Detections]:
    """Detections of a group of frames: ``frames[0]`` (the reference) whole, each
    later one where it changed (see the module doc), the whole group on one
    of the stack's lanes.

    ``stack``: a :class:`pipeline.detect.DetectionStack` (``detect``,
    ``detect_regions``, ``on_lanes``, ``settings``)."""
    return stack.on_lanes(lambda group: _detect_group(stack, group, vehicles), [frames])[0]


def _detect_group(stack, frames: Sequence[np.ndarray], vehicles: bool) -> list[Detections]:
    out = [stack.detect([frames[0]], vehicles)[0]]
    seen = grey(frames[0])  # the picture as the networks last examined it, block by block
    nms = stack.settings.nms_thresh
    for frame in frames[1:]:
        h, w = frame.shape[:2]
        now = grey(frame)
        before = out[-1].with_class(FACE, PLATE)
        rects = None  # a frame of another size than the one before: nothing to compare
        if now.shape == seen.shape:
            changed = changed_blocks(now, seen)
            examined = examined_blocks(changed, before)
            rects = regions(examined, w, h)
        if rects is None:
            out.append(stack.detect([frame], vehicles)[0])
            seen = now
            continue
        if not rects:
            # not one block changed: the frame before's detections stand whole, the
            # vehicles and the plates of their crops included
            out.append(out[-1][:])
            continue
        found = stack.detect_regions(frame, rects, vehicles)
        out.append(join_kept(found, before[~touching(before, changed)], nms))
        mask = _pixels(examined, h, w)
        seen = seen.copy()
        seen[mask] = now[mask]
    return out
