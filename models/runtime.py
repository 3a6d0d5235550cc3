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
(``auto|torch|onnxruntime|openvino``); ``auto`` is torch on CUDA, and on
CPU OpenVINO in bf16 where the network's spec allows it (``cpu_bf16``:
measured without coverage lost), the ``half`` setting is on (the default)
and the CPU has AMX bf16 units (1.5-2.7× faster per call than fp32,
docs/benchmarks.md "Half precision on CPU"); else :data:`CPU_DEFAULT` in
fp32. ``half`` also makes an explicit ``openvino`` run such a network in
bf16 on such a CPU; ONNX Runtime and torch on CPU always run fp32.

Threads: one explicit count per graph (a pipeline stage's budget;
default: the cores this process may run on), with spin-waiting disabled
so idle threads sleep instead of competing with a neighbour for the cores.

This module is what a detector calls: its graph's spec and the choice of
backend. Exporting the graph and keeping it cached beside the checkpoint is
:mod:`models.graph_export`; running it on ONNX Runtime or OpenVINO is
:mod:`models.graph_runners`.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from .graph_export import ensure_graph
from .graph_runners import cpu_has_bf16, load_graph

BACKENDS = ("torch", "onnxruntime", "openvino")
ENV = "ANONYMIZE_RUNTIME"
#: CPU backend used when none is asked for and bf16 is not used: the fastest
#: fp32 one in bench/runtimes.py
CPU_DEFAULT = "onnxruntime"

log = logging.getLogger(__name__)
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
    #: may run in bf16 on CPUs with AMX when ``half`` is on: set only where
    #: ``anonymize eval`` showed no coverage lost (docs/benchmarks.md)
    cpu_bf16: bool = False


def select_backend(backend: str | None, device: str | torch.device, half: bool = False) -> str:
    """The backend to run on ``device``: ``backend`` or ``ANONYMIZE_RUNTIME`` or auto
    (which depends on ``half`` and the CPU, see the module's docstring)."""
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
    if value == "auto":
        return "openvino" if half and cpu_has_bf16() else CPU_DEFAULT
    return value


def cpu_precision(backend: str, half: bool) -> str:
    """The precision of a CPU graph on ``backend``: bf16 on OpenVINO when
    ``half`` and the CPU has bf16 units, else f32."""
    return "bf16" if backend == "openvino" and half and cpu_has_bf16() else "f32"


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
               threads: int | None = None, half: bool = False):
    """``module`` itself (torch backend) or a fast graph exported from it that
    is called the same way. ``checkpoint`` is the weights file the module was
    built from: it keys the cache. ``half``: the detector's half-precision
    setting (bf16 on CPUs with AMX, for networks whose spec allows it)."""
    if _EXPORT_ONLY.get():
        ensure_graph(module, spec, checkpoint, quiet=True)
        return module
    half = half and spec.cpu_bf16
    choice = select_backend(backend, device, half)
    if choice == "torch":
        return module
    path = ensure_graph(module, spec, checkpoint)
    graph = load_graph(path, choice, threads, cpu_precision(choice, half))
    log.info("%s network: %r", spec.name, graph)
    return graph
