"""Box operations shared by every detector on torch tensors: IoU, NMS.

Pure torch (no torchvision): PyPI's torchvision does not load next to every
torch build, and these few operations are all the detectors need. The NMS
works on any device, so CUDA workers keep boxes on the GPU until the end.
"""

from __future__ import annotations

import torch

from .boxes import box_iou_np, letterbox_params  # noqa: F401  (numpy twins, re-exported)


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pairwise IoU of (n,4) and (m,4) xyxy boxes -> (n,m), in float32 at least:
    in fp16 (the GPU's precision) the area of a box larger than about 256×256 px
    (1920×1080 is 2 M) is past its largest value, 65504, and the IoU NaN."""
    a, b = _at_least_f32(a), _at_least_f32(b)
    area_a = (a[:, 2] - a[:, 0]).clamp(min=0) * (a[:, 3] - a[:, 1]).clamp(min=0)
    area_b = (b[:, 2] - b[:, 0]).clamp(min=0) * (b[:, 3] - b[:, 1]).clamp(min=0)
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    return inter / (area_a[:, None] + area_b[None, :] - inter).clamp(min=1e-9)


def _at_least_f32(t: torch.Tensor) -> torch.Tensor:
    return t if t.dtype in (torch.float32, torch.float64) else t.float()


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_thresh: float) -> torch.Tensor:
    """Indices of the boxes kept by greedy NMS, highest score first, computed on
    the boxes' own device (no copy to the host on CUDA).

    Matrix form of the greedy rule (Cluster-NMS): box j survives iff no
    surviving box ranked above it overlaps it by more than ``iou_thresh``.
    Starting from "all survive" and re-applying the rule fixes at least one
    more box per round in rank order, so it reaches the greedy result in at
    most n rounds, in practice a handful (the length of suppression chains).
    """
    if boxes.numel() == 0:
        return torch.zeros(0, dtype=torch.long, device=boxes.device)
    order = torch.argsort(scores, descending=True, stable=True)
    ranked = boxes[order].float()
    over = (box_iou(ranked, ranked) > iou_thresh).triu(diagonal=1)
    keep = torch.ones(len(order), dtype=torch.bool, device=boxes.device)
    for _ in range(len(order)):
        survivors = ~(over & keep[:, None]).any(dim=0)
        if torch.equal(survivors, keep):
            break
        keep = survivors
    return order[keep]


def batched_nms(boxes: torch.Tensor, scores: torch.Tensor, classes: torch.Tensor,
                iou_thresh: float) -> torch.Tensor:
    """NMS within each class (offset trick: boxes of different classes never overlap).

    The offset boxes are float32 at least: fp16 boxes (a detector on a GPU) of class
    30 at 640 px would sit near 19 000, where fp16 has a step of 16 px, so boxes
    a few pixels apart would become one and suppress each other (or, past
    65504, become inf)."""
    if boxes.numel() == 0:
        return torch.zeros(0, dtype=torch.long, device=boxes.device)
    boxes = _at_least_f32(boxes)
    offset = classes.to(boxes.dtype)[:, None] * (boxes.max() + 1)
    return nms(boxes + offset, scores, iou_thresh)
