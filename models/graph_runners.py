"""Running an exported graph on a CPU runtime, called like the torch module.

:class:`OnnxRuntimeGraph` and :class:`OpenVINOGraph` take an N×3×H×W torch
tensor and return torch tensors, one explicit thread count each, with
spin-waiting disabled so idle threads sleep instead of competing with a
neighbour for the cores; :func:`run_in_chunks` keeps each call under a
pixel budget. Separate from exporting the graph (:mod:`models.graph_export`)
and from choosing a backend (:mod:`models.runtime`): benchmarks build these
runners directly on a graph file.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np
import torch

# ONNX Runtime 1.32 starts a telemetry client on first use that writes a session
# file into $TMPDIR and may send usage events; a privacy tool sends nothing and
# leaves no files behind. Must be set before onnxruntime creates its environment.
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")


def cpu_budget() -> int:
    """Cores this process may run on (CPU affinity, cgroup quota): the default
    thread count of a graph."""
    from pipeline.threads import available_cores

    return available_cores()


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
    precision = "f32"

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


_BF16: bool | None = None
PRECISIONS = ("f32", "bf16")


def amx_bf16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Whether the CPU flags in ``cpuinfo`` (Linux) include AMX bf16 tiles."""
    try:
        return "amx_bf16" in cpuinfo.read_text().split()
    except OSError:
        return False


def cpu_has_bf16() -> bool:
    """Whether this CPU has AMX bf16 tiles (:func:`amx_bf16`) and OpenVINO's
    CPU plugin offers bf16 on it. There a bf16 graph ran 1.5-2.7× faster
    than fp32 (docs/benchmarks.md, "Half precision on CPU"); CPUs with
    AVX512-BF16 alone stay at fp32, as OpenVINO itself does by default,
    since their gain was not measured here. Read once per process."""
    global _BF16
    if _BF16 is None:
        _BF16 = False
        if amx_bf16():
            try:
                caps = _ov_core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
            except Exception:  # noqa: BLE001 - no OpenVINO CPU plugin: no bf16 either
                caps = ()
            _BF16 = "BF16" in {str(c).upper() for c in caps}
    return _BF16


class OpenVINOGraph:
    """An exported graph on OpenVINO's CPU plugin; called like the module.

    ``precision`` is requested explicitly, fp32 unless bf16 is asked for (on
    CPUs with bf16 units OpenVINO would otherwise pick bf16 by itself, and
    the choice belongs to the ``half`` setting); one stream, no core pinning
    (the cores are shared).
    One dynamic-shape model serves every input size and batch: compiling per
    shape was up to 1.7× faster next to a busy core (bench/runtimes.py), yet
    not ahead of ONNX Runtime, and costs a compile for every new number of
    crops in a batch.
    """

    backend = "openvino"

    def __init__(self, path: str | Path, threads: int, precision: str = "f32"):
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        self.path, self.threads, self.precision = Path(path), int(threads), precision
        self.config = {"INFERENCE_NUM_THREADS": self.threads, "NUM_STREAMS": 1,
                       "PERFORMANCE_HINT": "LATENCY", "ENABLE_CPU_PINNING": False,
                       "INFERENCE_PRECISION_HINT": precision}
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
        return f"OpenVINOGraph({self.path.name}, threads={self.threads}, {self.precision})"


def load_graph(path: str | Path, backend: str, threads: int | None = None,
               precision: str = "f32"):
    """An exported graph on ``backend`` (onnxruntime | openvino) with ``threads``;
    ``precision`` bf16 is OpenVINO's only (ONNX Runtime runs fp32)."""
    threads = cpu_budget() if threads is None else int(threads)
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    if backend == "onnxruntime":
        if precision != "f32":
            raise ValueError(f"ONNX Runtime graphs run f32 here, not {precision}")
        return OnnxRuntimeGraph(path, threads)
    if backend == "openvino":
        return OpenVINOGraph(path, threads, precision)
    raise ValueError(f"no graph backend {backend!r}; graph backends: onnxruntime, openvino")
