"""`anonymize render INPUT --detections FILE -o OUTPUT`: re-render from edited detections."""

from __future__ import annotations

import argparse

from .options import add_settings_arguments, refuse_empty

HELP = ("re-render a video from (edited) detections, no detector loaded; exclusion zones "
        "and forced regions")


def not_for_render() -> tuple[str, ...]:
    """Settings that only steer the detectors: render runs none, so it has no such flags
    (--detect-every and --reference-every pick frames for the detectors; a render reads
    every frame's boxes from the file whatever they say)."""
    from pipeline.settings import FIELDS

    return tuple(name for name, f in FIELDS.items() if f.metadata["group"] == "detection"
                 ) + ("device", "batch_size", "half", "detect_every", "reference_every")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("input", help="input video file (the one the detections belong to)")
    p.add_argument("--detections", required=True, metavar="FILE",
                   help="detections.json of a run, edited or not (format: README, "
                        "pipeline/detections.schema.json)")
    p.add_argument("-o", "--output", required=True, help="output video (.mp4, .mkv or .mov)")
    p.add_argument("--zones", metavar="FILE",
                   help="more exclusion zones / forced regions (a JSON file holding only zones)")
    p.add_argument("--detections-dir",
                   help="where the new records and report.html go (default: beside OUTPUT)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_settings_arguments(p, exclude=not_for_render())


def render_settings(args: argparse.Namespace, recorded: dict):
    """The effective settings: flag > environment > config file > the settings the
    detections file recorded > default. ``--print-settings`` prints them and exits."""
    from pipeline.render import RECORDED_SETTINGS, recorded_settings
    from pipeline.settings import Settings, describe

    names = getattr(args, "_settings_flags", ())
    overrides = {k: getattr(args, k) for k in names if getattr(args, k, None) is not None}
    settings, sources = Settings.resolve(getattr(args, "config", None), overrides)
    new = recorded_settings(settings, sources, recorded,
                            getattr(args, "detections", None) or "detections file")
    for k in RECORDED_SETTINGS:
        if getattr(new, k) != getattr(settings, k) or (sources.get(k) == "default"
                                                       and k in recorded):
            sources[k] = "detections file"
    if getattr(args, "print_settings", False):
        print(describe(new, sources))
        raise SystemExit(0)
    return new


def run(args: argparse.Namespace) -> int:
    import json
    import sys
    from pathlib import Path

    from tqdm import tqdm

    from pipeline.plan import prepared_local
    from pipeline.records import DETECTIONS_JSON, REPORT_JSON
    from pipeline.render import (
        DetectionsFileError,
        edits_from,
        other_source,
        read_document,
        read_zones,
    )
    from pipeline.video.output import same_file

    from .run import warn, warn_dropped

    refuse_empty(args, "detections", "zones", "detections_dir")
    source, output = Path(args.input), Path(args.output)
    det_file = Path(args.detections)
    records = Path(args.detections_dir) if args.detections_dir else output.parent
    # everything checked before a frame is decoded: the file, the settings, the video
    doc = read_document(det_file)
    settings = render_settings(args, doc.get("settings", {}))
    if (records / DETECTIONS_JSON).exists() and same_file(records / DETECTIONS_JSON, det_file):
        raise DetectionsFileError(f"{det_file}: the render would overwrite the file it reads; "
                                  f"write the output into another folder or give "
                                  f"--detections-dir")
    with prepared_local(source, output, settings, records) as (frames_source, manifest, note):
        if note:
            warn(note)
        edits = edits_from(doc, det_file, manifest.info)
        mismatch = other_source(doc, det_file, source.name)
        if mismatch:
            warn(mismatch)
        zones = edits.zones + (read_zones(Path(args.zones), manifest.info) if args.zones else [])
        manifest.zones = zones
        manifest.detections_file = edits.name
        warn_dropped(source, manifest.dropped_streams)
        from pipeline.process import run_local
        from pipeline.render import RecordedDetections

        with tqdm(total=manifest.info.n_frames, unit="frame", disable=args.quiet,
                  file=sys.stderr, desc=source.name) as bar:
            report = run_local(frames_source, output, settings, records,
                               stack=RecordedDetections.from_edits(edits), progress=bar.update,
                               manifest=manifest, extra_report={"render": edits.summary()})
    from pipeline.video.damage import input_warnings

    for line in input_warnings(source, report):
        warn(line)
    summary = {k: report[k] for k in ("output", "frames", "frames_match", "damaged_frames",
                                       "detections", "filled_boxes", "render", "wall_s", "fps")}
    summary["report"] = str(records / REPORT_JSON)
    summary["report_html"] = report["files"]["report_html"]
    print(json.dumps(summary, indent=2))
    return 0 if report["frames_match"] else 1
