"""Recognising a model file from its content: :func:`sniff` tells which of
:data:`models.file_formats.FORMATS` a file is, and what it says about itself
(architecture, class names) without reading its weights.

Separate from resolving because it is the one part that opens the user's file:
it reads the first bytes, the zip directory and the pickle of torch files, and
never runs code from the file.
"""

from __future__ import annotations

import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .fetch import WeightsError
from .model_ref import ModelError

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

