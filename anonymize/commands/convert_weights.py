"""`anonymize convert-weights`: darknet / Keras YOLOv3 files -> torch checkpoint.

The research models (ImageAI ``yolo.h5``, ``yolov3_custom.h5``, darknet
``.weights`` + ``.cfg``) cannot be downloaded here; users convert their own
copies once, and pass the resulting ``.pt`` to the detectors.
"""

from __future__ import annotations

import argparse

HELP = "convert darknet .weights (+ .cfg) or a Keras YOLOv3 .h5 into a torch checkpoint"


def add_arguments(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--weights", metavar="FILE.weights", help="darknet weights (needs --cfg)")
    src.add_argument("--keras", metavar="FILE.h5", help="Keras YOLOv3 h5 (keras-yolo3 / ImageAI)")
    p.add_argument("--cfg", metavar="FILE.cfg", help="darknet cfg matching --weights")
    p.add_argument("-o", "--output", required=True, metavar="OUT.pt", help="checkpoint to write")
    p.add_argument("--names", default=None, metavar="coco|plate|FILE",
                   help="class names: 'coco', 'plate', a file with one name per line or an "
                        "ImageAI detection_config.json (default: coco for 80 classes, plate "
                        "for 1)")
    p.add_argument("--anchors", default=None, metavar="W,H,...",
                   help="Keras only: 18 anchor numbers, small to large (default: the COCO "
                        "anchors, or those in a detection_config.json given as --names)")
    p.add_argument("--input-size", type=int, default=None,
                   help="Keras only: network input size stored in the checkpoint, a multiple "
                        "of 32 (default 416)")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    if args.weights and not args.cfg:
        raise ValueError("--weights needs --cfg (the darknet network description)")
    if args.cfg and not args.weights:
        raise ValueError("--cfg is only used with --weights")
    if args.weights and (args.anchors is not None or args.input_size is not None):
        raise ValueError("--anchors and --input-size are only used with --keras (a darknet "
                         "cfg states its own)")

    import torch

    from pipeline.video.output import atomic_output, check_folder_writable

    output = Path(args.output)  # checked before the conversion's work
    if output.is_dir():
        raise ValueError(f"-o {output} is a folder; name the checkpoint file, such as "
                         f"{output / 'model.pt'}")
    check_folder_writable(output.parent, "-o folder")
    if args.weights:
        from models.darknet import convert_darknet

        checkpoint = convert_darknet(args.weights, args.cfg, args.names)
    else:
        from models.keras_h5 import convert_keras_h5

        checkpoint = convert_keras_h5(args.keras, args.names, anchors=args.anchors,
                                      input_size=416 if args.input_size is None
                                      else args.input_size)
    out = Path(args.output)
    with atomic_output(out) as tmp:  # under a hidden name of its own, renamed when complete
        torch.save(checkpoint, tmp)
    config = checkpoint["config"]
    params = sum(t.numel() for k, t in checkpoint["state_dict"].items()
                 if not k.endswith("num_batches_tracked"))
    print(f"{out}: YOLOv3, {config['num_classes']} classes "
          f"({', '.join(checkpoint['names'][:6])}{', ...' if len(checkpoint['names']) > 6 else ''}), "
          f"{params / 1e6:.2f} M parameters, input {config['input_size']}")
    return 0
