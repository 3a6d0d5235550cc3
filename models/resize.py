"""Bilinear resizing of frame batches into network inputs, fast on CPU.

Every detector turns N×H×W×3 uint8 frames into an N×3×h×w float input.
Done naively in torch (``permute().float()`` then ``F.interpolate``) the
float interpolation reads a channels-last view and is slow on CPU: 16–24 ms
(quiet–busy, 2 cores) per 768×432 frame enlarged to 1152×648, a fifth of
what CenterFace itself costs there (docs/benchmarks.md, "Resizing frames
on CPU"). So on CPU:

* enlarging: OpenCV's ``INTER_LINEAR`` on each float plane, written
  straight into the N×3×h×w output (6–8 ms for the same frame). It
  samples like ``F.interpolate(bilinear, align_corners=False)``; the two
  agree within 0.02 of a grey level, so detections do not change.
  Detectors that round their input to whole grey levels (the YOLO
  letterbox) opt out: 0.1 % of the pixels round the other way, enough to
  move a plate scored at the threshold; they take the float kernel below;
* enlarging without OpenCV: the float ``F.interpolate`` on a contiguous
  NCHW copy (1.3–2× faster than on the channels-last view, exactly the
  same values);
* shrinking: the float ``F.interpolate`` on the channels-last view (an
  NCHW copy of the larger input costs more than it saves: 43 against 26 ms
  per 1080p frame shrunk to 960×540), or with
  ``fast_shrink`` torch's vectorised uint8 channels-last kernel, another
  3× faster and within one grey level (the vehicle detectors' choice);

and on other devices the float ``F.interpolate``, so frames never leave the
GPU. Frames keep their exact values when no resize is needed.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch
import torch.nn.functional as F


def resize_frames(batch: torch.Tensor, height: int, width: int, *, antialias: bool = True,
                  fast_shrink: bool = False, opencv_enlarge: bool = True) -> torch.Tensor:
    """N×H×W×3 uint8 -> N×3×height×width float32 in 0..255, bilinear, contiguous.

    ``antialias``: antialiased when shrinking (off for detectors trained on
    OpenCV's plain ``INTER_LINEAR`` shrink). ``fast_shrink``: an antialiased
    shrink on CPU may run in whole grey levels. ``opencv_enlarge``: enlarge
    on CPU with OpenCV; off, with torch's float kernel (see the module
    docstring for both).
    """
    h, w = batch.shape[1:3]
    x = batch.permute(0, 3, 1, 2)  # a view; NHWC memory = channels_last
    if (h, w) == (height, width):
        return x.float().contiguous()
    shrink = height < h or width < w
    antialias = antialias and shrink
    on_cpu = batch.device.type == "cpu"
    if on_cpu and not shrink and opencv_enlarge:
        return _enlarge_planes(batch, height, width)
    if on_cpu and antialias and fast_shrink:
        x = F.interpolate(x, size=(height, width), mode="bilinear", align_corners=False,
                          antialias=True)
        return x.float().contiguous()
    x = x.float()
    if on_cpu and not shrink:
        x = x.contiguous()  # enlarging, the float kernel is faster on NCHW than on NHWC
    x = F.interpolate(x, size=(height, width), mode="bilinear", align_corners=False,
                      antialias=antialias)
    return x.contiguous()


def _enlarge_planes(batch: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """CPU, enlarging in float: each colour plane resized by OpenCV into the output."""
    out = torch.empty((len(batch), 3, height, width), dtype=torch.float32)
    out_np = out.numpy()
    for i in range(len(batch)):
        planes = np.ascontiguousarray(batch[i].numpy().transpose(2, 0, 1), dtype=np.float32)
        for c in range(3):
            dst = out_np[i, c]
            got = cv2.resize(planes[c], (width, height), dst=dst, interpolation=cv2.INTER_LINEAR)
            if got is not dst and not np.shares_memory(got, dst):
                dst[...] = got
    return out
