"""`anonymize run INPUT -o OUTPUT`: one video on this machine, no servers."""

from __future__ import annotations

import argparse

from .options import add_settings_arguments, refuse_empty, settings_from_args

HELP = "anonymize one video on this machine (no servers needed)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("input", help="input video file")
    p.add_argument("-o", "--output", required=True, help="output video (.mp4, .mkv or .mov)")
    p.add_argument("--detections-dir",
                   help="where faces.pkl, plates.pkl, detections.json, report.json go "
                        "(default: beside OUTPUT)")
    p.add_argument("--zones", metavar="FILE",
                   help="exclusion zones (never blurred) and forced regions (always blurred): "
                        "a JSON file holding only zones (format: README, \"The detections "
                        "file\")")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_settings_arguments(p)


def warn(message: str) -> None:
    """One ``anonymize: warning:`` line on stderr, on a line of its own when a
    progress bar is drawn there (the bar is redrawn below it). Control
    characters are written escaped (``\\n``): a file name may hold a line
    break, which made two lines of one warning."""
    import sys

    from tqdm import tqdm

    from models.errors import escape_controls

    tqdm.write(f"anonymize: warning: {escape_controls(message)}", file=sys.stderr)


def warn_dropped(source, dropped: list[dict]) -> None:
    """One warning line per stream of ``source`` left out of the output, and why."""
    for s in dropped:
        warn(f"{s['type']} stream {s['index']} ({s['codec'] or 'unknown codec'}) of {source} "
             f"is not in the output: {s['reason']}")


def run(args: argparse.Namespace) -> int:
    import json
    import sys
    from pathlib import Path

    from tqdm import tqdm

    from models.resolve import check_settings
    from pipeline.plan import prepared_local
    from pipeline.settings import check_something_hidden

    refuse_empty(args, "zones", "detections_dir")
    source, output = Path(args.input), Path(args.output)
    settings = settings_from_args(args)
    # every check on the user's settings and files before any model loads or frame is decoded
    check_settings(settings)
    with prepared_local(source, output, settings, args.detections_dir) as (
            frames_source, manifest, note):
        if note:
            warn(note)
        if args.zones:
            from pipeline.render import read_zones

            manifest.zones = read_zones(Path(args.zones), manifest.info)
        check_something_hidden(settings, manifest.zones or [])
        warn_dropped(source, manifest.dropped_streams)
        from pipeline.process import run_local  # loads torch: only once the input is known good

        with tqdm(total=manifest.info.n_frames, unit="frame", disable=args.quiet,
                  file=sys.stderr, desc=source.name) as bar:
            report = run_local(frames_source, output, settings, args.detections_dir,
                               progress=bar.update, manifest=manifest)
    from pipeline.records import REPORT_JSON
    from pipeline.video.damage import input_warnings

    for line in input_warnings(source, report):
        warn(line)
    summary = {k: report[k] for k in ("output", "frames", "frames_match", "damaged_frames",
                                       "detections", "filled_boxes", "wall_s", "fps")}
    summary["report"] = str(Path(report["files"]["detections_json"]).with_name(REPORT_JSON))
    summary["report_html"] = report["files"]["report_html"]
    print(json.dumps(summary, indent=2))
    return 0 if report["frames_match"] else 1
