"""RetinaFace face detector: frames in, face boxes out.

The network is models/retinaface_net.py and its weights come through
models/retinaface_weights.py; this module resizes and batches frames, runs
the network (or its exported graph) and decodes its outputs into boxes.

Pre-processing matches training: BGR channel order, per-channel mean
(104, 117, 123) subtracted, no scaling to 0..1. Priors and box decoding
(variances 0.1 / 0.2) follow biubug6's ``PriorBox`` and ``decode``.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .base import Detector, Frames, side_for_min_object
from .detections import FACE, Detections
from .fetch import load_checkpoint
from .ops import nms
from .resize import resize_frames
from .retinaface_net import MEAN_BGR, Config, RetinaFace
from .retinaface_weights import model_from_checkpoint
from .runtime import GraphSpec, accelerate

# -- priors and decoding ---------------------------------------------------

def prior_boxes(height: int, width: int, cfg: Config,
                device: torch.device | str = "cpu") -> torch.Tensor:
    """Anchors (P, 4) as normalised (cx, cy, w, h), in the heads' output order:
    level by level, row-major over the feature map, anchor sizes innermost."""
    parts = []
    for step, sizes in zip(cfg.steps, cfg.min_sizes, strict=True):
        fh, fw = math.ceil(height / step), math.ceil(width / step)
        ys, xs = torch.meshgrid(torch.arange(fh, dtype=torch.float32, device=device),
                                torch.arange(fw, dtype=torch.float32, device=device),
                                indexing="ij")
        cx = ((xs + 0.5) * step / width)[..., None].expand(fh, fw, len(sizes))
        cy = ((ys + 0.5) * step / height)[..., None].expand(fh, fw, len(sizes))
        s = torch.tensor(sizes, dtype=torch.float32, device=device)
        sw = (s / width).expand(fh, fw, len(sizes))
        sh = (s / height).expand(fh, fw, len(sizes))
        parts.append(torch.stack([cx, cy, sw, sh], dim=-1).reshape(-1, 4))
    return torch.cat(parts)


def decode_boxes(loc: torch.Tensor, priors: torch.Tensor,
                 variance: tuple[float, float] = (0.1, 0.2)) -> torch.Tensor:
    """Regression offsets (..., P, 4) -> normalised xyxy boxes (..., P, 4)."""
    centre = priors[..., :2] + loc[..., :2] * variance[0] * priors[..., 2:]
    size = priors[..., 2:] * torch.exp(loc[..., 2:] * variance[1])
    return torch.cat([centre - size / 2, centre + size / 2], dim=-1)


# -- detector -----------------------------------------------------------------

def _rgb_input(model: RetinaFace) -> RetinaFace:
    """A copy of ``model`` that takes RGB instead of BGR input.

    Reversing the input channels of the first convolution is exact (zero
    padding is the same in either order) and saves a copy of every frame.
    """
    model = copy.deepcopy(model)
    stem = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    with torch.no_grad():
        stem.weight.copy_(stem.weight.flip(1))
    return model


class _Boxes(nn.Module):
    """The network as the detector calls it: (loc, conf); the landmark head is
    not needed for blurring, so the exported graph leaves it out."""

    def __init__(self, model: RetinaFace) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        loc, conf, _ = self.model(x, landmarks=False)
        return loc, conf


#: what models/runtime.py exports: any input size, so no stride constraint
GRAPH = GraphSpec("retinaface", example=(2, 3, 448, 768), outputs=("loc", "conf"))


class RetinaFaceDetector(Detector):
    """Faces in frames of any size, batched per frame size.

    Each frame is resized so that a face of ``min_face`` frame pixels measures
    :attr:`smallest_face` pixels at the network input, or else so that its
    long side is ``face_size`` pixels (upscaling small images matters most for
    recall on small faces),
    run through the network in batches of equal-sized frames, decoded, then
    thresholded and NMS-filtered per frame. Boxes come back in the
    original frame's pixels with class ``face``.
    """

    name = "retinaface"
    labels = frozenset({FACE})
    #: the smallest anchor of the MobileNet0.25 / ResNet-50 configurations, px
    smallest_face = 16

    def __init__(self, model: RetinaFace, device="cpu", half: bool = True, *,
                 face_size: int | None = 1280, min_face: float | None = None,
                 thresh: float = 0.5, nms_thresh: float = 0.4,
                 top_k: int = 5000, max_batch: int = 16) -> None:
        super().__init__(device, half)
        # NHWC convolutions are markedly faster in torch on CPU (oneDNN); CUDA keeps the default
        cpu_format = torch.channels_last if self.device.type == "cpu" else torch.contiguous_format
        self.model = self.prepare(_rgb_input(model)).to(memory_format=cpu_format)
        #: what the detector calls: the torch module, or a fast graph of it (build())
        self.net = _Boxes(self.model)
        self.cfg = model.cfg
        #: with ``min_face`` the scale follows the frame size, not a fixed long side
        self.min_face = float(min_face) if min_face else None
        self.face_size = None if self.min_face else (int(face_size) if face_size else None)
        self.thresh = float(thresh)
        self.nms_thresh = float(nms_thresh)
        self.top_k = int(top_k)
        self.max_batch = max(1, int(max_batch))
        # RGB order: the stem convolution was given RGB-ordered input channels
        self.mean = torch.tensor(MEAN_BGR[::-1], device=self.device).view(1, 3, 1, 1)
        self._priors: dict[tuple[int, int], torch.Tensor] = {}

    @property
    def memory_format(self) -> torch.memory_format:
        """channels-last input for torch on CPU; exported graphs and CUDA take NCHW."""
        if self.device.type == "cpu" and isinstance(self.net, nn.Module):
            return torch.channels_last
        return torch.contiguous_format

    def input_size(self, height: int, width: int, size: int | None = None) -> tuple[int, int]:
        """Network input (height, width) for a frame: long side -> ``size`` (default:
        what ``min_face`` needs, else ``face_size``)."""
        if size is None and self.min_face:
            size = side_for_min_object(height, width, self.min_face, self.smallest_face)
        size = self.face_size if size is None else int(size)
        if not size:
            return height, width
        scale = size / max(height, width)
        return max(1, round(height * scale)), max(1, round(width * scale))

    def priors(self, height: int, width: int) -> torch.Tensor:
        key = (height, width)
        if key not in self._priors:
            self._priors[key] = prior_boxes(height, width, self.cfg, self.device)
        return self._priors[key]

    def _batches(self, frames: Frames) -> Iterator[tuple[list[int], torch.Tensor]]:
        """(indices, N×H×W×3 uint8 tensor on device) per run of equal-sized frames."""
        if isinstance(frames, (np.ndarray, torch.Tensor)) and frames.ndim == 4:
            whole = torch.as_tensor(frames).to(self.device)
            groups = {tuple(whole.shape[1:]): (list(range(len(whole))), whole)}
        else:
            from .base import frames_to_tensor

            tensors = frames_to_tensor(frames, self.device)
            by_shape: dict[tuple, list[int]] = {}
            for i, t in enumerate(tensors):
                by_shape.setdefault(tuple(t.shape), []).append(i)
            groups = {s: (idx, torch.stack([tensors[i] for i in idx])) for s, idx in by_shape.items()}
        for shape, (idx, batch) in groups.items():
            if len(shape) != 3 or shape[2] != 3 or batch.dtype != torch.uint8:
                raise ValueError(f"frames must be H×W×3 uint8 RGB, got {shape} {batch.dtype}")
            for start in range(0, len(idx), self.max_batch):
                yield idx[start:start + self.max_batch], batch[start:start + self.max_batch]

    def preprocess(self, batch: torch.Tensor, size: int | None = None) -> torch.Tensor:
        """N×H×W×3 uint8 RGB -> N×3×h×w float minus the training mean, resized.

        Stays RGB (see :func:`_rgb_input`); the uint8 -> float conversion
        and the mean subtraction are one pass when no resize is needed.
        """
        _, h, w, _ = batch.shape
        nh, nw = self.input_size(h, w, size)
        x = resize_frames(batch, nh, nw)
        return (x - self.mean).to(self.dtype).contiguous(memory_format=self.memory_format)

    def detect(self, frames: Frames, thresh: float | None = None,
               size: int | None = None) -> list[Detections]:
        """``size``: long side of the network input for this call (default ``face_size``)."""
        thresh = self.thresh if thresh is None else float(thresh)
        results: dict[int, Detections] = {}
        for idx, batch in self._batches(frames):
            for i, det in zip(idx, self._detect_batch(batch, thresh, size), strict=True):
                results[i] = det
        return [results[i] for i in range(len(results))]

    @torch.inference_mode()
    def _detect_batch(self, batch: torch.Tensor, thresh: float,
                      size: int | None = None) -> list[Detections]:
        _, h, w, _ = batch.shape
        x = self.preprocess(batch, size)
        loc, conf = self.net(x)
        boxes = decode_boxes(loc.float(), self.priors(*x.shape[-2:]), self.cfg.variance)
        scores = conf[..., 1].float()
        if scores.shape[1] > self.top_k:  # biubug6's pre-NMS top-k
            scores, order = scores.topk(self.top_k, dim=1)
            boxes = boxes.gather(1, order[..., None].expand(-1, -1, 4))
        keep = scores >= thresh
        counts = keep.sum(1).tolist()  # one device sync per batch
        scale = torch.tensor([w, h, w, h], dtype=torch.float32, device=boxes.device)
        sel_boxes = (boxes[keep] * scale).split(counts)
        sel_scores = scores[keep].split(counts)
        out = []
        for b, s in zip(sel_boxes, sel_scores, strict=True):
            k = nms(b, s, self.nms_thresh)
            b, s = b[k].cpu().numpy(), s[k].cpu().numpy()
            out.append(Detections(b, s, np.full(len(s), FACE)).clipped(w, h))
        return out


def build(checkpoint_path: str | Path, device="cpu", half: bool = True,
          **opts) -> RetinaFaceDetector:
    """Detector from a converted checkpoint (or a raw biubug6 ``.pth``).

    Options: ``min_face`` (smallest face to find in frame pixels; the frame is
    scaled so that it measures ``smallest_face`` = 16 px; the pipeline's
    ``--min-face``) or ``face_size`` (long side in pixels the frame is resized
    to; 0/None = native size; default 1280, used when ``min_face`` is not given), ``thresh`` (default score
    threshold, 0.5), ``nms_thresh`` (0.4), ``top_k`` (5000 candidates per
    frame before NMS), ``max_batch`` (frames per forward pass, 16), ``runtime``
    and ``threads`` (the network's backend and CPU threads, see models/runtime.py).
    """
    allowed = {"face_size", "min_face", "thresh", "nms_thresh", "top_k", "max_batch", "runtime", "threads"}
    unknown = set(opts) - allowed
    if unknown:
        raise TypeError(f"unknown RetinaFace options: {', '.join(sorted(unknown))}; "
                        f"known: {', '.join(sorted(allowed))}")
    ckpt = load_checkpoint(checkpoint_path)
    model = model_from_checkpoint(ckpt, str(checkpoint_path))
    backend, threads = opts.pop("runtime", None), opts.pop("threads", None)
    det = RetinaFaceDetector(model, device=device, half=half, **opts)
    det.net = accelerate(det.net, GRAPH, checkpoint_path, det.device, backend, threads, half)
    det.name = f"retinaface-{model.arch}"
    return det
