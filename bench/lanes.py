"""Lanes vs lock-step: one graph's batch of 8 run as concurrent single-thread
lanes (what graph_runners does on 2+ cores) or as one run per image whose
threads meet at every layer (the runner with ``MAX_LANES = 1``).

The same exported graphs and input sizes as a 768×432 frame in the
pipeline with defaults: CenterFace at ×1.5 (1152×672), the plate network at
960 and 640 and on six 320 vehicle crops, NanoDet at 416. The two runners
alternate call by call, so a shared machine's changing load falls on both
alike; median (and best) milliseconds per image of 6 calls each.
``--load`` adds a busy-loop process for the whole run.

    python bench/lanes.py [--backend openvino|onnxruntime] [--threads 2] [--load]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CASES = (  # (label, registry name, task, input shape)
    ("centerface 1152×672", "centerface", "faces", (8, 3, 672, 1152)),
    ("plates 960×544", "plate-yolov8n-pyplatex", "plates", (8, 3, 544, 960)),
    ("plates 640×352", "plate-yolov8n-pyplatex", "plates", (8, 3, 352, 640)),
    ("plates 6 crops 320", "plate-yolov8n-pyplatex", "plates", (6, 3, 320, 320)),
    ("nanodet 416", "vehicles-nanodet-g", "vehicles", (8, 3, 416, 416)),
)


def graph_path(name: str, task: str, backend: str) -> Path:
    """The exported graph the detector ``name`` runs on ``backend``."""
    from pipeline.detect import load_detector

    os.environ["ANONYMIZE_RUNTIME"] = backend
    det = load_detector(name, "cpu", False, task, threads=1)
    net = det.net if hasattr(det, "net") else det.module(det.size)  # NanoDet: one per size
    return net.path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backend", default="openvino", choices=["openvino", "onnxruntime"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--load", action="store_true", help="a busy-loop process runs beside")
    a = ap.parse_args()
    import torch

    from models import graph_runners

    precision = "bf16" if a.backend == "openvino" and graph_runners.cpu_has_bf16() else "f32"
    burner = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if a.load else None
    try:
        print(f"{a.backend} {precision}, {a.threads} threads, "
              f"{'one busy-loop process beside' if a.load else 'no extra load'}\n")
        print("| network and input | lock-step ms/image | lanes ms/image | lock-step ÷ lanes |")
        print("|---|---|---|---|")
        for label, name, task, shape in CASES:
            path = graph_path(name, task, a.backend)
            laned = graph_runners.load_graph(path, a.backend, a.threads, precision)
            lanes = graph_runners.MAX_LANES
            graph_runners.MAX_LANES = 1
            try:
                lockstep = graph_runners.load_graph(path, a.backend, a.threads, precision)
            finally:
                graph_runners.MAX_LANES = lanes
            x = torch.rand(shape) * 255
            laned(x), lockstep(x)
            times: dict[str, list[float]] = {"lock": [], "lanes": []}
            for _ in range(6):
                for key, graph in (("lock", lockstep), ("lanes", laned)):
                    t = time.perf_counter()
                    graph(x)
                    times[key].append((time.perf_counter() - t) / shape[0] * 1000)
            lock, lane = statistics.median(times["lock"]), statistics.median(times["lanes"])
            print(f"| {label} | {lock:.1f} (best {min(times['lock']):.1f}) | "
                  f"{lane:.1f} (best {min(times['lanes']):.1f}) | {lock / lane:.2f}× |", flush=True)
    finally:
        if burner is not None:
            burner.kill()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
