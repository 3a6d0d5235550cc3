"""One-stage plate coverage by input size and by plate width at the network input.

Why: a size rule for plates (``--min-plate``, like ``--min-face`` for faces)
needs a plate width at the network input from which the detector finds
plates reliably, whatever the scale that brought it there. This runs the
default plate model one-stage (fp32, threshold 0.05, like the pipeline) on
every image of the annotated plate sets at several long sides and counts,
per bucket of plate width at the network input, the plates whose area is
≥ 90 % under the blurred boxes (``anonymize eval``'s coverage, at the default
mask scale).

    .venv/bin/python bench/plate_sizes.py --sizes 480,640,960,1280,1600
"""

from __future__ import annotations

import argparse
import collections
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data"
sys.path.insert(0, str(ROOT))

SETS = ("plates_vehicles_openimages_roboflow", "plates_openalpr_us")
EDGES = (0, 8, 12, 16, 20, 24, 32, 48)


def bucket(width: float) -> int:
    return max(i for i, edge in enumerate(EDGES) if width >= edge)


def label(i: int) -> str:
    return f"{EDGES[i]}–{EDGES[i + 1]}" if i + 1 < len(EDGES) else f"≥ {EDGES[i]}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="480,640,960,1280,1600",
                    help="long sides of the one-stage input, comma-separated")
    ap.add_argument("--model", default="plate-yolov8n-pyplatex")
    ap.add_argument("--thresh", type=float, default=0.05)
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]

    from models import yolov8
    from models.registry import checkpoint_path
    from pipeline.datasets import iter_samples, load_annotations
    from pipeline.evaluate import COVERAGE_THRESH, evaluate_image, group_of_label
    from pipeline.settings import Settings

    mask_scale = Settings().mask_scale

    det = yolov8.build(checkpoint_path(args.model), device="cpu", half=False)
    print(f"{args.model}, one-stage, threshold {args.thresh}, fp32; covered / annotated plates "
          "by plate width at the network input (px)\n")
    print("| set | long side | all | " + " | ".join(label(i) for i in range(len(EDGES))) + " |")
    print("|---|---|---|" + "---|" * len(EDGES))
    for name in SETS:
        samples = [s for s in iter_samples(load_annotations(DATA / name))
                   if any(group_of_label(g.label) == "plate" for g in s.gt)]
        for size in sizes:
            seen, hit = collections.Counter(), collections.Counter()
            for s in samples:
                h, w = s.image.shape[:2]
                found = det.detect([s.image], args.thresh, size=size)[0]
                ev = evaluate_image(found, s.gt, h, w, ("plate",), mask_scale=mask_scale)
                k = size / max(h, w)
                for g, frac in zip(s.gt, ev.coverage, strict=True):
                    if frac is None:  # not a plate
                        continue
                    b = bucket((g.xyxy[2] - g.xyxy[0]) * k)
                    seen[b] += 1
                    hit[b] += frac >= COVERAGE_THRESH - 1e-9
            cells = [f"{hit[i]}/{seen[i]}" if seen[i] else "–" for i in range(len(EDGES))]
            print(f"| {name} | {size} | {sum(hit.values())}/{sum(seen.values())} | "
                  + " | ".join(cells) + " |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
