"""YOLOv3 (Darknet-53 backbone, three-scale FPN heads) as a torch module.

The research pipeline ran YOLOv3 through ImageAI / keras-yolo3: ``yolo.h5``
(COCO) found the vehicles and a custom-trained ``yolov3_custom.h5`` found
the plates. Users bring those files (or darknet ``.weights`` + ``.cfg``);
:mod:`models.darknet` and :mod:`models.keras_h5` turn them into one
checkpoint format, ``{"arch": "yolov3", "config", "names", "state_dict"}``
(:func:`make_checkpoint`, read back by :func:`model_from_checkpoint`), and
:func:`models.yolov3.build` runs it.

The architecture is described by a small config dict (stem width, residual
blocks per stage, classes, anchors) so the same code builds the full
62 M-parameter model and the tiny variants the tests write by hand. Every
convolution is listed in darknet order by :meth:`YoloV3.conv_layers`; both
weight readers fill the module through that list, which is why they agree.

Only the network and its checkpoint: class names are
:mod:`models.yolov3_names`, the detector around it is :mod:`models.yolov3`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .errors import one_line

#: COCO anchors of yolov3.cfg (w, h in input pixels), small to large
COCO_ANCHORS: list[list[int]] = [[10, 13], [16, 30], [33, 23], [30, 61], [62, 45], [59, 119],
                                 [116, 90], [156, 198], [373, 326]]

DEFAULT_CONFIG: dict = {
    "width": 32,                # stem channels; stage i has width * 2**(i+1)
    "blocks": [1, 2, 8, 8, 4],  # residual blocks per stage (Darknet-53)
    "num_classes": 80,
    "anchors": COCO_ANCHORS,
    "masks": [[6, 7, 8], [3, 4, 5], [0, 1, 2]],  # anchors per output, stride 32 first
    "input_size": 416,
    "bn_eps": 1e-5,
    "leaky": 0.1,
}

def check_input_size(size) -> int:
    """``size`` if YOLOv3 can take it (a positive multiple of 32: its stride), else
    ValueError; one rule for the config and for a size given per call (0 would
    otherwise fail inside torch's resize)."""
    if isinstance(size, bool) or not isinstance(size, int) or size < 32 or size % 32:
        raise ValueError(f"YOLOv3 input size must be a positive multiple of 32, got {size}")
    return size


def make_config(**overrides) -> dict:
    """A full config: :data:`DEFAULT_CONFIG` with ``overrides`` (plain types only)."""
    config = json.loads(json.dumps(DEFAULT_CONFIG))
    unknown = set(overrides) - set(config)
    if unknown:
        raise ValueError(f"unknown YOLOv3 config keys: {', '.join(sorted(unknown))}")
    config.update(json.loads(json.dumps(overrides)))
    check_input_size(config["input_size"])
    if len(config["blocks"]) != 5:
        raise ValueError("YOLOv3 needs 5 backbone stages (blocks must have 5 entries)")
    if sorted(i for m in config["masks"] for i in m) != list(range(len(config["anchors"]))):
        raise ValueError("YOLOv3 masks must use every anchor exactly once")
    if not all(isinstance(v, int) and v >= 1 for a in config["anchors"] for v in a):
        raise ValueError(f"YOLOv3 anchors are widths and heights in pixels, each 1 or more; "
                         f"got {config['anchors']}")
    return config


def stage_channels(config: dict) -> list[int]:
    return [config["width"] * 2 ** (i + 1) for i in range(5)]


def outputs_per_scale(config: dict) -> list[int]:
    return [len(m) * (5 + config["num_classes"]) for m in config["masks"]]


# -- the network ---------------------------------------------------------

class ConvBN(nn.Module):
    """Darknet ``[convolutional]`` with batch_normalize=1, leaky activation."""

    def __init__(self, cin: int, cout: int, k: int, stride: int = 1, eps: float = 1e-5,
                 slope: float = 0.1):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, stride, k // 2, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=eps)
        self.slope = slope

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.leaky_relu(self.bn(self.conv(x)), self.slope)


class Residual(nn.Module):
    def __init__(self, c: int, **kw):
        super().__init__()
        self.conv1 = ConvBN(c, c // 2, 1, **kw)
        self.conv2 = ConvBN(c // 2, c, 3, **kw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(self.conv1(x))


class Stage(nn.Module):
    def __init__(self, cin: int, cout: int, n: int, **kw):
        super().__init__()
        self.down = ConvBN(cin, cout, 3, 2, **kw)
        self.blocks = nn.Sequential(*[Residual(cout, **kw) for _ in range(n)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.down(x))


class Head(nn.Module):
    """Five alternating 1×1/3×3 convs (the branch point), a 3×3 and the linear output."""

    def __init__(self, cin: int, nf: int, nout: int, **kw):
        super().__init__()
        self.body = nn.Sequential(ConvBN(cin, nf, 1, **kw), ConvBN(nf, 2 * nf, 3, **kw),
                                  ConvBN(2 * nf, nf, 1, **kw), ConvBN(nf, 2 * nf, 3, **kw),
                                  ConvBN(2 * nf, nf, 1, **kw))
        self.out_conv = ConvBN(nf, 2 * nf, 3, **kw)
        self.pred = nn.Conv2d(2 * nf, nout, 1, bias=True)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.body(x)
        return x, self.pred(self.out_conv(x))


class YoloV3(nn.Module):
    """YOLOv3 returning the three raw output maps, stride 32 first."""

    def __init__(self, config: dict):
        super().__init__()
        self.config = make_config(**config)
        kw = {"eps": float(self.config["bn_eps"]), "slope": float(self.config["leaky"])}
        w = self.config["width"]
        c = stage_channels(self.config)
        nout = outputs_per_scale(self.config)
        self.stem = ConvBN(3, w, 3, **kw)
        cins = [w] + c[:-1]
        self.stages = nn.ModuleList(Stage(cins[i], c[i], n, **kw)
                                    for i, n in enumerate(self.config["blocks"]))
        self.head1 = Head(c[4], c[4] // 2, nout[0], **kw)
        self.lateral1 = ConvBN(c[4] // 2, c[4] // 4, 1, **kw)
        self.head2 = Head(c[3] + c[4] // 4, c[3] // 2, nout[1], **kw)
        self.lateral2 = ConvBN(c[3] // 2, c[3] // 4, 1, **kw)
        self.head3 = Head(c[2] + c[3] // 4, c[2] // 2, nout[2], **kw)
        anchors = torch.tensor(self.config["anchors"], dtype=torch.float32)
        self.register_buffer("anchors", anchors, persistent=False)

    def conv_layers(self) -> list[tuple[nn.Conv2d, nn.BatchNorm2d | None]]:
        """Every convolution with its batch norm, in darknet ``.cfg`` (and keras-yolo3
        creation) order: stem, stages, head1, out1, lateral1, head2, out2, lateral2, head3, out3."""
        blocks: list[ConvBN | nn.Conv2d] = [self.stem]
        for stage in self.stages:
            blocks.append(stage.down)
            for res in stage.blocks:
                blocks += [res.conv1, res.conv2]
        for head, lateral in ((self.head1, self.lateral1), (self.head2, self.lateral2),
                              (self.head3, None)):
            blocks += list(head.body) + [head.out_conv, head.pred]
            if lateral is not None:
                blocks.append(lateral)
        return [(b.conv, b.bn) if isinstance(b, ConvBN) else (b, None) for b in blocks]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)
        feats = []
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        c3, c4, c5 = feats[2:]
        b1, p1 = self.head1(c5)
        x = F.interpolate(self.lateral1(b1), scale_factor=2.0, mode="nearest")
        b2, p2 = self.head2(torch.cat([x, c4], 1))
        x = F.interpolate(self.lateral2(b2), scale_factor=2.0, mode="nearest")
        _, p3 = self.head3(torch.cat([x, c3], 1))
        return [p1, p2, p3]

    def decode(self, outputs: list[torch.Tensor], in_h: int, in_w: int) -> torch.Tensor:
        """Raw maps -> (N, M, 5 + classes): xyxy in input pixels, objectness, class probs.

        Darknet's yolo layer: centre = (sigmoid(t) + cell) × stride, size =
        exp(t) × anchor; objectness and classes through a sigmoid.
        """
        nc = self.config["num_classes"]
        rows = []
        for out, mask in zip(outputs, self.config["masks"], strict=True):
            n, _, h, w = out.shape
            a = len(mask)
            p = out.float().view(n, a, 5 + nc, h, w).permute(0, 1, 3, 4, 2)
            gy, gx = torch.meshgrid(torch.arange(h, device=out.device),
                                    torch.arange(w, device=out.device), indexing="ij")
            stride = torch.tensor([in_w / w, in_h / h], device=out.device)
            grid = torch.stack([gx, gy], -1).float()
            xy = (p[..., :2].sigmoid() + grid) * stride
            anchors = self.anchors[mask].to(out.device).view(1, a, 1, 1, 2)
            wh = p[..., 2:4].clamp(max=20).exp() * anchors
            boxes = torch.cat([xy - wh / 2, xy + wh / 2], -1)
            rows.append(torch.cat([boxes, p[..., 4:].sigmoid()], -1).reshape(n, -1, 5 + nc))
        return torch.cat(rows, 1)

# -- checkpoints -------------------------------------------------------------

def make_checkpoint(model: YoloV3, names: Sequence[str], source: dict | None = None) -> dict:
    """The converted checkpoint: plain types and tensors only (loads with weights_only)."""
    return {
        "arch": "yolov3",
        "config": json.loads(json.dumps(model.config)),
        "names": [str(n) for n in names],
        "state_dict": {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()},
        "source": dict(source or {}),
    }


def model_from_checkpoint(checkpoint: dict) -> YoloV3:
    from .fetch import WeightsError

    if not isinstance(checkpoint, dict) or checkpoint.get("arch") != "yolov3":
        raise WeightsError("not a YOLOv3 checkpoint (expected arch 'yolov3'); "
                           "convert darknet/Keras files with `anonymize convert-weights`")
    try:
        model = YoloV3(checkpoint["config"])
        model.load_state_dict(checkpoint["state_dict"], strict=True)
    except (KeyError, ValueError, RuntimeError) as exc:
        raise WeightsError(f"YOLOv3 checkpoint does not match its config: {one_line(exc)}"
                           ) from None
    return model

