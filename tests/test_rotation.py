"""Rotated video: the detectors see frames as a player shows them.

Phones store portrait video as landscape frames plus a display rotation;
face detectors are trained on upright faces. The frames are turned upright
for detection and the boxes mapped back into the stored pixels, which are
what is blurred (the output keeps the rotation).
"""

from __future__ import annotations

import json

import av
import numpy as np
import pytest

from models.detections import FACE, Detections
from pipeline import video
from pipeline.datasets import load_annotations, read_image
from pipeline.detect import detect_upright
from pipeline.evaluate import blur_mask, covered_fraction
from pipeline.process import run_local
from pipeline.settings import Settings
from tests.videos import make_video

PHOTO = "2007_007763.jpg"  # seven faces; turned a quarter, CenterFace misses one


@pytest.mark.parametrize("k", range(4))
def test_boxes_found_on_a_turned_frame_map_back_to_the_same_pixels(k):
    rng = np.random.default_rng(k)
    for _ in range(40):
        h, w = (int(v) for v in rng.integers(5, 40, 2))
        x1, x2 = sorted(int(v) for v in rng.integers(0, w + 1, 2))
        y1, y2 = sorted(int(v) for v in rng.integers(0, h + 1, 2))
        if x1 == x2 or y1 == y2:
            continue
        marked = np.zeros((h, w), bool)
        marked[y1:y2, x1:x2] = True
        ys, xs = np.nonzero(np.rot90(marked, k))
        seen = Detections([[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]], [1.0], [FACE])
        assert seen.unrotated(k, w, h).xyxy.tolist() == [[x1, y1, x2, y2]]


class _Upright:
    """Finds the one bright pixel of a frame, and only when the frame is
    taller than wide (as the stored frames here are not)."""

    def __init__(self):
        self.shapes = []

    def detect(self, frames):
        out = []
        for f in frames:
            self.shapes.append(tuple(f.shape))
            if f.shape[0] <= f.shape[1]:
                out.append(Detections.empty())
                continue
            y, x = np.argwhere(f[..., 0] == 255)[0]
            out.append(Detections([[x, y, x + 1, y + 1]], [1.0], [FACE]))
        return out


@pytest.mark.parametrize("rotation", [90, 180, 270])
def test_detect_upright_turns_the_frames_and_returns_stored_pixels(rotation):
    frame = np.zeros((6, 10, 3), np.uint8)
    frame[2, 7] = 255
    stack = _Upright()
    (found,) = detect_upright(stack, [frame], rotation)
    want_shape = (10, 6, 3) if rotation in (90, 270) else (6, 10, 3)
    assert stack.shapes == [want_shape]
    if rotation == 180:  # still wider than tall: the stand-in finds nothing
        assert len(found) == 0
    else:
        assert found.xyxy.tolist() == [[7, 2, 8, 3]]


@pytest.mark.slow
def test_faces_of_a_rotated_phone_video_are_all_blurred(data_dir, tmp_path):
    """A photo stored a quarter turn clockwise with a 90-degree display rotation:
    every annotated face is covered by the boxes the run recorded (stored pixels)."""
    root = data_dir / "faces_dlib_examples"
    (record,) = [r for r in load_annotations(root) if r.name.endswith(PHOTO)]
    upright = read_image(record.path)
    upright = upright[: upright.shape[0] // 2 * 2, : upright.shape[1] // 2 * 2]
    stored = np.ascontiguousarray(np.rot90(upright, -1))
    src = tmp_path / "portrait.mp4"
    with av.open(str(src), "w") as c:
        vs = c.add_stream("libx264", rate=25)
        vs.width, vs.height, vs.pix_fmt = stored.shape[1], stored.shape[0], "yuv420p"
        vs.codec_context.options = {"crf": "12", "preset": "ultrafast"}
        vs.set_display_rotation(90)
        for i in range(2):
            f = av.VideoFrame.from_ndarray(stored, format="rgb24")
            f.pts = i
            for p in vs.encode(f):
                c.mux(p)
        for p in vs.encode(None):
            c.mux(p)
    settings = Settings(plates="off", device="cpu")
    run_local(src, tmp_path / "out.mp4", settings, tmp_path / "det")
    doc = json.loads((tmp_path / "det" / "detections.json").read_text(encoding="utf-8"))
    h, w = stored.shape[:2]
    for frame in doc["frames"]:
        dets = Detections.from_dicts(frame["detections"])
        mask = blur_mask(dets, h, w, settings.mask_scale)
        for gt in record.pixel_boxes(upright.shape[1], upright.shape[0]):
            x1, y1, x2, y2 = gt.xyxy  # upright -> stored (a quarter turn clockwise)
            in_stored = [upright.shape[0] - y2, x1, upright.shape[0] - y1, x2]
            assert covered_fraction(mask, in_stored) >= 0.9, (frame["frame_idx"], gt.xyxy)


class _Shapes:
    """Finds nothing; records the shape of every frame it is shown."""

    model_names = {"faces": "stand-in"}

    def __init__(self):
        self.shapes = set()

    def detect(self, frames):
        self.shapes |= {f.shape[:2] for f in frames}
        return [Detections.empty() for _ in frames]


@pytest.mark.parametrize("rotation, hflip, upright", [
    (0, True, 0), (90, True, 90), (180, True, 180), (270, False, 270)])
def test_a_mirrored_video_is_shown_mirrored_again(tmp_path, rotation, hflip, upright):
    """A display matrix may mirror the picture (a front camera's, or one written
    with a flip). Read as an angle alone, a plain mirror came out as a 180°
    turn: the output was shown upside down and its frames were turned upside
    down for detection. The output keeps the source's matrix, and detection
    sees the frames turned by the rotation part only (a mirror does not hide a
    face)."""
    src = make_video(tmp_path / "in.mp4", n_frames=4, width=64, height=48,
                     rotation=rotation, hflip=hflip)
    info = video.probe(src)
    assert info.rotation == upright
    stack = _Shapes()
    report = run_local(src, tmp_path / "out.mp4", Settings(plates="off", device="cpu"),
                       tmp_path / "det", stack=stack)
    assert report["frames_match"]
    assert video.probe(tmp_path / "out.mp4").display_matrix == info.display_matrix
    assert stack.shapes == {(64, 48) if upright in (90, 270) else (48, 64)}
