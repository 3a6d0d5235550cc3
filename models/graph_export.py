"""Exporting a detector's torch network to ONNX, and the cache of exported graphs.

The graph cache lives beside the converted checkpoint
(``<models_home>/<model>/<graph>.onnx``, or ``<models_home>/graphs/<sha>/``
for a user-supplied weights file) with ``<graph>.json`` recording the
sha256 of the checkpoint, of the exported module (its weights and the
source of its classes, so an edited forward is re-exported too) and of the
.onnx file itself. Any mismatch re-exports, once, locally, with a log line.

Separate from choosing a backend (:mod:`models.runtime`) and from running
the graph (:mod:`models.graph_runners`): this part runs at fetch time or on
a worker's first start, and needs ``torch.onnx`` and ``onnx``, which the
runners never touch.
"""

from __future__ import annotations

import ast
import contextlib
import copy
import fcntl
import functools
import hashlib
import inspect
import json
import logging
import os
import warnings
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from .fetch import sha256_file
from .registry import models_home

if TYPE_CHECKING:
    from .runtime import GraphSpec

log = logging.getLogger(__name__)

#: bump when the export recipe changes in a way the other keys do not capture
FORMAT = 1


def graph_folder(checkpoint: str | Path, checkpoint_sha: str | None = None) -> Path:
    """Beside a fetched model's checkpoint; under ``graphs/<sha>`` for other files."""
    home = models_home().resolve()
    ckpt = Path(checkpoint).resolve()
    if ckpt.is_relative_to(home):
        return ckpt.parent
    return home / "graphs" / (checkpoint_sha or sha256_file(ckpt))[:16]


@functools.lru_cache(maxsize=64)
def _class_sources(filename: str, mtime_ns: int) -> dict[str, str]:
    """qualname -> source text of every class in one file (one parse per file;
    ``inspect.getsource`` parses the file again for every class)."""
    source = Path(filename).read_text(encoding="utf-8")
    lines = source.splitlines()
    out: dict[str, str] = {}

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.ClassDef):
                out[prefix + child.name] = "\n".join(lines[child.lineno - 1:child.end_lineno])
                visit(child, f"{prefix}{child.name}.")

    visit(ast.parse(source), "")
    return out


def _class_source(cls: type) -> str:
    if cls.__module__.split(".")[0] == "torch":
        return ""  # torch's own layers: their behaviour is not ours to track
    try:
        filename = inspect.getsourcefile(cls)
    except TypeError:  # built-in
        return ""
    if not filename or not os.path.exists(filename):
        return ""
    return _class_sources(filename, os.stat(filename).st_mtime_ns).get(cls.__qualname__, "")


def module_fingerprint(module: torch.nn.Module) -> str:
    """sha256 over the source of the project's module classes and every state
    tensor: what the exported graph is a function of, besides the recipe."""
    h = hashlib.sha256()
    classes = {f"{c.__module__}.{c.__qualname__}": c for c in map(type, module.modules())}
    for name in sorted(classes):
        h.update(name.encode())
        h.update(_class_source(classes[name]).encode())
    for name, t in module.state_dict().items():
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _expected_record(module: torch.nn.Module, spec: GraphSpec, checkpoint_sha: str) -> dict:
    graph = asdict(spec) | {"example": list(spec.example), "outputs": list(spec.outputs)}
    graph.pop("cpu_bf16")  # how the graph may be run, not what is exported
    return {"format": FORMAT, "graph": graph,
            "checkpoint_sha256": checkpoint_sha, "module_sha256": module_fingerprint(module)}


def _stale(path: Path, expected: dict) -> str | None:
    """Why the cached graph cannot be used, or None when it can."""
    meta = path.with_suffix(".json")
    if not path.exists() or not meta.exists():
        return "no exported graph"
    try:
        record = json.loads(meta.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return f"unreadable {meta.name}"
    for key, value in expected.items():
        if record.get(key) != value:
            return f"{key.replace('_', ' ')} changed"
    if sha256_file(path) != record.get("onnx_sha256"):
        return f"{path.name} differs from its recorded sha256"
    return None


@contextlib.contextmanager
def _locked(f) -> Iterator[None]:
    """An exclusive lock on the open file ``f``: processes starting together
    export a graph once."""
    with f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _open_lock(folder: Path, name: str):
    """The lock file of ``name``'s graph in ``folder``, or None where the folder
    cannot be written (a read-only models volume)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        return open(folder / f"{name}.lock", "a+")
    except OSError:
        return None


@functools.cache
def _scratch() -> Path:
    """This process's own folder for graphs the models folder cannot hold,
    removed at exit."""
    import atexit
    import shutil
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="anonymize-graphs-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return folder


def ensure_graph(module: torch.nn.Module, spec: GraphSpec, checkpoint: str | Path,
                 quiet: bool = False) -> Path:
    """Path of a verified exported graph of ``module``, exporting it when the
    cache is missing or stale."""
    checkpoint_sha = sha256_file(Path(checkpoint))
    folder = graph_folder(checkpoint, checkpoint_sha)
    path = folder / f"{spec.name}.onnx"
    expected = _expected_record(module, spec, checkpoint_sha)
    reason = _stale(path, expected)
    if reason is None:
        return path
    lock = _open_lock(folder, spec.name)
    if lock is None:
        # read-only (a shared models folder after an upgrade changed a network, a
        # volume holding only the checkpoints): export for this process alone
        log.warning("%s cannot be written: exporting the %s graph (%s) for this process "
                    "only; `anonymize models fetch --force` where it can be writes it once",
                    folder, spec.name, reason)
        folder = _scratch()
        path = folder / f"{spec.name}-{checkpoint_sha[:16]}.onnx"
        lock = _open_lock(folder, spec.name)
        quiet = True
    with _locked(lock):
        reason = _stale(path, expected)  # another process may have exported meanwhile
        if reason is None:
            return path
        (log.info if quiet else log.warning)(
            "exporting the %s graph to %s (%s); local computation, once", spec.name, path, reason)
        tmp = path.with_suffix(".tmp.onnx")
        export_onnx(module, spec, tmp)
        record = {**expected, "onnx_sha256": sha256_file(tmp), "torch": torch.__version__}
        tmp.replace(path)
        meta_tmp = path.with_suffix(".json.tmp")
        meta_tmp.write_text(json.dumps(record, indent=2), encoding="utf-8")
        meta_tmp.replace(path.with_suffix(".json"))
    return path


def export_onnx(module: torch.nn.Module, spec: GraphSpec, path: Path) -> None:
    """``torch.onnx.export`` (dynamo) with a dynamic batch (and height/width).

    Raises when the exporter silently specialised a dimension that should
    stay dynamic (it falls back to strict tracing, which may do that).
    """
    module = copy.deepcopy(module).to("cpu", torch.float32).eval()
    example = torch.randn(spec.example)
    dims: dict[int, object] = {0: torch.export.Dim("batch", min=1, max=4096)}
    if not spec.fixed_size:
        for axis, name in ((2, "height"), (3, "width")):
            if spec.multiple > 1:
                dims[axis] = spec.multiple * torch.export.Dim(f"{name}_{spec.multiple}", min=1,
                                                              max=16384 // spec.multiple)
            else:
                dims[axis] = torch.export.Dim(name, min=2, max=16384)
    # the exporter's progress and optimisation notes are noise in a detector's log
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "onnxscript", "onnx_ir")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch-internal deprecations
            program = torch.onnx.export(module, (example,), dynamo=True, dynamic_shapes=(dims,),
                                        input_names=["images"], output_names=list(spec.outputs),
                                        opset_version=spec.opset, verbose=False)
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)
    program.save(path, external_data=False)
    import onnx

    shape = onnx.load(str(path), load_external_data=False).graph.input[0].type.tensor_type.shape
    symbolic = [i for i, d in enumerate(shape.dim) if d.dim_param]
    if sorted(symbolic) != sorted(dims):
        path.unlink(missing_ok=True)
        raise RuntimeError(f"{spec.name}: the exported graph fixed input axes that should stay "
                           f"dynamic (dynamic: {symbolic}, wanted {sorted(dims)})")
