"""`anonymize faces --frames-dir DIR --save-dir OUT`: faces in a frame folder."""

from __future__ import annotations

import argparse

from .images import anonymize_images
from .options import add_settings_arguments, settings_from_args

#: settings of the plate search, which this command never runs
PLATE_SETTINGS = ("faces", "plates", "plate_model", "vehicle_model", "plate_model_format",
                  "vehicle_model_format", "vehicle_thresh", "lp_thresh", "plate_size",
                  "plate_second_size", "crop_size", "crop_margin", "nms_thresh")

HELP = "detect and blur faces in a folder of frames, writing the research face pickle"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--frames-dir", required=True, help="folder of frame images")
    p.add_argument("--save-dir", required=True, help="where blurred frames and faces.pkl go")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_settings_arguments(p, video=False, exclude=PLATE_SETTINGS)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from models.resolve import check_settings
    from pipeline.images import write_face_pickle
    from pipeline.video.output import check_folder_writable

    settings = settings_from_args(args, faces=True, plates="off")
    check_folder_writable(Path(args.save_dir), "--save-dir")  # before any model loads
    check_settings(settings)  # a bad model setting fails before any frame is read
    found, skipped, listing = anonymize_images(args.frames_dir, args.save_dir, settings,
                                               args.quiet, unit="frame")
    pkl = write_face_pickle(Path(args.save_dir), found, Path(args.frames_dir), listing)
    n = sum(len(d) for d in found.values())
    left = f", {len(skipped)} left out (see the warnings)" if skipped else ""
    print(f"{len(found)} frames, {n} faces{left} -> {args.save_dir} ({pkl.name})")
    return 1 if skipped else 0
