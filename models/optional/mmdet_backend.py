"""mmdetection 3.x detectors (the research Cascade R-CNN / DetectoRS) as a Detector.

Extra ``[mmdet]``: mmdet 3.3.0 with mmcv-lite 2.1.0 and mmengine (mmdet
3.3.0 refuses mmcv 2.2.0 at import). mmcv-lite has no compiled ops; the
stand-in in :mod:`models.optional.mmcv_ops` serves the few kernels these
detectors use from torchvision.

Checkpoints saved by the mmengine runner pickle more than weights (message
hub, history buffers, numpy arrays), so ``torch.load(weights_only=True)``
refuses them and ``weights_only=False`` would run whatever the pickle
names. :func:`read_checkpoint` instead unpickles them with the project's
restricted unpickler (foreign classes become inert placeholders, anything
else is refused), keeps the ``state_dict`` and the class names, and
:func:`convert_mmdet_checkpoint` writes that once as a bare file that loads
with ``weights_only=True``. Legacy (pre-zip) pickles need ``trusted=True``.
"""

from __future__ import annotations

import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.base import Detector, Frames, frames_to_numpy
from models.detections import Detections
from models.fetch import WeightsError
from models.ultralytics_unpickle import (
    RestrictedUnpickler,
    load_pickled_checkpoint,
    placeholder_type,
)
from models.yolov3_names import COCO_NAMES, default_class_map

from . import require

#: packages whose pickled classes and functions become placeholders when read
_INERT_PREFIXES = ("mmengine", "mmdet", "mmcv", "numpy", "torch.optim", "torch.nn", "_codecs")


class _RunnerUnpickler(RestrictedUnpickler):
    def find_class(self, module: str, name: str):
        try:
            return super().find_class(module, name)
        except WeightsError:
            if module.split(".")[0] in {p.split(".")[0] for p in _INERT_PREFIXES} and any(
                    module == p or module.startswith(p + ".") for p in _INERT_PREFIXES):
                return placeholder_type(module, name)
            raise


def _classes_of(meta: Any) -> list[str] | None:
    if not isinstance(meta, dict):
        return None
    dataset_meta = meta.get("dataset_meta")
    classes = dataset_meta.get("classes") if isinstance(dataset_meta, dict) else None
    classes = classes if classes is not None else meta.get("CLASSES")
    if isinstance(classes, (list, tuple)) and all(isinstance(c, str) for c in classes):
        return list(classes)
    return None


def read_checkpoint(path: str | Path, trusted: bool = False
                    ) -> tuple[OrderedDict[str, torch.Tensor], dict]:
    """(state_dict, {"classes": [...]?}) of a bare or runner-saved mmdet checkpoint."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"mmdet checkpoint not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:
        if zipfile.is_zipfile(path):
            obj = load_pickled_checkpoint(path, _RunnerUnpickler)
        elif trusted:
            obj = torch.load(path, map_location="cpu", weights_only=False)
        else:
            raise WeightsError(f"{path.name} is a legacy pickle that may run code when loaded; "
                               f"convert it once with convert_mmdet_checkpoint(path, "
                               f"trusted=True) if you trust its source") from None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        state, meta = obj["state_dict"], obj.get("meta")
    elif isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        state, meta = obj, None
    else:
        raise WeightsError(f"{path.name} holds no state_dict: not an mmdet checkpoint")
    tensors = OrderedDict((k, v) for k, v in state.items() if isinstance(v, torch.Tensor))
    if not tensors:
        raise WeightsError(f"{path.name}: its state_dict has no tensors")
    out_meta: dict = {}
    classes = _classes_of(meta) or (meta.get("classes") if isinstance(meta, dict) else None)
    if classes:
        out_meta["classes"] = [str(c) for c in classes]
    return tensors, out_meta


def convert(files: dict[str, Path]) -> dict:
    """Registry converter: ``{"checkpoint": file}`` -> ``{"state_dict", "meta"}``."""
    state, meta = read_checkpoint(files["checkpoint"])
    return {"state_dict": dict(state), "meta": {**meta, "source": Path(files["checkpoint"]).name}}


def convert_mmdet_checkpoint(path: str | Path, out: str | Path | None = None,
                             trusted: bool = False) -> Path:
    """Write the bare ``{"state_dict", "meta"}`` of a runner checkpoint; returns its path.

    The result loads with ``torch.load(weights_only=True)`` (and with
    mmengine's own ``load_checkpoint``).
    """
    path = Path(path)
    state, meta = read_checkpoint(path, trusted=trusted)
    out = Path(out) if out else path.with_name(path.stem + ".state_dict.pth")
    tmp = out.with_name(out.name + ".tmp")
    torch.save({"state_dict": dict(state), "meta": {**meta, "source": path.name}}, tmp)
    tmp.replace(out)
    return out


class MMDetDetector(Detector):
    """An mmdet 3.x model; ``class_map`` maps its class names/indices to our labels
    (default by name: COCO vehicles, a plate class)."""

    name = "mmdet"

    def __init__(self, config: str | Path, checkpoint: str | Path, device="cpu",
                 half: bool = True, thresh: float = 0.3, classes: list[str] | None = None,
                 class_map: dict | None = None):
        super().__init__(device, half=False)
        from . import mmcv_ops

        require("mmcv", "mmdet")
        mmcv_ops.install()
        apis = require("mmdet.apis", "mmdet")
        state, meta = read_checkpoint(checkpoint)
        if not Path(config).is_file():
            raise WeightsError(f"mmdet config not found: {config}")
        model = apis.init_detector(str(config), None, device=str(self.device))
        result = model.load_state_dict(state, strict=False)
        if result.missing_keys:
            raise WeightsError(f"{Path(checkpoint).name} does not fit {Path(config).name}: "
                               f"{len(result.missing_keys)} missing weights, e.g. "
                               f"{result.missing_keys[0]}")
        self.names = list(classes or meta.get("classes") or
                          (COCO_NAMES if len(_model_classes(model)) == 80 else []))
        if not self.names:
            raise WeightsError("mmdet checkpoint names no classes: pass classes=[...]")
        model.dataset_meta = {"classes": tuple(self.names)}
        self.model = model.eval()
        self._apis = apis
        self.thresh = float(thresh)
        cmap = default_class_map(self.names) if class_map is None else {
            (self.names.index(k) if isinstance(k, str) else int(k)): v
            for k, v in class_map.items()}
        from models.detections import LABEL_IDS

        self.class_map = {int(k): (LABEL_IDS[v] if isinstance(v, str) else int(v))
                          for k, v in cmap.items()}
        self.labels = frozenset(self.class_map.values())

    def detect(self, frames: Frames, thresh: float | None = None,
               size: int | None = None) -> list[Detections]:
        """``size`` is ignored: the mmdet config's test pipeline resizes."""
        thresh = self.thresh if thresh is None else float(thresh)
        images = [np.ascontiguousarray(f[..., ::-1]) for f in frames_to_numpy(frames)]  # BGR
        if not images:
            return []
        with torch.inference_mode():
            samples = self._apis.inference_detector(self.model, images)
        out = []
        for sample in samples:
            inst = sample.pred_instances
            boxes = inst.bboxes.float().cpu().numpy().reshape(-1, 4)
            scores = inst.scores.float().cpu().numpy().reshape(-1)
            labels = inst.labels.cpu().numpy().reshape(-1)
            keep = (scores >= thresh) & np.isin(labels, list(self.class_map))
            mapped = np.array([self.class_map[int(c)] for c in labels[keep]], np.int64)
            out.append(Detections(boxes[keep], scores[keep], mapped))
        return out


def _model_classes(model) -> list:
    head = getattr(model, "roi_head", None) or getattr(model, "bbox_head", None)
    bbox_head = getattr(head, "bbox_head", head)
    if isinstance(bbox_head, (list, torch.nn.ModuleList)):
        bbox_head = bbox_head[-1]
    return list(range(int(getattr(bbox_head, "num_classes", 0))))


def build(checkpoint_path: str | Path, device="cpu", half: bool = True, config=None,
          **opts) -> MMDetDetector:
    """``config``: the mmdet config file the checkpoint was trained with (required)."""
    if not config:
        raise WeightsError("the mmdet backend needs the model's config file (config=...)")
    name = opts.pop("name", "mmdet")
    det = MMDetDetector(config, checkpoint_path, device=device, half=half, **opts)
    det.name = name
    return det
