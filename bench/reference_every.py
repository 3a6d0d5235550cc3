"""What `--reference-every N` costs in coverage and saves in time, on real clips.

With groups of N frames (pipeline/changes.py) the face and one-stage plate
networks look at the frames after a group's first only where the picture
changed since it. Whether that leaves anything readable is a question of
the clips, so this compares it with detecting every frame whole:

1. every frame of each clip detected whole (``bench/detect_every.py``'s
   cached run, the pipeline's defaults);
2. the same frames in groups of N, as a segment starting at frame 0 runs
   them (``pipeline.changes.detect_group``), timed;
3. both filled exactly as the pipeline fills (``pipeline.temporal``); for every
   box the whole-frame run found, how much of it lies under what the grouped
   run blurs (boxes dilated by ``mask_scale``), and the reverse. A box less
   than 95 % covered counts as left unblurred.

    python bench/reference_every.py [--every 8] [--margin 2] [--frames 400] [clips...]

The times are of groups run one after another on the stack's lanes (the
pipeline overlaps two groups, so a run saves more than they show).
"""

from __future__ import annotations

from pathlib import Path

from detect_every import (
    COVERED,
    clip_parser,
    coverages,
    detected_in_batches,
    left_unblurred,
    markdown,
    raw_detections,
    report_clips,
)


def grouped_detections(clip: Path, settings, every: int, max_frames: int) -> tuple[dict, float]:
    """Per frame index: faces and plates of the grouped run; seconds per frame."""
    from pipeline.changes import detect_group
    from pipeline.detect import DetectionStack

    stack = DetectionStack.from_settings(settings)
    frames, _, per_frame = detected_in_batches(
        clip, max_frames, every, lambda group: detect_group(stack, group, vehicles=False))
    return frames, per_frame


def measure(clip: Path, settings, every: int, max_frames: int) -> list[dict]:
    from models.detections import FACE, PLATE
    from pipeline.temporal import fill_segment

    whole, size, whole_s = raw_detections(clip, settings, max_frames)
    grouped, grouped_s = grouped_detections(clip, settings, every, max_frames)
    order = sorted(whole)
    fill = settings.fill_frames
    whole_final = fill_segment(whole, order, fill)
    grouped_final = fill_segment(grouped, order, fill)
    rows = []
    for label, c in (("faces", FACE), ("plates", PLATE)):
        mine = {f: d.with_class(c) for f, d in whole.items()}
        theirs = {f: d.with_class(c) for f, d in grouped.items()}
        boxes, frames, missed = left_unblurred(mine, grouped_final, size, settings.mask_scale)
        extra = [cov for _, _, cov in coverages(theirs, whole_final, size, settings.mask_scale)
                 if cov < COVERED]
        from pipeline.changes import MARGIN_BLOCKS

        rows.append({"clip": clip.name, "frames": len(whole), "every": every,
                     "margin": MARGIN_BLOCKS, "label": label,
                     "whole_boxes": sum(len(d) for d in mine.values()),
                     "grouped_boxes": sum(len(d) for d in theirs.values()),
                     "unblurred_boxes": boxes, "unblurred_frames": frames,
                     "missed_boxes": missed, "grouped_only_boxes": len(extra),
                     "whole_ms": round(whole_s * 1000, 1),
                     "grouped_ms": round(grouped_s * 1000, 1)})
    return rows


def table(rows: list[dict]) -> str:
    return markdown(["clip", "frames", "N", "margin (blocks)", "label", "boxes (whole)", "boxes (grouped)",
                     "whole-run boxes < 95 % under grouped blur", "frames with one",
                     "not covered (< 5 %)", "grouped-run boxes < 95 % under whole blur",
                     "detection ms/frame whole", "grouped"],
                    [[r["clip"], r["frames"], r["every"], r["margin"], r["label"], r["whole_boxes"],
                      r["grouped_boxes"], r["unblurred_boxes"], r["unblurred_frames"],
                      r["missed_boxes"], r["grouped_only_boxes"], r["whole_ms"],
                      r["grouped_ms"]] for r in rows])


def main() -> None:
    from pipeline.settings import Settings

    ap = clip_parser(__doc__)
    ap.add_argument("--every", type=int, default=8, help="frames per group")
    ap.add_argument("--margin", type=int, help="blocks of context around each region "
                    "(default: pipeline.changes.MARGIN_BLOCKS)")
    args = ap.parse_args()
    if args.margin is not None:
        from pipeline import changes

        changes.MARGIN_BLOCKS = args.margin
    settings = Settings()
    report_clips(args, lambda clip: measure(clip, settings, args.every, args.frames), table)


if __name__ == "__main__":
    main()
