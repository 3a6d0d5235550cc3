"""Faces are found by their size in the frame, not by a fixed input size.

A 20-px face in a 1920×1080 frame used to be shrunk to 13 px (long side
scaled to 1280) and lost; with ``--min-face`` the frame is scaled (and tiled)
so that such a face reaches the size the face model needs.
"""

import numpy as np
import pytest

from models.detections import FACE
from pipeline.blur import anonymize_frame
from pipeline.datasets import load_annotations, read_image
from pipeline.detect import DetectionStack
from pipeline.settings import Settings

FACE_PX = 20
SPOTS = [(300, 200), (1500, 260), (900, 700), (200, 900)]


def _cv2():
    import cv2

    return cv2


def _faces(data_dir, n):
    """``n`` annotated faces (with a margin of context), each scaled so the
    annotated box is ``FACE_PX`` wide; returns (patch, box within the patch)."""
    cv2 = _cv2()
    out = []
    for rec in load_annotations(data_dir / "faces_dlib_examples"):
        img = read_image(rec.path)
        for gt in rec.pixel_boxes(img.shape[1], img.shape[0]):
            x1, y1, x2, y2 = gt.xyxy
            w = x2 - x1
            if w < 50 or len(out) == n:
                continue
            m = w  # one face width of context on each side
            cx1, cy1 = int(max(0, x1 - m)), int(max(0, y1 - m))
            cx2, cy2 = int(min(img.shape[1], x2 + m)), int(min(img.shape[0], y2 + m))
            s = FACE_PX / w
            patch = cv2.resize(img[cy1:cy2, cx1:cx2], None, fx=s, fy=s, interpolation=cv2.INTER_AREA)
            out.append((patch, np.array([x1 - cx1, y1 - cy1, x2 - cx1, y2 - cy1]) * s))
    assert len(out) == n, "not enough large annotated faces in the dlib examples"
    return out


@pytest.fixture(scope="module")
def frame_and_boxes(data_dir):
    cv2 = _cv2()
    street = read_image(next(iter(sorted((data_dir / "plates_vehicles_openimages_roboflow"
                                         / "images").iterdir()))))
    frame = np.ascontiguousarray(cv2.resize(street, (1920, 1080), interpolation=cv2.INTER_AREA))
    boxes = []
    for (patch, box), (x, y) in zip(_faces(data_dir, len(SPOTS)), SPOTS, strict=True):
        h, w = patch.shape[:2]
        frame[y:y + h, x:x + w] = patch
        boxes.append(box + [x, y, x, y])
    return frame, np.array(boxes)


def _found(stack, frame, boxes):
    det = stack.detect([frame])[0]
    faces = det.with_class(FACE)
    covered = []
    for bx in boxes:
        cx, cy = (bx[0] + bx[2]) / 2, (bx[1] + bx[3]) / 2
        covered.append(any(x1 <= cx <= x2 and y1 <= cy <= y2 for x1, y1, x2, y2 in faces.xyxy))
    return det, covered


@pytest.mark.slow
def test_a_20px_face_in_a_1080p_frame_is_blurred(frame_and_boxes):
    frame, boxes = frame_and_boxes
    settings = Settings(plates="off", device="cpu")  # defaults otherwise: --min-face 16
    stack = DetectionStack.from_settings(settings)
    det, covered = _found(stack, frame, boxes)
    missed = [b.round().tolist() for b, c in zip(boxes, covered, strict=True) if not c]
    assert not missed, f"faces missed at {missed}"
    out = anonymize_frame(frame, det, settings.mode, settings.shape, settings.mask_scale)
    for x1, y1, x2, y2 in boxes.round().astype(int):
        inside = np.abs(out[y1:y2, x1:x2].astype(int) - frame[y1:y2, x1:x2].astype(int))
        assert inside.mean() > 5, "a found face was left as it was"


@pytest.mark.slow
def test_the_old_fixed_long_side_loses_them(frame_and_boxes):
    """The same frame shrunk to a 960 long side (the faces to 10 px): the test
    above can fail."""
    frame, boxes = frame_and_boxes
    stack = DetectionStack.from_settings(Settings(plates="off", device="cpu", min_face=48))
    _, covered = _found(stack, frame, boxes)
    assert not all(covered)
