"""Running an exported graph on a CPU runtime, called like the torch module.

:class:`OnnxRuntimeGraph` and :class:`OpenVINOGraph` take an N×3×H×W torch
tensor and return torch tensors, one explicit thread count each, with
spin-waiting disabled so idle threads sleep instead of competing with a
neighbour for the cores; :func:`run_in_chunks` keeps each call under a
pixel budget and spreads a batch over :class:`Lanes`. Separate from
exporting the graph (:mod:`models.graph_export`) and from choosing a backend
(:mod:`models.runtime`): benchmarks build these runners directly on a graph
file.

Lanes: a thread budget of N cores runs as up to :data:`MAX_LANES` lanes,
each a single-threaded (or N/lanes-threaded) run of its own image, rather
than one run whose N threads meet at every layer. On a shared machine a
neighbour that takes a core stalls every layer of the lock-step run, while
lanes just keep going on the core they still have: on 2 cores with the
host's load near 1, CenterFace at 1152×672 took 98-172 ms per image in
lock-step and 51-59 ms in two lanes (OpenVINO bf16; ONNX Runtime fp32
130-150 vs 84-93 ms; docs/benchmarks.md, "Lanes"). A call holding a single
image runs on one lane. It used to get a lock-step runner of its own with
every thread, made on first use; that cost a second compiled graph and its
memory: the lone last frame of a segment raised the peak RSS of a default
run by about 120 MB (docs/benchmarks.md, "Frames on lanes").
"""

from __future__ import annotations

import logging
import math
import os
import queue
import sys
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

# ONNX Runtime 1.32 starts a telemetry client on first use that writes a session
# file into $TMPDIR and may send usage events; a privacy tool sends nothing and
# leaves no files behind. Must be set before onnxruntime creates its environment.
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
# OpenVINO's Python package, on import, sends a usage event to Google Analytics
# from a forked process (openvino.tools.ovc through openvino_telemetry, counted as
# consent unless the user opted out) and keeps a client id and counters in
# ~/intel. A None entry makes ``import openvino_telemetry`` fail, and OpenVINO then
# takes its own no-op stub. Must be in place before openvino is imported.
sys.modules.setdefault("openvino_telemetry", None)

log = logging.getLogger(__name__)


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
#: most lanes per graph: a pipeline batch (8 frames) keeps four busy
MAX_LANES = 4

Run = Callable[[np.ndarray], list]


def lane_split(threads: int) -> tuple[int, int]:
    """(lanes, threads per lane) for a budget of ``threads`` cores: one thread
    per lane up to :data:`MAX_LANES` lanes, then more threads per lane."""
    threads = max(1, int(threads))
    per_lane = math.ceil(threads / MAX_LANES)
    return threads // per_lane, per_lane


#: held by a runner's first run: see :func:`_first_run_alone`
_FIRST_RUNS = threading.Lock()


def _first_run_alone(runner: Run) -> Run:
    """``runner``, whose first run waits until no other runner is in its first run.

    Why: the runtimes' Python bindings initialise function-local statics on
    their first call (OpenVINO's numpy conversion of the outputs). Two lanes
    doing that at once deadlocked a run: one held the static's guard and
    waited for the GIL, the other held the GIL and waited for the guard.
    Once one first run has finished, those statics exist.
    """
    done = False

    def run(arr: np.ndarray) -> list:
        nonlocal done
        if done:
            return runner(arr)
        with _FIRST_RUNS:  # waiting here releases the GIL
            out = runner(arr)
        done = True
        return out

    return run


_LANE_THREAD = threading.local()


def on_lane_thread() -> bool:
    """Whether the calling thread is a lane (a thread of a :class:`LanePool`)."""
    return getattr(_LANE_THREAD, "active", False)


def _mark_lane_thread() -> None:
    _LANE_THREAD.active = True


class _PerProcess:
    """A value made on first use in each process: a forked child (a Celery
    prefork worker) inherits no threads, so it makes its own thread pool and
    its own runners rather than using the parent's."""

    def __init__(self, make: Callable):
        self._make = make
        self._lock = threading.Lock()
        self._pid: int | None = None
        self._value = None

    @property
    def made(self) -> bool:
        """Whether this process has made its value yet."""
        return self._pid == os.getpid()

    def get(self):
        with self._lock:
            if not self.made:
                self._value, self._pid = self._make(), os.getpid()
            return self._value


class LanePool:
    """``count`` lane threads that run functions over items concurrently, in order.

    A graph called from a lane thread runs right there, on a runner of its own
    (:meth:`Lanes.run_here`), instead of handing its images to other threads:
    so a caller that runs whole frames on a pool of lanes
    (:class:`pipeline.detect.DetectionStack`) gets its resizing, inference and
    decoding of each frame done on one thread, every lane busy. The threads
    start on first use and again after a fork (a Celery prefork child
    inherits no threads), and sleep while idle.
    """

    def __init__(self, count: int, name: str = "lane"):
        self.count = max(1, int(count))
        self._threads = _PerProcess(lambda: ThreadPoolExecutor(
            self.count, thread_name_prefix=name, initializer=_mark_lane_thread))

    @property
    def started(self) -> bool:
        """Whether the lane threads run in this process."""
        return self._threads.made

    def map(self, fn: Callable, items) -> list:
        """``[fn(item) for item in items]``, run on the lanes."""
        return list(self._threads.get().map(fn, items))


class Lanes:
    """``count`` runners of one graph that run chunks of a batch concurrently.

    ``make_runner()`` gives one runner (a ``numpy batch -> outputs`` callable)
    per lane; a runner serves one chunk at a time, and its first run happens
    alone (:func:`_first_run_alone`). The runners are made on first use and
    again after a fork; the chunks of a call run on a :class:`LanePool`, or,
    called from a lane thread, on that thread (:meth:`run_here`).
    """

    def __init__(self, make_runner: Callable[[], Run], count: int):
        self.count = int(count)
        self._make_runner = make_runner
        self._free = _PerProcess(self._runners)  # the runners not serving a chunk
        self._pool = LanePool(self.count, "graph-lane")

    def _runners(self) -> queue.SimpleQueue:
        free: queue.SimpleQueue = queue.SimpleQueue()
        for _ in range(self.count):
            free.put(_first_run_alone(self._make_runner()))
        return free

    def run_here(self, chunks: list[np.ndarray]) -> list[list]:
        """Outputs of every chunk, in order, run one after another on this thread
        with a free runner (waiting for one while every runner is busy)."""
        free = self._free.get()
        runner = free.get()
        try:
            return [runner(arr) for arr in chunks]
        finally:
            free.put(runner)

    def map(self, chunks: list[np.ndarray]) -> list[list]:
        """Outputs of every chunk, in order, the chunks spread over the lanes."""
        if on_lane_thread():
            return self.run_here(chunks)
        return self._pool.map(lambda arr: self.run_here([arr])[0], chunks)


def run_in_chunks(run: Run, x: torch.Tensor, lanes: Lanes | None = None
                  ) -> torch.Tensor | tuple[torch.Tensor, ...]:
    """``run(numpy batch) -> list of numpy outputs`` over slices of ``x`` holding at
    most :data:`MAX_PIXELS_PER_CALL` input pixels (at least one image), joined.
    With ``lanes`` the batch is cut into at least as many slices as lanes
    (while it has images enough) and the slices run on the lanes (called
    from a lane thread: all on that thread, :meth:`Lanes.run_here`); without,
    on ``run``.

    Why the pixel budget: a CPU runtime keeps the peak of its activations in
    its arena, and those grow with the batch: eight 1152×672 CenterFace inputs
    in one call took the process from 0.4 to 1.6 GB, while batching buys
    almost no speed on a CPU (docs/benchmarks.md, "Inference runtimes").
    Crops and small inputs still go several to a call.
    """
    n, _, h, w = x.shape
    step = max(1, MAX_PIXELS_PER_CALL // max(1, h * w))
    laned = lanes is not None and lanes.count > 1
    here = laned and on_lane_thread()  # the caller's lanes spread the work already
    if laned and not here:
        step = min(step, math.ceil(n / lanes.count))
    arr = _numpy_input(x)
    if n <= step and not laned:
        return _torch_outputs(run(arr))
    chunks = [arr[i:i + step] for i in range(0, n, step)]
    parts = lanes.map(chunks) if laned else [run(c) for c in chunks]
    return _torch_outputs([np.concatenate([np.asarray(p[k]) for p in parts])
                           for k in range(len(parts[0]))])


class _LanedGraph:
    """What both runtimes share: every call goes over the lanes, or, when the
    budget makes one lane, to the one runner with every thread. Subclasses make
    the runners."""

    def _setup_lanes(self, threads: int) -> None:
        self.threads = int(threads)
        count, self.threads_per_lane = lane_split(self.threads)
        self.lanes = Lanes(self._lane_runner, count) if count > 1 else None
        self._single: Run | None = None  # set by the subclass when there are no lanes
        self._single_lock = threading.Lock()  # a runner serves one call at a time

    def _lane_runner(self) -> Run:
        raise NotImplementedError

    def _run_single(self, arr: np.ndarray) -> list:
        with self._single_lock:
            return self._single(arr)

    def __call__(self, x: torch.Tensor):
        return run_in_chunks(self._run_single, x, self.lanes)


class OnnxRuntimeGraph(_LanedGraph):
    """An exported graph on ONNX Runtime's CPU provider; called like the module."""

    backend = "onnxruntime"
    precision = "f32"

    def __init__(self, path: str | Path, threads: int):
        self.path = Path(path)
        self._setup_lanes(threads)
        # without lanes the budget is one thread, so this is every thread then too
        self.session = self._session(self.threads_per_lane)
        self._session_lent = False  # whether a lane runs on self.session yet
        self._input = self.session.get_inputs()[0].name
        if self.lanes is None:
            self._single = _first_run_alone(self._runner(self.session))

    def _session(self, threads: int):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = int(threads)
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # idle pool threads sleep rather than spin: a busy neighbour keeps its core
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
        return ort.InferenceSession(str(self.path), opts, providers=["CPUExecutionProvider"])

    def _runner(self, session) -> Run:
        return lambda arr: session.run(None, {self._input: arr})

    def _lane_runner(self) -> Run:
        # single-threaded runs execute on the calling lane's thread, so the lanes
        # share one session (one copy of the weights); wider lanes get their own,
        # the first one the session made at start
        if self.threads_per_lane == 1 or not self._session_lent:
            self._session_lent = True
            return self._runner(self.session)
        return self._runner(self._session(self.threads_per_lane))

    def settings(self) -> dict:
        """Thread settings as the (lane) session reports them."""
        opts = self.session.get_session_options()
        return {"threads": self.threads, "lanes": self.lanes.count if self.lanes else 1,
                "threads_per_lane": opts.intra_op_num_threads,
                "spinning": opts.get_session_config_entry("session.intra_op.allow_spinning")}

    def __repr__(self) -> str:
        lanes = self.lanes.count if self.lanes else 1
        return f"OnnxRuntimeGraph({self.path.name}, threads={self.threads}, lanes={lanes})"


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


def openvino_cache_dir(graph: Path) -> Path:
    """Where OpenVINO keeps compiled blobs of ``graph``: beside it.

    Why: compiling the three default graphs took 1.55 s of every process
    start; loading them from the cache 0.39 s (docs/benchmarks.md, "Start-up").
    OpenVINO keys each blob by the graph file's content, the compile settings
    and its own version, so a changed graph or setting compiles again.
    """
    return graph.parent / "openvino-cache"


class OpenVINOGraph(_LanedGraph):
    """An exported graph on OpenVINO's CPU plugin; called like the module.

    ``precision`` is requested explicitly, fp32 unless bf16 is asked for (on
    CPUs with bf16 units OpenVINO would otherwise pick bf16 by itself, and
    the choice belongs to the ``half`` setting); one stream per lane, each
    lane an infer request of its own; no core pinning (the cores are shared).
    One dynamic-shape model serves every input size and batch: compiling per
    shape was up to 1.7× faster next to a busy core (bench/runtimes.py), yet
    not ahead of ONNX Runtime, and costs a compile for every new number of
    crops in a batch.
    """

    backend = "openvino"

    def __init__(self, path: str | Path, threads: int, precision: str = "f32"):
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        self.path, self.precision = Path(path), precision
        self._setup_lanes(threads)
        streams = self.lanes.count if self.lanes else 1
        self.config = self._config(streams, streams * self.threads_per_lane)
        self.compiled = self._compile(self.config)
        if self.lanes is None:
            self._single = _first_run_alone(self._runner(self.compiled))

    def _compile(self, config: dict):
        """The graph compiled for ``config``, through OpenVINO's model cache
        (:func:`openvino_cache_dir`); compiled afresh when the cache cannot be
        written (a read-only models folder)."""
        try:
            return _ov_core().compile_model(str(self.path), "CPU",
                                            {**config, "CACHE_DIR": str(openvino_cache_dir(self.path))})
        except RuntimeError as exc:
            log.info("OpenVINO model cache unusable (%s); compiling %s without it",
                     str(exc).strip().splitlines()[-1], self.path.name)
            return _ov_core().compile_model(str(self.path), "CPU", config)

    def _config(self, streams: int, threads: int) -> dict:
        return {"INFERENCE_NUM_THREADS": threads, "NUM_STREAMS": streams,
                "PERFORMANCE_HINT": "LATENCY" if streams == 1 else "THROUGHPUT",
                "ENABLE_CPU_PINNING": False, "INFERENCE_PRECISION_HINT": self.precision}

    @staticmethod
    def _runner(compiled) -> Run:
        """A run on an infer request of its own that reads the caller's array in
        place and copies each output once (the request reuses its output
        buffers on the next run)."""
        request = compiled.create_infer_request()
        return lambda arr: [np.array(o) for o in
                            request.infer({0: arr}, share_inputs=True, share_outputs=True).to_tuple()]

    def _lane_runner(self) -> Run:
        return self._runner(self.compiled)

    def settings(self) -> dict:
        """Thread settings as the compiled model reports them."""
        return {key: self.compiled.get_property(key) for key in
                ("INFERENCE_NUM_THREADS", "NUM_STREAMS", "ENABLE_CPU_PINNING",
                 "INFERENCE_PRECISION_HINT")}

    def __repr__(self) -> str:
        lanes = self.lanes.count if self.lanes else 1
        return (f"OpenVINOGraph({self.path.name}, threads={self.threads}, lanes={lanes}, "
                f"{self.precision})")


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
