"""What each plate source adds, frame by frame, on real clips.

In the default ``both`` mode three sources look for plates on every frame:
the one-stage detector on the whole frame at ``--plate-size`` (960) and at
``--plate-second-size`` (640), and the same detector on every vehicle crop
(two-stage, after the vehicle detector). They overlap; whether one of them
could be skipped on video is a question of the clips, so this measures it:

1. run each source alone on every frame of each clip (the detection stack
   with only that source on, faces off; cached by ``bench/detect_every.py``)
   and join them per frame as the pipeline does (``merge_plates``): the
   default run's plates;
2. for each source, join the other two, fill as the pipeline does
   (``pipeline.temporal.fill_segment``) and count the default run's boxes
   less than 95 % under the blur that would be left (boxes dilated by
   ``mask_scale``), and those under 5 %;
3. report each source's detection time per frame (lanes as in a run).

A source whose removal leaves no box uncovered adds nothing on these clips;
the evaluation sets (single images) decide separately.

    python bench/plate_sources.py [--frames 400] [--json FILE] [clips...]
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

# importing detect_every also puts the repository root on sys.path
from detect_every import clip_parser, left_unblurred, markdown, raw_detections, report_clips


def source_settings(base) -> dict:
    """Settings that run one plate source each, faces off."""
    one = dict(faces=False, plates="one-stage", plate_second_size=0)
    return {
        f"whole frame {base.plate_size}": dataclasses.replace(base, **one),
        f"whole frame {base.plate_second_size}": dataclasses.replace(
            base, **one, plate_size=base.plate_second_size),
        "vehicle crops": dataclasses.replace(base, faces=False, plates="two-stage"),
    }


def measure(clip: Path, base, max_frames: int) -> list[dict]:
    from pipeline.detect import merge_plates
    from pipeline.temporal import fill_segment

    found, ms = {}, {}
    for name, settings in source_settings(base).items():
        found[name], size, per_frame = raw_detections(clip, settings, max_frames)
        ms[name] = per_frame * 1000
    order = sorted(next(iter(found.values())))
    joined = {f: merge_plates([found[n][f] for n in found], base.nms_thresh) for f in order}
    boxes = sum(len(d) for d in joined.values())
    rows = []
    for dropped in found:
        rest = {f: merge_plates([found[n][f] for n in found if n != dropped], base.nms_thresh)
                for f in order}
        final = fill_segment(rest, order, base.fill_frames)
        short, frames, missed = left_unblurred(joined, final, size, base.mask_scale)
        rows.append({"clip": clip.name, "frames": len(order), "boxes": boxes,
                     "source": dropped, "own_boxes": sum(len(d) for d in found[dropped].values()),
                     "ms_per_frame": round(ms[dropped], 1), "unblurred_boxes": short,
                     "unblurred_frames": frames, "missed_boxes": missed})
    return rows


def table(rows: list[dict]) -> str:
    return markdown(["clip", "frames", "plate boxes (all sources)", "source left out",
                     "its own boxes", "its ms per frame", "boxes < 95 % covered without it",
                     "frames with one", "boxes not covered (< 5 %)"],
                    [[r["clip"], r["frames"], r["boxes"], r["source"], r["own_boxes"],
                      r["ms_per_frame"], r["unblurred_boxes"], r["unblurred_frames"],
                      r["missed_boxes"]] for r in rows])


def main() -> None:
    from pipeline.settings import Settings

    args = clip_parser(__doc__).parse_args()
    report_clips(args, lambda clip: measure(clip, Settings(), args.frames), table)


if __name__ == "__main__":
    main()
