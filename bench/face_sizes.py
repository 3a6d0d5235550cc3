"""CenterFace coverage by face width at the network input, for large faces.

Why: enlarging a frame finds small faces but CenterFace stops seeing faces
that are too large at its input (models/README.md). The tiled main pass of a
large frame therefore needs a second, smaller whole-frame pass (the
overview) for its large faces, and the overview's scale should follow from
the width at the input above which faces are lost. This measures that
width: every annotated face at least ``--min-source`` px wide on the face
sets is cut out with a window of ``--context`` times its width around it
(clipped to the image), the window is scaled so the face measures T px,
and CenterFace runs on it at that size (one pass, no tiling, no overview,
fp32, the default threshold). A face counts as found when ≥ 90 % of its
area lies under the blurred boxes (``anonymize eval``'s coverage, default
mask scale). Faces scaled up beyond their source width are blurrier than
real faces of that size, so the widths above the source are a pessimistic
estimate.

    .venv/bin/python bench/face_sizes.py --widths 24,48,96,160,240,320,400,480,640
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data"
sys.path.insert(0, str(ROOT))

SETS = ("faces_kaggle_facemask", "faces_dlib_examples")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--widths", default="24,48,96,160,240,320,400,480,640",
                    help="face widths at the network input, comma-separated")
    ap.add_argument("--min-source", type=float, default=48.0,
                    help="faces narrower than this in their image are left out (px)")
    ap.add_argument("--context", type=float, default=4.0,
                    help="window around each face, in face widths")
    args = ap.parse_args()
    widths = [int(w) for w in args.widths.split(",")]

    import cv2
    import numpy as np

    from models import centerface
    from models.registry import checkpoint_path
    from pipeline.datasets import GTBox, iter_samples, load_annotations
    from pipeline.evaluate import COVERAGE_THRESH, evaluate_image, group_of_label
    from pipeline.settings import Settings

    s = Settings()
    det = centerface.build(checkpoint_path(s.face_model), device="cpu", half=False,
                           overview=False, max_side=1 << 14)
    faces = []  # (set, window image, face box in window pixels)
    for name in SETS:
        for sample in iter_samples(load_annotations(DATA / name)):
            h, w = sample.image.shape[:2]
            for g in sample.gt:
                if group_of_label(g.label) != "face":
                    continue
                x1, y1, x2, y2 = g.xyxy
                fw = x2 - x1
                if fw < args.min_source:
                    continue
                half = args.context * fw / 2
                cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
                wx1, wy1 = max(0, int(cx - half)), max(0, int(cy - half))
                wx2, wy2 = min(w, int(np.ceil(cx + half))), min(h, int(np.ceil(cy + half)))
                box = [x1 - wx1, y1 - wy1, x2 - wx1, y2 - wy1]
                faces.append((name, sample.image[wy1:wy2, wx1:wx2], box, g.label))
    print(f"CenterFace ({s.face_model}), one pass at the size shown, threshold {s.face_thresh}, "
          f"fp32; {len(faces)} faces ≥ {args.min_source:g} px from {', '.join(SETS)}, "
          f"windows of {args.context:g}× the face width\n")
    print("| face width at the input (px) | covered | IoU ≥ 0.5 | mean input (w×h) |")
    print("|---|---|---|---|")
    for target in widths:
        covered = matched = 0
        dims = []
        for _, window, box, label in faces:
            k = target / (box[2] - box[0])
            wh, ww = window.shape[:2]
            nw, nh = max(1, round(ww * k)), max(1, round(wh * k))
            interp = cv2.INTER_AREA if k < 1 else cv2.INTER_LINEAR
            img = np.ascontiguousarray(cv2.resize(window, (nw, nh), interpolation=interp))
            gt = [GTBox(label, [v * k for v in box])]
            found = det.detect([img], s.face_thresh)[0]
            ev = evaluate_image(found, gt, nh, nw, ("face",), mask_scale=s.mask_scale)
            covered += ev.coverage[0] >= COVERAGE_THRESH - 1e-9
            matched += ev.counts["face"].tp
            dims.append((nw, nh))
        mw, mh = np.mean(dims, axis=0)
        print(f"| {target} | {covered}/{len(faces)} | {matched}/{len(faces)} | "
              f"{mw:.0f}×{mh:.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
