"""Make the found faces and plates unreadable, on the frames' own device.

Every region is dilated by ``mask_scale`` and then replaced. The strength
follows the box: ``blur`` shrinks the region to at most ``DETAIL`` pixels
along its long side and scales it back up smoothly, so a 400-px face keeps
exactly as little detail as a 20-px one; ``pixelate`` does the same with
hard blocks; ``solid`` paints the region black. ``ellipse`` touches only
the ellipse inscribed in a face's box, ``box`` the whole rectangle. Plates
are always anonymized as rectangles: an ellipse would leave the characters
in their corners readable.
Pixels outside the regions are never written.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from models.detections import FACE, PLATE, Detections

#: samples kept along a region's long side. With 8, dlib's HOG face detector
#: still found 18 of 106 blurred faces of real photos (a head-shaped blob
#: survives); with 4 none (tests/test_blur.py): what is left is a smooth
#: colour gradient, whatever the size of the face.
DETAIL = 4


def regions(dets: Detections, width: int, height: int, mask_scale: float,
            labels: tuple[int, ...] = (FACE, PLATE)) -> tuple[np.ndarray, np.ndarray]:
    """Integer pixel boxes (n,4) that will be anonymized (boxes of ``labels``,
    dilated, clipped, rounded outwards) and their class ids (n,)."""
    d = dets.with_class(*labels)
    if len(d) == 0:
        return np.zeros((0, 4), np.int64), np.zeros(0, np.int64)
    d = d.dilated(mask_scale).clipped(width, height)
    xyxy = d.xyxy
    out = np.stack([np.floor(xyxy[:, 0]), np.floor(xyxy[:, 1]),
                    np.ceil(xyxy[:, 2]), np.ceil(xyxy[:, 3])], axis=1).astype(np.int64)
    keep = (out[:, 2] > out[:, 0]) & (out[:, 3] > out[:, 1])
    return out[keep], d.class_id[keep]


def _ellipse_mask(h: int, w: int, device: torch.device) -> torch.Tensor:
    ys = (torch.arange(h, device=device, dtype=torch.float32) + 0.5) / h * 2 - 1
    xs = (torch.arange(w, device=device, dtype=torch.float32) + 0.5) / w * 2 - 1
    return (ys[:, None] ** 2 + xs[None, :] ** 2) <= 1.0


def _replacement(patch: torch.Tensor, mode: str) -> torch.Tensor:
    """patch: h×w×3 uint8 -> anonymized h×w×3 uint8."""
    h, w = patch.shape[:2]
    if mode == "solid":
        return torch.zeros_like(patch)
    scale = DETAIL / max(h, w)
    sh, sw = max(1, round(h * scale)), max(1, round(w * scale))
    x = patch.permute(2, 0, 1)[None].float()
    small = F.interpolate(x, size=(sh, sw), mode="area")
    if mode == "pixelate":
        big = F.interpolate(small, size=(h, w), mode="nearest")
    else:
        big = F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False)
    return big[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8)


def anonymize_frame(frame: torch.Tensor | np.ndarray, dets: Detections, mode: str = "blur",
                    shape: str = "ellipse", mask_scale: float = 1.3) -> torch.Tensor | np.ndarray:
    """Return the frame (H×W×3 uint8, numpy or torch, same type back) with every
    face/plate region anonymized. Works in place on a copy."""
    as_numpy = isinstance(frame, np.ndarray)
    img = torch.from_numpy(np.array(frame, copy=True)) if as_numpy else frame.clone()
    h, w = img.shape[:2]
    boxes, classes = regions(dets, w, h, mask_scale)
    for (x1, y1, x2, y2), cls in zip(boxes, classes, strict=True):
        patch = img[y1:y2, x1:x2]
        new = _replacement(patch, mode)
        if shape == "ellipse" and cls == FACE:
            mask = _ellipse_mask(y2 - y1, x2 - x1, img.device)[..., None]
            new = torch.where(mask, new, patch)
        img[y1:y2, x1:x2] = new
    return img.numpy() if as_numpy else img


def region_mask(dets: Detections, width: int, height: int, mask_scale: float,
                shape: str = "box", labels: tuple[int, ...] = (FACE, PLATE)) -> np.ndarray:
    """Boolean H×W mask of the pixels :func:`anonymize_frame` rewrites (tests,
    evaluation); evaluation also rasterises vehicle boxes the same way."""
    mask = np.zeros((height, width), bool)
    boxes, classes = regions(dets, width, height, mask_scale, labels)
    for (x1, y1, x2, y2), cls in zip(boxes, classes, strict=True):
        if shape == "ellipse" and cls == FACE:
            mask[y1:y2, x1:x2] |= _ellipse_mask(y2 - y1, x2 - x1, torch.device("cpu")).numpy()
        else:
            mask[y1:y2, x1:x2] = True
    return mask
