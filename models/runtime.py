"""Fast CPU inference for the detectors' networks, exported from their torch modules.

Why: on a few CPU cores torch eager runs these small convolutional networks
several times slower than ONNX Runtime or OpenVINO, and its OpenMP threads
spin-wait for work, so a busy neighbour process slows it down by an order
of magnitude (bench/runtimes.py has the numbers). The torch modules stay the
single source of truth: the fast graph is exported from them with
``torch.onnx.export``, never written by hand or downloaded.

A detector adopts this by giving its network (the pure tensor part between
pre- and post-processing) a :class:`GraphSpec` and, once built, passing it
through :func:`accelerate`::

    det.net = runtime.accelerate(det.net, GRAPH, checkpoint, det.device,
                                 backend=backend, threads=threads)

``det.net(x)`` keeps the module's contract: an N×3×H×W float tensor in,
torch tensors out (one tensor, or a tuple when the graph has several
outputs). On CUDA the module itself comes back: torch in fp16 is the fast
path there.

Backend: ``backend`` argument, else ``ANONYMIZE_RUNTIME``
(``auto|torch|onnxruntime|openvino``); ``auto`` is :data:`CPU_DEFAULT` on
CPU and torch on CUDA. Threads: one explicit count per graph (a pipeline
stage's budget; default: the cores this process may run on), with
spin-waiting disabled so idle threads sleep instead of competing with a
neighbour for the cores.

The graph cache lives beside the converted checkpoint
(``<models_home>/<model>/<graph>.onnx``, or ``<models_home>/graphs/<sha>/``
for a user-supplied weights file) with ``<graph>.json`` recording the
sha256 of the checkpoint, of the exported module (its weights and the
source of its classes, so an edited forward is re-exported too) and of the
.onnx file itself. Any mismatch re-exports, once, locally, with a log line.
"""

from __future__ import annotations

import ast
import contextlib
import contextvars
import copy
import fcntl
import functools
import hashlib
import inspect
import json
import logging
import os
import threading
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from .fetch import sha256_file
from .registry import models_home

log = logging.getLogger(__name__)

# ONNX Runtime 1.32 starts a telemetry client on first use that writes a session
# file into $TMPDIR and may send usage events; a privacy tool sends nothing and
# leaves no files behind. Must be set before onnxruntime creates its environment.
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

BACKENDS = ("torch", "onnxruntime", "openvino")
ENV = "ANONYMIZE_RUNTIME"
#: CPU backend used when none is asked for: the fastest one in bench/runtimes.py
CPU_DEFAULT = "onnxruntime"
#: bump when the export recipe changes in a way the other keys do not capture
FORMAT = 1

_EXPORT_ONLY = contextvars.ContextVar("anonymize_runtime_export_only", default=False)


@dataclass(frozen=True)
class GraphSpec:
    """What to export from a detector's network and how its input may vary.

    ``example`` is an input shape for tracing; its batch must be >= 2
    (torch specialises dimensions traced at 1). Height and width stay
    dynamic unless ``fixed_size``; ``multiple`` constrains them to
    multiples of a stride where the network needs it (feature maps that
    are concatenated after upsampling).
    """

    name: str
    example: tuple[int, int, int, int]
    outputs: tuple[str, ...]
    multiple: int = 1
    fixed_size: bool = False
    opset: int = 18


def select_backend(backend: str | None, device: str | torch.device) -> str:
    """The backend to run on ``device``: ``backend`` or ``ANONYMIZE_RUNTIME`` or auto."""
    value = backend if backend is not None else os.environ.get(ENV, "auto")
    value = str(value).strip().lower()
    if value not in ("auto", *BACKENDS):
        raise ValueError(f"runtime must be one of auto, {', '.join(BACKENDS)}; got {value!r} "
                         f"(argument or {ENV})")
    device = torch.device(device)
    if device.type != "cpu":
        if value in ("auto", "torch"):
            return "torch"
        raise ValueError(f"runtime {value!r} runs on CPU only; on {device} the torch modules "
                         f"run (fp16); use runtime torch or device cpu")
    return CPU_DEFAULT if value == "auto" else value


def cpu_budget() -> int:
    """Cores this process may run on (CPU affinity, cgroup quota): the default
    thread count of a graph."""
    from pipeline.threads import available_cores

    return available_cores()


@contextlib.contextmanager
def export_only() -> Iterator[None]:
    """Within this block :func:`accelerate` only makes sure the graph is
    exported and returns the module: ``models fetch`` builds each detector
    once this way so that workers later start without exporting."""
    token = _EXPORT_ONLY.set(True)
    try:
        yield
    finally:
        _EXPORT_ONLY.reset(token)


def accelerate(module: torch.nn.Module, spec: GraphSpec, checkpoint: str | Path,
               device: str | torch.device, backend: str | None = None,
               threads: int | None = None):
    """``module`` itself (torch backend) or a fast graph exported from it that
    is called the same way. ``checkpoint`` is the weights file the module was
    built from: it keys the cache."""
    if _EXPORT_ONLY.get():
        ensure_graph(module, spec, checkpoint, quiet=True)
        return module
    choice = select_backend(backend, device)
    if choice == "torch":
        return module
    path = ensure_graph(module, spec, checkpoint)
    return load_graph(path, choice, threads)


# -- the graph cache ------------------------------------------------------------

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
    source = Path(filename).read_text()
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
    return {"format": FORMAT, "graph": asdict(spec) | {"example": list(spec.example),
                                                       "outputs": list(spec.outputs)},
            "checkpoint_sha256": checkpoint_sha, "module_sha256": module_fingerprint(module)}


def _stale(path: Path, expected: dict) -> str | None:
    """Why the cached graph cannot be used, or None when it can."""
    meta = path.with_suffix(".json")
    if not path.exists() or not meta.exists():
        return "no exported graph"
    try:
        record = json.loads(meta.read_text())
    except (OSError, ValueError):
        return f"unreadable {meta.name}"
    for key, value in expected.items():
        if record.get(key) != value:
            return f"{key.replace('_', ' ')} changed"
    if sha256_file(path) != record.get("onnx_sha256"):
        return f"{path.name} differs from its recorded sha256"
    return None


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock: processes starting together export a graph once."""
    with open(path, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def ensure_graph(module: torch.nn.Module, spec: GraphSpec, checkpoint: str | Path,
                 quiet: bool = False) -> Path:
    """Path of a verified exported graph of ``module``, exporting it when the
    cache is missing or stale."""
    checkpoint_sha = sha256_file(Path(checkpoint))
    folder = graph_folder(checkpoint, checkpoint_sha)
    path = folder / f"{spec.name}.onnx"
    expected = _expected_record(module, spec, checkpoint_sha)
    if _stale(path, expected) is None:
        return path
    folder.mkdir(parents=True, exist_ok=True)
    with _locked(folder / f"{spec.name}.lock"):
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
        meta_tmp.write_text(json.dumps(record, indent=2))
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


# -- backends -------------------------------------------------------------------

def _numpy_input(x: torch.Tensor) -> np.ndarray:
    return x.detach().to("cpu", torch.float32).contiguous().numpy()


def _torch_outputs(outputs) -> torch.Tensor | tuple[torch.Tensor, ...]:
    tensors = tuple(torch.from_numpy(np.asarray(o)) for o in outputs)
    return tensors[0] if len(tensors) == 1 else tensors


#: input pixels per call of a CPU graph (the batch is split to stay under it)
MAX_PIXELS_PER_CALL = 1_000_000


def run_in_chunks(run, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
    """``run(numpy batch) -> list of numpy outputs`` over slices of ``x`` holding at
    most :data:`MAX_PIXELS_PER_CALL` input pixels (at least one image), joined.

    Why: a CPU runtime keeps the peak of its activations in its arena, and
    those grow with the batch: eight 1152×672 CenterFace inputs in one call
    took the process from 0.4 to 1.6 GB, while batching buys almost no speed
    on a CPU (docs/benchmarks.md, "Inference runtimes"). Crops and small
    inputs still go several to a call.
    """
    n, _, h, w = x.shape
    step = max(1, MAX_PIXELS_PER_CALL // max(1, h * w))
    arr = _numpy_input(x)
    if n <= step:
        return _torch_outputs(run(arr))
    parts = [run(arr[i:i + step]) for i in range(0, n, step)]
    return _torch_outputs([np.concatenate([np.asarray(p[k]) for p in parts])
                           for k in range(len(parts[0]))])


class OnnxRuntimeGraph:
    """An exported graph on ONNX Runtime's CPU provider; called like the module."""

    backend = "onnxruntime"

    def __init__(self, path: str | Path, threads: int):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = int(threads)
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # idle pool threads sleep rather than spin: a busy neighbour keeps its core
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
        self.path, self.threads = Path(path), int(threads)
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        self._input = self.session.get_inputs()[0].name

    def __call__(self, x: torch.Tensor):
        return run_in_chunks(lambda arr: self.session.run(None, {self._input: arr}), x)

    def settings(self) -> dict:
        """Thread settings as the session reports them."""
        opts = self.session.get_session_options()
        return {"threads": opts.intra_op_num_threads,
                "spinning": opts.get_session_config_entry("session.intra_op.allow_spinning")}

    def __repr__(self) -> str:
        return f"OnnxRuntimeGraph({self.path.name}, threads={self.threads})"


_OV_CORE = None
_OV_LOCK = threading.Lock()


def _ov_core():
    global _OV_CORE
    with _OV_LOCK:
        if _OV_CORE is None:
            import openvino as ov

            _OV_CORE = ov.Core()
        return _OV_CORE


class OpenVINOGraph:
    """An exported graph on OpenVINO's CPU plugin; called like the module.

    fp32 is requested explicitly (on CPUs with bf16 units OpenVINO would
    otherwise run bf16), one stream, no core pinning (the cores are shared).
    One dynamic-shape model serves every input size and batch: compiling per
    shape was up to 1.7× faster next to a busy core (bench/runtimes.py), yet
    not ahead of ONNX Runtime, and costs a compile for every new number of
    crops in a batch.
    """

    backend = "openvino"

    def __init__(self, path: str | Path, threads: int):
        self.path, self.threads = Path(path), int(threads)
        self.config = {"INFERENCE_NUM_THREADS": self.threads, "NUM_STREAMS": 1,
                       "PERFORMANCE_HINT": "LATENCY", "ENABLE_CPU_PINNING": False,
                       "INFERENCE_PRECISION_HINT": "f32"}
        self.compiled = _ov_core().compile_model(_ov_core().read_model(str(path)), "CPU",
                                                 self.config)
        self._request = self.compiled.create_infer_request()
        self._lock = threading.Lock()  # an infer request serves one call at a time

    def __call__(self, x: torch.Tensor):
        def infer(arr: np.ndarray):
            with self._lock:
                return [np.array(o) for o in self._request.infer({0: arr}).to_tuple()]

        return run_in_chunks(infer, x)

    def settings(self) -> dict:
        """Thread settings as the compiled model reports them."""
        return {key: self.compiled.get_property(key) for key in
                ("INFERENCE_NUM_THREADS", "NUM_STREAMS", "ENABLE_CPU_PINNING",
                 "INFERENCE_PRECISION_HINT")}

    def __repr__(self) -> str:
        return f"OpenVINOGraph({self.path.name}, threads={self.threads})"


def load_graph(path: str | Path, backend: str, threads: int | None = None):
    """An exported graph on ``backend`` (onnxruntime | openvino) with ``threads``."""
    threads = cpu_budget() if threads is None else int(threads)
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    if backend == "onnxruntime":
        return OnnxRuntimeGraph(path, threads)
    if backend == "openvino":
        return OpenVINOGraph(path, threads)
    raise ValueError(f"no graph backend {backend!r}; graph backends: onnxruntime, openvino")
