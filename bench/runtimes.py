"""CPU runtimes for the detectors' networks: torch eager vs ONNX Runtime vs OpenVINO.

Measures the network call only (the part models/runtime.py exports), fp32,
at the input sizes the pipeline uses, batch 1 and 4, with 2 threads and 1
thread, quiet and with a busy-loop process pinned to one core (``--load``):
the situation of a worker sharing its machine. Median milliseconds per
frame. Every (model, backend, threads) runs in its own process, so no
runtime's thread pool disturbs another's timing, and the backends' calls
are interleaved one by one, so a shared machine's changing load falls on
all of them alike; each table row gives the 1-minute load average at its
start.

Backends: ``torch`` (the detector's eager module, as it calls it),
``torch-passive`` (the same with ``OMP_WAIT_POLICY=PASSIVE``: idle OpenMP
threads sleep), ``onnxruntime`` (spinning disabled, as shipped),
``onnxruntime-spin`` (ONNX Runtime's default spinning threads),
``openvino`` (one dynamic-shape model, fp32), ``openvino-bf16`` (the same
in bf16: what the plate and vehicle networks run by default on CPUs with
AMX; on other CPUs OpenVINO emulates it slowly) and ``openvino-static``
(compiled per input shape).

    python bench/runtimes.py                    # quiet, then loaded
    python bench/runtimes.py --load loaded --models retinaface --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data"
sys.path.insert(0, str(ROOT))

#: (height, width) network inputs, as the pipeline makes them
SIZES = {
    # face_size 768 / 1280 / 1920 on 16:9 frames (long side scaled, ~multiple of 32)
    "retinaface": [(448, 768), (736, 1280), (1088, 1920)],
    # one-stage letterbox 640 and 960 (the default plate_size) of 16:9 frames; two-stage crops
    "yolov8": [(384, 640), (544, 960), (320, 320)],
    "centernet": [(512, 512)],
    # the default face model on a 768×432 frame: native and ×1.5 (--min-face 16)
    "centerface": [(448, 768), (672, 1152)],
    # the default vehicle model: its training size
    "nanodet": [(416, 416)],
}
MODELS = {"retinaface": "retinaface-mobilenet0.25", "yolov8": "plate-yolov8n-pyplatex",
          "centernet": "vehicles-centernet-mobilenetv3", "centerface": "centerface",
          "nanodet": "vehicles-nanodet-g"}
#: the detector module of each model that models/runtime.py exports
MODULES = {"retinaface": "retinaface", "yolov8": "yolov8", "centerface": "centerface",
           "nanodet": "nanodet"}
BACKENDS = ("torch", "torch-passive", "onnxruntime", "onnxruntime-spin", "openvino",
            "openvino-bf16", "openvino-static")
BATCHES = (1, 4)


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


# -- networks and graphs (main process) ---------------------------------------------

def _centernet_trunk(checkpoint: Path):
    """CenterNet's convolutional trunk (the heads), the exportable part of its graph
    interpreter; the decode stays per image in torch."""
    import torch

    from models.centernet import load_graph

    graph = load_graph(checkpoint)

    class Trunk(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.tfjs = graph

        def forward(self, x):
            heads = self.tfjs.heads(x)
            return tuple(heads[name] for name in self.tfjs.head_names)

    return Trunk().eval()


def _export_centernet(trunk, path: Path) -> None:
    """The TFJS interpreter's trunk through the TorchScript-tracing exporter: the
    dynamo exporter loses its registered constants while decomposing (torch 2.13).
    Fixed 512×512 input, dynamic batch. Bench only; CenterNet does not adopt
    models/runtime.py here."""
    import warnings

    import torch

    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(trunk, (torch.randn(2, 3, 512, 512),), str(path), dynamo=False,
                          opset_version=17, input_names=["images"],
                          output_names=list(trunk.tfjs.head_names),
                          dynamic_axes={"images": {0: "batch"}})


def prepare_graphs(models: list[str], folder: Path) -> dict[str, str]:
    """Export (or find cached) each model's graph; CenterNet's goes to ``folder``."""
    import importlib

    from models import graph_export
    from models.registry import checkpoint_path

    paths = {}
    for model in models:
        ckpt = checkpoint_path(MODELS[model])
        if model == "centernet":
            path = folder / "centernet-trunk.onnx"
            _export_centernet(_centernet_trunk(ckpt), path)
        else:
            mod = importlib.import_module(f"models.{MODULES[model]}")
            path = graph_export.ensure_graph(_torch_net(model, ckpt), mod.GRAPH, ckpt)
        paths[model] = str(path) if path else ""
    return paths


def _torch_net(model: str, checkpoint: Path):
    """The eager module exactly as the detector calls it on CPU."""
    import importlib

    if model == "centernet":
        return _centernet_trunk(checkpoint)
    det = importlib.import_module(f"models.{MODULES[model]}").build(checkpoint, runtime="torch")
    return det.module(416) if model == "nanodet" else det.net


# -- one cell (worker process) -----------------------------------------------------

def _inputs(model: str, height: int, width: int, batch: int):
    """A real street photo resized to the input, scaled as the detector scales it."""
    import cv2
    import torch

    from pipeline.datasets import read_image

    img = read_image(sorted((DATA / "plates_vehicles_openimages_roboflow" / "images").iterdir())[0])
    x = torch.from_numpy(cv2.resize(img, (width, height))).permute(2, 0, 1).float()[None]
    if model == "retinaface":
        x = x - torch.tensor([123.0, 117.0, 104.0]).view(1, 3, 1, 1)
    elif model in ("yolov8", "nanodet"):
        x = x / 255.0  # scale only: the timing does not depend on the exact normalisation
    return x.repeat(batch, 1, 1, 1).contiguous()


def _runner(model: str, backend: str, threads: int, graph: str):
    import torch

    from models import graph_runners
    from models.registry import checkpoint_path

    if backend.startswith("torch"):
        torch.set_num_threads(threads)
        net = _torch_net(model, checkpoint_path(MODELS[model]))
        fmt = (torch.channels_last if model in ("retinaface", "centerface")
               else torch.contiguous_format)

        def run(x):
            with torch.inference_mode():
                return net(x.contiguous(memory_format=fmt))
        return run
    if not graph:
        return None
    if backend == "onnxruntime":
        return graph_runners.OnnxRuntimeGraph(graph, threads)
    if backend == "onnxruntime-spin":
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        session = ort.InferenceSession(graph, opts, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        return lambda x: session.run(None, {name: x.numpy()})
    if backend == "openvino":
        return graph_runners.OpenVINOGraph(graph, threads)
    if backend == "openvino-bf16":
        return graph_runners.OpenVINOGraph(graph, threads, "bf16")
    return _OpenVINOStatic(graph, threads)


class _OpenVINOStatic:
    """OpenVINO compiled once per input shape (as shipped: one dynamic model)."""

    def __init__(self, graph: str, threads: int):
        from models import graph_runners

        self.core = graph_runners._ov_core()
        self.config = graph_runners.OpenVINOGraph(graph, threads).config
        self.model = self.core.read_model(graph)
        self.requests: dict[tuple, object] = {}

    def __call__(self, x):
        arr = x.contiguous().numpy()
        if arr.shape not in self.requests:
            model = self.model.clone()
            model.reshape({model.inputs[0].get_any_name(): list(arr.shape)})
            compiled = self.core.compile_model(model, "CPU", self.config)
            self.requests[arr.shape] = compiled.create_infer_request()
        return self.requests[arr.shape].infer({0: arr})


def worker(job: dict) -> None:
    """Serve timing requests for one (model, backend, threads) over stdin/stdout.

    A request ``{"height", "width", "batch", "calls"}`` runs the network
    ``calls`` times on that input and answers each call's seconds.
    """
    run = _runner(job["model"], job["backend"], job["threads"], job["graph"])
    inputs: dict[tuple, object] = {}
    print(json.dumps({"ready": run is not None}), flush=True)
    for line in sys.stdin:
        req = json.loads(line)
        key = (req["height"], req["width"], req["batch"])
        if key not in inputs:
            inputs[key] = _inputs(job["model"], *key)
        times = []
        for _ in range(req["calls"]):
            t = time.perf_counter()
            run(inputs[key])
            times.append(time.perf_counter() - t)
        print(json.dumps({"times": times}), flush=True)


# -- orchestration -------------------------------------------------------------------

def _busy_core() -> subprocess.Popen:
    """A process spinning on core 0: the busy neighbour."""
    from bench.peers import BUSY_LOOP

    return subprocess.Popen(["taskset", "-c", "0", sys.executable, "-c", BUSY_LOOP])


class Worker:
    def __init__(self, job: dict):
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        if job["backend"] == "torch-passive":
            env["OMP_WAIT_POLICY"] = "PASSIVE"
        self.proc = subprocess.Popen([sys.executable, __file__, "--worker", json.dumps(job)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                     env=env)
        self.ready = json.loads(self.proc.stdout.readline())["ready"]

    def times(self, height: int, width: int, batch: int, calls: int) -> list[float]:
        self.proc.stdin.write(json.dumps({"height": height, "width": width, "batch": batch,
                                          "calls": calls}) + "\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())["times"]

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait()


def run_cells(models, backends, threads_list, load, graphs, args) -> list[dict]:
    """Every backend of a (model, threads) lives in its own process; their calls
    are interleaved (one call each, in turn, ``runs`` times), so that a change
    of the machine's load during a cell affects every backend alike."""
    rows = []
    for model in models:
        for threads in threads_list:
            chosen = [b for b in backends
                      if not (load == "quiet" and b in ("torch-passive", "onnxruntime-spin"))]
            workers = {}
            for b in chosen:
                w = Worker({"model": model, "backend": b, "threads": threads,
                            "graph": graphs.get(model, "")})
                if w.ready:
                    workers[b] = w
                else:
                    w.close()
            try:
                for height, width in SIZES[model]:
                    for batch in args.batches:
                        before = loadavg()
                        for w in workers.values():
                            w.times(height, width, batch, 2)  # warm-up: allocate, pick kernels
                        times: dict[str, list[float]] = {b: [] for b in workers}
                        for _ in range(args.runs):
                            for b, w in workers.items():
                                if len(times[b]) >= 3 and sum(times[b]) > args.budget_s:
                                    continue  # a collapsed backend: 3 runs tell enough
                                times[b] += w.times(height, width, batch, 1)
                        for b, ts in times.items():
                            ms = statistics.median(ts) * 1000 / batch
                            rows.append({"model": model, "backend": b, "threads": threads,
                                         "load": load, "height": height, "width": width,
                                         "batch": batch, "ms": ms, "runs": len(ts),
                                         "loadavg": before})
                        print(f"[{load} {before}] {model} {threads}t {width}x{height} b{batch}: "
                              + ", ".join(f"{b} {statistics.median(ts) * 1000 / batch:.1f}"
                                          for b, ts in times.items()),
                              file=sys.stderr, flush=True)
            finally:
                for w in workers.values():
                    w.close()
    return rows


def table(rows: list[dict], model: str, load: str) -> str:
    rows = [r for r in rows if r["model"] == model and r["load"] == load]
    if not rows:
        return ""
    cols = [(b, t) for t in sorted({r["threads"] for r in rows}, reverse=True)
            for b in BACKENDS if any(r["backend"] == b and r["threads"] == t for r in rows)]
    head = ("| input (w×h) | batch | " + " | ".join(f"{b} {t}t" for b, t in cols)
            + " | load avg |")
    out = [head, "|" + "---|" * (len(cols) + 3)]
    for h, w in SIZES[model]:
        for batch in sorted({r["batch"] for r in rows}):
            cells, loads = [], []
            for b, t in cols:
                hit = [r for r in rows if (r["backend"], r["threads"], r["height"], r["width"],
                                           r["batch"]) == (b, t, h, w, batch)]
                cells.append(f"{hit[0]['ms']:.1f}" if hit else "—")
                loads += [float(r["loadavg"].split()[0]) for r in hit]
            span = "" if not loads else (f"{min(loads):.1f}" if min(loads) == max(loads)
                                         else f"{min(loads):.1f}–{max(loads):.1f}")
            out.append(f"| {w}×{h} | {batch} | " + " | ".join(cells) + f" | {span} |")
    return "\n".join(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--models", nargs="*", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--backends", nargs="*", default=list(BACKENDS), choices=list(BACKENDS))
    ap.add_argument("--threads", nargs="*", type=int, default=[2, 1])
    ap.add_argument("--batches", nargs="*", type=int, default=list(BATCHES))
    ap.add_argument("--load", nargs="*", default=["quiet", "loaded"], choices=["quiet", "loaded"])
    ap.add_argument("--runs", type=int, default=7, help="timed calls per cell (after 2 warm-up)")
    ap.add_argument("--budget-s", type=float, default=20.0,
                    help="a backend stops after 3 runs once its runs in a cell took this long")
    ap.add_argument("--json", type=Path, help="also write every measurement here")
    args = ap.parse_args()
    if args.worker:
        worker(json.loads(args.worker))
        return 0
    with tempfile.TemporaryDirectory(prefix="anonymize-bench-") as tmp:
        graphs = prepare_graphs(args.models, Path(tmp))
        rows: list[dict] = []
        for load in args.load:
            busy = _busy_core() if load == "loaded" else None
            try:
                start = loadavg()
                rows += run_cells(args.models, args.backends, args.threads, load, graphs, args)
                print(f"\n### {load}: load average {start} at start, {loadavg()} at end\n")
            finally:
                if busy is not None:
                    busy.kill()
                    busy.wait()
            for model in args.models:
                print(f"{model} ({MODELS[model]}), median ms per frame\n")
                print(table(rows, model, load) + "\n", flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
