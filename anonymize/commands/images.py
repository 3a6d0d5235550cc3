"""`anonymize images --img-dir DIR --out-dir OUT`: blur faces and plates in images."""

from __future__ import annotations

import argparse

from .options import add_settings_arguments, settings_from_args
from .run import warn

HELP = "blur faces and plates in every image of a folder"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--img-dir", required=True, help="folder of images (searched recursively)")
    p.add_argument("--out-dir", required=True, help="where blurred images and detections.pkl go")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_settings_arguments(p, video=False)


def anonymize_images(folder, out_dir, settings, quiet: bool, unit: str = "img"
                     ) -> tuple[dict, list[str], list[str]]:
    """Detect and blur every image of ``folder`` into ``out_dir`` with a progress
    bar; shared by `images` and `faces`. Returns detections per relative path,
    the files that did not decode (each gets one warning line on stderr and
    is left out, the others are still done; the command then exits 1) and the
    sub-folders that could not be read (``name/``), and every file listed, in
    order (relative paths)."""
    import sys
    from pathlib import Path

    from tqdm import tqdm

    from pipeline.datasets import IMAGE_SUFFIXES
    from pipeline.detect import DetectionStack
    from pipeline.images import anonymize_folder, list_images

    passed_over: list = []
    unreadable: list = []
    paths = list_images(Path(folder), Path(out_dir), passed_over, unreadable)  # refused before models load
    for sub, reason in unreadable:  # its images cannot even be counted
        warn(f"folder {sub} could not be read ({reason}); its images are left out")
    if passed_over:  # an earlier run's outputs, never in silence
        n = len(passed_over)
        warn(f"the output folder {out_dir} inside the image folder holds {n} "
             f"image{'s' if n != 1 else ''} of an earlier run; "
             f"{'they are' if n != 1 else 'it is'} not anonymized again")
    if not paths:
        raise FileNotFoundError(f"no images in {folder} (looked for "
                                f"{', '.join(s.lstrip('.') for s in IMAGE_SUFFIXES)})")
    stack = DetectionStack.from_settings(settings)
    skipped: list = []
    eight_bit: list = []
    with tqdm(total=len(paths), unit=unit, disable=quiet, file=sys.stderr) as bar:
        found = anonymize_folder(Path(folder), Path(out_dir), stack, settings, bar.update,
                                 skipped, eight_bit)
    if eight_bit:  # written, but not as deep as they were
        n = len(eight_bit)
        warn(f"{n} image{'s' if n != 1 else ''} of more than 8 bits a channel "
             f"{'are' if n != 1 else 'is'} written in 8 bits (first: {eight_bit[0]})")
    for _, reason in skipped:
        warn(f"{reason}; left out")
    return (found, [str(Path(p).relative_to(folder)) for p, _ in skipped]
            + [f"{Path(sub).relative_to(folder)}/" for sub, _ in unreadable],
            [str(p.relative_to(folder)) for p in paths])


def run(args: argparse.Namespace) -> int:
    import time
    from pathlib import Path

    from models.resolve import check_settings
    from pipeline.images import write_image_detections
    from pipeline.review import write_image_page
    from pipeline.settings import check_something_hidden
    from pipeline.video.output import check_folder_writable

    settings = settings_from_args(args)
    check_something_hidden(settings)
    check_folder_writable(Path(args.out_dir), "--out-dir")  # before any model loads
    models = check_settings(settings)  # a bad model setting fails before any image is read
    t0 = time.perf_counter()
    found, skipped, _ = anonymize_images(args.img_dir, args.out_dir, settings, args.quiet)
    wall = time.perf_counter() - t0
    pkl = write_image_detections(Path(args.out_dir), found)
    n = sum(len(d) for d in found.values())
    report = _report(args, settings, models, found, wall) | {"left_out": skipped}
    page = write_image_page(Path(args.out_dir), found, report)
    left = f", {len(skipped)} left out (see the warnings)" if skipped else ""
    print(f"{len(found)} images, {n} detections{left} -> {args.out_dir} "
          f"({pkl.name}, {page.name})")
    return 1 if skipped else 0


def _report(args, settings, models, found, wall: float) -> dict:
    """The facts report.html shows about an image job."""
    from models.detections import FACE, LABELS, PLATE

    counts = {LABELS[c]: sum(int((d.class_id == c).sum()) for d in found.values())
              for c in (FACE, PLATE)}
    return {"source": str(args.img_dir), "output": str(args.out_dir),
            "detections": counts, "settings": settings.to_dict(),
            "models": {task: ref.display for task, ref in (models or {}).items()},
            "timings": {"wall_s": round(wall, 3),
                        "images_per_s": round(len(found) / wall, 2) if wall > 0 else None}}
