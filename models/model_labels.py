"""What a model finds: the labels of a registry record or a model file, read from
what the file tells (class names of YOLO files, face-only architectures, the
class count of a Keras file) without loading its weights, and the one-line
refusal of a model put in the wrong task's slot.

Separate from resolving because each format tells its classes its own way
(names files, darknet cfgs, HDF5 shapes); the resolver only asks for the set.
"""

from __future__ import annotations

from pathlib import Path

from .detections import FACE, LABELS, PLATE, VEHICLE_IDS, label_id
from .errors import WeightsError
from .model_ref import FLAG, TASK_LABELS, TASKS, ModelError
from .registry import ModelSpec


def class_labels(spec: ModelSpec) -> frozenset[int] | None:
    try:
        return frozenset(label_id(c) for c in spec.classes)
    except ValueError:
        return None


def _names_labels(names: list[str]) -> frozenset[int]:
    from .yolov3_names import default_class_map

    return frozenset(default_class_map(names).values())


def _yolov8_labels(names: list[str]) -> frozenset[int]:
    out = set()
    for n in names:  # as models.yolov8: a class we do not know counts as a plate
        try:
            out.add(label_id(n))
        except ValueError:
            out.add(PLATE)
    return frozenset(out)


def _read_names(path: Path) -> list[str]:
    if path.suffix.lower() == ".json":
        from .yolov3_names import detection_config

        try:
            return detection_config(path)["labels"]
        except WeightsError as exc:
            raise ModelError(str(exc)) from None
    text = path.read_text(encoding="utf-8", errors="replace")
    return [line.strip() for line in text.splitlines() if line.strip()]


def file_labels(fmt: str, path: Path, facts: dict, companions: dict[str, Path],
                 task: str | None) -> frozenset[int] | None:
    if fmt in ("biubug6", "serengil"):
        return frozenset({FACE})
    if fmt == "torchscript":
        return None if task is None else TASK_LABELS[task] & frozenset({FACE, PLATE})
    if fmt == "checkpoint":
        arch = facts.get("arch")
        if arch == "yolov3":
            return _names_labels(facts.get("names", []))
        if arch == "yolov8":
            return _yolov8_labels(facts.get("names", []))
        if arch in ("mobilenet0.25", "resnet50"):
            return frozenset({FACE})
        if arch == "tfjs-graph/1":
            return frozenset(VEHICLE_IDS)
        return None
    if fmt == "darknet":
        return _names_labels(_darknet_names(path, companions))
    if fmt == "ultralytics" and facts.get("names"):
        return _yolov8_labels(facts["names"])
    if fmt == "keras-h5":
        if "names" in companions:
            return _names_labels(_read_names(companions["names"]))
        return _default_names_labels(path, _keras_classes(path))
    if fmt == "mmdet" and facts.get("classes"):
        return _names_labels(facts["classes"])
    return None  # known once loaded (Detector.labels)


def _keras_classes(path: Path) -> int | None:
    """Class count of a Keras YOLOv3 file from the shapes of its output convolutions
    (the 4-D kernels that have a bias beside them); no array is read."""
    import h5py

    outputs = set()

    def visit(name: str, obj) -> None:
        if (isinstance(obj, h5py.Dataset) and len(obj.shape) == 4
                and name.rsplit("/", 1)[-1].startswith("kernel")
                and any(k.startswith("bias") for k in obj.parent.keys())):
            outputs.add(int(obj.shape[3]))

    try:
        with h5py.File(path, "r") as f:
            f.visititems(visit)
    except OSError:
        return None
    if len(outputs) != 1:
        return None
    n = outputs.pop()
    return n // 3 - 5 if n % 3 == 0 and n // 3 > 5 else None


def _default_names_labels(path: Path, classes: int | None) -> frozenset[int] | None:
    """Labels of a YOLO file without a names file: COCO for 80 classes, plate for one."""
    from .yolov3_names import resolve_names

    if classes is None:
        return None
    try:
        return _names_labels(resolve_names(None, classes))
    except ValueError:
        raise ModelError(f"{path.name} has {classes} classes: put their names, one a line, in "
                         f"{path.with_suffix('.names').name} beside it") from None


def _darknet_names(path: Path, companions: dict[str, Path]) -> list[str]:
    """Class names of darknet weights, after checking their cfg (cheap: text only)."""
    from .darknet import read_cfg
    from .yolov3_names import resolve_names

    cfg = companions["cfg"]
    try:
        config = read_cfg(cfg)
    except ValueError as exc:
        raise ModelError(str(exc)) from None
    names = companions.get("names")
    try:
        return resolve_names(str(names) if names else None, config["num_classes"])
    except ValueError:
        raise ModelError(f"{cfg.name} has {config['num_classes']} classes: put their names, "
                         f"one a line, in {path.with_suffix('.names').name} beside it") from None


def wrong_task(task: str, what: str, labels: frozenset[int]) -> str:
    found = ", ".join(LABELS[i] for i in sorted(labels)) or "nothing that is blurred"
    fits = [t for t in TASKS if labels & TASK_LABELS[t]]
    hint = f" (pass it as {' or '.join(FLAG[t] for t in fits)})" if fits else ""
    return f"{FLAG[task]}: {what} finds {found}, not {task}{hint}"
