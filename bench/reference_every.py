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

    python bench/reference_every.py [--every 8] [--margin 2] [--window-score 0.7]
        [--frames 400] [--noise] [clips...]

``--noise`` adds rows comparing the whole run with a whole run on the clip
decoded and encoded again (crf 18, as a run encodes): how many boxes
encoding noise alone moves out from under the blur, the floor any
comparison of two runs stands on.

The times are of groups run one after another on the stack's lanes (the
pipeline overlaps two groups, so a run saves more than they show).
"""

from __future__ import annotations

from pathlib import Path

from detect_every import (
    CACHE,
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


def compare(clip: Path, settings, whole: dict, size, other: dict, every, whole_s: float,
            other_s: float) -> list[dict]:
    """Rows per label: boxes of ``whole`` less than 95 % under what ``other`` blurs
    (both filled as the pipeline fills), and the reverse."""
    from models.detections import FACE, PLATE
    from pipeline.changes import MARGIN_BLOCKS
    from pipeline.temporal import fill_segment

    order = sorted(whole)
    whole_final = fill_segment(whole, order, settings.fill_frames)
    other_final = fill_segment(other, order, settings.fill_frames)
    rows = []
    for label, c in (("faces", FACE), ("plates", PLATE)):
        mine = {f: d.with_class(c) for f, d in whole.items()}
        theirs = {f: d.with_class(c) for f, d in other.items()}
        boxes, frames, missed = left_unblurred(mine, other_final, size, settings.mask_scale)
        extra = [cov for _, _, cov in coverages(theirs, whole_final, size, settings.mask_scale)
                 if cov < COVERED]
        rows.append({"clip": clip.name, "frames": len(whole), "every": every,
                     "margin": MARGIN_BLOCKS, "label": label,
                     "whole_boxes": sum(len(d) for d in mine.values()),
                     "other_boxes": sum(len(d) for d in theirs.values()),
                     "unblurred_boxes": boxes, "unblurred_frames": frames,
                     "missed_boxes": missed, "other_only_boxes": len(extra),
                     "whole_ms": round(whole_s * 1000, 1),
                     "other_ms": round(other_s * 1000, 1)})
    return rows


def measure(clip: Path, settings, every: int, max_frames: int, noise: bool = False
            ) -> list[dict]:
    whole, size, whole_s = raw_detections(clip, settings, max_frames)
    grouped, grouped_s = grouped_detections(clip, settings, every, max_frames)
    rows = compare(clip, settings, whole, size, grouped, every, whole_s, grouped_s)
    if noise:
        copy = reencoded(clip)
        again, _, again_s = raw_detections(copy, settings, max_frames)
        rows += compare(clip, settings, whole, size, again, "whole, re-encoded copy", whole_s,
                        again_s)
    return rows


def reencoded(clip: Path) -> Path:
    """``clip`` decoded and encoded again as a run encodes (crf 18), cached: the
    same pictures up to encoding noise, to measure how far that noise alone
    moves what the detectors find."""
    from transcode import transcode

    out = CACHE / f"{clip.stem}-reencoded.mp4"
    if not out.is_file():
        CACHE.mkdir(parents=True, exist_ok=True)
        part = out.with_name(f".{out.name}")
        transcode(clip, part)
        part.rename(out)
    return out


def table(rows: list[dict]) -> str:
    return markdown(["clip", "frames", "other run (N: groups of N)", "margin (blocks)",
                     "label", "boxes (whole)", "boxes (other)",
                     "whole-run boxes < 95 % under the other's blur", "frames with one",
                     "not covered (< 5 %)", "other run's boxes < 95 % under whole blur",
                     "detection ms/frame whole", "other"],
                    [[r["clip"], r["frames"], r["every"], r["margin"], r["label"],
                      r["whole_boxes"], r["other_boxes"], r["unblurred_boxes"],
                      r["unblurred_frames"], r["missed_boxes"], r["other_only_boxes"],
                      r["whole_ms"], r["other_ms"]] for r in rows])


def main() -> None:
    from pipeline import changes
    from pipeline.settings import Settings

    ap = clip_parser(__doc__)
    ap.add_argument("--every", type=int, default=8, help="frames per group")
    ap.add_argument("--margin", type=int, help="blocks of context around each region "
                    "(default: pipeline.changes.MARGIN_BLOCKS)")
    ap.add_argument("--window-score", type=float, help="share of the threshold a window "
                    "keeps boxes at (default: pipeline.changes.WINDOW_SCORE)")
    ap.add_argument("--noise", action="store_true",
                    help="also compare the whole run with a whole run on the clip decoded "
                    "and encoded again: what encoding noise alone changes")
    args = ap.parse_args()
    if args.margin is not None:
        changes.MARGIN_BLOCKS = args.margin
    if args.window_score is not None:
        changes.WINDOW_SCORE = args.window_score
    settings = Settings()
    report_clips(args, lambda clip: measure(clip, settings, args.every, args.frames,
                                            args.noise), table)


if __name__ == "__main__":
    main()
