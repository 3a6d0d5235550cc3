"""How well held boxes cover objects the detector lost, on real clips.

Temporal filling holds an object's last sighting forward (and its first one
back) for ``--fill-frames`` frames. Whether the held box still covers the
object depends on how the object moves, so this measures it with the
detector's own boxes as the truth:

1. run the detection stack (defaults) on every frame of each clip (cached
   by ``bench/detect_every.py``, whose raw detections this shares);
2. black out windows of ``fill + 3`` frames (every detection removed), one
   every ``--every`` frames: too long to interpolate across, so every frame
   of a window is covered by holds alone, from the window's two edges;
3. fill as the pipeline does and count the boxes of the blacked-out frames
   less than 95 % under the blur (boxes dilated by ``mask_scale``), and the
   blurred area of those frames, once with held boxes that stay put (the
   rule before) and once as ``pipeline.temporal`` holds them now.

    python bench/held_boxes.py [--frames 400] [--every 30] [clips...]
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from detect_every import (
    blurred_mask,
    clip_parser,
    clips_of,
    left_unblurred,
    markdown,
    raw_detections,
)


def static_hold(src, seen, row, f, fill, memo):
    """The hold before motion was followed: the sighting's box as it was."""
    return src[seen][[row]]


def measure(clip: Path, settings, max_frames: int, every: int) -> list[dict]:
    from models.detections import FACE, PLATE, Detections
    from pipeline import temporal

    raw, size, _ = raw_detections(clip, settings, max_frames)
    fill = settings.fill_frames
    length = fill + 3
    dark = {f for start in range(10, len(raw) - length - fill - 1, every)
            for f in range(start, start + length)}
    kept = {f: (Detections.empty() if f in dark else d) for f, d in raw.items()}
    rows = []
    moving = temporal._held
    for name, hold in (("held still (before)", static_hold), ("following motion", moving)):
        temporal._held = hold
        try:
            final = temporal.fill_segment(kept, sorted(raw), fill)
        finally:
            temporal._held = moving
        area = np.mean([blurred_mask(final[f], size, settings.mask_scale).mean() for f in dark])
        for label, c in (("faces", FACE), ("plates", PLATE)):
            truth = {f: raw[f].with_class(c) for f in dark}
            short, frames, missed = left_unblurred(truth, final, size, settings.mask_scale)
            rows.append({"clip": clip.name, "label": label, "hold": name,
                         "boxes": sum(len(d) for d in truth.values()), "windows_frames": len(dark),
                         "short": short, "frames": frames, "missed": missed,
                         "blurred_share": round(float(area), 4)})
    return rows


def table(rows: list[dict]) -> str:
    return markdown(["clip", "label", "boxes in blacked-out frames", "hold",
                     "boxes < 95 % covered", "frames with one", "boxes < 5 % covered",
                     "blurred share of those frames"],
                    [[r["clip"], r["label"], r["boxes"], r["hold"], r["short"], r["frames"],
                      r["missed"], f"{r['blurred_share']:.3f}"] for r in rows if r["boxes"]])


def main() -> None:
    from pipeline.settings import Settings

    ap = clip_parser(__doc__)
    ap.add_argument("--every", type=int, default=30, help="frames from one window to the next")
    args = ap.parse_args()
    rows = []
    for clip in clips_of(args):
        rows += measure(clip, Settings(), args.frames, args.every)
        print(f"{clip.name} done", file=sys.stderr, flush=True)
    print(table(rows))


if __name__ == "__main__":
    main()
