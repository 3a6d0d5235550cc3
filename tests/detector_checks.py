"""Checks every vehicle detector must pass on real images, shared by its tests."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np

from pipeline.datasets import read_image

IMAGES = "plates_vehicles_openimages_roboflow"


def check_mixed_size_batch(detector, data_dir: Path) -> None:
    """Frames of different sizes in one call give what each gives alone, in its
    own pixels (a detector batches per size and must not mix them up)."""
    ann = json.loads((data_dir / IMAGES / "annotations.json").read_text())
    first = read_image(data_dir / IMAGES / ann["images"][0]["file"])
    second = cv2.resize(read_image(data_dir / IMAGES / ann["images"][1]["file"]), (640, 360))
    together = detector([first, second], thresh=0.2)
    alone = [detector(first, thresh=0.2)[0], detector(second, thresh=0.2)[0]]
    for a, b in zip(together, alone, strict=True):
        assert len(a) == len(b) > 0
        np.testing.assert_allclose(a.xyxy, b.xyxy, atol=0.05)
        np.testing.assert_allclose(a.confidence, b.confidence, atol=1e-4)
    assert (together[1].xyxy[:, [0, 2]] <= 640).all() and (together[1].xyxy[:, [1, 3]] <= 360).all()
