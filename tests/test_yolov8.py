"""YOLOv8 plate detector: safe checkpoint reading, conversion, geometry, real detections."""

from __future__ import annotations

import io
import json
import os
import pickle
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from models.detections import PLATE, Detections
from models.fetch import WeightsError, load_checkpoint
from models.ops import box_iou_np
from models.ultralytics_unpickle import Placeholder, load_pickled_checkpoint
from models.yolov8 import YoloV8Detector, build
from models.yolov8_checkpoint import convert_ultralytics_checkpoint

MODELS = ("plate-yolov8n-pyplatex", "plate-yolov8n-safelicensing")
REFERENCE = Path(__file__).parent / "fixtures" / "yolov8_plates_reference.json"


def _zip_checkpoint(path: Path, payload: bytes, storages: dict[str, bytes] | None = None) -> Path:
    """A torch-style zip checkpoint holding ``payload`` as its data.pkl."""
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("ckpt/data.pkl", payload)
        for key, raw in (storages or {}).items():
            zf.writestr(f"ckpt/data/{key}", raw)
        zf.writestr("ckpt/version", "3\n")
    return path


class _Exploit:
    def __init__(self, func, arg):
        self.func, self.arg = func, arg

    def __reduce__(self):
        return self.func, (self.arg,)


# ------------------------------------------------------------ unpickler safety
@pytest.mark.parametrize("func", [os.system, eval], ids=["os.system", "builtins.eval"])
def test_unpickler_refuses_dangerous_globals(tmp_path, func):
    marker = tmp_path / "pwned"
    payload = pickle.dumps({"model": _Exploit(func, f"open({str(marker)!r}, 'w')"
                                               if func is eval else f"touch {marker}")}, protocol=2)
    path = _zip_checkpoint(tmp_path / "evil.pt", payload)
    with pytest.raises(WeightsError, match="refusing to load global") as err:
        load_pickled_checkpoint(path)
    assert "\n" not in str(err.value)
    assert not marker.exists()


def test_unpickler_maps_foreign_classes_to_placeholders_and_rebuilds_tensors(tmp_path):
    """A hand-written pickle shaped like torch.save output of an Ultralytics model."""
    values = np.arange(6, dtype=np.float16)
    path = _zip_checkpoint(tmp_path / "fake.pt", _fake_ultralytics_pickle(), {"0": values.tobytes()})
    ckpt = load_pickled_checkpoint(path)
    model = ckpt["model"]
    assert isinstance(model, Placeholder)
    assert type(model).__name__ == "DetectionModel"
    weight = model.__dict__["_parameters"]["weight"]
    assert weight.dtype == torch.float16 and weight.shape == (2, 3)
    assert weight.flatten().tolist() == values.tolist()


def _fake_ultralytics_pickle() -> bytes:
    """Protocol-2 opcodes for {'model': DetectionModel(state={'_parameters': {'weight': T}})}."""
    P = pickle
    out = io.BytesIO()
    w = out.write
    w(P.PROTO + b"\x02")
    w(P.EMPTY_DICT)
    w(P.BINUNICODE + len(b"model").to_bytes(4, "little") + b"model")
    w(P.GLOBAL + b"ultralytics.nn.tasks\nDetectionModel\n")
    w(P.EMPTY_TUPLE + P.NEWOBJ)
    w(P.EMPTY_DICT)
    w(P.BINUNICODE + len(b"_parameters").to_bytes(4, "little") + b"_parameters")
    w(P.EMPTY_DICT)
    w(P.BINUNICODE + len(b"weight").to_bytes(4, "little") + b"weight")
    w(P.GLOBAL + b"torch._utils\n_rebuild_tensor_v2\n")
    w(P.MARK)
    # persistent id ('storage', torch.HalfStorage, '0', 'cpu', 6)
    w(P.MARK + P.BINUNICODE + (7).to_bytes(4, "little") + b"storage")
    w(P.GLOBAL + b"torch\nHalfStorage\n")
    w(P.BINUNICODE + (1).to_bytes(4, "little") + b"0")
    w(P.BINUNICODE + (3).to_bytes(4, "little") + b"cpu")
    w(P.BININT1 + bytes([6]) + P.TUPLE + P.BINPERSID)
    w(P.BININT1 + bytes([0]))  # offset
    w(P.BININT1 + bytes([2]) + P.BININT1 + bytes([3]) + P.TUPLE2)  # size
    w(P.BININT1 + bytes([3]) + P.BININT1 + bytes([1]) + P.TUPLE2)  # stride
    w(P.NEWFALSE)
    w(P.GLOBAL + b"collections\nOrderedDict\n" + P.EMPTY_TUPLE + P.REDUCE)
    w(P.TUPLE + P.REDUCE)
    w(P.SETITEM)  # _parameters['weight'] = tensor
    w(P.SETITEM)  # state['_parameters'] = {...}
    w(P.BUILD)
    w(P.SETITEM)  # top['model'] = obj
    w(P.STOP)
    return out.getvalue()


@pytest.mark.parametrize("content", [None, b"", b"not a zip at all", b"PK\x03\x04broken"],
                         ids=["missing", "empty", "garbage", "broken-zip"])
def test_bad_source_file_gives_one_line_weights_error(tmp_path, content):
    path = tmp_path / "best.pt"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(WeightsError) as err:
        convert_ultralytics_checkpoint({"pt": path})
    assert "\n" not in str(err.value)


def test_truncated_tensor_storage_is_reported(tmp_path):
    path = _zip_checkpoint(tmp_path / "short.pt", _fake_ultralytics_pickle(), {"0": b"\x00" * 4})
    with pytest.raises(WeightsError, match="truncated"):
        load_pickled_checkpoint(path)


@pytest.mark.parametrize("content", [None, b"\x00garbage"], ids=["missing", "corrupt"])
def test_bad_converted_checkpoint_gives_one_line_weights_error(tmp_path, content):
    path = tmp_path / "model.pt"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(WeightsError) as err:
        build(path)
    assert "\n" not in str(err.value)


# ------------------------------------------------------------ letterbox geometry
@pytest.mark.parametrize("shape", [(3, 50000), (50000, 3), (1, 30000)])
@pytest.mark.parametrize("square", [False, True])
def test_letterbox_of_a_strip_keeps_at_least_one_row(shape, square):
    """A 3x50000 panorama strip shrinks to under half a row at 960: it was
    resized to 0 rows, which OpenCV refuses (a traceback from `anonymize
    images`); it keeps one row and its boxes still map back."""
    h, w = shape
    det = YoloV8Detector(torch.nn.Identity(), ["license_plate"])
    x, (scale, left, top) = det._letterbox(torch.zeros((1, h, w, 3), dtype=torch.uint8), 960, square)
    assert x.shape[2] % 32 == 0 and x.shape[3] % 32 == 0 and max(x.shape[2:]) == 960
    rows = torch.tensor([[left, top, left + 1.0, top + 1.0, 0.9, 0.0]])
    back = det._to_detections(rows, scale, left, top, w, h)
    assert (back.xyxy[0, [0, 2]] <= w).all() and (back.xyxy[0, [1, 3]] <= h).all()


@pytest.mark.parametrize("shape,size,square", [
    ((720, 1280), 640, False), ((1632, 918), 640, False), ((173, 411), 320, True),
    ((500, 120), 320, True), ((300, 300), 640, False),
])
def test_letterbox_maps_boxes_back_to_frame_pixels(shape, size, square):
    """A bright box drawn in the frame, found in the model input, maps back onto itself."""
    h, w = shape
    det = YoloV8Detector(torch.nn.Identity(), ["license_plate"])
    frame = np.zeros((h, w, 3), np.uint8)
    x1, y1, x2, y2 = int(w * 0.3), int(h * 0.4), int(w * 0.7), int(h * 0.55)
    frame[y1:y2, x1:x2] = 255
    x, (scale, left, top) = det._letterbox(torch.from_numpy(frame)[None], size, square)
    assert x.shape[1] == 3 and x.shape[2] % 32 == 0 and x.shape[3] % 32 == 0
    assert max(x.shape[2:]) == size
    if square:
        assert x.shape[2] == x.shape[3] == size
    img = x[0, 0].numpy()
    # outside the centred, resized frame the canvas is grey 114
    new_h, new_w = round(h * scale), round(w * scale)
    pad = np.ones(img.shape, bool)
    pad[top:top + new_h, left:left + new_w] = False
    assert abs(left - (x.shape[3] - new_w - left)) <= 1 and abs(top - (x.shape[2] - new_h - top)) <= 1
    np.testing.assert_allclose(img[pad], 114 / 255, atol=1e-6)
    assert img[~pad].max() == 1.0 and img[~pad].min() == 0.0
    ys, xs = np.nonzero(img > 0.9)
    rows = torch.tensor([[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1, 0.9, 0.0]])
    back = det._to_detections(rows, scale, left, top, w, h)
    assert back.class_id.tolist() == [PLATE]
    np.testing.assert_allclose(back.xyxy[0], [x1, y1, x2, y2], atol=1.0 / scale + 0.5)


@pytest.mark.parametrize("size,side", [(33, 64), (900, 928), (1000, 1024), (960, 960)])
def test_square_letterbox_of_any_size_is_rounded_up_to_the_stride(size, side):
    """Tiles and crops are letterboxed to a square: at --plate-size 900 (a 1080p
    frame's tiles) or --crop-size 33 the network failed inside ONNX Runtime with a
    traceback; the rectangular pass already rounded its canvas up."""
    det = YoloV8Detector(torch.nn.Identity(), ["license_plate"])
    x, (scale, left, top) = det._letterbox(torch.zeros((1, 500, 120, 3), dtype=torch.uint8), size,
                                           True)
    assert x.shape[2:] == (side, side)
    assert (scale, top) == (side / 500, 0) and left == (side - round(120 * scale)) // 2


@pytest.mark.models
def test_plate_sizes_that_are_no_multiple_of_32_run(detectors):
    det = detectors(MODELS[0])
    frame = np.full((1080, 1920, 3), 90, np.uint8)
    assert len(det.detect([frame], 0.1, size=900)) == 1  # tiled: 1920 > 2 x 900
    assert len(det.detect_crops([frame[:200, :300]], 0.1, size=33)) == 1


# ------------------------------------------------------------ real weights
def _openalpr(data_dir: Path, files: list[str]):
    ann = json.loads((data_dir / "plates_openalpr_us" / "annotations.json").read_text())
    by_file = {im["file"]: im for im in ann["images"]}
    out = []
    for f in files:
        img = cv2.cvtColor(cv2.imread(str(data_dir / "plates_openalpr_us" / f)), cv2.COLOR_BGR2RGB)
        gt = np.array([b["xyxy"] for b in by_file[f]["boxes"] if b["label"] == "plate"], np.float32)
        out.append((f, img, gt))
    return out


@pytest.fixture(scope="module")
def reference() -> dict:
    return json.loads(REFERENCE.read_text())


@pytest.fixture(scope="module")
def detectors(checkpoint):
    cache: dict[str, YoloV8Detector] = {}

    def get(name: str) -> YoloV8Detector:
        if name not in cache:
            # fp32: held to the reference runtime's numbers (bf16: test_runtime.py)
            cache[name] = build(checkpoint(name), device="cpu", half=False)
        return cache[name]

    return get


@pytest.mark.models
@pytest.mark.parametrize("name", MODELS)
def test_checkpoint_holds_every_tensor_of_the_ultralytics_model(checkpoint, name):
    ckpt = load_checkpoint(checkpoint(name))
    sd = ckpt["state_dict"]
    assert ckpt["arch"] == "yolov8"
    assert len(sd) == 355
    assert sum(t.numel() for t in sd.values()) == 3_021_500
    assert [n.lower() for n in ckpt["names"]] == ["license_plate"]
    assert ckpt["stride"] == [8.0, 16.0, 32.0]
    assert ckpt["yaml"]["nc"] == 1


@pytest.mark.models
@pytest.mark.slow
@pytest.mark.parametrize("name", MODELS)
def test_detects_real_plates_and_matches_saved_reference(data_dir, detectors, reference, name):
    """Full frames of different shapes in one call: every plate hit at IoU >= 0.5,
    and boxes/scores as recorded when the recall figures were verified."""
    det = detectors(name)
    samples = _openalpr(data_dir, list(reference[name]))
    results = det([img for _, img, _ in samples], 0.1)
    for (f, img, gt), res in zip(samples, results, strict=True):
        assert len(res) and set(res.class_id.tolist()) == {PLATE}
        assert (box_iou_np(gt, res.xyxy).max(1) >= 0.5).all(), f
        h, w = img.shape[:2]
        assert (res.xyxy[:, [0, 2]] <= w).all() and (res.xyxy[:, [1, 3]] <= h).all()
        ref = reference[name][f]
        assert len(res) == len(ref["xyxy"]), f
        np.testing.assert_allclose(res.xyxy, ref["xyxy"], atol=1.5)
        np.testing.assert_allclose(res.confidence, ref["confidence"], atol=0.01)


@pytest.mark.models
@pytest.mark.slow
def test_detect_crops_finds_plates_in_crop_pixels(data_dir, detectors, reference):
    """Vehicle-like crops of different shapes around each plate, one batched call."""
    det = detectors(MODELS[0])
    crops, expected = [], []
    for _, img, gt in _openalpr(data_dir, list(reference[MODELS[0]])):
        h, w = img.shape[:2]
        x1, y1, x2, y2 = gt[0]
        bw, bh = x2 - x1, y2 - y1
        cx1, cy1 = int(max(0, x1 - 2 * bw)), int(max(0, y1 - 3 * bh))
        cx2, cy2 = int(min(w, x2 + 2 * bw)), int(min(h, y2 + 2 * bh))
        crops.append(img[cy1:cy2, cx1:cx2])
        expected.append(gt[:1] - np.array([cx1, cy1, cx1, cy1], np.float32))
    crops.append(np.zeros((0, 10, 3), np.uint8))  # empty crops are allowed and give nothing
    results = det.detect_crops(crops, 0.1, size=320)
    assert len(results) == len(crops) and len(results[-1]) == 0
    for crop, gt, res in zip(crops, expected, results, strict=False):
        assert isinstance(res, Detections) and len(res)
        assert (box_iou_np(gt, res.xyxy).max(1) >= 0.5).all()
        assert (res.xyxy[:, 2] <= crop.shape[1]).all() and (res.xyxy[:, 3] <= crop.shape[0]).all()


@pytest.mark.models
@pytest.mark.slow
def test_tiles_find_a_small_plate_in_a_4k_frame(data_dir, detectors, reference):
    """A 1280x720 street photo at native scale inside a 3840x2160 frame: the full-frame
    pass shrinks the plate ×6, the tiles see it at ×2."""
    det = detectors(MODELS[0])
    _, img, gt = _openalpr(data_dir, list(reference[MODELS[0]]))[0]
    frame = np.full((2160, 3840, 3), 90, np.uint8)
    ox, oy = 1900, 1100
    frame[oy:oy + img.shape[0], ox:ox + img.shape[1]] = img
    gt = gt + np.array([ox, oy, ox, oy], np.float32)
    tiled = det([frame], 0.1)[0]
    assert (box_iou_np(gt, tiled.xyxy).max(1) >= 0.5).all()
    assert (tiled.xyxy[:, 2] <= 3840).all() and (tiled.xyxy[:, 3] <= 2160).all()
    # tile=False (the second plate size's pass): the full frame only, a subset
    whole = det.detect([frame], 0.1, tile=False)[0]
    assert len(whole) < len(tiled)
