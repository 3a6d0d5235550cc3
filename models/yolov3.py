"""YOLOv3 detector: darknet letterbox, box decoding and per-class NMS around the network.

The network and its converted checkpoint are :mod:`models.yolov3_net`
(filled by :mod:`models.darknet` and :mod:`models.keras_h5`), class names
:mod:`models.yolov3_names`; :func:`build` loads a converted checkpoint and
returns the :class:`YoloV3Detector`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from .base import Detector, Frames, frames_to_tensor
from .boxes import letterbox_params
from .detections import LABEL_IDS, Detections
from .ops import batched_nms
from .resize import resize_frames
from .yolov3_names import default_class_map
from .yolov3_net import YoloV3, check_input_size, model_from_checkpoint

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
        x = resize_frames(img[None], nh, nw) / 255.0
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
        self.crop_size = check_input_size(int(crop_size))
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
        size = check_input_size(size)
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
