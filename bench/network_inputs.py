"""Network inputs from uint8 frames on CPU: the float path against whole grey levels.

For the inputs a 768×432 frame gets with the defaults (CenterFace at ×1.5,
the plate network letterboxed at 960 and 640), ms per frame on real frames
of a shared clip:

* ``float``: what the detectors did before :func:`models.resize.letterbox_frames`:
  torch's (or, for CenterFace, OpenCV's per-plane) float resize, rounding
  (YOLO), ``F.pad`` to the canvas, scaling;
* ``letterbox_frames``: OpenCV on the uint8 frame into a uint8 canvas, then
  one conversion to float planes.

Also the largest difference between the two, in grey levels.

    python bench/network_inputs.py [--clip PATH] [--frames 8] [--repeats 5] [--threads 1]

``--threads`` sets torch's and OpenCV's pools (1: the width of a lane on up to
four cores, as in a run).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import cv2  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from bench.resize_speed import clip_batch  # noqa: E402
from models.boxes import letterbox_params  # noqa: E402
from models.centerface import _aligned  # noqa: E402
from models.resize import letterbox_frames, resize_frames  # noqa: E402

CLIP = ROOT.parent / "shared" / "data" / "videos" / "intel_car-detection.mp4"


def centerface_float(batch: torch.Tensor, scale: float):
    h, w = round(batch.shape[1] * scale), round(batch.shape[2] * scale)
    x = resize_frames(batch, h, w)
    return F.pad(x, (0, _aligned(w) - w, 0, _aligned(h) - h)).contiguous()


def centerface_grey(batch: torch.Tensor, scale: float):
    h, w = round(batch.shape[1] * scale), round(batch.shape[2] * scale)
    return letterbox_frames(batch, h, w, canvas=(_aligned(h), _aligned(w)))


def _yolo_geometry(batch: torch.Tensor, size: int):
    _, h, w, _ = batch.shape
    _, new_w, new_h, left, top = letterbox_params(h, w, size, 32, False)
    return new_h, new_w, _aligned(new_h), _aligned(new_w), top, left


def yolo_float(batch: torch.Tensor, size: int):
    new_h, new_w, ch, cw, top, left = _yolo_geometry(batch, size)
    x = resize_frames(batch, new_h, new_w, antialias=False, opencv_enlarge=False)
    x = x.round_().clamp_(0, 255)
    x = F.pad(x, (left, cw - new_w - left, top, ch - new_h - top), value=114.0)
    return x / 255.0


def yolo_grey(batch: torch.Tensor, size: int):
    new_h, new_w, ch, cw, top, left = _yolo_geometry(batch, size)
    return letterbox_frames(batch, new_h, new_w, canvas=(ch, cw), offset=(top, left), fill=114,
                            scale=1 / 255, antialias=False)


CASES = (  # label, float path, whole grey levels, argument, grey levels per unit
    ("CenterFace ×1.5 (1152×672)", centerface_float, centerface_grey, 1.5, 1.0),
    ("plates 960 (960×544)", yolo_float, yolo_grey, 960, 255.0),
    ("plates 640 (640×384)", yolo_float, yolo_grey, 640, 255.0),
)


def _median_ms(fn, batch, arg, repeats: int) -> float:
    fn(batch, arg)  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn(batch, arg)
        times.append((time.perf_counter() - t) / len(batch) * 1000)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clip", type=Path, default=CLIP)
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1, help="torch and OpenCV threads")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    cv2.setNumThreads(args.threads)
    batch = clip_batch(args.clip, args.frames)
    print(f"{args.clip.name}: {batch.shape[2]}×{batch.shape[1]}, batches of {len(batch)}, "
          f"{args.threads} thread(s)\n")
    print("| input | float ms/frame | whole grey levels ms/frame | float ÷ grey | max difference (grey levels) |")
    print("|---|---|---|---|---|")
    for label, before, after, arg, unit in CASES:
        t_before = _median_ms(before, batch, arg, args.repeats)
        t_after = _median_ms(after, batch, arg, args.repeats)
        diff = float((before(batch, arg) - after(batch, arg)).abs().max()) * unit
        print(f"| {label} | {t_before:.1f} | {t_after:.1f} | {t_before / t_after:.1f}× | {diff:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
