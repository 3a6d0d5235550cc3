"""The kinds of model file ``--face-model`` and its siblings accept (:data:`FORMATS`).

Each format loads through registry records, whose builder makes the detector;
formats that need converting name the role their file plays for the record's
converter. A table of its own because the resolver, the builder and
``anonymize models formats`` all read it, and none of them owns it.
"""

from __future__ import annotations

from dataclasses import dataclass

from .optional import register_user_models
from .registry import FILE_FORMATS

register_user_models()  # file formats load through these records


@dataclass(frozen=True)
class Format:
    """A kind of model file the loader accepts."""

    name: str
    what: str  # the files, as a user knows them
    how: str  # how :func:`models.sniff.sniff` recognises them
    records: tuple[str, ...]  # registry records its files load through
    extra: tuple[str, str] | None = None  # (module, pip extra) it needs
    #: role of the file itself for the record's converter; None: loaded as it is
    convert_as: str | None = None


FORMATS: dict[str, Format] = {f.name: f for f in (
    Format("checkpoint", "a converted checkpoint (`anonymize convert-weights` output, a "
           "registry model.pt): YOLOv3, YOLOv8, RetinaFace, CenterNet",
           "a torch zip holding a dict that names its 'arch' (or TFJS graph 'format')",
           ("yolov3-darknet", "yolov3-keras", "yolov8-ultralytics", "retinaface-biubug6",
            "vehicles-centernet-mobilenetv3")),
    Format("biubug6", "a biubug6 Pytorch_Retinaface state dict (mobilenet0.25_Final.pth, "
           "Resnet50_Final.pth)", "a state dict with body./fpn./ClassHead. keys, with or "
           "without DataParallel's module. prefix", ("retinaface-biubug6",)),
    Format("serengil", "serengil retina-face's retinaface.pth (extra [serengil])",
           "a state dict with face_rpn_stride*/ssh_* keys", ("serengil-retinaface",),
           extra=("retinaface", "serengil")),
    Format("ultralytics", "an Ultralytics YOLOv8 training checkpoint (.pt), converted when "
           "loaded", "a torch zip whose pickle names ultralytics classes",
           ("yolov8-ultralytics",), convert_as="pt"),
    Format("darknet", "darknet YOLOv3 .weights with FILE.cfg beside it (class names from "
           "FILE.names, default COCO for 80 classes, plate for 1), converted when loaded",
           "darknet header, and a .weights suffix or a FILE.cfg", ("yolov3-darknet",),
           convert_as="weights"),
    Format("keras-h5", "a Keras YOLOv3 .h5 (ImageAI yolo.h5 / yolov3_custom.h5; class names "
           "from FILE.names, FILE.json or detection_config.json beside it), converted when "
           "loaded", "the HDF5 signature", ("yolov3-keras",), convert_as="h5"),
    Format("torchscript", "an EgoBlur TorchScript file (faces or plates: the flag it is "
           "given to decides)", "a zip with TorchScript code/ and constants.pkl",
           ("egoblur-face", "egoblur-plate")),
    Format("mmdet", "an mmdetection 3.x checkpoint with its config FILE.py beside it "
           "(extra [mmdet])", "an mmengine runner pickle, or a state dict with backbone. "
           "and *_head. keys", ("mmdet",), extra=("mmdet", "mmdet")),
)}
assert tuple(FORMATS) == FILE_FORMATS, "models.registry.FILE_FORMATS must list FORMATS"

#: converted-checkpoint architecture -> the record whose builder runs it
CHECKPOINT_ARCHS = {"yolov3": "yolov3-darknet", "yolov8": "yolov8-ultralytics",
                    "mobilenet0.25": "retinaface-biubug6", "resnet50": "retinaface-biubug6",
                    "tfjs-graph/1": "vehicles-centernet-mobilenetv3"}


def formats_table() -> list[tuple[str, str, str]]:
    """(format, files, how recognised) of every accepted model file format."""
    return [(f.name, f.what, f.how) for f in FORMATS.values()]
