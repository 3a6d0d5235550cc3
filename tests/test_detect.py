"""Plate modes: two-stage crop and map-back, one-stage, and their union."""

import cv2
import numpy as np
import pytest
import torch

from models.detections import CAR, PLATE, Detections
from pipeline.detect import DetectionStack, merge_plates, vehicle_crops
from pipeline.settings import Settings


class FakeVehicles:
    name = "fake-vehicles"

    def detect(self, frames, thresh):
        return [Detections([[100, 50, 300, 200]], [0.9], [CAR]) for _ in frames]


class FakePlates:
    """Finds the plate drawn as a white rectangle; reports in the input's pixels."""

    name = "fake-plates"

    def __init__(self):
        self.crop_calls = 0

    @staticmethod
    def _find(img):
        ys, xs = np.nonzero((img == 255).all(axis=2))
        if len(xs) == 0:
            return Detections.empty()
        return Detections([[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]], [0.8], [PLATE])

    def detect(self, frames, thresh, size=640):
        return [self._find(f) for f in frames]

    def detect_crops(self, crops, thresh, size=320):
        self.crop_calls += 1
        return [self._find(c) for c in crops]


def frame_with_plate():
    img = np.zeros((240, 400, 3), np.uint8)
    img[150:170, 180:240] = 255
    return img


def stack(mode, threads=0):
    return DetectionStack(Settings(plates=mode, faces=False, threads=threads), None, FakePlates(),
                          FakeVehicles())


def test_vehicle_crops_grow_by_margin_and_clip():
    img = np.zeros((100, 100, 3), np.uint8)
    crops, origins = vehicle_crops(img, Detections([[10, 10, 50, 90]], [1], [CAR]), 0.1)
    assert origins == [(6, 2)] and crops[0].shape[:2] == (98 - 2, 54 - 6)
    tiny, _ = vehicle_crops(img, Detections([[10, 10, 12, 12]], [1], [CAR]), 0.1)
    assert tiny == []


def test_two_stage_maps_crop_boxes_back_to_frame():
    s = stack("two-stage", threads=1)  # no lanes (one core, or a GPU): frames go together
    out = s.detect([frame_with_plate(), frame_with_plate()])
    assert s.plate_detector.crop_calls == 1  # all crops of all frames in one call
    plates = out[0].with_class(PLATE)
    assert np.allclose(plates.xyxy, [[180, 150, 240, 170]])
    assert len(out[0].with_class(CAR)) == 1


def test_one_stage_and_both_agree_on_a_single_plate():
    for mode in ("one-stage", "both"):
        out = stack(mode).detect([frame_with_plate()])
        assert np.allclose(out[0].with_class(PLATE).xyxy, [[180, 150, 240, 170]]), mode


def test_merge_plates_joins_views_of_one_plate_keeps_distinct():
    a = Detections([[0, 0, 10, 10], [50, 50, 60, 60]], [0.9, 0.5], [PLATE, PLATE])
    b = Detections([[1, 0, 12, 10]], [0.7], [PLATE])
    c = Detections([[100, 100, 120, 110]], [0.6], [PLATE])
    merged = merge_plates([a, b, c], 0.5)
    assert len(merged) == 3 and 0.7 not in merged.confidence
    # the plate both sources saw keeps the enclosing box, so neither view's edge is lost
    assert np.allclose(merged.xyxy[:3], [[0, 0, 12, 10], [50, 50, 60, 60], [100, 100, 120, 110]])
    assert np.allclose(merged.confidence[:2], [0.9, 0.5])


class SizedPlates(FakePlates):
    """Finds the plate only when run at ``sees_at`` long side; records the sizes asked."""

    def __init__(self, sees_at):
        super().__init__()
        self.sees_at, self.sizes, self.tiles = sees_at, [], []

    def detect(self, frames, thresh, size=640, tile=True):
        self.sizes.append(size)
        self.tiles.append(tile)
        return [self._find(f) if size == self.sees_at else Detections.empty() for f in frames]


def test_one_stage_runs_at_both_plate_sizes_and_keeps_what_either_finds():
    for second, found in ((640, 1), (0, 0), (960, 0)):
        plates = SizedPlates(sees_at=640)
        s = DetectionStack(Settings(plates="one-stage", faces=False, plate_size=960,
                                    plate_second_size=second), None, plates, None)
        out = s.detect([frame_with_plate()])
        assert len(out[0].with_class(PLATE)) == found, second
        assert plates.sizes == ([960, 640] if second == 640 else [960]), second
        assert plates.tiles == ([True, False] if second == 640 else [True]), second


def test_plate_detectors_without_tiles_are_called_as_before():
    """A second-size pass passes tile=False only to a detector that takes it."""
    plates = FakePlates()  # detect(frames, thresh, size): no tile switch
    s = DetectionStack(Settings(plates="one-stage", faces=False), None, plates, None)
    assert np.allclose(s.detect([frame_with_plate()])[0].with_class(PLATE).xyxy,
                       [[180, 150, 240, 170]])


# -- frames on lanes ----------------------------------------------------------------

class ThreadNotingPlates(FakePlates):
    """Notes the thread and the number of frames of every call."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def detect(self, frames, thresh, size=640):
        import threading

        self.calls.append((threading.current_thread().name, len(frames)))
        return super().detect(frames, thresh, size)


def frames_with_plates_at(xs):
    out = []
    for x in xs:
        f = np.zeros((240, 400, 3), np.uint8)
        f[100:110, x:x + 30] = 255
        out.append(f)
    return out


def test_a_batch_runs_frame_by_frame_on_lanes_and_keeps_its_order():
    """On 2+ CPU cores each frame is detected whole on a lane thread (resizing and
    networks alike); the detections come back in frame order."""
    plates = ThreadNotingPlates()
    s = DetectionStack(Settings(plates="one-stage", faces=False, threads=2), None, plates, None)
    assert s.lanes is not None and s.lanes.count == 2
    xs = [10, 60, 110, 160, 210]
    found = s.detect(frames_with_plates_at(xs))
    assert [int(d.xyxy[0, 0]) for d in found] == xs
    assert {n for _, n in plates.calls} == {1}
    assert {name.rsplit("_", 1)[0] for name, _ in plates.calls} == {"detect-lane"}


def test_one_core_or_a_gpu_keeps_the_batch_together():
    plates = ThreadNotingPlates()
    s = DetectionStack(Settings(plates="one-stage", faces=False, threads=1), None, plates, None)
    assert s.lanes is None
    s.detect(frames_with_plates_at([10, 60, 110]))
    assert {n for _, n in plates.calls} == {3}

    class OnGpu(ThreadNotingPlates):
        device = __import__("torch").device("cuda")

    gpu = DetectionStack(Settings(plates="one-stage", faces=False, threads=4), None, OnGpu(), None)
    assert gpu.lanes is None


def test_regions_need_window_detectors_on_the_cpu():
    """``--reference-every`` looks at parts of frames only with detectors that
    offer ``detect_windows``, and not on a GPU (whole batches are cheaper there)."""

    class Windowed(FakePlates):
        def detect_windows(self, frame, rects, thresh=None, size=None, tile=True):
            return Detections.merge([self._find(frame[y0:y1, x0:x1]).shifted(x0, y0)
                                     for x0, y0, x1, y1 in rects])

    class WindowedOnGpu(Windowed):
        device = __import__("torch").device("cuda")

    settings = Settings(plates="both", faces=False, threads=1)
    assert not DetectionStack(settings, None, FakePlates(), FakeVehicles()).regions_supported()
    windowed = DetectionStack(settings, None, Windowed(), FakeVehicles())
    assert windowed.regions_supported()
    assert not DetectionStack(settings, None, WindowedOnGpu(), FakeVehicles()).regions_supported()
    # vehicles are searched on the whole frame; the crop of a vehicle wholly outside the
    # regions is not searched (its pixels did not change: the caller keeps its plates)
    frame = frame_with_plate()
    plates = windowed.plate_detector
    away = windowed.detect_regions(frame, [(0, 0, 50, 40)], vehicles=True)
    assert len(away.with_class(PLATE)) == 0 and plates.crop_calls == 0
    assert away.with_class(CAR).xyxy.tolist() == [[100, 50, 300, 200]]
    # a region reaching the vehicle's crop (the box grown by the crop margin), far from
    # the plate: the crop is searched and finds it
    near = windowed.detect_regions(frame, [(0, 0, 95, 60)], vehicles=False)
    assert near.xyxy.tolist() == [[180, 150, 240, 170]] and plates.crop_calls == 1
    both = windowed.detect_regions(frame, [(150, 120, 300, 200)], vehicles=True)
    assert both.with_class(PLATE).xyxy.tolist() == [[180, 150, 240, 170]]
    assert both.with_class(CAR).xyxy.tolist() == [[100, 50, 300, 200]]


def test_a_vehicle_reaches_into_a_region_by_its_crop():
    from pipeline.detect import reaching_into

    cars = Detections([[100, 50, 300, 200], [400, 50, 500, 100]], [0.9, 0.8], [CAR, CAR])
    frame = (600, 300)  # width, height
    # the first car's crop at margin 0.1 spans x 80-320, y 35-215
    assert reaching_into(cars, [(0, 0, 79, 60)], 0.1, *frame).xyxy.tolist() == []
    assert reaching_into(cars, [(0, 0, 81, 60)], 0.1, *frame).xyxy.tolist() == [[100, 50, 300, 200]]
    assert reaching_into(cars, [(0, 216, 600, 300)], 0.1, *frame).xyxy.tolist() == []
    assert len(reaching_into(cars, [(0, 0, 81, 60), (499, 99, 600, 300)], 0.1, *frame)) == 2
    assert len(reaching_into(cars, [], 0.1, *frame)) == 0


def test_the_stack_says_where_its_networks_run():
    """SegmentJob copies each batch to ``stack.device`` once (as one tensor) when
    that is a CUDA device; a stack split over devices gets host frames."""
    class OnGpu(FakePlates):
        device = torch.device("cuda")

    class OnSecondGpu(FakeVehicles):
        device = torch.device("cuda", 1)

    settings = Settings(plates="both", faces=False, threads=1)
    assert stack("both").device == "cpu"
    assert DetectionStack(settings, None, OnGpu(), None).device == "cuda"
    assert DetectionStack(settings, None, OnGpu(), OnSecondGpu()).device == "cpu"


@pytest.mark.models
def test_a_batch_as_one_tensor_gives_the_detections_of_the_frames(data_dir):
    """The form a CUDA batch takes (one N×H×W×3 uint8 tensor, pipeline.segment_job)
    run through the default stack on the CPU: the same boxes as the host frames."""
    from pipeline.datasets import read_image
    from pipeline.images import list_images

    paths = list_images(data_dir / "plates_vehicles_openimages_roboflow" / "images")[:6]
    frames = [np.ascontiguousarray(cv2.resize(read_image(p), (640, 480))) for p in paths]
    s = DetectionStack.from_settings(Settings(device="cpu", threads=1))
    assert s.device == "cpu"
    as_list = s.detect(frames)
    as_tensor = s.detect(torch.from_numpy(np.stack(frames)))
    assert sum(len(d) for d in as_list) > 0
    for a, b in zip(as_list, as_tensor, strict=True):
        assert np.allclose(a.xyxy, b.xyxy, atol=0.01) and (a.class_id == b.class_id).all()


@pytest.mark.models
def test_the_gpu_precision_path_finds_what_fp32_finds(data_dir, monkeypatch):
    """What a GPU runs (the torch modules in fp16, inputs cast to fp16, boxes
    decoded from fp16 outputs) run on this CPU through the default stack, against
    the same modules in fp32, on real street and face photos: every fp32 box
    found again (IoU >= 0.7), the counts equal. Catches a module, buffer or
    input left in fp32 (which CUDA refuses) without a GPU."""
    from models import base
    from models.boxes import box_iou_np
    from pipeline.datasets import read_image
    from pipeline.images import list_images

    paths = list_images(data_dir / "plates_vehicles_openimages_roboflow" / "images")[:2]
    paths += list_images(data_dir / "faces_dlib_examples" / "images")[:1]
    frames = []
    for p in paths:
        img = read_image(p)
        scale = min(1.0, 416 / max(img.shape[:2]))  # fp16 on a CPU is slow: small frames
        frames.append(np.ascontiguousarray(cv2.resize(img, None, fx=scale, fy=scale,
                                                      interpolation=cv2.INTER_AREA)))
    monkeypatch.setenv("ANONYMIZE_RUNTIME", "torch")
    fp32 = DetectionStack.from_settings(Settings(device="cpu", threads=1, half=False))
    monkeypatch.setattr(base, "honours_half", lambda device: True)
    fp16 = DetectionStack.from_settings(Settings(device="cpu", threads=1, half=True))
    assert all(d.dtype == torch.float16 for d in
               (fp16.face_detector, fp16.plate_detector, fp16.vehicle_detector))
    a, b = fp32.detect(frames), fp16.detect(frames)
    assert sum(len(d) for d in a) >= 5
    for x, y in zip(a, b, strict=True):
        assert len(x) == len(y)
        if len(x):
            assert (box_iou_np(x.xyxy, y.xyxy).max(axis=1) >= 0.7).all()


def test_detections_read_back_from_json_are_the_very_values_written():
    """A worker's detections travel to the reassembly as JSON. Rounded to 0.01 px
    and 1e-4 there, the distributed records (and a re-render from them) were
    not ``anonymize run``'s; written as the shortest decimal of each float32,
    they read back exactly."""
    import json

    rng = np.random.default_rng(0)
    d = Detections(rng.uniform(0, 1920, (200, 4)).astype(np.float32),
                   rng.uniform(0, 1, 200).astype(np.float32), rng.integers(0, 2, 200),
                   rng.integers(0, 2, 200).astype(bool))
    back = Detections.from_dicts(json.loads(json.dumps(d.to_dicts())))
    assert back.xyxy.tobytes() == d.xyxy.tobytes()
    assert back.confidence.tobytes() == d.confidence.tobytes()
    assert (back.class_id == d.class_id).all() and (back.filled == d.filled).all()
