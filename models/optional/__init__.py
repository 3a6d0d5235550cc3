"""Optional backends for user-supplied models (nothing here downloads weights).

Each backend imports its third-party package only when built, and fails
with a one-line error naming the extra to install (``pip install
'anonymize[mmdet]'``, ``'anonymize[serengil]'``) or the file it expected.

:func:`register_user_models` adds their registry records (source kind
``"file"``: the user passes the path); it is called by whoever needs the
full table (``anonymize models list``, the detector factory).
"""

from __future__ import annotations

import importlib
from pathlib import Path

from models.errors import one_line
from models.fetch import WeightsError
from models.registry import REGISTRY, ModelSpec, Source, register


def require(module: str, extra: str):
    """Import ``module`` or raise ImportError naming the extra that provides it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(f"{module} is not installed: pip install 'anonymize[{extra}]' "
                          f"({one_line(exc)})"
                          ) from None


def no_conversion(files: dict[str, Path]) -> dict:
    """Converter of models used as they are (TorchScript, serengil's .pth)."""
    raise WeightsError("this model is used from its own file as it is; pass the path, "
                       "there is nothing to convert")


_USER_MODELS = (
    ModelSpec(
        name="retinaface-biubug6", task="faces", source=Source("file"),
        licence="user-supplied; biubug6/Pytorch_Retinaface code and released weights MIT "
                "(trained on WIDER FACE, research use terms of the dataset)",
        classes=("face",), input_size="any (scaled so a --min-face face measures 16 px)",
        converter="models.optional:no_conversion", builder="models.retinaface:build",
        notes="mobilenet0.25_Final.pth / Resnet50_Final.pth state dicts (DataParallel "
              "`module.` prefixes are stripped); loaded as they are"),
    ModelSpec(
        name="yolov8-ultralytics", task="plates", source=Source("file"),
        licence="user-supplied; weights trained with Ultralytics (AGPL-3.0 code, never "
                "imported here); check the weights' own terms",
        classes=("plate", "car", "motorcycle", "bus", "truck", "face"),
        input_size="640 letterbox (crops at 320 in two-stage)",
        converter="models.yolov8_checkpoint:convert_ultralytics_checkpoint",
        builder="models.yolov8:build",
        notes="Ultralytics YOLOv8 training checkpoint (.pt), read with the restricted "
              "unpickler and converted when loaded; single-class models count as plates"),
    ModelSpec(
        name="yolov3-darknet", task="vehicles", source=Source("file"),
        licence="user-supplied; darknet YOLOv3 reference weights are public domain (YOLO licence)",
        classes=("car", "motorcycle", "bus", "truck", "plate"),
        input_size="416 letterbox (multiple of 32)",
        converter="models.darknet:convert", builder="models.yolov3:build",
        notes="`anonymize convert-weights --weights F.weights --cfg F.cfg -o F.pt`; COCO "
              "vehicles or a custom plate class (two-stage plate stage via detect_crops)"),
    ModelSpec(
        name="yolov3-keras", task="vehicles", source=Source("file"),
        licence="user-supplied (ImageAI yolo.h5 / yolov3_custom.h5 of the research pipeline)",
        classes=("car", "motorcycle", "bus", "truck", "plate"),
        input_size="416 letterbox (multiple of 32)",
        converter="models.keras_h5:convert", builder="models.yolov3:build",
        notes="`anonymize convert-weights --keras F.h5 -o F.pt [--names coco|plate|FILE]`"),
    ModelSpec(
        name="mmdet", task="vehicles", source=Source("file"),
        licence="user-supplied; mmdetection code Apache-2.0, checkpoints per their model zoo",
        classes=("car", "motorcycle", "bus", "truck", "plate"),
        input_size="from the mmdet config",
        converter="models.optional.mmdet_backend:convert",
        builder="models.optional.mmdet_backend:build",
        notes="extra [mmdet]: mmdet 3.3.0 config + checkpoint (Cascade R-CNN, DetectoRS); "
              "runner checkpoints read without unpickling code"),
    ModelSpec(
        name="serengil-retinaface", task="faces", source=Source("file"),
        licence="retina-face (serengil) MIT; weights from its own release, placed by the user",
        classes=("face",), input_size="any (package's own scaling)",
        converter="models.optional:no_conversion",
        builder="models.optional.serengil_backend:build",
        notes="extra [serengil]: needs $DEEPFACE_HOME/.deepface/weights/retinaface.pth; "
              "never downloads"),
    ModelSpec(
        name="egoblur-face", task="faces", source=Source("file"),
        licence="EgoBlur weights under their own licence (user-supplied TorchScript file)",
        classes=("face",), input_size="any (the TorchScript model resizes)",
        converter="models.optional:no_conversion",
        builder="models.optional.egoblur_backend:build_face",
        notes="TorchScript file from the EgoBlur release, loaded with torch.jit.load"),
    ModelSpec(
        name="egoblur-plate", task="plates", source=Source("file"),
        licence="EgoBlur weights under their own licence (user-supplied TorchScript file)",
        classes=("plate",), input_size="any (the TorchScript model resizes)",
        converter="models.optional:no_conversion",
        builder="models.optional.egoblur_backend:build_plate",
        notes="TorchScript file from the EgoBlur release, loaded with torch.jit.load"),
)


def register_user_models() -> list[str]:
    """Add the user-supplied model records to the registry (idempotent); their names."""
    for spec in _USER_MODELS:
        if spec.name not in REGISTRY:
            register(spec)
    return [spec.name for spec in _USER_MODELS]
