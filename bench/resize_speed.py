"""Resizing frames into network inputs on CPU: ms per frame by method.

Times, on real frames of a shared clip, the three ways a detector can turn
N×H×W×3 uint8 frames into an N×3×h×w float input:

* ``channels-last``: ``permute().float()`` then ``F.interpolate``, the
  float kernel reading the channels-last view (what every detector did
  before models/resize.py);
* ``nchw``: the same kernel on a contiguous NCHW copy (same values);
* ``resize_frames``: :func:`models.resize.resize_frames` as CenterFace calls
  it (OpenCV on each float plane when enlarging).

    python bench/resize_speed.py [--clip PATH] [--frames 8] [--repeats 5]
                                 [--sizes 1152x648,960x540] [--threads 2]

Prints a markdown table (median over repeats, ms per frame).
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

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from models.resize import resize_frames  # noqa: E402
from pipeline.video import iter_frames  # noqa: E402

CLIP = ROOT.parent / "shared" / "data" / "videos" / "intel_car-detection.mp4"


def channels_last(batch: torch.Tensor, h: int, w: int) -> torch.Tensor:
    return F.interpolate(batch.permute(0, 3, 1, 2).float(), size=(h, w), mode="bilinear",
                         align_corners=False)


def nchw(batch: torch.Tensor, h: int, w: int) -> torch.Tensor:
    return F.interpolate(batch.permute(0, 3, 1, 2).float().contiguous(), size=(h, w),
                         mode="bilinear", align_corners=False)


METHODS = {"channels-last": channels_last, "nchw": nchw, "resize_frames": resize_frames}


def clip_batch(clip: Path, frames: int) -> torch.Tensor:
    """The first ``frames`` frames of ``clip`` as one N×H×W×3 uint8 batch."""
    got = [rgb for _, (_, rgb) in zip(range(frames), iter_frames(clip), strict=False)]
    return torch.from_numpy(np.stack(got))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clip", type=Path, default=CLIP)
    ap.add_argument("--frames", type=int, default=8, help="frames per batch")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--sizes", default="1152x648,960x540", help="target W×H list")
    ap.add_argument("--threads", type=int, default=2, help="torch threads")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    batch = clip_batch(args.clip, args.frames)
    print(f"{args.clip.name}: {batch.shape[2]}×{batch.shape[1]}, batches of {len(batch)}, "
          f"{args.threads} torch threads\n")
    print("| to | " + " | ".join(METHODS) + " |")
    print("|---|" + "---|" * len(METHODS))
    for size in args.sizes.split(","):
        w, h = (int(v) for v in size.lower().split("x"))
        row = []
        for fn in METHODS.values():
            fn(batch, h, w)  # warm-up
            times = []
            for _ in range(args.repeats):
                t = time.perf_counter()
                fn(batch, h, w)
                times.append((time.perf_counter() - t) / len(batch) * 1000)
            row.append(f"{statistics.median(times):.1f}")
        print(f"| {w}×{h} | " + " | ".join(row) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
