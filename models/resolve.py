"""Resolving a model setting without reading weights: a registry name or a user's
file becomes a :class:`models.model_ref.ModelRef` (which record builds it, from
which files, for which task), or a one-line :class:`ModelError`.

Separate from building (:mod:`models.loader`) so that commands check their
model settings (:func:`check_settings`) before touching any video, and jobs
that run elsewhere check them without the weights (``fetched=False``).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from .file_formats import CHECKPOINT_ARCHS, FORMATS
from .model_labels import class_labels, file_labels, wrong_task
from .model_ref import FLAG, NOUN, SETTING, TASK_LABELS, TASKS, ModelError, ModelRef
from .registry import REGISTRY, checkpoint_path
from .sniff import sniff

UNION = "+"  # ``a+b``: the union of registry models of one task (models/union.py)


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
    if UNION in value:
        return _resolve_union(value, task, fmt, fetched)
    if path.is_dir():
        raise ModelError(f"{_where(task)}{value} is a directory, not a model file")
    what = f"known {NOUN[task]} models" if task else "known models"
    raise ModelError(f"{_where(task)}unknown model {value!r}: not a registry name and no "
                     f"such file; {what}: {', '.join(_known(task)) or 'none'}")


def _resolve_union(value: str, task: str | None, fmt: str, fetched: bool) -> ModelRef:
    """``a+b``: registry models of one task whose detections are merged
    (:class:`models.union.UnionDetector`). Files are not taken in a union:
    a path may hold a ``+`` itself, and each file would need its own format."""
    where = _where(task)
    names = [n.strip() for n in value.split(UNION)]
    if len(names) < 2 or not all(names) or len(set(names)) != len(names):
        raise ModelError(f"{where}{value!r} is not a union of different model names "
                         f"(write name{UNION}name)")
    if fmt != "auto":
        raise ModelError(f"{where}model format {fmt} is for model files; a union takes "
                         f"registry names (leave its format at auto)")
    for name in names:
        if name not in REGISTRY:
            raise ModelError(f"{where}unknown model {name!r} in {value!r}: a union takes "
                             f"registry names ({', '.join(_known(task))})")
    parts = tuple(_resolve_name(n, task, fmt, fetched) for n in names)
    tasks = {p.task for p in parts}
    if len(tasks) != 1:
        raise ModelError(f"{where}{value!r} mixes {' and '.join(NOUN[t] for t in sorted(tasks))} "
                         f"models; a union merges models of one task")
    labels = None if any(p.labels is None for p in parts) else frozenset().union(
        *(p.labels for p in parts))
    return ModelRef(parts[0].task, value, value, None, parts[0].path, labels=labels,
                    parts=parts)


def _known(task: str | None) -> list[str]:
    return [n for n, s in REGISTRY.items()
            if s.source.kind != "file" and (task is None or s.task == task)]


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
        raise ModelError(f"{where}{name} is a {NOUN[spec.task]} model, not a {NOUN[task]} "
                         f"model (pass it as {FLAG[spec.task]})")
    path = checkpoint_path(name)
    if fetched and not path.is_file():
        # a first run lacks every default model: one fetch gets them all, where
        # naming only this one led to a fetch per model, each after an error
        every = " (or `anonymize models fetch` for every default model)" \
            if spec.default_fetch else ""
        raise ModelError(f"{where}model {name} is not fetched: run `anonymize models fetch "
                         f"{name}`{every}")
    return ModelRef(task or spec.task, name, name, None, path, labels=class_labels(spec))


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
        labels = file_labels(fmt, path, facts, companions, task)
    except ModelError as exc:  # name the setting, as every other error here does
        raise ModelError(f"{where}{exc}") from None
    record = _record(fmt, facts, task, path)
    if task is not None and labels is not None and not labels & TASK_LABELS[task]:
        raise ModelError(wrong_task(task, f"{path.name} ({fmt})", labels))
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


def _companions(fmt: str, path: Path) -> dict[str, Path]:
    """Files that go with a model file, found beside it under its stem."""
    out: dict[str, Path] = {}

    def required(suffix: str, what: str) -> Path:
        found = path.with_suffix(suffix)
        if not found.is_file():
            raise ModelError(f"{path.name}: {what} {found.name} beside it")
        return found

    if fmt == "darknet":
        out["cfg"] = required(".cfg", "darknet weights need their network description")
        if path.with_suffix(".names").is_file():
            out["names"] = path.with_suffix(".names")
    elif fmt == "keras-h5":
        for cand in (path.with_suffix(".names"), path.with_suffix(".json"),
                     path.parent / "detection_config.json"):
            if cand.is_file():
                out["names"] = cand
                break
    elif fmt == "mmdet":
        out["config"] = required(".py", "an mmdet checkpoint needs its config")
    return out


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
    labels = class_labels(REGISTRY[name]) or frozenset()
    flags = " or ".join(FLAG[t] for t in TASKS if labels & TASK_LABELS[t]) or "--*-model"
    return (f"{name}: nothing to fetch, its weights are a file you supply ({_file_help(name)}); "
            f"pass the file's path as {flags}")
