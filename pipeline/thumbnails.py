"""Thumbnails of chosen frames of a video, as base64 JPEG for an inline page.

Apart from the review because it is the one part that touches pixels: only
the few chosen frames are decoded again, seeking to each, so memory stays
bounded whatever the length of the video.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from fractions import Fraction
from pathlib import Path

import numpy as np

THUMB_WIDTH = 320
SEEK_GAP = 2.0  # seconds: a frame further ahead is reached by seeking, nearer by decoding on


def jpeg_thumbnail(rgb: np.ndarray, width: int = THUMB_WIDTH) -> str:
    """An RGB image as base64 JPEG, scaled down to ``width`` when wider."""
    import cv2

    h, w = rgb.shape[:2]
    if w > width:
        rgb = cv2.resize(rgb, (width, max(1, round(h * width / w))), interpolation=cv2.INTER_AREA)
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR),
                           [cv2.IMWRITE_JPEG_QUALITY, 80])
    if not ok:
        raise ValueError("could not encode a thumbnail")
    return base64.b64encode(buf.tobytes()).decode("ascii")


def grab_thumbnails(path: Path, wanted: Mapping[int, Fraction], width: int = THUMB_WIDTH,
                    turns: int = 0) -> dict[int, str]:
    """JPEG thumbnails (base64) of the frames of ``path`` shown at the times in
    ``wanted`` (frame index -> seconds, exact), each turned ``turns`` quarter
    turns counter-clockwise (a rotated video, as a player shows it). Frames
    far apart are reached by seeking to the keyframe before them; only one
    frame is held at a time."""
    from .video.decode import to_rgb
    from .video.probe import open_input, video_stream

    out: dict[int, str] = {}
    targets = sorted(wanted.items(), key=lambda kv: kv[1])
    if not targets:
        return out
    with open_input(path) as c:
        vs = video_stream(c, path)
        tb = Fraction(vs.time_base.numerator, vs.time_base.denominator)
        rate = vs.average_rate or vs.guessed_rate
        eps = Fraction(1, 2) / Fraction(rate) if rate else Fraction(1, 50)
        frames = None
        held = None  # a frame read past its target, which the next target may want
        pos: Fraction | None = None

        def pull():
            nonlocal held
            if held is not None:
                frame, held = held, None
                return frame
            for frame in frames:
                if frame.pts is not None:
                    return frame
            return None

        for idx, t in targets:
            if frames is None or pos is None or t < pos - eps or t - pos > SEEK_GAP:
                c.seek(max(0, int(t / tb)), stream=vs, backward=True, any_frame=False)
                frames, held = c.decode(vs), None
            best = None
            while True:
                frame = pull()
                if frame is None:
                    break
                ft = frame.pts * tb
                pos = ft
                if ft < t - eps:
                    best = frame  # the nearest frame before, if the wanted one is missing
                    continue
                if ft <= t + eps:
                    best = frame
                else:
                    held = frame
                break
            if best is not None and abs(best.pts * tb - t) <= eps:
                out[idx] = jpeg_thumbnail(np.ascontiguousarray(np.rot90(to_rgb(best), turns)),
                                          width)
    return out
