"""Blurring hides the regions, scales with the box, and leaves other pixels alone."""

import numpy as np
import pytest
import torch

from models.detections import CAR, FACE, PLATE, Detections
from pipeline.blur import anonymize_frame


def textured(h=120, w=160, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def hand_mask(shape: str) -> np.ndarray:
    """The pixels the two boxes below cover once dilated by 1.2, worked out by hand:
    face [20,30,60,70] -> centre (40,50), half 24 -> [16,26,64,74];
    plate [100,10,150,30] -> centre (125,20), half (30,12) -> [95,8,155,32]."""
    mask = np.zeros((120, 160), bool)
    if shape == "box":
        mask[26:74, 16:64] = True
    else:  # pixel centres inside the ellipse inscribed in the face box
        yy, xx = np.mgrid[0:120, 0:160] + 0.5
        mask |= ((xx - 40) / 24) ** 2 + ((yy - 50) / 24) ** 2 <= 1
    mask[8:32, 95:155] = True  # plates are always whole rectangles
    return mask


@pytest.mark.parametrize("mode", ["blur", "pixelate", "solid"])
@pytest.mark.parametrize("shape", ["box", "ellipse"])
def test_only_regions_change(mode, shape):
    img = textured()
    dets = Detections([[20, 30, 60, 70], [100, 10, 150, 30]], [0.9, 0.8], [FACE, PLATE])
    out = anonymize_frame(img, dets, mode, shape, mask_scale=1.2)
    mask = hand_mask(shape)
    assert np.array_equal(out[~mask], img[~mask])
    # detail inside is gone: variance collapses compared with the random texture
    assert out[mask].astype(float).std() < img[mask].astype(float).std() * 0.6
    assert img is not out


def test_plates_stay_rectangles_with_ellipse_shape():
    img = textured()
    plate = Detections([[40, 40, 120, 60]], [0.9], [PLATE])
    out = anonymize_frame(img, plate, "solid", "ellipse", mask_scale=1.0)
    assert (out[40:60, 40:120] == 0).all()  # corners included


def test_vehicles_are_not_blurred():
    img = textured()
    out = anonymize_frame(img, Detections([[0, 0, 100, 100]], [0.9], [CAR]), "solid")
    assert np.array_equal(out, img)


def test_strength_scales_with_box():
    """A big face keeps no more distinct detail than a small one."""
    big, small = textured(400, 400, 1), textured(400, 400, 2)
    out_big = anonymize_frame(big, Detections([[0, 0, 400, 400]], [1], [FACE]), "pixelate", "box", 1.0)
    out_small = anonymize_frame(small, Detections([[0, 0, 40, 40]], [1], [FACE]), "pixelate", "box", 1.0)
    blocks_big = len(np.unique(out_big.reshape(-1, 3), axis=0))
    blocks_small = len(np.unique(out_small[:40, :40].reshape(-1, 3), axis=0))
    assert blocks_big <= 64 and blocks_small <= 64


def test_torch_input_stays_torch_and_matches_numpy():
    img = textured()
    dets = Detections([[10, 10, 50, 50]], [0.9], [FACE])
    a = anonymize_frame(img, dets)
    b = anonymize_frame(torch.from_numpy(img), dets)
    assert isinstance(b, torch.Tensor)
    assert np.array_equal(a, b.numpy())


def test_boxes_outside_the_frame_are_clipped():
    img = textured()
    out = anonymize_frame(img, Detections([[-50, -50, 10, 10], [500, 500, 600, 600]], [1, 1],
                                          [FACE, FACE]), "solid", "box", 1.0)
    assert (out[:10, :10] == 0).all() and np.array_equal(out[20:, 20:], img[20:, 20:])


def test_blurred_faces_carry_no_face_shape_for_an_independent_detector(data_dir):
    """dlib's HOG face detector (not one the product uses) finds the annotated
    faces of real photos, and finds none inside them once blurred or pixelated
    with the default strength and dilation."""
    import dlib

    from pipeline.datasets import load_annotations, read_image

    hog = dlib.get_frontal_face_detector()
    records = load_annotations(data_dir / "faces_dlib_examples")
    records += load_annotations(data_dir / "faces_kaggle_facemask")[:40]

    def found_in(img, boxes):
        rects, _, _ = hog.run(img, 1, 0.0)  # upsampled once, dlib's default threshold
        centres = [((r.left() + r.right()) / 2, (r.top() + r.bottom()) / 2) for r in rects]
        return sum(any(b[0] <= x <= b[2] and b[1] <= y <= b[3] for b in boxes)
                   for x, y in centres)

    before = {"blur": 0, "pixelate": 0}
    after = {"blur": 0, "pixelate": 0}
    for rec in records:
        boxes = [b.xyxy for b in rec.boxes if b.label == "face"]
        if not boxes:
            continue
        img = read_image(rec.path)
        faces = Detections(boxes, [1.0] * len(boxes), [FACE] * len(boxes))
        n = found_in(img, boxes)
        for mode in before:
            before[mode] += n
            after[mode] += found_in(anonymize_frame(img, faces, mode, "box", 1.3), boxes)
    assert before["blur"] >= 40, "the independent detector should see the faces first"
    assert after == {"blur": 0, "pixelate": 0}
