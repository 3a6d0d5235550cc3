"""Overlapping tiles for frames too large to run in one pass.

A detector that must look at a frame larger than it can afford (memory,
time, or the input sizes it was trained on) cuts the frame into tiles that
overlap, runs each, and joins the results. Three rules make the join clean:

* as few tiles as cover the frame with neighbours overlapping by at least
  the given share of the largest tile, each only as large as that needs,
  spread evenly from edge to edge (:func:`axis_tiles`, :func:`tile_grid`);
* a box touching a tile edge that lies *inside* the frame is dropped: the
  object was cut by the tile, and the overlap shows it whole in a neighbour
  (:func:`inner_edge_mask`, :func:`keep_whole`). Objects larger than the
  overlap can be dropped from every tile, so callers add a whole-frame pass
  at a smaller scale for those;
* the survivors of all tiles are merged by class-wise NMS (:func:`merge`),
  highest score first; a whole-frame pass at another scale joins them by
  :func:`absorb`, which encloses rather than chooses.

Pure geometry over :class:`Detections`; the detector decides the tile size
and how to run the tiles.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from .boxes import box_iou_np
from .detections import Detections
from .ops import batched_nms

#: boxes within this many pixels of an inner tile edge count as cut by it
EDGE_MARGIN = 2.0


@dataclass(frozen=True)
class Tile:
    """One tile: origin and size in the pixels of the frame being tiled."""

    x0: int
    y0: int
    width: int
    height: int

    def crop(self, image: torch.Tensor) -> torch.Tensor:
        """The tile of a (..., H, W) tensor (channels-first images, batches too)."""
        return image[..., self.y0:self.y0 + self.height, self.x0:self.x0 + self.width]


def axis_tiles(length: int, max_tile: int, overlap: float, align: int = 1
               ) -> tuple[list[int], int]:
    """Origins and common length of the tiles covering ``length`` pixels along one axis.

    The fewest tiles of at most ``max_tile`` pixels whose neighbours overlap
    by at least ``overlap`` × ``max_tile`` pixels, each made as short as that
    allows (rounded up to a multiple of ``align``), origins spread evenly from
    0 to the far edge. Shrinking the tiles matters: 2160 px cut at 1920 would
    otherwise run as two nearly whole 1920 px copies of the frame instead of
    two 1280 px halves. One tile of ``length`` when it already fits.
    """
    if max_tile <= 0:
        raise ValueError(f"tile size must be positive, got {max_tile}")
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    if length <= max_tile:
        return [0], length
    margin = int(round(overlap * max_tile))
    n = math.ceil((length - margin) / (max_tile - margin))
    size = math.ceil((length + (n - 1) * margin) / n)
    size = min(max_tile, math.ceil(size / align) * align)
    return [round(i * (length - size) / (n - 1)) for i in range(n)], size


def tile_grid(height: int, width: int, max_tile: int, overlap: float,
              align: int = 1) -> list[Tile]:
    """Row-major tiles of at most ``max_tile``×``max_tile`` pixels covering a
    height×width frame (:func:`axis_tiles` along each axis). Every tile has the
    same size, so all of them fit in one batch."""
    ys, th = axis_tiles(height, max_tile, overlap, align)
    xs, tw = axis_tiles(width, max_tile, overlap, align)
    return [Tile(x0, y0, tw, th) for y0 in ys for x0 in xs]


def join_overlapping(rects) -> list[tuple[int, int, int, int]]:
    """Rectangles (x0, y0, x1, y1) with every overlapping pair replaced by the
    rectangle enclosing both, until none overlap."""
    out = [tuple(int(v) for v in r) for r in rects]
    joined = True
    while joined:
        joined = False
        for i in range(len(out)):
            for j in range(i + 1, len(out)):
                a, b = out[i], out[j]
                if a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]:
                    out[i] = (min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3]))
                    del out[j]
                    joined = True
                    break
            if joined:
                break
    return out


def windows(rects, scale: tuple[float, float], offset: tuple[int, int],
            canvas: tuple[int, int], align: int) -> list[Tile]:
    """Windows of a network input holding ``rects`` (x0, y0, x1, y1 in frame
    pixels) of a frame the input shows scaled by ``scale`` (sx, sy) and moved by
    ``offset`` (left, top) on a ``canvas`` (height, width).

    Each rectangle is mapped into the input and grown outward to multiples of
    ``align`` (the network's coarsest stride), so a window holds the very
    pixels the whole input has there, on the same grid: the network sees in
    it what it sees in the whole input, short of the context beyond the
    window. Windows are clipped to the canvas; overlapping ones are joined."""
    ch, cw = canvas
    out = []
    for x0, y0, x1, y1 in rects:
        ax0 = max(0, int(math.floor((x0 * scale[0] + offset[0]) / align)) * align)
        ay0 = max(0, int(math.floor((y0 * scale[1] + offset[1]) / align)) * align)
        ax1 = min(cw, int(math.ceil((x1 * scale[0] + offset[0]) / align)) * align)
        ay1 = min(ch, int(math.ceil((y1 * scale[1] + offset[1]) / align)) * align)
        if ax1 > ax0 and ay1 > ay0:
            out.append((ax0, ay0, ax1, ay1))
    return [Tile(x0, y0, x1 - x0, y1 - y0) for x0, y0, x1, y1 in join_overlapping(out)]


def inner_edge_mask(xyxy: np.ndarray, tile: Tile, height: int, width: int,
                    margin: float = EDGE_MARGIN) -> np.ndarray:
    """Which boxes (in tile pixels, unclipped) touch an edge of ``tile`` that lies
    inside the height×width frame. Edges on the frame border never count: nothing
    beyond them can show the object whole."""
    b = np.asarray(xyxy, np.float32).reshape(-1, 4)
    cut = np.zeros(len(b), bool)
    if tile.x0 > 0:
        cut |= b[:, 0] <= margin
    if tile.y0 > 0:
        cut |= b[:, 1] <= margin
    if tile.x0 + tile.width < width:
        cut |= b[:, 2] >= tile.width - margin
    if tile.y0 + tile.height < height:
        cut |= b[:, 3] >= tile.height - margin
    return cut


def keep_whole(det: Detections, tile: Tile, height: int, width: int,
               margin: float = EDGE_MARGIN) -> Detections:
    """A tile's detections without those cut by an inner edge, moved to frame pixels."""
    return det[~inner_edge_mask(det.xyxy, tile, height, width, margin)].shifted(tile.x0, tile.y0)


def merge(parts: list[Detections], iou: float) -> Detections:
    """Union of several detection sets of one frame (tiles and the whole frame,
    the parts of a :class:`models.union.UnionDetector`): concatenated, then NMS
    within each class, highest score first. Passes at other scales are joined
    by :func:`absorb` instead."""
    det = Detections.merge(parts)
    if len(det) == 0:
        return det
    keep = batched_nms(torch.from_numpy(det.xyxy), torch.from_numpy(det.confidence),
                       torch.from_numpy(det.class_id), iou)
    return det[keep.numpy()]


def absorb(base: Detections, extra: Detections, iou: float) -> Detections:
    """``base`` joined by the boxes of another pass over the same frame at another
    scale: a box of ``extra`` overlapping base boxes (IoU ≥ ``iou``, any class)
    grows each of them to enclose it (keeping the higher score); the others are
    added.

    Why not NMS as for tiles: two scales see the same face differently, and
    the better box is not the higher-scored one. Near its size limit a pass
    finds part of a large face (IoU 0.2-0.6 with the whole), so keeping either
    box alone can leave part of the face unblurred; the enclosing box covers
    everything both passes saw, with one box per face.
    """
    if not len(extra) or not len(base):
        return extra if not len(base) else base
    overlaps = box_iou_np(extra.xyxy, base.xyxy) >= iou
    xyxy, conf = base.xyxy.copy(), base.confidence.copy()
    for e in np.flatnonzero(overlaps.any(axis=1)):
        j = overlaps[e]
        xyxy[j, :2] = np.minimum(xyxy[j, :2], extra.xyxy[e, :2])
        xyxy[j, 2:] = np.maximum(xyxy[j, 2:], extra.xyxy[e, 2:])
        conf[j] = np.maximum(conf[j], extra.confidence[e])
    grown = Detections(xyxy, conf, base.class_id, base.filled)
    return Detections.merge([grown, extra[~overlaps.any(axis=1)]])
