"""`anonymize review DIR`: rebuild report.html from a run's records."""

from __future__ import annotations

import argparse

HELP = "rebuild report.html (timeline, flagged frames) from a run's records"

VIDEO_SUFFIXES = (".mp4", ".mkv", ".mov", ".m4v")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("dir", metavar="DIR",
                   help="folder holding detections.json and report.json of a run, render or "
                        "submit -o download")
    p.add_argument("--video", help="the anonymized output video (default: the one report.json "
                                   "names, else the only video in DIR, else DIR's name with a "
                                   "video suffix beside it, as submit -o DIR lays out several "
                                   "jobs)")


def find_video(folder, report: dict, given: str | None):
    """The output video the thumbnails come from: ``given``, the report's output (by
    its name in ``folder``, else as written), else the only video in ``folder``."""
    from pathlib import Path, PurePosixPath

    if given:
        if not Path(given).is_file():
            raise FileNotFoundError(f"video not found: {given}")
        return Path(given)
    named = str(report.get("output") or "")
    # the folder's own video first: the recorded path is relative to where the run
    # was started, and from another directory (or for a copied folder) it named
    # another run's video, whose frames then made the thumbnails
    candidates = [Path(folder) / Path(named).name, Path(folder) / PurePosixPath(named).name,
                  Path(named)] if named else []
    for c in candidates:
        if named and "://" not in str(c) and c.is_file():
            return c
    videos = [p for p in Path(folder).iterdir() if p.suffix.lower() in VIDEO_SUFFIXES]
    if len(videos) == 1:
        return videos[0]
    # `submit A B -o DIR` puts each job's records in DIR/<stem>.anonymized/ and its video
    # beside that folder, DIR/<stem>.anonymized.<ext>; report.json names the s3:// output
    folder = Path(folder).absolute()
    beside = [folder.with_name(folder.name + ext) for ext in VIDEO_SUFFIXES]
    beside = [p for p in beside if p.is_file()]
    if not videos and len(beside) == 1:
        return beside[0]
    raise FileNotFoundError(f"cannot tell which video in {folder} is the output; "
                            f"give it with --video")


def check_video(video, doc: dict, given: bool, report: dict | None = None) -> None:
    """The thumbnails' video must be of the detections' frame size: another video (the
    source of another clip, a phone copy) was taken, its frames shown under this run's
    boxes, unblurred faces included. It must also have the size in bytes the report
    recorded for the output (``output_bytes``): the run's own source, beside the
    records or given with --video, has the output's frame size and often its name,
    and its unblurred frames became the contact sheet. A video given with --video
    must be readable; a found one that is not gives a page without thumbnails that
    says why."""
    from pathlib import Path

    from pipeline.video import VideoError, probe

    hint = "" if given else "; give the output with --video"
    try:
        info = probe(video)
    except VideoError:
        if given:
            raise
        return
    want = (doc.get("width"), doc.get("height"))
    if None not in want and (info.width, info.height) != want:
        raise ValueError(f"{video} is {info.width}x{info.height}, but the detections are of "
                         f"a {want[0]}x{want[1]} video: not this run's output{hint}")
    want_bytes = (report or {}).get("output_bytes")
    size = Path(video).stat().st_size
    if isinstance(want_bytes, int) and size != want_bytes:
        raise ValueError(f"{video} has {size} bytes, but the run's output "
                         f"had {want_bytes}: not this run's output (its source?){hint}")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from pipeline.records import DETECTIONS_JSON, REPORT_JSON

    folder = Path(args.dir)
    if not folder.is_dir():
        raise FileNotFoundError(f"folder not found: {folder}" if not folder.exists() else
                                f"{folder} is a file: DIR is the folder of a run's records")
    if not (folder / DETECTIONS_JSON).exists() and (folder / "detections.pkl").is_file():
        # `images` writes detections.pkl and report.html, no report.json
        raise FileNotFoundError(f"{folder} is the output of `anonymize images`, whose page is "
                                f"written by `anonymize images` itself (run it again to "
                                f"rebuild it); review rebuilds the page of a video")
    for name in (DETECTIONS_JSON, REPORT_JSON):
        if not (folder / name).is_file():
            raise FileNotFoundError(f"{folder / name} not found: DIR must hold a run's records")
    from pipeline.render import read_document
    from pipeline.review import read_report

    report = read_report(folder / REPORT_JSON)  # a damaged file: one line

    doc = read_document(folder / DETECTIONS_JSON)  # a damaged or edited file: one line
    video = find_video(folder, report, args.video)
    check_video(video, doc, given=bool(args.video), report=report)
    from pipeline.review import write_page

    page = write_page(folder, video, report)
    print(page)
    return 0
