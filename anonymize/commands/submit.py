"""`anonymize submit INPUT… [--wait] [-o OUTPUT]`: run videos on the cluster."""

from __future__ import annotations

import argparse

from .options import add_settings_arguments, refuse_empty

HELP = "upload videos and queue them on the cluster (Redis + S3 + workers); prints job ids"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="video files, or s3://bucket/key objects used in place")
    p.add_argument("--wait", action="store_true",
                   help="follow the jobs with a progress bar; exit non-zero if one fails")
    p.add_argument("-o", "--output",
                   help="with --wait: download the result video here, the detection "
                        "pickles, JSON and report beside it; with several inputs a folder "
                        "(DIR/<stem>.anonymized.<ext>, each job's records in "
                        "DIR/<stem>.anonymized/)")
    p.add_argument("--detections-dir", help="with -o: put the records here instead (with "
                                            "several inputs, a folder per job in it)")
    p.add_argument("--timeout", type=float, default=None,
                   help="with --wait: give up after this many seconds (default: none)")
    p.add_argument("--zones", metavar="FILE",
                   help="exclusion zones / forced regions for every input (a JSON file "
                        "holding only zones)")
    p.add_argument("--detections", metavar="FILE",
                   help="re-render one input from this (edited) detections.json on the cpu "
                        "queue, with no detector (as `anonymize render`)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_settings_arguments(p)


def _destinations(args) -> list[tuple[str | None, str | None]]:
    """(output path, records folder) of each input; (None, None) without ``-o``.

    ``-o FILE`` with one input: the video there, the records beside it (or in
    ``--detections-dir``). ``-o DIR`` (several inputs, an existing folder or a
    trailing ``/``): ``DIR/<stem>.anonymized.<ext>``, a second input of the
    same stem (``cam1/clip.mp4``, ``cam2/clip.mp4``) as ``<stem>-2.anonymized.<ext>``;
    with several inputs each job's records go into a folder of their own named
    after its video (``DIR/<stem>.anonymized/``, or under ``--detections-dir``),
    since their names are fixed: in one folder the last job's replaced the
    others', and a second ``clip`` replaced the first one's video."""
    from pathlib import Path, PurePosixPath

    if not args.output:
        return [(None, None)] * len(args.inputs)
    out = Path(args.output)
    if not (len(args.inputs) > 1 or out.is_dir() or args.output.endswith("/")):
        return [(str(out), args.detections_dir)]
    from tasks.client import VIDEO_EXTS, output_ext

    if not out.is_dir() and out.suffix.lower() in (*VIDEO_EXTS, ".avi"):
        # it became a folder named like a video, holding the videos
        raise ValueError(f"-o {args.output}: with several inputs -o names a folder (each "
                         f"video goes in as <stem>.anonymized.<ext>); give a folder")

    taken: set[str] = set()
    found = []
    for source in args.inputs:
        name = PurePosixPath(source).name
        stem, ext = PurePosixPath(name).stem, output_ext(name, None)
        base, k = f"{stem}.anonymized", 1
        while base.lower() in taken:
            k += 1
            base = f"{stem}-{k}.anonymized"
        taken.add(base.lower())
        records = (str(Path(args.detections_dir or out) / base) if len(args.inputs) > 1
                   else args.detections_dir)
        found.append((str(out / f"{base}{ext}"), records))
    return found


def _check_input(source: str, dest: str | None, settings, zones=None, detections=None,
                 records: str | None = None):
    """What ``anonymize run`` checks before work, for a job about to be uploaded:
    a readable video whose streams the output container can hold, an output
    path that is not the input and can be written, the zones and detections
    against the video. Of an ``s3://`` input only its form is checked here (an
    object, not a bucket or folder), and that it exists once the storage is
    reached (``Client.check_in_storage``); its content is checked by the split task (the job then
    fails with the reason)."""
    from pathlib import Path

    from pipeline.video import probe
    from pipeline.video.contain import readable
    from pipeline.video.join import check_output_streams
    from pipeline.video.output import check_output_path, check_records_folder
    from tasks.client import output_ext

    if source.startswith("s3://"):
        from tasks.storage import split_url

        split_url(source)  # an object, not a bucket or folder: the split task reads it
        return
    if dest:
        check_output_path(Path(source), Path(dest))
        if records:
            check_records_folder(Path(dest), Path(records))
    with readable(source) as (frames_source, _):  # a raw stream: as the split task reads it
        info = probe(frames_source)
        check_output_streams(frames_source, info, output_ext(Path(source).name, dest),
                             settings.keep_metadata)
    if zones is not None:
        from pipeline.render import check_zones

        check_zones(zones[1], zones[0], info)
    if detections is not None:
        from pipeline.render import edits_from, other_source

        from .run import warn

        edits_from(detections[1], detections[0], info)
        mismatch = other_source(detections[1], detections[0], Path(source).name)
        if mismatch:
            warn(mismatch)


def run(args: argparse.Namespace) -> int:
    import json
    import sys
    from pathlib import Path

    from tasks.client import load_cluster_env

    refuse_empty(args, "zones", "detections", "detections_dir")
    load_cluster_env()
    from models.resolve import check_settings
    from pipeline.settings import check_something_hidden
    from pipeline.video.damage import input_warnings
    from tasks.client import Client

    from .options import settings_from_args
    from .run import warn, warn_dropped

    # an option whose partner is missing would be ignored: the user expects its effect
    if args.output and not args.wait:
        raise ValueError("-o/--output needs --wait")
    if args.detections_dir and not args.output:
        raise ValueError("--detections-dir needs -o/--output (and --wait): the records are "
                         "downloaded with the video")
    if args.timeout is not None and not args.wait:
        raise ValueError("--timeout needs --wait")
    if args.timeout is not None and not args.timeout >= 0:
        raise ValueError(f"--timeout must be 0 or more seconds, got {args.timeout:g}")
    zones = detections = None
    if args.zones:
        from pipeline.render import read_zones

        zones = (Path(args.zones), read_zones(Path(args.zones)))
    if args.detections:
        from pipeline.render import read_document

        from .render import not_for_render, render_settings

        if len(args.inputs) > 1:
            raise ValueError("--detections re-renders one input; give one INPUT")
        steering = [n for n in not_for_render() if getattr(args, n, None) is not None]
        if steering:  # they were taken and did nothing: no detector runs
            raise ValueError(f"--{steering[0].replace('_', '-')} steers the detectors, and "
                             f"--detections re-renders without them (as `anonymize render`, "
                             f"which has no such flag)")
        detections = (Path(args.detections), read_document(Path(args.detections)))
        settings = render_settings(args, detections[1].get("settings", {}))
    else:
        settings = settings_from_args(args)
        check_something_hidden(settings, zones[1] if zones else [])
        # before anything is uploaded; registry names must be fetched on the workers,
        # not here, and model files travel with the job
        check_settings(settings, fetched=False)
    destinations = _destinations(args)
    for source, (dest, records) in zip(args.inputs, destinations, strict=True):
        # before anything is uploaded
        _check_input(source, dest, settings, zones, detections, records)
    client = Client()
    for source in args.inputs:  # every s3:// input is there, before any job is queued
        if source.startswith("s3://"):
            client.check_in_storage(source)
    jobs = []
    for source, (dest, records) in zip(args.inputs, destinations, strict=True):
        job = client.submit(source, settings, output=dest,
                            zones=zones[1] if zones else None,
                            detections=detections[1] if detections else None,
                            # the worker names it in what it says of the zones or boxes
                            detections_file=str((detections or zones)[0])
                            if detections or zones else None)
        jobs.append((job, source, dest, records))
        print(job, flush=True)
    if not args.wait:
        return 0
    failed = 0
    for job, source, dest, records in jobs:
        try:
            info = _follow(client, job, source, args)
        except TimeoutError as exc:  # --timeout: the job itself goes on
            failed += 1
            print(f"anonymize: {exc}; it goes on (`anonymize status {job}`)", file=sys.stderr)
            continue
        if info["status"] != "done":
            failed += 1
            print(f"anonymize: job {job} {info['status']}: {info.get('error', '')}",
                  file=sys.stderr)
            continue
        got = client.download(job, dest, records) if dest else None
        # what `anonymize run` would have said about the input, from the job's report
        # (its downloaded copy when there is one: it is not fetched twice)
        report = (json.loads(got["report"].read_text(encoding="utf-8")) if got
                  else client.report(info))
        if report.get("input_note"):  # how the input was read (a raw stream's rate)
            warn(report["input_note"])
        warn_dropped(source, report.get("dropped_streams", []))
        for line in input_warnings(source, report):
            warn(line)
        if got:
            print(f"{job}: {got['output']} (records in {got['report'].parent})", file=sys.stderr)
        else:
            print(f"{job}: {info['output_url']}", file=sys.stderr)
    return 1 if failed else 0


def _follow(client, job: str, source: str, args) -> dict:
    import sys

    from tqdm import tqdm

    bar = tqdm(total=0, unit="frame", desc=f"{job} queued", disable=args.quiet, file=sys.stderr)

    def update(info: dict) -> None:
        total = int(info.get("frames_total") or 0)
        if total and bar.total != total:
            bar.total = total
        done = min(int(info.get("frames_done") or 0), total) if total else 0
        segs = f"{info.get('segments_done', 0)}/{info.get('segments_total') or '?'} segments"
        bar.set_description(f"{job} {info['status']} {segs}", refresh=False)
        bar.n = done
        bar.refresh()

    try:
        return client.wait(job, update, timeout=args.timeout)
    finally:
        bar.close()
