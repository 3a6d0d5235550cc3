"""Vehicle detectors compared: NanoDet-g and CenterNet, as the two-stage plate path uses them.

Sections (pick with --only, comma-separated):
  cars      car recall@0.5 / coverage on the Open Images set (the evaluation's
            `car` group: car, motorcycle, bus, truck) at each vehicle threshold,
            and the share of annotated plates lying inside a detected vehicle
            (plate area >= 90 % inside one vehicle box; and inside the box grown
            by the two-stage crop margin) on both plate sets
  speed     CPU ms per 1280x720 frame at batch 1 and 4 with 2 torch threads,
            wall clock and process CPU time (median of --repeats calls, runs
            interleaved over --rounds); with --baseline CHECKOUT also
            CenterNet as that checkout runs it (e.g. before a change)
  twostage  plate coverage recall in two-stage mode (pyplatex YOLOv8n plates)
            with each vehicle detector, on both plate sets

Each detector runs once per image at the lowest threshold; higher thresholds
filter those detections, which equals running at them (greedy NMS only lets
higher-scoring boxes suppress a box). Output: a markdown report on stdout
(and --out FILE), with the machine state (load average) measured alongside.

    .venv/bin/python bench/vehicles_sweep.py --baseline ../main --out /tmp/vehicles.md
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data"

MODELS = {"NanoDet-g 416": "vehicles-nanodet-g",
          "CenterNet-MobileNetV3 512": "vehicles-centernet-mobilenetv3"}
THRESHOLDS = (0.15, 0.2, 0.3)
CAR_SET = "plates_vehicles_openimages_roboflow"
PLATE_SETS = ("plates_vehicles_openimages_roboflow", "plates_openalpr_us")
PLATE_MODEL = "plate-yolov8n-pyplatex"


def _load() -> str:
    one, five, _ = os.getloadavg()
    return f"load average {one:.1f} (1 min) / {five:.1f} (5 min) on {os.cpu_count()} CPUs"


def _key(image) -> str:
    return hashlib.blake2b(image.tobytes(), digest_size=16).hexdigest()


# -- detections, cached per image ----------------------------------------------------

def detect_all(name: str, datasets: tuple[str, ...], thresh: float, batch: int = 8) -> dict:
    """{image key: Detections} of one vehicle model over datasets, at ``thresh``."""
    from itertools import islice

    from pipeline.datasets import iter_samples, load_annotations
    from pipeline.detect import load_detector

    det = load_detector(name, "cpu", False)
    out = {}
    for ds in datasets:
        samples = iter_samples(load_annotations(DATA / ds))
        while chunk := list(islice(samples, batch)):
            images = [s.image for s in chunk]
            for s, d in zip(chunk, det.detect(images, thresh), strict=True):
                out[_key(s.image)] = d
    return out


class CachedVehicles:
    """A vehicle detector answering from cached low-threshold detections."""

    def __init__(self, name: str, cache: dict):
        self.name = name
        self.cache = cache

    def detect(self, frames, thresh=None):
        return [self.cache[_key(f)].above(thresh) for f in frames]


# -- cars: recall, coverage, plates inside vehicles ----------------------------------------

def plates_inside(cache: dict, dataset: str, thresh: float, margin: float) -> tuple[float, float]:
    """Share of annotated plates with >= 90 % of their area inside one vehicle box
    (as detected; and grown by ``margin`` of its size on every side)."""
    import numpy as np

    from pipeline.datasets import iter_samples, load_annotations

    inside = grown = total = 0
    for s in iter_samples(load_annotations(DATA / dataset)):
        plates = np.array([b.xyxy for b in s.gt if b.label == "plate"]).reshape(-1, 4)
        if not len(plates):
            continue
        boxes = cache[_key(s.image)].above(thresh).xyxy.astype(np.float64)
        total += len(plates)
        for share, count in ((0.0, "inside"), (margin, "grown")):
            b = boxes.copy()
            wh = b[:, 2:] - b[:, :2]
            b[:, :2] -= wh * share
            b[:, 2:] += wh * share
            lt = np.maximum(plates[:, None, :2], b[None, :, :2])
            rb = np.minimum(plates[:, None, 2:], b[None, :, 2:])
            inter = np.clip(rb - lt, 0, None).prod(axis=2)
            area = np.clip(plates[:, 2:] - plates[:, :2], 1e-9, None).prod(axis=1)
            hit = int(((inter / area[:, None]) >= 0.9).any(axis=1).sum()) if len(b) else 0
            if count == "inside":
                inside += hit
            else:
                grown += hit
    return inside / max(total, 1), grown / max(total, 1)


def section_cars(caches: dict) -> str:
    from pipeline.datasets import load_annotations
    from pipeline.evaluate import evaluate_dataset
    from pipeline.settings import Settings

    s = Settings()
    records = load_annotations(DATA / CAR_SET)
    rows = ["| model | vehicle thresh | car GT | detections | precision@0.5 | recall@0.5 "
            "| coverage | coverage ≥16 px | plates in a vehicle box (Open Images / US) "
            f"| plates in the crop, margin {s.crop_margin:g} (Open Images / US) |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    for label, name in MODELS.items():
        cache = caches[name]
        for t in THRESHOLDS:
            vehicles = CachedVehicles(name, cache)
            with tempfile.TemporaryDirectory() as tmp:
                m = evaluate_dataset(records, lambda frames, v=vehicles, t=t: v.detect(frames, t),
                                     tmp, "two-stage", labels=("car",), mask_scale=s.mask_scale,
                                     shape=s.shape, progress=False)["labels"]["car"]
            inside = [plates_inside(cache, ds, t, s.crop_margin) for ds in PLATE_SETS]
            rows.append(f"| {label} | {t:g} | {m['gt']} | {m['detections']} "
                        f"| {m['precision']:.3f} | {m['recall']:.3f} | {m['coverage_recall']:.3f} "
                        f"| {m['coverage_recall_min_width']:.3f} "
                        f"| {inside[0][0]:.3f} / {inside[1][0]:.3f} "
                        f"| {inside[0][1]:.3f} / {inside[1][1]:.3f} |")
            print(rows[-1], file=sys.stderr, flush=True)
    return "\n".join(rows) + f"\n\nCoverage with mask scale {s.mask_scale:g} (the default)."


# -- two-stage plates -----------------------------------------------------------------

def section_twostage(caches: dict) -> str:
    from pipeline.datasets import load_annotations
    from pipeline.detect import DetectionStack, load_detector
    from pipeline.evaluate import evaluate_dataset
    from pipeline.settings import Settings

    plates = load_detector(PLATE_MODEL, "cpu", False)
    rows = ["| vehicle model | vehicle thresh | dataset | plate GT | plate recall@0.5 "
            "| plate coverage | coverage ≥16 px |", "|---|---|---|---|---|---|---|"]
    for ds in PLATE_SETS:
        records = load_annotations(DATA / ds)
        for label, name in MODELS.items():
            for t in THRESHOLDS:
                settings = Settings(plates="two-stage", vehicle_thresh=t)
                stack = DetectionStack(settings, faces=None, plates=plates,
                                       vehicles=CachedVehicles(name, caches[name]))
                with tempfile.TemporaryDirectory() as tmp:
                    m = evaluate_dataset(records, stack.detect, tmp, "two-stage",
                                         labels=("plate",), mask_scale=settings.mask_scale,
                                         shape=settings.shape, progress=False)["labels"]["plate"]
                rows.append(f"| {label} | {t:g} | {ds} | {m['gt']} | {m['recall']:.3f} "
                            f"| {m['coverage_recall']:.3f} | {m['coverage_recall_min_width']:.3f} |")
                print(rows[-1], file=sys.stderr, flush=True)
    return "\n".join(rows) + (f"\n\nPlates: `{PLATE_MODEL}`, crops at "
                              f"{Settings().crop_size}, lp thresh {Settings().lp_thresh:g}, "
                              f"mask scale {Settings().mask_scale:g}.")


# -- speed ------------------------------------------------------------------------------

def time_model(name: str, repeats: int) -> dict:
    """{batch: (wall ms, CPU ms) per frame}, medians; runs in whatever checkout is on the path."""
    import statistics

    import cv2
    import torch

    from pipeline.datasets import read_image
    from pipeline.detect import load_detector

    torch.set_num_threads(2)
    image = read_image(sorted((DATA / CAR_SET / "images").iterdir())[0])
    frame = cv2.resize(image, (1280, 720))
    det = load_detector(name, "cpu", False)
    out = {}
    with torch.inference_mode():
        for batch in (1, 4):
            frames = [frame] * batch
            det.detect(frames, 0.2)  # warm-up
            wall, cpu = [], []
            for _ in range(repeats):
                t, c = time.perf_counter(), time.process_time()
                det.detect(frames, 0.2)
                wall.append((time.perf_counter() - t) * 1000 / batch)
                cpu.append((time.process_time() - c) * 1000 / batch)
            out[batch] = (statistics.median(wall), statistics.median(cpu))
    return out


def section_speed(repeats: int, rounds: int, baseline: str | None) -> str:
    """Each model timed in its own process, the runs interleaved over ``rounds``
    (a loaded machine drifts; interleaving spreads the drift over all runs)."""
    import statistics

    runs = [(label, name, str(ROOT), "this checkout") for label, name in MODELS.items()]
    if baseline:
        runs.append(("CenterNet-MobileNetV3 512", MODELS["CenterNet-MobileNetV3 512"],
                     str(Path(baseline).resolve()), f"{baseline} (TFJS interpreter)"))
    results: dict[int, list[dict]] = {i: [] for i in range(len(runs))}
    loads = []
    for _ in range(rounds):
        for i, (_, name, checkout, _) in enumerate(runs):
            loads.append(os.getloadavg()[0])
            env = dict(os.environ, PYTHONPATH=checkout)
            proc = subprocess.run([sys.executable, __file__, "--time-model", name,
                                   "--repeats", str(repeats)], env=env, cwd=checkout,
                                  capture_output=True, text=True, check=True)
            results[i].append(json.loads(proc.stdout.strip().splitlines()[-1]))
            print(runs[i][0], runs[i][3], results[i][-1], file=sys.stderr, flush=True)
    rows = ["| model | code | batch | wall ms/frame | CPU ms/frame (2 threads) |",
            "|---|---|---|---|---|"]
    for i, (label, _, _, code) in enumerate(runs):
        for batch in results[i][0]:
            wall = [r[batch][0] for r in results[i]]
            cpu = [r[batch][1] for r in results[i]]
            rows.append(f"| {label} | {code} | {batch} | {statistics.median(wall):.0f} "
                        f"({min(wall):.0f}–{max(wall):.0f}) | {statistics.median(cpu):.0f} "
                        f"({min(cpu):.0f}–{max(cpu):.0f}) |")
    return "\n".join(rows) + (f"\n\nMedian over {rounds} interleaved rounds (range in "
                               f"brackets), each the median of {repeats} calls after a warm-up; "
                               f"1-min load average during the runs "
                               f"{min(loads):.1f}–{max(loads):.1f} on {os.cpu_count()} CPUs.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="cars,speed,twostage")
    parser.add_argument("--baseline", help="checkout whose CenterNet is timed too (e.g. ../main)")
    parser.add_argument("--repeats", type=int, default=7, help="timed calls per run")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved speed runs per model")
    parser.add_argument("--out", help="also write the report here")
    parser.add_argument("--time-model", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.time_model:  # child process of the speed section: PYTHONPATH picks the checkout
        print(json.dumps(time_model(args.time_model, args.repeats)))
        return
    sys.path.insert(0, str(ROOT))
    import torch

    torch.set_num_threads(2)
    only = set(args.only.split(","))
    parts = [f"# Vehicle detectors\n\nStart: {_load()}; torch {torch.__version__}, "
             f"2 torch threads.\n"]
    caches = {}
    if only & {"cars", "twostage"}:
        t = time.perf_counter()
        caches = {name: detect_all(name, PLATE_SETS, min(THRESHOLDS)) for name in MODELS.values()}
        parts.append(f"Detections of both models on {', '.join(PLATE_SETS)}: "
                     f"{time.perf_counter() - t:.0f} s.\n")
    if "cars" in only:
        parts.append(f"## Cars ({CAR_SET})\n\n{section_cars(caches)}\n")
    if "twostage" in only:
        parts.append(f"## Two-stage plates\n\n{section_twostage(caches)}\n")
    if "speed" in only:
        parts.append(f"## CPU speed, 1280×720 frame\n\n{section_speed(args.repeats, args.rounds, args.baseline)}\n")
    parts.append(f"End: {_load()}.")
    report = "\n".join(parts)
    print(report)
    if args.out:
        Path(args.out).write_text(report + "\n")


if __name__ == "__main__":
    main()
