"""One way in: a registry name or a weights file becomes a ready :class:`Detector`.

``--face-model``, ``--plate-model`` and ``--vehicle-model`` take either.

* A **registry name** loads the checkpoint that ``anonymize models fetch``
  converted and cached. Loading never downloads: a worker must not reach
  the internet in the middle of a job, and weights that appear silently
  have no recorded origin. A name that is not fetched is a one-line error
  naming the command that fetches it.
* A **file** is recognised from its content (:func:`sniff`), or its format
  is forced by ``--face-model-format`` and its siblings. Each format (table
  :data:`FORMATS`) loads through a registry record, whose builder makes the
  detector; formats that need converting (darknet, Keras h5, Ultralytics)
  go through the record's converter first, each time they are loaded
  (``anonymize convert-weights`` writes the result once, for reuse).
  Files that go with a model (a darknet ``.cfg``, class names, an mmdet
  config) are found beside it under the same stem.

:func:`resolve` does everything but read the weights, so commands check
their model settings before touching any video (:func:`check_settings`);
:func:`build` and :func:`load` make the detector. Where a file says what it
finds (class names, a face-only architecture), a model passed for the wrong
task is refused: a face model as ``--plate-model`` would blur nothing.
Every error here is one line (:class:`ModelError`, a ``WeightsError``).
"""

from __future__ import annotations

import importlib.util
import json
import tempfile
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from .detections import FACE, LABELS, PLATE, VEHICLE_IDS, label_id
from .fetch import WeightsError, sha256_file
from .optional import register_user_models
from .registry import FILE_FORMATS, REGISTRY, ModelSpec, checkpoint_path

register_user_models()  # file formats load through these records

TASKS = ("faces", "plates", "vehicles")
#: the setting (and flag) that names each task's model
SETTING = {"faces": "face_model", "plates": "plate_model", "vehicles": "vehicle_model"}
FLAG = {t: "--" + s.replace("_", "-") for t, s in SETTING.items()}
_NOUN = {"faces": "face", "plates": "plate", "vehicles": "vehicle"}
_TASK_LABELS = {"faces": frozenset({FACE}), "plates": frozenset({PLATE}),
                "vehicles": frozenset(VEHICLE_IDS)}

#: builder options the pipeline passes, and the builders that take them
_FAST = ("models.retinaface:build", "models.centerface:build", "models.nanodet:build",
         "models.yolov8:build")
_HINTS = {"min_face": ("models.retinaface:build", "models.centerface:build"),
          "threads": _FAST}


class ModelError(WeightsError):
    """A model setting that cannot be used (unknown name, not fetched, unrecognised
    file, wrong task); the message is one line."""


@dataclass(frozen=True)
class Format:
    """A kind of model file the loader accepts."""

    name: str
    what: str  # the files, as a user knows them
    how: str  # how :func:`sniff` recognises them
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


@dataclass(frozen=True)
class ModelRef:
    """A resolved model setting: what to build, from which files, for which task."""

    task: str | None
    value: str  # the setting as given
    record: str  # registry record whose builder makes the detector
    format: str | None  # file format; None for a registry name
    path: Path  # the fetched checkpoint, or the user's file
    companions: dict[str, Path] = field(default_factory=dict)  # role -> file beside it
    labels: frozenset[int] | None = None  # what the model finds, where known

    @property
    def is_file(self) -> bool:
        return self.format is not None

    @cached_property
    def sha256(self) -> str:
        return sha256_file(self.path)

    @property
    def display(self) -> str:
        """The name recorded in reports and metrics: the registry name, or the file's
        name, format and content hash (the same on every machine that loads it)."""
        if not self.is_file:
            return self.record
        return file_display(self.path.name, self.format, self.sha256)


def file_display(name: str, fmt: str, sha256: str) -> str:
    """How a model file is named in reports: ``yolo.weights (darknet, sha256 1a2b…)``."""
    return f"{name} ({fmt}, sha256 {sha256[:12]})"


# -- resolving ------------------------------------------------------------------

def resolve(value: str, task: str | None = None, fmt: str = "auto",
            fetched: bool = True) -> ModelRef:
    """Check a model setting without reading weights: a known, fetched registry
    name (``fetched=False``: known is enough, for jobs that run elsewhere), or an
    existing file of a recognised format with what goes beside it."""
    if task is not None and task not in TASKS:
        raise ValueError(f"task must be one of {', '.join(TASKS)}, not {task!r}")
    if fmt != "auto" and fmt not in FORMATS:
        raise ModelError(f"{_where(task)}unknown model format {fmt!r}; known: auto, "
                         f"{', '.join(FORMATS)}")
    value = str(value).strip()
    if value in REGISTRY:
        return _resolve_name(value, task, fmt, fetched)
    path = Path(value).expanduser()
    if path.is_file():
        return _resolve_file(path, value, task, fmt)
    if path.is_dir():
        raise ModelError(f"{_where(task)}{value} is a directory, not a model file")
    known = [n for n, s in REGISTRY.items()
             if s.source.kind != "file" and (task is None or s.task == task)]
    what = f"known {_NOUN[task]} models" if task else "known models"
    raise ModelError(f"{_where(task)}unknown model {value!r}: not a registry name and no such "
                     f"file; {what}: {', '.join(known) or 'none'}")


def _where(task: str | None) -> str:
    return f"{FLAG[task]}: " if task else ""


def _resolve_name(name: str, task: str | None, fmt: str, fetched: bool) -> ModelRef:
    spec = REGISTRY[name]
    where = _where(task)
    if spec.source.kind == "file":
        raise ModelError(f"{where}{name} is a model you bring as a file: pass the file's path "
                         f"instead ({_file_help(name)})")
    if fmt != "auto":
        raise ModelError(f"{where}model format {fmt} is for model files; {name} is a registry "
                         f"model (leave its format at auto)")
    if task is not None and spec.task != task:
        raise ModelError(f"{where}{name} is a {_NOUN[spec.task]} model, not a {_NOUN[task]} "
                         f"model (pass it as {FLAG[spec.task]})")
    path = checkpoint_path(name)
    if fetched and not path.is_file():
        raise ModelError(f"{where}model {name} is not fetched: run `anonymize models fetch "
                         f"{name}`")
    return ModelRef(task or spec.task, name, name, None, path, labels=_class_labels(spec))


def _resolve_file(path: Path, value: str, task: str | None, fmt: str) -> ModelRef:
    where = _where(task)
    sniffed, facts = sniff(path)
    if fmt == "auto":
        if sniffed is None:
            flag = FLAG.get(task, "--*-model")
            raise ModelError(f"{where}{path}: not a model file the loader recognises (tried: "
                             f"{', '.join(FORMATS)}; set the format with {flag}-format if it "
                             f"is one of them)")
        fmt = sniffed
    elif sniffed != fmt:
        facts = {}  # forced: trust the setting, learn nothing from the content
        if fmt == "checkpoint":
            raise ModelError(f"{where}{path.name} is not a converted checkpoint (no 'arch' "
                             f"entry)")
    spec_format = FORMATS[fmt]
    if spec_format.extra and importlib.util.find_spec(spec_format.extra[0]) is None:
        raise ModelError(f"{where}{path.name} is a {fmt} model, which needs the "
                         f"{spec_format.extra[1]} extra: pip install "
                         f"'anonymize[{spec_format.extra[1]}]'")
    try:
        companions = _companions(fmt, path)
        labels = _file_labels(fmt, path, facts, companions, task)
    except ModelError as exc:  # name the setting, as every other error here does
        raise ModelError(f"{where}{exc}") from None
    record = _record(fmt, facts, task, path)
    if task is not None and labels is not None and not labels & _TASK_LABELS[task]:
        raise ModelError(_wrong_task(task, f"{path.name} ({fmt})", labels))
    return ModelRef(task, value, record, fmt, path, companions, labels)


def _record(fmt: str, facts: dict, task: str | None, path: Path) -> str:
    if fmt == "torchscript":
        if task == "vehicles":
            raise ModelError(f"{FLAG[task]}: {path.name} is an EgoBlur TorchScript model; it "
                             f"finds faces or plates, not vehicles")
        if task is None:
            raise ModelError(f"{path.name}: an EgoBlur TorchScript file does not say whether "
                             f"it finds faces or plates; give it as --face-model or "
                             f"--plate-model")
        return "egoblur-face" if task == "faces" else "egoblur-plate"
    if fmt == "checkpoint":
        arch = facts.get("arch")
        if arch == "yolov3" and facts.get("source_format") == "keras-h5":
            return "yolov3-keras"
        if arch not in CHECKPOINT_ARCHS and arch in REGISTRY:
            return arch  # a checkpoint named after its registry record
        if arch not in CHECKPOINT_ARCHS:
            raise ModelError(f"{_where(task)}{path.name}: a checkpoint of architecture "
                             f"{arch!r}, which the loader does not know (known: "
                             f"{', '.join(CHECKPOINT_ARCHS)})")
        return CHECKPOINT_ARCHS[arch]
    return FORMATS[fmt].records[0]


def _wrong_task(task: str, what: str, labels: frozenset[int]) -> str:
    found = ", ".join(LABELS[i] for i in sorted(labels)) or "nothing that is blurred"
    fits = [t for t in TASKS if labels & _TASK_LABELS[t]]
    hint = f" (pass it as {' or '.join(FLAG[t] for t in fits)})" if fits else ""
    return f"{FLAG[task]}: {what} finds {found}, not {task}{hint}"


def _companions(fmt: str, path: Path) -> dict[str, Path]:
    """Files that go with a model file, found beside it under its stem."""
    out: dict[str, Path] = {}
    if fmt == "darknet":
        cfg = path.with_suffix(".cfg")
        if not cfg.is_file():
            raise ModelError(f"{path.name}: darknet weights need their network description "
                             f"{cfg.name} beside them")
        out["cfg"] = cfg
        if path.with_suffix(".names").is_file():
            out["names"] = path.with_suffix(".names")
    elif fmt == "keras-h5":
        for cand in (path.with_suffix(".names"), path.with_suffix(".json"),
                     path.parent / "detection_config.json"):
            if cand.is_file():
                out["names"] = cand
                break
    elif fmt == "mmdet":
        config = path.with_suffix(".py")
        if not config.is_file():
            raise ModelError(f"{path.name}: an mmdet checkpoint needs its config {config.name} "
                             f"beside it")
        out["config"] = config
    return out


def companion_name(main_name: str, companion: str) -> str:
    """Local name of a companion file next to ``main_name`` (same stem, its own
    suffix): how a worker lays out files that travelled through storage."""
    return Path(main_name).stem + Path(companion).suffix


# -- what a model finds ---------------------------------------------------------

def _class_labels(spec: ModelSpec) -> frozenset[int] | None:
    try:
        return frozenset(label_id(c) for c in spec.classes)
    except ValueError:
        return None


def _names_labels(names: list[str]) -> frozenset[int]:
    from .yolov3 import default_class_map

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
    text = path.read_text(encoding="utf-8", errors="replace")
    if path.suffix.lower() == ".json":
        try:
            return [str(n) for n in json.loads(text)["labels"]]
        except (ValueError, KeyError, TypeError):
            raise ModelError(f"{path.name}: expected an ImageAI detection_config.json with "
                             f"'labels'") from None
    return [line.strip() for line in text.splitlines() if line.strip()]


def _file_labels(fmt: str, path: Path, facts: dict, companions: dict[str, Path],
                 task: str | None) -> frozenset[int] | None:
    if fmt in ("biubug6", "serengil"):
        return frozenset({FACE})
    if fmt == "torchscript":
        return None if task is None else _TASK_LABELS[task] & frozenset({FACE, PLATE})
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
    from .yolov3 import resolve_names

    if classes is None:
        return None
    try:
        return _names_labels(resolve_names(None, classes))
    except ValueError:
        raise ModelError(f"{path.name} has {classes} classes: put their names, one a line, in "
                         f"{path.with_suffix('.names').name} beside it") from None


def _darknet_names(path: Path, companions: dict[str, Path]) -> list[str]:
    """Class names of darknet weights, after checking their cfg (cheap: text only)."""
    from .darknet import check_layout, config_from_cfg, parse_cfg
    from .yolov3 import resolve_names

    cfg = companions["cfg"]
    try:
        sections = parse_cfg(cfg.read_text(encoding="utf-8", errors="replace"))
        config = config_from_cfg(sections)
        check_layout(sections, config)
    except (ValueError, KeyError) as exc:
        raise ModelError(f"{cfg.name} is not a YOLOv3 darknet cfg: {exc}") from None
    names = companions.get("names")
    try:
        return resolve_names(str(names) if names else None, config["num_classes"])
    except ValueError:
        raise ModelError(f"{cfg.name} has {config['num_classes']} classes: put their names, "
                         f"one a line, in {path.with_suffix('.names').name} beside it") from None


# -- sniffing -------------------------------------------------------------------

HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"


def sniff(path: str | Path) -> tuple[str | None, dict[str, Any]]:
    """(format, facts) of a model file from its content, or (None, {}).

    Reads the first bytes, the zip directory and the pickle of torch files
    (tensors are memory-mapped, not read); never runs code from the file.
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            head = f.read(32)
    except OSError as exc:
        raise ModelError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    if head.startswith(HDF5_MAGIC):
        return "keras-h5", {}
    if zipfile.is_zipfile(path):
        return _sniff_zip(path)
    if head[:2] == b"\x80\x02":  # torch.save's legacy (pre-zip) pickle
        return _sniff_torch(path, mmap=False)
    if _looks_darknet(path, head):
        return "darknet", {}
    return None, {}


def _sniff_zip(path: Path) -> tuple[str | None, dict[str, Any]]:
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
            if any(n.endswith("/constants.pkl") or "/code/" in n for n in names):
                return "torchscript", {}
            pkls = [n for n in names if n.endswith("data.pkl")]
            if len(pkls) != 1:
                return None, {}
            payload = zf.read(pkls[0])
    except (zipfile.BadZipFile, OSError):
        return None, {}
    fmt, facts = _sniff_torch(path, mmap=True)
    if fmt is not None:
        return fmt, facts
    # pickles that name foreign classes: weights_only loading refused them
    if b"ultralytics.nn" in payload:
        names = _ultralytics_names(path, pkls[0], payload)
        return "ultralytics", {"names": names} if names else {}
    if any(m in payload for m in (b"mmengine", b"mmdet", b"mmcv")):
        return "mmdet", {}
    return None, {}


def _ultralytics_names(path: Path, member: str, payload: bytes) -> list[str] | None:
    """Class names of an Ultralytics checkpoint, from its pickle alone: the
    restricted unpickler (nothing imported, nothing run) with tensors placed on
    the meta device, so no tensor bytes are read."""
    import io

    import torch

    from .ultralytics_unpickle import RestrictedUnpickler

    class _PickleOnly(RestrictedUnpickler):
        def persistent_load(self, pid):
            _, storage_type, _key, _location, numel = pid
            return torch.empty(int(numel), dtype=storage_type.dtype, device="meta")

    try:
        with zipfile.ZipFile(path) as zf:
            prefix = member[: -len("data.pkl")]
            ckpt = _PickleOnly(io.BytesIO(payload), zf, prefix, path.name).load()
        model = ckpt.get("ema") or ckpt.get("model")
        names = getattr(model, "__dict__", {}).get("names")
    except Exception:  # unreadable here: the conversion will say why when loading
        return None
    if isinstance(names, dict):
        return [str(names[k]) for k in sorted(names)]
    return [str(n) for n in names] if isinstance(names, (list, tuple)) else None


def _sniff_torch(path: Path, mmap: bool) -> tuple[str | None, dict[str, Any]]:
    import torch

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception:
        return None, {}
    return classify_checkpoint(obj)


def classify_checkpoint(obj: Any) -> tuple[str | None, dict[str, Any]]:
    """(format, facts) of an object torch.load(weights_only=True) returned."""
    if not isinstance(obj, Mapping):
        return None, {}
    arch = obj.get("arch")
    if isinstance(arch, str) and "state_dict" in obj:
        facts: dict[str, Any] = {"arch": arch}
        if isinstance(obj.get("names"), (list, tuple)):
            facts["names"] = [str(n) for n in obj["names"]]
        source = obj.get("source")
        if isinstance(source, Mapping):
            facts["source_format"] = source.get("format")
        return "checkpoint", facts
    if obj.get("format") == "tfjs-graph/1":
        return "checkpoint", {"arch": "tfjs-graph/1"}
    state = obj.get("state_dict") if isinstance(obj.get("state_dict"), Mapping) else obj
    keys = [k.removeprefix("module.") for k in state if isinstance(k, str)]
    if not keys:
        return None, {}
    if any(k.startswith("face_rpn_stride") for k in keys) and "conv0.weight" in keys:
        return "serengil", {}
    if (any(k.startswith("body.") for k in keys)
            and any(k.startswith(("fpn.", "ClassHead.", "BboxHead.")) for k in keys)):
        return "biubug6", {}
    if (any(k.startswith("backbone.") for k in keys)
            and any(k.startswith(("roi_head.", "bbox_head.", "rpn_head.")) for k in keys)):
        meta = obj.get("meta") if isinstance(obj.get("meta"), Mapping) else {}
        dataset = meta.get("dataset_meta") if isinstance(meta.get("dataset_meta"), Mapping) else {}
        classes = meta.get("classes") or dataset.get("classes")
        if isinstance(classes, (list, tuple)) and classes:
            return "mmdet", {"classes": [str(c) for c in classes]}
        return "mmdet", {}
    return None, {}


def _looks_darknet(path: Path, head: bytes) -> bool:
    from .darknet import read_header

    if path.suffix.lower() != ".weights" and not path.with_suffix(".cfg").is_file():
        return False
    try:
        _, _, header = read_header(head, path.name)
    except WeightsError:
        return False
    return (path.stat().st_size - header) % 4 == 0


# -- building -------------------------------------------------------------------

def load(value: str, task: str | None = None, fmt: str = "auto", device=None,
         half: bool = True, **hints):
    """:func:`resolve` then :func:`build`."""
    return build(resolve(value, task, fmt), device=device, half=half, **hints)


def build(ref: ModelRef, device=None, half: bool = True, **hints):
    """The detector of a resolved model. ``hints``: pipeline options (``min_face``, ``threads``)
    passed to the builders that take them."""
    spec = REGISTRY[ref.record]
    builder = spec.load_function("builder")
    opts = {k: v for k, v in hints.items() if spec.builder in _HINTS.get(k, ())}
    if ref.format == "mmdet":
        opts["config"] = str(ref.companions["config"])
    fmt = FORMATS.get(ref.format or "")
    if fmt is not None and fmt.convert_as:
        detector = _build_converted(ref, fmt.convert_as, spec, builder, device, half, opts)
    else:
        detector = builder(ref.path, device=device, half=half, **opts)
    detector.name = ref.display
    labels = detector.labels if detector.labels is not None else ref.labels
    if ref.task is not None and labels is not None and not labels & _TASK_LABELS[ref.task]:
        raise ModelError(_wrong_task(ref.task, ref.display, labels))
    return detector


def _build_converted(ref: ModelRef, role: str, spec: ModelSpec, builder, device, half, opts):
    import torch

    converter = spec.load_function("converter")
    try:
        checkpoint = converter({role: ref.path, **ref.companions})
    except WeightsError:
        raise
    except Exception as exc:  # a converter meeting unexpected bytes
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise WeightsError(f"{ref.path.name}: conversion as {ref.format} failed: {first}"
                           ) from None
    with tempfile.TemporaryDirectory(prefix="anonymize-model-") as tmp:
        target = Path(tmp) / "model.pt"
        torch.save(checkpoint, target)
        return builder(target, device=device, half=half, **opts)


# -- settings -------------------------------------------------------------------

def models_in_use(settings) -> dict[str, tuple[str, str]]:
    """{task: (model, format)} of the tasks a pipeline ``Settings`` runs: faces when
    on, plates unless off, vehicles for the two-stage and both plate modes."""
    tasks = []
    if settings.faces:
        tasks.append("faces")
    if settings.plate_mode:
        tasks.append("plates")
        if settings.plate_mode in ("two-stage", "both"):
            tasks.append("vehicles")
    return {t: (getattr(settings, SETTING[t]), getattr(settings, SETTING[t] + "_format"))
            for t in tasks}


def check_settings(settings, fetched: bool = True) -> dict[str, ModelRef]:
    """Resolve every model a pipeline ``Settings`` would load, reading no weights;
    the first problem is a one-line :class:`ModelError`."""
    return {task: resolve(value, task, fmt, fetched)
            for task, (value, fmt) in models_in_use(settings).items()}


# -- help -------------------------------------------------------------------------

def _file_help(record: str) -> str:
    for fmt in FORMATS.values():
        if record in fmt.records and fmt.name != "checkpoint":
            return f"format {fmt.name}: {fmt.what}"
    return "a weights file"


def fetch_help(name: str) -> str:
    """What to do instead of fetching a model whose weights are the user's file."""
    labels = _class_labels(REGISTRY[name]) or frozenset()
    flags = " or ".join(FLAG[t] for t in TASKS if labels & _TASK_LABELS[t]) or "--*-model"
    return (f"{name}: nothing to fetch, its weights are a file you supply ({_file_help(name)}); "
            f"pass the file's path as {flags}")


def formats_table() -> list[tuple[str, str, str]]:
    """(format, files, how recognised) of every accepted model file format."""
    return [(f.name, f.what, f.how) for f in FORMATS.values()]
