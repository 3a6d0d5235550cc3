"""YOLOv3 class names and the labels they map to.

Which names a model's classes carry (COCO, a plate set, a names file or an
ImageAI ``detection_config.json``) and which of them we blur. Separate from
the network (:mod:`models.yolov3_net`): the weight converters, the model
loader and the mmdet backend need the names without any torch module.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from .detections import label_id
from .errors import WeightsError, one_line

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
        if path.suffix.lower() == ".json":
            names = detection_config(path)["labels"]
        else:
            text = path.read_text(encoding="utf-8")
            names = [line.strip() for line in text.splitlines() if line.strip()]
    else:
        names = list(spec)
    if len(names) != num_classes:
        raise ValueError(f"{len(names)} class names given but the model has {num_classes} classes")
    return [str(n) for n in names]


def detection_config(path: Path) -> dict:
    """An ImageAI ``detection_config.json``, checked: an object whose ``labels``
    is a list of class names and whose ``anchors``, when present, is a list of
    numbers or of lists of numbers. Anything else is a one-line WeightsError
    naming this file (not the weights it goes with)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise WeightsError(f"{path}: not a readable detection_config.json ({one_line(exc)})"
                           ) from None
    labels = data.get("labels") if isinstance(data, dict) else None
    if not (isinstance(labels, list) and labels and all(isinstance(n, str) for n in labels)):
        raise WeightsError(f"{path}: expected an ImageAI detection_config.json, an object "
                           f"whose 'labels' lists the class names")
    anchors = data.get("anchors")

    def numbers(values) -> bool:
        return isinstance(values, list) and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)

    if anchors is not None and not (numbers(anchors) or (isinstance(anchors, list) and anchors
                                                         and all(map(numbers, anchors)))):
        raise WeightsError(f"{path}: 'anchors' must be a list of numbers (or of lists of "
                           f"numbers), got {anchors!r}")
    return data


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
