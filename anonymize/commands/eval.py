"""``anonymize eval``: detection and coverage quality on an annotated image set.

Writes ``OUT/metrics.json`` and the research ``OUT/<mode>_mdict_list.pkl``
(see pipeline/evaluate.py), prints a per-label table. Only argparse is
imported at module level: the CLI imports every command for ``--help``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from .options import add_settings_arguments, settings_from_args
from .run import warn

HELP = "evaluate face/plate detection and blur coverage on an annotated image set"

MODES = ("two-stage", "one-stage", "both", "faces")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    src = parser.add_argument_group("data (either --dataset, or --anno-dir with --img-dir)")
    src.add_argument("--dataset", metavar="DIR",
                     help="folder with annotations.json (format: README, "
                          "\"Command line\")")
    src.add_argument("--anno-dir", metavar="DIR",
                     help="YOLO-txt annotations: one <image stem>.txt per image, "
                          "rows 'class cx cy w h' normalised to 0..1")
    src.add_argument("--img-dir", metavar="DIR", help="images of --anno-dir")
    src.add_argument("--plate-class-id", type=int, metavar="N",
                     help="YOLO class id of plates (the research sets used 15)")
    src.add_argument("--face-class-id", type=int, metavar="N", help="YOLO class id of faces")
    src.add_argument("--car-class-id", type=int, metavar="N",
                     help="YOLO class id of vehicles")
    src.add_argument("--limit", type=int, metavar="N",
                     help="evaluate only the first N images (default: all)")

    parser.add_argument("--out-dir", required=True, metavar="OUT",
                        help="where metrics.json, <mode>_mdict_list.pkl and drawn/ go")
    parser.add_argument("--mode", choices=MODES,
                        help="what to detect: a plate mode (plates only) or faces "
                             "(default: the plates setting, 'both')")
    parser.add_argument("--min-width", type=float, default=16.0, metavar="PX",
                        help="also report coverage recall of boxes at least PX wide (default 16)")
    parser.add_argument("--draw", action="store_true",
                        help="write images with ground truth (green) and detections (red) "
                             "to OUT/drawn/ as JPEG, named after the image's path (folders "
                             "joined by __; the source suffix kept where names would clash)")
    # eval's --mode picks what to detect; how regions are hidden plays no part
    add_settings_arguments(parser, video=False, exclude=("faces", "plates", "mode"))


def _records(args: argparse.Namespace):
    from pipeline import datasets

    if args.dataset and (args.anno_dir or args.img_dir):
        raise ValueError("give either --dataset or --anno-dir/--img-dir, not both")
    if args.dataset:
        records = datasets.load_annotations(args.dataset)
    elif args.anno_dir and args.img_dir:
        given = [(cid, flag) for cid, flag in ((args.plate_class_id, "plate"),
                                               (args.face_class_id, "face"),
                                               (args.car_class_id, "car"))
                 if cid is not None]
        for i, (cid, label) in enumerate(given):  # one id, two labels: one label's boxes lost
            other = next((lb for c, lb in given[:i] if c == cid), None)
            if other is not None:
                raise ValueError(f"class id {cid} is given for both --{other}-class-id and "
                                 f"--{label}-class-id; give each label its own id")
        classes = dict(given)
        records = datasets.load_yolo_dir(args.anno_dir, args.img_dir, classes)
    else:
        raise ValueError("give --dataset DIR, or --anno-dir DIR with --img-dir DIR")
    if args.limit is not None:
        if args.limit < 1:
            raise ValueError("--limit must be at least 1")
        records = records[:args.limit]
    if not records:
        raise ValueError("the dataset lists no images")
    return records


def _model_names(stack, settings, mode: str) -> dict[str, str]:
    names = getattr(stack, "model_names", None)
    if isinstance(names, dict) and names:
        return dict(names)
    if mode == "faces":
        return {"faces": settings.face_model}
    two = {"vehicles": settings.vehicle_model} if mode != "one-stage" else {}
    return {"plates": settings.plate_model, **two}


def _device_of(stack, settings) -> str:
    """The device the loaded detectors really run on ('auto' resolved)."""
    for name in ("face_detector", "plate_detector", "vehicle_detector"):
        device = getattr(getattr(stack, name, None), "device", None)
        if device is not None:
            return str(device)
    return str(getattr(stack, "device", settings.device))


def run(args: argparse.Namespace) -> int:
    from pipeline.video.output import check_folder_writable

    if not (args.min_width >= 0):  # -5 (or nan) printed a cov(w>=-5) column of every box
        raise ValueError(f"--min-width must be 0 or more pixels, got {args.min_width:g}")
    records = _records(args)  # fail on a bad dataset before loading any model
    check_folder_writable(Path(args.out_dir), "--out-dir")
    if args.draw:  # OUT/drawn a file: a FileExistsError traceback once the model had loaded
        check_folder_writable(Path(args.out_dir) / "drawn", "--draw folder")

    from pipeline.evaluate import MODE_LABELS, evaluate_dataset, format_table

    mode = args.mode or settings_from_args(args).plates
    if mode == "off":
        raise ValueError("--mode: plates are off in the settings; give --mode")
    faces = mode == "faces"
    settings = settings_from_args(args, faces=faces, plates="off" if faces else mode)

    from models.resolve import check_settings

    check_settings(settings)  # a bad model setting fails before any image is read

    from pipeline.detect import DetectionStack

    t0 = time.perf_counter()
    stack = DetectionStack.from_settings(settings)
    load_s = time.perf_counter() - t0
    meta = {
        "dataset": str(args.dataset or args.anno_dir),
        "images_dir": str(args.img_dir) if args.img_dir else None,
        "models": _model_names(stack, settings, mode),
        "device": _device_of(stack, settings),
        "settings": settings.to_dict(),
        "timing": {"load_s": round(load_s, 3)},
    }
    out_dir = Path(args.out_dir)
    metrics = evaluate_dataset(
        records, stack.detect, out_dir, mode, labels=MODE_LABELS[mode],
        mask_scale=settings.mask_scale, shape=settings.shape,
        batch_size=settings.batch_size, min_width=args.min_width,
        draw_dir=out_dir / "drawn" if args.draw else None, meta=meta)
    t = metrics["timing"]
    print(f"{metrics['images']} images, mode {mode}, mask scale {settings.mask_scale:g} "
          f"({settings.shape}), "
          f"device {meta['device']}: load {t['load_s']:.1f} s, "
          f"detect {t['detect_ms_per_image']:.0f} ms/image")
    print(format_table(metrics))
    if metrics["unrecognised_labels"]:
        names = ", ".join(f"{k!r} ({n} boxes)" for k, n in metrics["unrecognised_labels"].items())
        warn(f"labels no detector finds, not evaluated: {names}")
    if metrics["boxes_without_area"]:
        n, first = len(metrics["boxes_without_area"]), metrics["boxes_without_area"][0]
        warn(f"{n} annotated box{'es have' if n != 1 else ' has'} no area inside "
             f"{'their' if n != 1 else 'its'} image (outside it, or no width or height) and "
             f"{'are' if n != 1 else 'is'} not evaluated; first: {first['file']} "
             f"{first['label']} [{', '.join(f'{v:g}' for v in first['xyxy'])}]")
    for item in metrics["undecodable"]:
        warn(f"{item['reason']}; left out")
    left = f" ({len(metrics['undecodable'])} undecodable images left out)" \
        if metrics["undecodable"] else ""
    print(f"wrote {out_dir / 'metrics.json'}{left}")
    return 1 if metrics["undecodable"] else 0
