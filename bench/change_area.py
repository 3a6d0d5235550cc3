"""How much of each frame changes on the shared clips: the bound on work a
detector could skip by looking again only where the picture changed.

On a fixed camera a region whose pixels have not changed since a frame
that was fully detected holds the same objects, so its detections could be
carried over and the networks run only on the changed part. Whether that
is worth building depends on how much changes, which this measures: every
``--every`` frames a reference frame (as if fully detected); on the frames
between, 16×16 blocks whose mean absolute grey difference to the reference
exceeds ``--threshold`` levels (compression noise stays below it), dilated
by one block (objects straddling a block edge): ``pipeline.changes.changed_blocks``,
which ``--reference-every`` uses, compares with the picture last examined. Reported: the changed share
of the frame (mean and 90th percentile), and the share of the one box
enclosing every changed block.

    python bench/change_area.py [--frames 400] [--every 12] [--threshold 6] [clips...]
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from detect_every import clip_parser, markdown, report_clips

from pipeline.changes import changed_blocks, grey


def measure(clip: Path, frames: int, every: int, threshold: float) -> dict:
    from pipeline import video

    shares, boxes, ref = [], [], None
    for i, (_, rgb) in enumerate(video.iter_frames(clip)):
        if i >= frames:
            break
        now = grey(rgb)
        if i % every == 0:
            ref = now
            continue
        blocks = changed_blocks(now, ref, threshold)
        shares.append(blocks.mean())
        ys, xs = np.nonzero(blocks)
        boxes.append((np.ptp(ys) + 1) * (np.ptp(xs) + 1) / blocks.size if len(ys) else 0.0)
    return {"clip": clip.name, "frames": min(frames, i + 1), "every": every,
            "threshold": threshold, "changed_mean": round(float(np.mean(shares)), 3),
            "changed_p90": round(float(np.percentile(shares, 90)), 3),
            "box_mean": round(float(np.mean(boxes)), 3)}


def table(rows: list[dict]) -> str:
    return markdown(["clip", "frames", "reference every", "threshold (grey levels)",
                     "changed share, mean", "90th percentile", "enclosing box, mean"],
                    [[r["clip"], r["frames"], r["every"], r["threshold"],
                      f"{r['changed_mean']:.1%}", f"{r['changed_p90']:.1%}",
                      f"{r['box_mean']:.1%}"] for r in rows])


def main() -> None:
    ap = clip_parser(__doc__)
    ap.add_argument("--every", type=int, default=12, help="a reference frame every N frames")
    ap.add_argument("--threshold", type=float, default=6.0,
                    help="mean grey difference of a changed block")
    args = ap.parse_args()
    report_clips(args, lambda clip: [measure(clip, args.frames, args.every, args.threshold)],
                 table)


if __name__ == "__main__":
    main()
