"""YOLOv3 (Darknet-53 backbone, three-scale FPN heads) as a torch module.

The research pipeline ran YOLOv3 through ImageAI / keras-yolo3: ``yolo.h5``
(COCO) found the vehicles and a custom-trained ``yolov3_custom.h5`` found
the plates. Users bring those files (or darknet ``.weights`` + ``.cfg``);
:mod:`models.darknet` and :mod:`models.keras_h5` turn them into one
checkpoint format, ``{"arch": "yolov3", "config", "names", "state_dict"}``,
and :func:`build` runs it.

The architecture is described by a small config dict (stem width, residual
blocks per stage, classes, anchors) so the same code builds the full
62 M-parameter model and the tiny variants the tests write by hand. Every
convolution is listed in darknet order by :meth:`YoloV3.conv_layers`; both
weight readers fill the module through that list, which is why they agree.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .base import Detector, Frames, frames_to_tensor
from .boxes import letterbox_params
from .detections import LABEL_IDS, Detections, label_id
from .ops import batched_nms

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

COCO_NAMES: list[str] = [
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog",
    "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella",
    "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite",
    "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange",
    "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant",
    "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors",
    "teddy bear", "hair drier", "toothbrush",
]

PLATE_NAMES: list[str] = ["plate"]

#: class-name spellings of plate datasets -> canonical label
_EXTRA_ALIASES = {"license-plate": "plate", "licence-plate": "plate", "license plate": "plate",
                  "licence plate": "plate", "licenseplate": "plate", "number_plate": "plate",
                  "number plate": "plate", "numberplate": "plate", "plates": "plate",
                  "number-plate": "plate", "car_plate": "plate", "faces": "face"}


def make_config(**overrides) -> dict:
    """A full config: :data:`DEFAULT_CONFIG` with ``overrides`` (plain types only)."""
    config = json.loads(json.dumps(DEFAULT_CONFIG))
    unknown = set(overrides) - set(config)
    if unknown:
        raise ValueError(f"unknown YOLOv3 config keys: {', '.join(sorted(unknown))}")
    config.update(json.loads(json.dumps(overrides)))
    if len(config["blocks"]) != 5:
        raise ValueError("YOLOv3 needs 5 backbone stages (blocks must have 5 entries)")
    if sorted(i for m in config["masks"] for i in m) != list(range(len(config["anchors"]))):
        raise ValueError("YOLOv3 masks must use every anchor exactly once")
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


# -- names and classes -----------------------------------------------------

def resolve_names(spec: str | Sequence[str] | None, num_classes: int) -> list[str]:
    """Class names from ``coco``/``plate``, a names file, an ImageAI
    ``detection_config.json`` (its ``labels``), a list, or the class count."""
    if spec is None:
        if num_classes == 80:
            names = COCO_NAMES
        elif num_classes == 1:
            names = PLATE_NAMES
        else:
            raise ValueError(f"the model has {num_classes} classes: pass --names FILE "
                             f"(one class name per line)")
    elif isinstance(spec, str) and spec.lower() == "coco":
        names = COCO_NAMES
    elif isinstance(spec, str) and spec.lower() == "plate":
        names = PLATE_NAMES
    elif isinstance(spec, str):
        path = Path(spec)
        if not path.is_file():
            raise FileNotFoundError(f"names file not found: {spec}")
        text = path.read_text(encoding="utf-8")
        if path.suffix.lower() == ".json":
            names = list(json.loads(text)["labels"])
        else:
            names = [line.strip() for line in text.splitlines() if line.strip()]
    else:
        names = list(spec)
    if len(names) != num_classes:
        raise ValueError(f"{len(names)} class names given but the model has {num_classes} classes")
    return [str(n) for n in names]


def canonical_label(name: str) -> int | None:
    """Our label id for a training class name, or None when we do not blur it."""
    key = name.strip().lower()
    key = _EXTRA_ALIASES.get(key, key)
    try:
        return label_id(key.replace(" ", "_"))
    except ValueError:
        return None


def default_class_map(names: Sequence[str]) -> dict[int, int]:
    """Model class index -> label id; classes without a label (person, dog...) are dropped."""
    out = {}
    for i, name in enumerate(names):
        lab = canonical_label(name)
        if lab is not None:
            out[i] = lab
    return out


# -- the detector ----------------------------------------------------------

def letterbox(images: list[torch.Tensor], size: int, dtype: torch.dtype
              ) -> tuple[torch.Tensor, list[tuple[float, int, int]]]:
    """H×W×3 uint8 images -> N×3×size×size in 0..1 on a 0.5 grey canvas (darknet's
    letterbox); returns (scale, pad_left, pad_top) per image to map boxes back."""
    batch = torch.full((len(images), 3, size, size), 0.5, dtype=torch.float32,
                       device=images[0].device)
    geometry = []
    for i, img in enumerate(images):
        h, w = int(img.shape[0]), int(img.shape[1])
        scale, nw, nh, left, top = letterbox_params(h, w, size)
        x = img.permute(2, 0, 1)[None].float() / 255.0
        if (nh, nw) != (h, w):
            x = F.interpolate(x, size=(nh, nw), mode="bilinear", align_corners=False,
                              antialias=nh < h)
        batch[i, :, top:top + nh, left:left + nw] = x[0].clamp(0, 1)
        geometry.append((scale, left, top))
    return batch.to(dtype), geometry


class YoloV3Detector(Detector):
    """A converted YOLOv3 behind the :class:`Detector` interface.

    ``class_map`` maps model class indices to our labels (default: by name,
    so COCO car/motorcycle/bus/truck become vehicles and a plate class
    becomes ``plate``; other classes are dropped before NMS). NMS is per
    model class, as in darknet and keras-yolo3.
    """

    name = "yolov3"

    def __init__(self, model: YoloV3, names: Sequence[str], device="cpu", half: bool = True,
                 input_size: int | None = None, thresh: float = 0.25, nms_iou: float = 0.45,
                 class_map: dict[int, int] | dict[str, str] | None = None, max_det: int = 300,
                 pre_nms_topk: int = 3000, crop_size: int = 320, max_batch: int = 32):
        super().__init__(device, half)
        self.model = self.prepare(model)
        self.names = list(names)
        self.input_size = int(input_size or model.config["input_size"])
        self.thresh = float(thresh)
        self.nms_iou = float(nms_iou)
        self.max_det = int(max_det)
        self.pre_nms_topk = int(pre_nms_topk)
        self.crop_size = self._check_size(int(crop_size))
        self.max_batch = max(1, int(max_batch))
        self.class_map = self._class_map(class_map)
        self._keep = torch.tensor(sorted(self.class_map), dtype=torch.long, device=self.device)
        self._labels = torch.tensor([self.class_map[i] for i in sorted(self.class_map)],
                                    dtype=torch.long, device=self.device)
        self.labels = frozenset(self.class_map.values())

    def _class_map(self, class_map) -> dict[int, int]:
        if class_map is None:
            return default_class_map(self.names)
        out = {}
        for key, value in class_map.items():
            idx = self.names.index(key) if isinstance(key, str) else int(key)
            out[idx] = LABEL_IDS[value] if isinstance(value, str) else int(value)
        return out

    def _check_size(self, size: int) -> int:
        if size % 32:
            raise ValueError(f"YOLOv3 input size must be a multiple of 32, got {size}")
        return size

    def detect(self, frames: Frames, thresh: float | None = None,
               size: int | None = None) -> list[Detections]:
        """Whole frames, each letterboxed to ``size`` (default ``input_size``; a
        multiple of 32)."""
        images = frames_to_tensor(frames, self.device)
        return self._run(images, self.thresh if thresh is None else thresh,
                         self.input_size if size is None else int(size))

    def detect_crops(self, crops: Sequence[np.ndarray] | Sequence[torch.Tensor],
                     thresh: float | None = None, size: int | None = None) -> list[Detections]:
        """Plate stage of the two-stage mode: one :class:`Detections` per crop, boxes in
        that crop's pixels. Crops may differ in size; each is letterboxed to ``size``
        (default ``crop_size``, 320) and they run in batches of ``max_batch``."""
        if len(crops) == 0:
            return []
        images = frames_to_tensor(list(crops), self.device)
        return self._run(images, self.thresh if thresh is None else thresh,
                         self.crop_size if size is None else int(size))

    def _run(self, images: list[torch.Tensor], thresh: float, size: int) -> list[Detections]:
        size = self._check_size(size)
        out: list[Detections] = []
        for start in range(0, len(images), self.max_batch):
            chunk = images[start:start + self.max_batch]
            with torch.inference_mode():
                batch, geometry = letterbox(chunk, size, self.dtype)
                preds = self.model.decode(self.model(batch), size, size)
            out += [self._postprocess(p, img, g, thresh)
                    for p, img, g in zip(preds, chunk, geometry, strict=True)]
        return out

    def _postprocess(self, pred: torch.Tensor, img: torch.Tensor,
                     geometry: tuple[float, int, int], thresh: float) -> Detections:
        if len(self._keep) == 0:
            return Detections.empty()
        scores = pred[:, 4:5] * pred[:, 5:][:, self._keep]  # (M, kept classes)
        rows, cols = torch.nonzero(scores >= thresh, as_tuple=True)
        if rows.numel() == 0:
            return Detections.empty()
        conf = scores[rows, cols]
        if conf.numel() > self.pre_nms_topk:
            top = torch.topk(conf, self.pre_nms_topk).indices
            rows, cols, conf = rows[top], cols[top], conf[top]
        boxes = pred[rows, :4]
        keep = batched_nms(boxes, conf, cols, self.nms_iou)[: self.max_det]
        scale, left, top = geometry
        boxes = boxes[keep]
        boxes = (boxes - torch.tensor([left, top, left, top], device=boxes.device)) / scale
        h, w = int(img.shape[0]), int(img.shape[1])
        boxes[:, [0, 2]] = boxes[:, [0, 2]].clamp(0, w)
        boxes[:, [1, 3]] = boxes[:, [1, 3]].clamp(0, h)
        det = Detections(boxes.cpu().numpy(), conf[keep].float().cpu().numpy(),
                         self._labels[cols[keep]].cpu().numpy())
        return det[(det.xyxy[:, 2] > det.xyxy[:, 0]) & (det.xyxy[:, 3] > det.xyxy[:, 1])]


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
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise WeightsError(f"YOLOv3 checkpoint does not match its config: {first}") from None
    return model


def build(checkpoint_path: str | Path, device="cpu", half: bool = True, **opts) -> YoloV3Detector:
    """Detector from a converted checkpoint. ``opts``: input_size, thresh, nms_iou,
    class_map ({class name or index: label}), max_det, crop_size, max_batch, name."""
    from .fetch import load_checkpoint

    checkpoint = load_checkpoint(checkpoint_path)
    model = model_from_checkpoint(checkpoint)
    name = opts.pop("name", None)
    detector = YoloV3Detector(model, checkpoint["names"], device=device, half=half, **opts)
    if name:
        detector.name = name
    return detector
