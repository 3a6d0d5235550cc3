"""Faces on the same video: what deface finds that we leave unblurred, and
the reverse.

A user weighs us against deface on their own video, so recall is compared
frame by frame on real clips, not only on the annotated image sets:

1. deface 1.5.0 (its own venv, made by ``bench/peers.py``) reads each clip
   as it does (imageio-ffmpeg) and its CenterFace finds faces at its
   defaults (native size, threshold 0.2); the boxes are kept per frame;
2. our detection stack, faces only at the defaults, finds faces on every
   frame (cached by ``bench/detect_every.py``), filled between frames as the
   pipeline fills them; our blur covers those boxes dilated by
   ``mask_scale``;
3. each deface face less than 95 % under our blur is a face deface would
   have blurred and we would not (written out as a crop for a person to
   look at: deface's false detections count too); the reverse counts our
   raw faces less than 95 % under deface's blur (its boxes dilated by its
   ``--mask-scale`` 1.3, as boxes: its ellipses cover less).

    python bench/versus_deface.py [--frames 400] [--crops DIR] [clips...]
"""

from __future__ import annotations

import json
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

# importing detect_every also puts the repository root on sys.path
from detect_every import (
    COVERED,
    MISSED,
    clip_parser,
    coverages,
    left_unblurred,
    markdown,
    raw_detections,
    report_clips,
)
from peers import DEFACE_VENV, _clean_env, ensure_deface

DEFACE_THRESH = 0.2  # deface's --thresh default
DEFACE_MASK_SCALE = 1.3  # deface's --mask-scale default

# run by deface's own python: its reader, its detector, its defaults
DEFACE_DUMP = """
import json, sys
import imageio.v2 as imageio
from deface.centerface import CenterFace
path, limit, thresh, dest = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
net = CenterFace(in_shape=None, backend="auto")
frames = []
for i, frame in enumerate(imageio.get_reader(path).iter_data()):
    if i >= limit:
        break
    dets, _ = net(frame, threshold=thresh)
    frames.append([[float(v) for v in d] for d in dets])
with open(dest, "w") as f:  # not stdout: deface prints there
    json.dump(frames, f)
"""


def deface_faces(clip: Path, max_frames: int) -> dict:
    """Per frame index: deface's faces as Detections (boxes and scores)."""
    from models.detections import FACE, Detections

    ensure_deface()
    with tempfile.TemporaryDirectory() as tmp:
        dest = Path(tmp) / "faces.json"
        subprocess.run([str(DEFACE_VENV / "bin" / "python"), "-c", DEFACE_DUMP, str(clip),
                        str(max_frames), str(DEFACE_THRESH), str(dest)],
                       capture_output=True, env=_clean_env(), check=True)
        found = json.loads(dest.read_text())
    frames = {}
    for i, rows in enumerate(found):
        a = np.asarray(rows, np.float32).reshape(-1, 5)
        frames[i] = Detections(a[:, :4], a[:, 4], np.full(len(a), FACE, np.int64))
    return frames


def save_crops(clip: Path, boxes: dict, short: list, crops: Path, tag: str) -> None:
    """A crop (the box and as much again around it) of every short box, named
    clip-tag-frame-box-covered.png, for a person to judge."""
    import cv2

    from pipeline import video

    wanted: dict[int, list] = {}
    for f, k, c in short:
        wanted.setdefault(f, []).append((k, c))
    crops.mkdir(parents=True, exist_ok=True)
    for i, (_, rgb) in enumerate(video.iter_frames(clip)):
        if i > max(wanted, default=-1):
            break
        for k, c in wanted.get(i, []):
            x1, y1, x2, y2 = boxes[i].xyxy[k]
            pw, ph = (x2 - x1) / 2 + 8, (y2 - y1) / 2 + 8
            xa, ya = int(max(0, x1 - pw)), int(max(0, y1 - ph))
            xb, yb = int(min(rgb.shape[1], x2 + pw)), int(min(rgb.shape[0], y2 + ph))
            crop = np.ascontiguousarray(rgb[ya:yb, xa:xb, ::-1])
            crop = cv2.resize(crop, None, fx=4, fy=4, interpolation=cv2.INTER_NEAREST)
            name = f"{clip.stem}-{tag}-{i:05d}-{k}-{round(c * 100)}.png"
            # from memory: OpenCV's path functions crash on a clip name that is not UTF-8
            (crops / name).write_bytes(cv2.imencode(".png", crop)[1].tobytes())


def measure(clip: Path, settings, max_frames: int, crops: Path | None) -> dict:
    import dataclasses

    from pipeline.temporal import fill_segment

    ours, size, per_frame = raw_detections(
        clip, dataclasses.replace(settings, plates="off"), max_frames)
    t = time.perf_counter()
    theirs = deface_faces(clip, max_frames)
    deface_s = time.perf_counter() - t
    frames = sorted(set(ours) & set(theirs))
    ours = {f: ours[f] for f in frames}
    theirs = {f: theirs[f] for f in frames}
    blurred = fill_segment(ours, frames, settings.fill_frames)
    theirs_short = [b for b in coverages(theirs, blurred, size, settings.mask_scale)
                    if b[2] < COVERED]
    ours_short, ours_frames, ours_missed = left_unblurred(ours, theirs, size, DEFACE_MASK_SCALE)
    if crops is not None:
        save_crops(clip, theirs, theirs_short, crops, "deface-found")
    return {"clip": clip.name, "frames": len(frames),
            "frame_counts": f"{len(ours)}/{len(theirs)}" if len(ours) != len(theirs) else "",
            "deface_faces": sum(len(d) for d in theirs.values()),
            "our_faces": sum(len(d) for d in ours.values()),
            "deface_short": len(theirs_short),
            "deface_short_frames": len({f for f, _, _ in theirs_short}),
            "deface_missed": sum(c < MISSED for _, _, c in theirs_short),
            "ours_short": ours_short, "ours_short_frames": ours_frames,
            "ours_missed": ours_missed,
            "our_ms": round(per_frame * 1000, 1), "deface_s": round(deface_s, 1)}


def table(rows: list[dict]) -> str:
    return markdown(
        ["clip", "frames", "deface's faces", "of them < 95 % under our blur (frames)",
         "< 5 %", "our faces (before filling)", "of them < 95 % under deface's blur (frames)",
         "< 5 %"],
        [[r["clip"], r["frames"], r["deface_faces"],
          f"{r['deface_short']} ({r['deface_short_frames']})", r["deface_missed"],
          r["our_faces"], f"{r['ours_short']} ({r['ours_short_frames']})", r["ours_missed"]]
         for r in rows])


def main() -> None:
    from pipeline.settings import Settings

    ap = clip_parser(__doc__)
    ap.add_argument("--crops", type=Path, help="write a crop of every deface face we leave "
                                               "unblurred here")
    args = ap.parse_args()
    report_clips(args, lambda clip: [measure(clip, Settings(), args.frames, args.crops)], table)


if __name__ == "__main__":
    main()
