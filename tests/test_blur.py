"""Blurring hides the regions, scales with the box, and leaves other pixels alone."""

import numpy as np
import pytest
import torch

from models.detections import CAR, FACE, PLATE, Detections
from pipeline.blur import anonymize_frame, region_mask


def textured(h=120, w=160, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.mark.parametrize("mode", ["blur", "pixelate", "solid"])
@pytest.mark.parametrize("shape", ["box", "ellipse"])
def test_only_regions_change(mode, shape):
    img = textured()
    dets = Detections([[20, 30, 60, 70], [100, 10, 150, 30]], [0.9, 0.8], [FACE, PLATE])
    out = anonymize_frame(img, dets, mode, shape, mask_scale=1.2)
    mask = region_mask(dets, 160, 120, 1.2, shape)
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
