"""Box geometry on numpy arrays, without torch.

Evaluation matching, temporal filling and input checks use these on the
host; keeping them free of torch lets the command line refuse a bad input
in a fraction of a second (torch takes seconds to import).
"""

from __future__ import annotations

import numpy as np


def box_iou_np(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of (n,4) and (m,4) xyxy numpy boxes -> (n,m) float64.

    Host-side twin of :func:`box_iou` for evaluation matching and temporal
    filling: float64 so that IoU thresholds in evaluation are not decided by
    rounding; pairs with no area at all have IoU 0.
    """
    a = np.asarray(a, np.float64).reshape(-1, 4)
    b = np.asarray(b, np.float64).reshape(-1, 4)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = np.clip(rb - lt, 0, None)
    inter = wh[..., 0] * wh[..., 1]
    area_a = np.prod(np.clip(a[:, 2:] - a[:, :2], 0, None), axis=1)
    area_b = np.prod(np.clip(b[:, 2:] - b[:, :2], 0, None), axis=1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def letterbox_params(height: int, width: int, size: int, stride: int = 32,
                     pad_to_square: bool = True) -> tuple[float, int, int, int, int]:
    """Scale and padding that fit an image into ``size`` keeping its aspect.

    Returns (scale, new_w, new_h, pad_left, pad_top). With ``pad_to_square``
    the canvas is size×size (Ultralytics' fixed-shape letterbox); the image is
    centred on it.
    """
    scale = min(size / height, size / width)
    # at least one pixel: a strip (3x50000) would shrink to no row at all
    new_w, new_h = max(1, int(round(width * scale))), max(1, int(round(height * scale)))
    if pad_to_square:
        canvas_w = canvas_h = size
    else:
        canvas_w = int(np.ceil(new_w / stride) * stride)
        canvas_h = int(np.ceil(new_h / stride) * stride)
    pad_left = (canvas_w - new_w) // 2
    pad_top = (canvas_h - new_h) // 2
    return scale, new_w, new_h, pad_left, pad_top
