"""Frames and crops that live on the GPU, checked on the CPU: numpy cannot read a
CUDA tensor (``np.asarray`` of one raises), so here a tensor's ``__array__``
raises as it would there, and the code a CUDA run takes must not need it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.base import Detector, frames_to_numpy, frames_to_tensor
from models.detections import CAR, PLATE, Detections
from pipeline.detect import DetectionStack
from pipeline.settings import Settings


@pytest.fixture
def tensors_refuse_numpy(monkeypatch):
    def refuse(self, *args, **kwargs):
        raise TypeError("can't convert cuda:0 device type tensor to numpy. Use Tensor.cpu() "
                        "to copy the tensor to host memory first.")

    monkeypatch.setattr(torch.Tensor, "__array__", refuse)


def test_frames_to_tensor_and_numpy_take_a_list_of_device_tensors(tensors_refuse_numpy):
    """A list of tensors (the vehicle crops of a frame on the device) went
    through ``np.ascontiguousarray``: on CUDA a TypeError."""
    frame = torch.arange(6 * 8 * 3, dtype=torch.uint8).reshape(6, 8, 3)
    crops = [frame[1:4, 2:7], frame[0:2, 0:3]]
    got = frames_to_tensor(crops, torch.device("cpu"))
    assert [tuple(t.shape) for t in got] == [(3, 5, 3), (2, 3, 3)]
    assert all(t.is_contiguous() and torch.equal(t, c) for t, c in zip(got, crops, strict=True))
    back = frames_to_numpy(crops)
    assert all(isinstance(a, np.ndarray) and (a == c.numpy()).all()
               for a, c in zip(back, crops, strict=True))


class _Plates(Detector):
    """A plate model with the base class's ``detect_crops`` (one ``detect`` per
    crop), as YOLOv3, EgoBlur and mmdet plate models have: it reads its frames
    with :func:`frames_to_tensor`, and finds a plate in the middle of each."""

    labels = frozenset({PLATE})

    def __init__(self):
        super().__init__("cpu", False)
        self.seen: list[tuple[int, ...]] = []

    def detect(self, frames, thresh=None, size=None):
        out = []
        for t in frames_to_tensor(frames, self.device):
            h, w = t.shape[:2]
            self.seen.append((h, w))
            out.append(Detections(np.array([[w / 4, h / 4, 3 * w / 4, 3 * h / 4]], np.float32),
                                  np.array([0.9], np.float32), np.array([PLATE])))
        return out


class _Vehicles(Detector):
    labels = frozenset({CAR})

    def __init__(self):
        super().__init__("cpu", False)

    def detect(self, frames, thresh=None, size=None):
        return [Detections(np.array([[20, 10, 60, 40]], np.float32), np.array([0.8], np.float32),
                           np.array([CAR])) for _ in range(len(frames))]


def test_two_stage_plates_of_frames_held_as_one_device_tensor(tensors_refuse_numpy):
    """On CUDA a segment's batch is one tensor on the device (SegmentJob) and the
    vehicle crops handed to the plate model are slices of it: a plate model with
    the base ``detect_crops`` failed there with numpy's TypeError."""
    frames = torch.zeros((2, 60, 80, 3), dtype=torch.uint8)
    plates = _Plates()
    stack = DetectionStack(Settings(device="cpu", plates="two-stage", faces=False, threads=1),
                           None, plates, _Vehicles())
    found = stack.detect(frames)
    assert len(plates.seen) == 2
    for d in found:
        got = d.with_class(PLATE)
        assert len(got) == 1 and got.xyxy[0, 0] > 20 and got.xyxy[0, 2] < 60
