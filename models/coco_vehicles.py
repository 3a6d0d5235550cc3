"""What the COCO vehicle detectors share: class map, input stretching, batched selection.

The converted COCO detectors (CenterNet, NanoDet) both end in candidate
rows ``(x1, y1, x2, y2, score, coco_class)`` in their input's pixels, N×K×6
for a batch. Turning those into :class:`Detections` is the same for both:
keep the vehicle classes above the threshold, class-agnostic greedy NMS,
scale back to each frame. It runs on the rows' device for the whole batch
at once (one host transfer at the end), with exactly the arithmetic of
:func:`models.ops.nms`, so results do not depend on batching or device.
"""

from __future__ import annotations

import numpy as np
import torch

from .detections import BUS, CAR, MOTORCYCLE, TRUCK, Detections
from .resize import resize_frames

#: COCO-80 index -> canonical label id
COCO_VEHICLES: dict[int, int] = {2: CAR, 3: MOTORCYCLE, 5: BUS, 7: TRUCK}


def stretch(frame: torch.Tensor, height: int, width: int | None = None) -> torch.Tensor:
    """H×W×3 uint8 -> 1×3×height×width float32 in 0..255 (aspect not kept).

    Downscaling uses antialiasing (a 4K frame squeezed to 512 would
    otherwise alias badly), on CPU in whole grey levels (torch's vectorised
    uint8 kernel, 3× faster); upscaling is plain bilinear in float
    (:func:`models.resize.resize_frames`).
    """
    return resize_frames(frame[None], height, height if width is None else width,
                         fast_shrink=True)


def pairwise_iou(boxes: torch.Tensor) -> torch.Tensor:
    """IoU of every pair of boxes within each batch item: B×M×4 -> B×M×M.

    The same arithmetic as :func:`models.ops.box_iou`, batched.
    """
    area = (boxes[..., 2] - boxes[..., 0]).clamp(min=0) * (boxes[..., 3] - boxes[..., 1]).clamp(min=0)
    lt = torch.maximum(boxes[:, :, None, :2], boxes[:, None, :, :2])
    rb = torch.minimum(boxes[:, :, None, 2:], boxes[:, None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    return inter / (area[:, :, None] + area[:, None, :] - inter).clamp(min=1e-9)


def greedy_nms(boxes: torch.Tensor, valid: torch.Tensor, iou_thresh: float) -> torch.Tensor:
    """Greedy NMS of score-sorted boxes, every batch item at once: B×M bool kept.

    Box ``j`` is kept when it is valid and no kept box before it overlaps it
    by more than ``iou_thresh``. That rule has exactly one solution (the
    greedy one), and iterating it from "every valid box kept" reaches it:
    after ``t`` rounds the first ``t`` decisions are final. It stops at the
    fixed point, usually after a few rounds of one B×M×M tensor op each,
    instead of M sequential steps.
    """
    m = boxes.shape[1]
    if m == 0:
        return valid.clone()
    over = (pairwise_iou(boxes.float()) > iou_thresh).triu(diagonal=1)
    over &= valid[:, :, None] & valid[:, None, :]
    keep = valid.clone()
    for _ in range(m):
        suppressed = (over & keep[:, :, None]).any(dim=1)
        new = valid & ~suppressed
        if torch.equal(new, keep):
            break
        keep = new
    return keep


def select(rows: torch.Tensor, thresh: float, iou_thresh: float,
           classes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of the kept vehicles: (rows sorted by score, N×M×6; kept mask, N×M).

    ``classes`` are the COCO indices to keep. Rows below ``thresh`` or of
    other classes never suppress a vehicle. Ties keep the rows' order.
    """
    scores = rows[..., 4]
    valid = (scores >= thresh) & torch.isin(rows[..., 5].round().long(), classes)
    m = int(valid.sum(dim=1).max()) if rows.numel() else 0
    order = torch.argsort(torch.where(valid, scores, -torch.inf), dim=1, descending=True,
                          stable=True)[:, :m]
    rows = torch.gather(rows, 1, order[..., None].expand(-1, -1, rows.shape[-1]))
    valid = torch.gather(valid, 1, order)
    return rows, greedy_nms(rows[..., :4], valid, iou_thresh)


def to_detections(rows: torch.Tensor, keep: torch.Tensor, sizes: list[tuple[int, int]],
                  input_hw: tuple[int, int]) -> list[Detections]:
    """Kept rows (input pixels) -> one :class:`Detections` per frame of ``sizes`` (h, w)."""
    counts = keep.sum(dim=1).tolist()
    kept = rows[keep].float().cpu().numpy()
    labels = torch.full((max(COCO_VEHICLES) + 1,), -1, dtype=torch.long)
    for coco, label in COCO_VEHICLES.items():
        labels[coco] = label
    out, start = [], 0
    for (height, width), n in zip(sizes, counts, strict=True):
        part = kept[start:start + n]
        start += n
        if n == 0:
            out.append(Detections.empty())
            continue
        scale = np.array([width / input_hw[1], height / input_hw[0]] * 2, np.float32)
        cls = labels[torch.from_numpy(part[:, 5]).round().long()].numpy()
        out.append(Detections(part[:, :4] * scale, part[:, 4], cls).clipped(width, height))
    return out
