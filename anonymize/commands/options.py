"""Anonymization flags shared by `run`, `submit`, `images` and `faces`.

Every flag maps one-to-one onto a :class:`pipeline.settings.Settings` field
(``--lp-thresh`` -> ``lp_thresh``) and its help names the default. Only the
flags a user gave override the config file and the environment.
"""

from __future__ import annotations

import argparse

from pipeline.settings import BLUR_MODES, PLATE_MODES, SHAPES, Settings

D = Settings()


def add_settings_arguments(p: argparse.ArgumentParser, video: bool = True) -> None:
    g = p.add_argument_group("detection")
    g.add_argument("--config", help="YAML/JSON file with settings (same names as the flags)")
    g.add_argument("--plates", dest="plate_mode", choices=PLATE_MODES, default=None,
                   help=f"plate detection mode (default: {D.plate_mode})")
    g.add_argument("--no-faces", dest="faces", action="store_false", default=None,
                   help="do not detect faces")
    g.add_argument("--no-plates", dest="plates", action="store_false", default=None,
                   help="do not detect licence plates")
    g.add_argument("--face-thresh", type=float, help=f"face score threshold 0-1 (default: {D.face_thresh})")
    g.add_argument("--lp-thresh", type=float, help=f"plate score threshold 0-1 (default: {D.lp_thresh})")
    g.add_argument("--vehicle-thresh", type=float,
                   help=f"vehicle score threshold for two-stage 0-1 (default: {D.vehicle_thresh})")
    g.add_argument("--face-size", type=int,
                   help=f"long side frames are scaled to for face detection (default: {D.face_size})")
    g.add_argument("--plate-size", type=int, help=f"one-stage plate input size (default: {D.plate_size})")
    g.add_argument("--crop-size", type=int, help=f"two-stage crop input size (default: {D.crop_size})")
    g.add_argument("--face-model", help=f"face model name (default: {D.face_model})")
    g.add_argument("--plate-model", help=f"plate model name (default: {D.plate_model})")
    g.add_argument("--vehicle-model", help=f"vehicle model name (default: {D.vehicle_model})")
    b = p.add_argument_group("anonymization")
    b.add_argument("--mode", choices=BLUR_MODES, default=None, help=f"how regions are hidden (default: {D.mode})")
    b.add_argument("--shape", choices=SHAPES, default=None,
                   help=f"face region shape; plates are always boxes (default: {D.shape})")
    b.add_argument("--mask-scale", type=float, help=f"box dilation factor >= 1 (default: {D.mask_scale})")
    if video:
        b.add_argument("--fill-frames", type=int,
                       help=f"temporal filling window in frames, 0 = off (default: {D.fill_frames})")
        e = p.add_argument_group("encoding")
        e.add_argument("--crf", type=int, help=f"x264 constant rate factor 0-51 (default: {D.crf})")
        e.add_argument("--preset", help=f"x264 preset (default: {D.preset})")
        e.add_argument("--keep-metadata", action="store_true", default=None,
                       help="keep container metadata such as GPS location (default: stripped)")
        e.add_argument("--segment-frames", type=int,
                       help=f"frames per segment / distributed batch (default: {D.segment_frames})")
    x = p.add_argument_group("execution")
    x.add_argument("--device", help=f"cpu, cuda, cuda:N or auto (default: {D.device})")
    x.add_argument("--batch-size", type=int, help=f"frames per detector batch (default: {D.batch_size})")
    x.add_argument("--no-half", dest="half", action="store_false", default=None,
                   help="run fp32 on CUDA (default: fp16 on CUDA)")


def settings_from_args(args: argparse.Namespace, **fixed) -> Settings:
    names = Settings.__dataclass_fields__.keys()
    overrides = {k: getattr(args, k) for k in names if getattr(args, k, None) is not None}
    overrides.update(fixed)
    return Settings.load(getattr(args, "config", None), overrides)
