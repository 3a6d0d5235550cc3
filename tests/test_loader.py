"""One way in for models: registry names and weights files of every supported format.

The weights files are written here: a tiny YOLOv3 "rigged" to fire exactly
once per image (every convolution zero, the stride-32 output bias set so its
single cell at a 32-pixel input predicts one box of a chosen class and size),
written as darknet ``.weights`` + ``.cfg`` and as a Keras ``.h5`` with the
hand-written writers of tests/test_convert_weights.py; a biubug6-format
RetinaFace ``.pth`` (our module's state dict with DataParallel's
``module.`` prefixes); an EgoBlur-style TorchScript file. Where a rigged
model fires is known exactly, so the end-to-end tests can tell that the
boxes came from the files given on the command line.
"""

from __future__ import annotations

import inspect
import io
import json
import math
import os
import pickle
import subprocess
import sys
import types
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from models.detections import CAR, PLATE
from models.fetch import WeightsError, sha256_file
from models.loader import build
from models.model_ref import ModelError
from models.resolve import check_settings, resolve
from models.sniff import classify_checkpoint, sniff
from models.yolov3_net import COCO_ANCHORS, YoloV3, make_config
from pipeline.settings import Settings
from tests.test_convert_weights import write_h5, write_weights
from tests.videos import make_video

ROOT = Path(__file__).resolve().parent.parent
SIZE = 32  # network input: one stride-32 cell
BIG = 10.0


# -- hand-made model files ----------------------------------------------------------

def rigged_config(num_classes: int) -> dict:
    return make_config(width=4, blocks=[1, 1, 1, 1, 1], num_classes=num_classes,
                       input_size=SIZE)


def rigged_params(num_classes: int, fire_class: int, box_wh: tuple[float, float]) -> list[dict]:
    """Per-convolution arrays (darknet order) of a YOLOv3 whose only live output is
    anchor 6 of the stride-32 head: objectness and ``fire_class`` at +BIG, a box of
    ``box_wh`` input pixels centred on the cell."""
    model = YoloV3(rigged_config(num_classes))
    params, heads = [], 0
    for conv, bn in model.conv_layers():
        p = {"kernel": np.zeros(tuple(conv.weight.shape), np.float32)}
        if bn is not None:
            n = conv.out_channels
            p.update(beta=np.zeros(n, np.float32), gamma=np.ones(n, np.float32),
                     mean=np.zeros(n, np.float32), var=np.ones(n, np.float32))
        else:
            bias = np.full((3, 5 + num_classes), -BIG, np.float32)
            bias[:, :4] = 0.0
            if heads == 0:  # stride 32, anchors 6, 7, 8: only anchor 6 fires
                aw, ah = COCO_ANCHORS[6]
                bias[0, 2:4] = [math.log(box_wh[0] / aw), math.log(box_wh[1] / ah)]
                bias[0, 4] = BIG
                bias[0, 5 + fire_class] = BIG
            p["bias"] = bias.reshape(-1)
            heads += 1
        params.append(p)
    return params


def yolov3_cfg(num_classes: int) -> str:
    from models.darknet import yolov3_cfg_text

    return yolov3_cfg_text(rigged_config(num_classes))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("models")
    out = {"dir": d}
    # COCO vehicles, darknet: a 24x24 "car" in the middle of the 32-pixel input
    (d / "vehicles.cfg").write_text(yolov3_cfg(80))
    write_weights(d / "vehicles.weights", rigged_params(80, 2, (24, 24)))
    out["darknet"] = d / "vehicles.weights"
    # a custom one-class plate model, Keras h5: a 16x8 plate in the middle
    write_h5(d / "plates.h5", rigged_params(1, 0, (16, 8)))
    out["h5"] = d / "plates.h5"
    # biubug6 RetinaFace, saved through DataParallel (module. prefixes)
    from models.retinaface_net import RetinaFace

    torch.manual_seed(0)
    state = {f"module.{k}": v for k, v in RetinaFace("mobilenet0.25").state_dict().items()}
    torch.save(state, d / "mobilenet0.25_Final.pth")
    out["biubug6"] = d / "mobilenet0.25_Final.pth"
    # EgoBlur-style TorchScript
    torch.jit.save(torch.jit.script(FakeEgoBlur()), str(d / "ego_blur_face.jit"))
    out["torchscript"] = d / "ego_blur_face.jit"
    # converted checkpoints, as `anonymize convert-weights` writes them
    from anonymize.cli import main

    assert main(["convert-weights", "--weights", str(out["darknet"]), "--cfg",
                 str(d / "vehicles.cfg"), "-o", str(d / "vehicles.pt")]) == 0
    assert main(["convert-weights", "--keras", str(out["h5"]), "--input-size", str(SIZE),
                 "-o", str(d / "plates.pt")]) == 0
    out["vehicles_pt"], out["plates_pt"] = d / "vehicles.pt", d / "plates.pt"
    return out


class FakeEgoBlur(torch.nn.Module):
    """EgoBlur's TorchScript contract: CHW float 0..255 (BGR) in, (boxes, labels,
    scores, image size) out; one box over the middle half of the image."""

    def forward(self, x: torch.Tensor):
        h, w = float(x.shape[1]), float(x.shape[2])
        boxes = torch.tensor([[w / 4, h / 4, 3 * w / 4, 3 * h / 4]], device=x.device)
        scores = torch.tensor([0.95], device=x.device)
        labels = torch.ones(1, dtype=torch.long, device=x.device)
        return boxes, labels, scores, [int(x.shape[1]), int(x.shape[2])]


# -- sniffing -----------------------------------------------------------------------

def test_each_format_is_recognised_from_its_content(files, tmp_path):
    assert sniff(files["darknet"])[0] == "darknet"
    assert sniff(files["h5"])[0] == "keras-h5"
    assert sniff(files["biubug6"])[0] == "biubug6"
    assert sniff(files["torchscript"])[0] == "torchscript"
    fmt, facts = sniff(files["vehicles_pt"])
    assert fmt == "checkpoint" and facts["arch"] == "yolov3" and len(facts["names"]) == 80
    assert sniff(files["plates_pt"])[1]["source_format"] == "keras-h5"
    # suffixes do not matter: the content does
    renamed = tmp_path / "weights.bin"
    renamed.write_bytes(files["biubug6"].read_bytes())
    assert sniff(renamed)[0] == "biubug6"


def test_state_dicts_are_told_apart_by_their_keys():
    from models.retinaface_net import RetinaFace

    resnet = {f"module.{k}": v for k, v in RetinaFace("resnet50").state_dict().items()}
    assert classify_checkpoint(resnet) == ("biubug6", {})
    assert classify_checkpoint({"state_dict": resnet})[0] == "biubug6"
    serengil = {"bn_data.weight": torch.ones(3), "conv0.weight": torch.zeros(64, 3, 7, 7),
                "face_rpn_stride32.cls_score.weight": torch.zeros(4, 512, 1, 1)}
    assert classify_checkpoint(serengil) == ("serengil", {})
    mmdet = {"state_dict": {"backbone.conv1.weight": torch.zeros(1),
                            "roi_head.bbox_head.0.fc_cls.bias": torch.zeros(3)},
             "meta": {"dataset_meta": {"classes": ("car", "plate")}}}
    assert classify_checkpoint(mmdet) == ("mmdet", {"classes": ["car", "plate"]})
    assert classify_checkpoint({"conv.weight": torch.zeros(1)}) == (None, {})
    assert classify_checkpoint([1, 2]) == (None, {})


def _pickle_zip(path: Path, module: str) -> Path:
    """A torch-style zip whose pickle names a class of ``module`` (never imported)."""
    out = io.BytesIO()
    out.write(pickle.PROTO + b"\x02" + pickle.EMPTY_DICT)
    out.write(pickle.BINUNICODE + (5).to_bytes(4, "little") + b"model")
    out.write(pickle.GLOBAL + f"{module}\nThing\n".encode() + pickle.EMPTY_TUPLE
              + pickle.NEWOBJ + pickle.SETITEM + pickle.STOP)
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("ckpt/data.pkl", out.getvalue())
        zf.writestr("ckpt/version", "3\n")
    return path


def test_pickles_of_foreign_classes_are_recognised_without_running_them(tmp_path):
    assert sniff(_pickle_zip(tmp_path / "best.pt", "ultralytics.nn.tasks"))[0] == "ultralytics"
    assert sniff(_pickle_zip(tmp_path / "epoch_12.pth", "mmengine.logging"))[0] == "mmdet"
    assert sniff(_pickle_zip(tmp_path / "other.pt", "somewhere.else"))[0] is None


def test_ultralytics_class_names_are_read_without_tensor_bytes(tmp_path, monkeypatch):
    """A YOLOv8 face model (pickled as Ultralytics does) is no plate model."""
    mod = types.ModuleType("ultralytics.nn.tasks")

    class DetectionModel:
        pass

    DetectionModel.__module__, DetectionModel.__qualname__ = mod.__name__, "DetectionModel"
    mod.DetectionModel = DetectionModel
    model = DetectionModel()
    model.names = {0: "face"}
    model.weight = torch.zeros(4, 3)
    with monkeypatch.context() as m:  # importable while pickling only
        for name in ("ultralytics", "ultralytics.nn"):
            m.setitem(sys.modules, name, types.ModuleType(name))
        m.setitem(sys.modules, mod.__name__, mod)
        torch.save({"model": model, "ema": None}, tmp_path / "yolov8n-face.pt")
    assert sniff(tmp_path / "yolov8n-face.pt") == ("ultralytics", {"names": ["face"]})
    with pytest.raises(ModelError, match=r"finds face, not plates \(pass it as --face-model\)"):
        resolve(str(tmp_path / "yolov8n-face.pt"), "plates")


@pytest.mark.parametrize("content", [b"", b"hello world\n", b"\x00" * 64,
                                     b"PK\x03\x04 not really a zip"])
def test_unrecognised_files_are_one_line_errors(tmp_path, content):
    path = tmp_path / "model.pt"
    path.write_bytes(content)
    with pytest.raises(ModelError) as err:
        resolve(str(path), "faces")
    msg = str(err.value)
    assert "\n" not in msg and str(path) in msg and "darknet" in msg and "torchscript" in msg


def test_zip_without_a_pickle_is_unrecognised(tmp_path):
    with zipfile.ZipFile(tmp_path / "a.zip", "w") as zf:
        zf.writestr("readme.txt", "x")
    assert sniff(tmp_path / "a.zip") == (None, {})


# -- resolving ----------------------------------------------------------------------

def test_registry_names_resolve_to_their_fetched_checkpoint(tmp_path, monkeypatch):
    monkeypatch.setenv("ANONYMIZE_MODELS_DIR", str(tmp_path))
    with pytest.raises(ModelError, match=r"run `anonymize models fetch retinaface-mobilenet0.25` "
                                         r"\(or `anonymize models fetch` for every default "
                                         r"model\)$"):
        resolve("retinaface-mobilenet0.25", "faces")
    with pytest.raises(ModelError, match=r"run `anonymize models fetch plate-yolov8n-fastanpr`$"):
        resolve("plate-yolov8n-fastanpr", "plates")  # opt-in: a plain fetch leaves it out
    ref = resolve("retinaface-mobilenet0.25", "faces", fetched=False)  # submit: workers fetch
    assert ref.record == "retinaface-mobilenet0.25" and not ref.is_file
    (tmp_path / "retinaface-mobilenet0.25").mkdir()
    (tmp_path / "retinaface-mobilenet0.25" / "model.pt").write_bytes(b"x")
    assert resolve("retinaface-mobilenet0.25", "faces").path.parent.name == \
        "retinaface-mobilenet0.25"


def test_loading_a_registry_name_never_fetches(tmp_path, monkeypatch):
    import models.fetch
    from pipeline.detect import load_detector

    monkeypatch.setenv("ANONYMIZE_MODELS_DIR", str(tmp_path))

    def no_download(*a, **k):
        raise AssertionError("load time must not fetch")

    monkeypatch.setattr(models.fetch, "fetch", no_download)
    monkeypatch.setattr(subprocess, "run", no_download)
    with pytest.raises(ModelError, match="is not fetched"):
        load_detector("plate-yolov8n-pyplatex", "cpu", False, "plates")


def test_unknown_names_list_the_known_ones():
    with pytest.raises(ModelError) as err:
        resolve("retinaface-tiny", "faces")
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith("--face-model: unknown model 'retinaface-tiny'")
    assert "retinaface-mobilenet0.25" in msg and "pyplatex" not in msg


@pytest.mark.parametrize("value,task,message", [
    ("retinaface-mobilenet0.25", "plates", "is a face model, not a plate model"),
    ("plate-yolov8n-pyplatex", "vehicles", "is a plate model, not a vehicle model"),
    ("egoblur-face", "faces", "pass the file's path instead"),
    ("yolov3-darknet", "vehicles", "pass the file's path instead"),
])
def test_registry_names_in_the_wrong_place(value, task, message):
    with pytest.raises(ModelError, match=message):
        resolve(value, task, fetched=False)


def test_files_in_the_wrong_slot_are_refused(files):
    with pytest.raises(ModelError, match=r"finds face, not plates \(pass it as --face-model\)"):
        resolve(str(files["biubug6"]), "plates")
    with pytest.raises(ModelError, match="finds car, motorcycle, bus, truck, not plates"):
        resolve(str(files["vehicles_pt"]), "plates")
    with pytest.raises(ModelError, match=r"finds plate, not vehicles \(pass it as --plate-model"):
        resolve(str(files["plates_pt"]), "vehicles")
    with pytest.raises(ModelError, match="darknet.*finds car"):
        resolve(str(files["darknet"]), "faces")
    with pytest.raises(ModelError, match="finds faces or plates, not vehicles"):
        resolve(str(files["torchscript"]), "vehicles")
    with pytest.raises(ModelError, match=r"plates.h5 \(keras-h5\) finds plate, not vehicles"):
        resolve(str(files["h5"]), "vehicles")
    # what a file does not tell is checked against Detector.labels once loaded
    import dataclasses

    unknown = dataclasses.replace(resolve(str(files["plates_pt"]), "plates"), task="vehicles",
                                  labels=None)
    with pytest.raises(ModelError, match="finds plate, not vehicles"):
        build(unknown, device="cpu")


def test_companion_files_are_found_beside_the_model(files, tmp_path):
    ref = resolve(str(files["darknet"]), "vehicles")
    assert ref.format == "darknet" and ref.companions == {"cfg": files["dir"] / "vehicles.cfg"}
    lone = tmp_path / "vehicles.weights"
    lone.write_bytes(files["darknet"].read_bytes())
    with pytest.raises(ModelError, match=r"need their network description vehicles.cfg beside"):
        resolve(str(lone), "vehicles")
    # a cfg with an odd class count needs its names
    (tmp_path / "three.cfg").write_text(yolov3_cfg(3))
    (tmp_path / "three.weights").write_bytes(files["darknet"].read_bytes()[:20])
    with pytest.raises(ModelError, match=r"3 classes: put their names.*three.names"):
        resolve(str(tmp_path / "three.weights"), "plates")
    (tmp_path / "three.names").write_text("car\nplate\nbus\n")
    ref = resolve(str(tmp_path / "three.weights"), "plates")
    assert ref.companions["names"].name == "three.names" and PLATE in ref.labels
    # ImageAI keeps labels (and anchors) in detection_config.json
    h5 = tmp_path / "custom.h5"
    h5.write_bytes(files["h5"].read_bytes())
    (tmp_path / "detection_config.json").write_text(json.dumps({"labels": ["face"]}))
    with pytest.raises(ModelError, match="finds face, not plates"):
        resolve(str(h5), "plates")
    # without names, a Keras file's classes are counted from its output kernels' shapes
    (tmp_path / "keras").mkdir()
    write_h5(tmp_path / "keras" / "three.h5", rigged_params(3, 0, (8, 8)))
    with pytest.raises(ModelError, match=r"three.h5 has 3 classes: put their names.*three.names"):
        resolve(str(tmp_path / "keras" / "three.h5"), "plates")


def test_formats_of_extras_name_the_extra_or_their_config(tmp_path):
    import importlib.util

    ckpt = tmp_path / "cascade.pth"
    torch.save({"state_dict": {"backbone.conv1.weight": torch.zeros(1),
                               "roi_head.bbox_head.0.fc_cls.bias": torch.zeros(3)},
                "meta": {"classes": ["car", "plate"]}}, ckpt)
    if importlib.util.find_spec("mmdet") is None:
        with pytest.raises(ModelError, match=r"needs the mmdet extra: pip install "
                                             r"'anonymize\[mmdet\]'"):
            resolve(str(ckpt), "vehicles")
    else:
        with pytest.raises(ModelError, match="needs its config cascade.py beside it"):
            resolve(str(ckpt), "vehicles")
    serengil = tmp_path / "retinaface.pth"
    torch.save({"conv0.weight": torch.zeros(1), "face_rpn_stride8.bbox_pred.bias": torch.zeros(1)},
               serengil)
    if importlib.util.find_spec("retinaface") is None:
        with pytest.raises(ModelError, match="serengil extra"):
            resolve(str(serengil), "faces")


def test_forced_format(files):
    ref = resolve(str(files["biubug6"]), "faces", "biubug6")
    assert ref.format == "biubug6"
    # forcing another format is trusted; the backend then refuses the file in one line
    with pytest.raises(WeightsError, match="not a TorchScript model"):
        build(resolve(str(files["biubug6"]), "faces", "torchscript"), device="cpu")
    with pytest.raises(ModelError, match="not a converted checkpoint"):
        resolve(str(files["biubug6"]), "faces", "checkpoint")
    with pytest.raises(ModelError, match="for model files"):
        resolve("retinaface-mobilenet0.25", "faces", "darknet", fetched=False)


def test_check_settings_resolves_only_the_models_in_use(files):
    s = Settings(faces=False, plates="one-stage", plate_model=str(files["plates_pt"]),
                 vehicle_model="no-such-model")
    assert set(check_settings(s)) == {"plates"}
    s.plates = "two-stage"
    with pytest.raises(ModelError, match="--vehicle-model: unknown model 'no-such-model'"):
        check_settings(s)


# -- loading ------------------------------------------------------------------------

def test_darknet_and_keras_files_load_as_their_converted_checkpoints(files):
    frame = np.full((96, 96, 3), 127, np.uint8)
    direct = build(resolve(str(files["darknet"]), "vehicles"), device="cpu")
    converted = build(resolve(str(files["vehicles_pt"]), "vehicles"), device="cpu")
    (a,), (b,) = direct.detect(frame), converted.detect(frame)
    assert a == b and a.class_id.tolist() == [CAR]
    np.testing.assert_allclose(a.xyxy[0], [12, 12, 84, 84], atol=0.5)  # 24/32 of 96, centred
    assert direct.name.startswith("vehicles.weights (darknet, sha256 ")
    digest = sha256_file(files["vehicles_pt"])[:12]
    assert converted.name == f"vehicles.pt (checkpoint, sha256 {digest})"
    plates = build(resolve(str(files["h5"]), "plates"), device="cpu")
    (p,) = plates.detect_crops([frame[:64, :64]], None, SIZE)
    assert p.class_id.tolist() == [PLATE]
    np.testing.assert_allclose(p.xyxy[0], [16, 24, 48, 40], atol=0.5)


def test_every_backend_follows_the_protocol():
    from models.centernet import CenterNetDetector
    from models.optional.egoblur_backend import EgoBlurDetector
    from models.optional.mmdet_backend import MMDetDetector
    from models.optional.serengil_backend import SerengilRetinaFace
    from models.retinaface import RetinaFaceDetector
    from models.yolov3 import YoloV3Detector
    from models.yolov8 import YoloV8Detector

    for cls in (YoloV3Detector, YoloV8Detector, RetinaFaceDetector, CenterNetDetector,
                EgoBlurDetector, SerengilRetinaFace, MMDetDetector):
        for method in ("detect", "detect_crops", "__call__"):
            params = inspect.signature(getattr(cls, method)).parameters
            assert list(params)[2:4] == ["thresh", "size"], (cls.__name__, method)
            assert params["thresh"].default is None and params["size"].default is None


def test_default_detect_crops_runs_each_crop(files):
    det = build(resolve(str(files["torchscript"]), "plates"), device="cpu")
    assert det.labels == frozenset({PLATE})
    crops = [np.zeros((40, 80, 3), np.uint8), np.zeros((20, 10, 3), np.uint8),
             np.zeros((0, 5, 3), np.uint8)]
    found = det.detect_crops(crops, 0.5, 320)
    assert [len(d) for d in found] == [1, 1, 0]
    np.testing.assert_allclose(found[0].xyxy[0], [20, 10, 60, 30])
    np.testing.assert_allclose(found[1].xyxy[0], [2.5, 5, 7.5, 15])


# -- the command line -----------------------------------------------------------------

def cli(*args, env=None, timeout=600) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if not k.startswith("ANONYMIZE_")}
    full.update(env or {})
    return subprocess.run([sys.executable, "-m", "anonymize", *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, env=full, timeout=timeout)


def one_line_error(proc: subprocess.CompletedProcess) -> str:
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-3000:]
    assert lines[0].startswith("anonymize: error: ")
    return lines[0]


@pytest.mark.slow
def test_run_refuses_bad_model_settings_before_reading_the_video(tmp_path):
    """The input does not exist: each error is about the model, so it came first."""
    missing = tmp_path / "missing.mp4"
    line = one_line_error(cli("run", missing, "-o", tmp_path / "o.mp4", "--face-model", "nope"))
    assert "--face-model: unknown model 'nope'" in line and "retinaface-mobilenet0.25" in line
    line = one_line_error(cli("run", missing, "-o", tmp_path / "o.mp4", "--plates", "one-stage",
                              env={"ANONYMIZE_MODELS_DIR": str(tmp_path / "empty")}))
    assert "run `anonymize models fetch " in line and "not fetched" in line
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"\x00" * 100)
    line = one_line_error(cli("run", missing, "-o", tmp_path / "o.mp4", "--face-model", junk))
    assert str(junk) in line and "not a model file" in line
    assert not missing.exists() and not (tmp_path / "o.mp4").exists()


@pytest.mark.parametrize("command", ["images", "faces", "eval", "submit"])
def test_other_commands_check_models_before_reading_input(command, tmp_path, monkeypatch,
                                                          capsys):
    from anonymize.cli import main

    monkeypatch.setenv("ANONYMIZE_CLUSTER_ENV", str(tmp_path / "no-cluster-env"))
    missing = str(tmp_path / "missing")
    argv = {"images": ["images", "--img-dir", missing, "--out-dir", str(tmp_path / "o")],
            "faces": ["faces", "--frames-dir", missing, "--save-dir", str(tmp_path / "o")],
            "eval": ["eval", "--dataset", str(_dataset(tmp_path / "ds")), "--out-dir",
                     str(tmp_path / "o"), "--mode", "faces"],
            "submit": ["submit", missing]}[command]
    assert main([*argv, "--face-model", "nope"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--face-model: unknown model 'nope'" in err[0]
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_fetch_of_a_file_model_says_what_to_do():
    proc = cli("models", "fetch", "yolov3-darknet")
    assert proc.returncode == 0, proc.stderr
    assert "nothing to fetch" in proc.stdout and "--plate-model or --vehicle-model" in proc.stdout
    proc = cli("models", "list")
    assert proc.returncode == 0 and "darknet" in proc.stdout and "torchscript" in proc.stdout
    assert "format:   biubug6" in proc.stdout


def _image(i: int) -> np.ndarray:
    rng = np.random.default_rng(i)
    return rng.integers(0, 255, (96, 96, 3), dtype=np.uint8)


def _dataset(root: Path, n: int = 2) -> Path:
    """Images with a car and a plate exactly where the rigged models put them."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    images = []
    for i in range(n):
        cv2.imwrite(str(root / "images" / f"{i}.png"), _image(i))
        images.append({"file": f"images/{i}.png", "width": 96, "height": 96, "boxes": [
            {"label": "car", "xyxy": [12, 12, 84, 84]},
            {"label": "plate", "xyxy": list(EXPECTED_PLATE)}]})
    (root / "annotations.json").write_text(json.dumps({"images": images, "source": "test",
                                                      "license": "CC0"}))
    return root


# the vehicle box (12, 12, 84, 84) grown by the 0.1 crop margin: crop (4, 4)-(92, 92), 88 px,
# letterboxed to 32 (scale 32/88); the plate is 16x8 in its middle
_S = 32 / 88
EXPECTED_PLATE = (4 + 8 / _S, 4 + 12 / _S, 4 + 24 / _S, 4 + 20 / _S)


@pytest.mark.slow
def test_research_two_stage_with_converted_yolov3_files(files, tmp_path):
    """COCO YOLOv3 vehicles + custom plate YOLOv3, both converted with
    convert-weights, through `anonymize images` and `anonymize eval`."""
    common = ["--vehicle-model", files["vehicles_pt"], "--plate-model", files["plates_pt"],
              "--crop-size", SIZE, "--device", "cpu"]
    ds = _dataset(tmp_path / "ds")
    proc = cli("images", "--img-dir", ds / "images", "--out-dir", tmp_path / "blurred",
               "--quiet", "--plates", "two-stage", "--no-faces", *common)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = pickle.loads((tmp_path / "blurred" / "detections.pkl").read_bytes())
    assert sorted(r["filename"] for r in rows) == ["0.png", "1.png"]
    for row in rows:
        by_name = {d["name"]: d for d in row["det"]}
        assert set(by_name) == {"car", "plate"}, row
        np.testing.assert_allclose(by_name["car"]["box_points"], [12, 12, 84, 84], atol=1)
        np.testing.assert_allclose(by_name["plate"]["box_points"], EXPECTED_PLATE, atol=1.5)
    x1, y1, x2, y2 = (int(v) + d for v, d in zip(EXPECTED_PLATE, (2, 2, -2, -2), strict=True))
    for i in range(2):  # the plate region was blurred, the corner was not
        src = cv2.imread(str(ds / "images" / f"{i}.png"))
        out = cv2.imread(str(tmp_path / "blurred" / f"{i}.png"))
        assert out[y1:y2, x1:x2].std() < src[y1:y2, x1:x2].std() / 2
        assert np.array_equal(out[:4, :4], src[:4, :4])

    proc = cli("eval", "--dataset", ds, "--out-dir", tmp_path / "eval", "--mode", "two-stage",
               *common)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    digest = {k: sha256_file(files[k])[:12] for k in ("vehicles_pt", "plates_pt")}
    assert metrics["models"] == {
        "plates": f"plates.pt (checkpoint, sha256 {digest['plates_pt']})",
        "vehicles": f"vehicles.pt (checkpoint, sha256 {digest['vehicles_pt']})"}
    assert metrics["labels"]["plate"]["recall"] == 1.0
    assert metrics["labels"]["car"]["recall"] == 1.0
    assert metrics["settings"]["plate_model"] == str(files["plates_pt"])
    assert (tmp_path / "eval" / "two-stage_mdict_list.pkl").exists()


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["biubug6", "torchscript"])
def test_run_with_a_face_model_file(files, tmp_path, kind):
    src = make_video(tmp_path / "in.mp4", n_frames=8, width=64, height=48)
    proc = cli("run", src, "-o", tmp_path / "out.mp4", "--face-model", files[kind],
               "--no-plates", "--min-face", 16, "--device", "cpu", "--preset", "ultrafast",
               "--quiet")
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / "report.json").read_text())
    name = files[kind].name
    assert report["models"] == {
        "faces": f"{name} ({kind}, sha256 {sha256_file(files[kind])[:12]})"}
    assert report["frames_match"] and report["settings"]["face_model"] == str(files[kind])
    if kind == "torchscript":  # the fake finds one face in the middle of every frame
        assert report["detections"]["face"] == 8


# -- submit: model files travel with the job ------------------------------------------

class FakeState:
    """The JobState calls the client and the steps make, in memory."""

    def __init__(self):
        self.jobs: dict[str, dict] = {}

    def create(self, job, **fields):
        self.jobs[job] = {"job": job, "status": "queued", **fields}

    def get(self, job):
        return self.jobs.get(job)

    def set_status(self, job, status, **fields):
        self.jobs[job].update(status=status, **fields)
        return True

    def fail(self, job, reason):
        self.jobs[job].update(status="failed", error=reason)
        return True

    def segment_failed(self, job, index, reason, attempt):
        self.jobs[job].setdefault("failures", {})[index] = reason

    def add_frames(self, job, n):
        pass


@pytest.fixture()
def client(tmp_path):
    from tasks.client import Client
    from tasks.service import ServiceSettings

    # no broker: a local storage, and stand-ins for the job state and the publisher
    c = Client(ServiceSettings(storage_url=f"file://{tmp_path / 'store'}"), check=False)
    c.state = FakeState()
    c.app = types.SimpleNamespace(sent=[])
    c._send = lambda name, args: c.app.sent.append(name)
    return c


def test_submit_uploads_model_files_beside_the_job(files, tmp_path, client):
    from tasks.stored_models import parse_stored_model

    video = make_video(tmp_path / "in.mp4", n_frames=4)
    settings = Settings(face_model=str(files["torchscript"]), plates="two-stage",
                        plate_model="plate-yolov8n-pyplatex", vehicle_model=str(files["darknet"]))
    job = client.submit(str(video), settings)
    assert client.app.sent == ["anonymize.split"]
    saved = client.state.get(job)["settings"]
    assert saved["plate_model"] == "plate-yolov8n-pyplatex"  # names travel as names
    weights_sha = sha256_file(files["darknet"])
    cfg_sha = sha256_file(files["dir"] / "vehicles.cfg")
    key, sha256, name, companions = parse_stored_model(saved["vehicle_model"])
    assert (key, sha256, name) == (f"jobs/{job}/models/{weights_sha}.weights", weights_sha,
                                   "vehicles.weights")
    assert companions == {"cfg": f"jobs/{job}/models/{cfg_sha}.cfg"}
    assert saved["vehicle_model_format"] == "darknet" and saved["face_model_format"] == \
        "torchscript"
    assert client.storage.get_bytes(key) == files["darknet"].read_bytes()
    assert client.storage.get_bytes(companions["cfg"]) == \
        (files["dir"] / "vehicles.cfg").read_bytes()
    key, sha256, name, _ = parse_stored_model(saved["face_model"])
    assert sha256 == sha256_file(files["torchscript"]) and name == "ego_blur_face.jit"
    assert sorted(client.storage.list(f"jobs/{job}/models/")) == sorted(
        [f"jobs/{job}/models/{weights_sha}.weights", f"jobs/{job}/models/{cfg_sha}.cfg", key])


def _worker_job(client, files, tmp_path):
    """A submitted job with its manifest written, as the split step leaves it."""
    from pipeline.plan import plan
    from tasks.keys import manifest_key

    video = make_video(tmp_path / "in.mp4", n_frames=4)
    settings = Settings(faces=False, plates="two-stage", vehicle_model=str(files["darknet"]),
                        plate_model=str(files["h5"]), crop_size=SIZE, device="cpu")
    job = client.submit(str(video), settings)
    stored = Settings.from_dict(client.state.get(job)["settings"])
    client.storage.put_json(plan(video, stored).to_dict(), manifest_key(job))
    client.state.set_status(job, "processing")
    return job, stored


def test_worker_downloads_checks_and_loads_stored_models(files, tmp_path, client):
    from pipeline.detect import DetectionStack
    from tasks import runtime

    runtime.reset()
    job, stored = _worker_job(client, files, tmp_path)
    local = runtime.local_models(stored, client.storage)
    path = Path(local.vehicle_model)
    assert path.name == "vehicles.weights" and (path.parent / "vehicles.cfg").is_file()
    assert Path(local.plate_model).name == "plates.h5"
    assert runtime.local_models(stored, client.storage).vehicle_model == str(path)  # cached
    stack = DetectionStack.from_settings(local)
    assert stack.model_names["vehicles"] == \
        f"vehicles.weights (darknet, sha256 {sha256_file(files['darknet'])[:12]})"
    (found,) = stack.detect([np.full((96, 96, 3), 127, np.uint8)])
    assert sorted(found.class_id.tolist()) == [PLATE, CAR]
    runtime.reset()


def test_report_names_stored_models_as_the_loader_does(files, tmp_path, client):
    from tasks.stored_models import job_models

    _, stored = _worker_job(client, files, tmp_path)
    assert job_models(stored) == {
        "plates": f"plates.h5 (keras-h5, sha256 {sha256_file(files['h5'])[:12]})",
        "vehicles": f"vehicles.weights (darknet, sha256 {sha256_file(files['darknet'])[:12]})"}
    assert job_models(Settings(plates="one-stage")) == {
        "faces": "centerface", "plates": "plate-yolov8n-pyplatex"}


def test_worker_refuses_a_model_whose_sha256_differs(files, tmp_path, client, monkeypatch):
    from tasks import jobs, runtime
    from tasks.app import configure
    from tasks.service import ServiceSettings
    from tasks.steps import Context, run_process
    from tasks.stored_models import parse_stored_model

    runtime.reset()
    job, stored = _worker_job(client, files, tmp_path)
    key = parse_stored_model(stored.vehicle_model)[0]
    tampered = bytearray(files["darknet"].read_bytes())
    tampered[-1] ^= 1
    client.storage.put_bytes(bytes(tampered), key)
    ctx = Context(client.storage, client.state, lambda name, args: None, str(tmp_path))
    with pytest.raises(WeightsError, match="sha256"):
        run_process(ctx, job, 0)
    # through the Celery task (run here, no broker): a permanent failure of the job
    configure(ServiceSettings(broker_url="redis://127.0.0.1:9/0"))
    monkeypatch.setattr(jobs, "_context", lambda store_url: ctx)
    assert jobs.process.apply(args=(job, 0, client.storage.url())).failed()
    info = client.state.get(job)
    assert info["status"] == "failed"
    assert info["error"].startswith("segment 0: model file vehicles.weights: the stored copy "
                                    "has sha256 ") and "\n" not in info["error"]
    runtime.reset()


def test_worker_without_a_fetched_registry_model_fails_the_job(tmp_path, monkeypatch, client):
    from tasks import jobs, runtime
    from tasks.app import configure
    from tasks.keys import manifest_key
    from tasks.service import ServiceSettings
    from tasks.steps import Context

    monkeypatch.setenv("ANONYMIZE_MODELS_DIR", str(tmp_path / "empty"))
    runtime.reset()
    video = make_video(tmp_path / "in.mp4", n_frames=4)
    job = client.submit(str(video), Settings(plates="off", device="cpu"))
    from pipeline.plan import plan

    client.storage.put_json(plan(video, Settings(plates="off")).to_dict(), manifest_key(job))
    ctx = Context(client.storage, client.state, lambda name, args: None, str(tmp_path))
    configure(ServiceSettings(broker_url="redis://127.0.0.1:9/0"))
    monkeypatch.setattr(jobs, "_context", lambda store_url: ctx)
    assert jobs.process.apply(args=(job, 0, client.storage.url())).failed()
    assert client.state.get(job)["error"] == (
        "segment 0: --face-model: model centerface is not fetched: run "
        "`anonymize models fetch centerface` (or `anonymize models fetch` for every default "
        "model)")
    runtime.reset()
