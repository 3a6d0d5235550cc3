"""Darknet and Keras YOLOv3 conversion: the two readers must fill the same network.

The test writes a tiny YOLOv3-shaped darknet cfg, a random ``.weights``
file for it, and the same random values in the keras-yolo3 HDF5 layout
(HWIO kernels, ``conv2d_N`` / ``batch_normalization_N`` groups listed out of
creation order), all by hand, so neither file is produced by the code
under test.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from models.darknet import (
    check_layout,
    config_from_cfg,
    convert_darknet,
    parse_cfg,
    yolov3_cfg_text,
)
from models.detections import BUS, CAR, MOTORCYCLE, PLATE, TRUCK
from models.fetch import WeightsError
from models.keras_h5 import convert_keras_h5
from models.yolov3 import YoloV3Detector, build
from models.yolov3_names import COCO_NAMES, default_class_map
from models.yolov3_net import YoloV3, make_config

ROOT = Path(__file__).resolve().parent.parent
WIDTH, BLOCKS, CLASSES, SIZE = 4, [1, 1, 2, 1, 1], 2, 64
ANCHORS = "10,13, 16,30, 33,23, 30,61, 62,45, 59,119, 116,90, 156,198, 373,326"


def tiny_cfg() -> tuple[str, list[tuple[int, int, int, bool]]]:
    """cfg text and the conv list (filters, size, in_channels, batch_normalize) in order."""
    text = [f"[net]\nbatch=1\nwidth={SIZE}\nheight={SIZE}\nchannels=3\n"]
    convs: list[tuple[int, int, int, bool]] = []
    chans: list[int] = []  # output channels per layer, for routes

    def conv(filters, size, stride=1, bn=True, cin=None):
        cin = chans[-1] if cin is None else cin
        act = "leaky" if bn else "linear"
        text.append(f"[convolutional]\n{'batch_normalize=1' if bn else ''}\nfilters={filters}\n"
                    f"size={size}\nstride={stride}\npad=1\nactivation={act}\n")
        convs.append((filters, size, cin, bn))
        chans.append(filters)

    conv(WIDTH, 3, cin=3)
    c = WIDTH
    for n in BLOCKS:
        conv(2 * c, 3, 2)
        c *= 2
        for _ in range(n):
            conv(c // 2, 1)
            conv(c, 3)
            text.append("[shortcut]\nfrom=-3\nactivation=linear\n")
            chans.append(c)
        if c == WIDTH * 8:
            skip3 = len(chans) - 1
        if c == WIDTH * 16:
            skip4 = len(chans) - 1
    nout = 3 * (5 + CLASSES)
    for nf, mask, skip in ((c // 2, "6,7,8", skip4), (c // 4, "3,4,5", skip3), (c // 8, "0,1,2", None)):
        for _ in range(3):
            conv(nf, 1)
            conv(2 * nf, 3)
        conv(nout, 1, bn=False)
        text.append(f"[yolo]\nmask = {mask}\nanchors = {ANCHORS}\nclasses={CLASSES}\nnum=9\n")
        chans.append(nout)
        if skip is not None:
            text.append("[route]\nlayers = -4\n")
            chans.append(chans[-4])
            conv(nf // 2, 1)
            text.append("[upsample]\nstride=2\n")
            chans.append(nf // 2)
            text.append(f"[route]\nlayers = -1, {skip}\n")
            chans.append(nf // 2 + chans[skip])
    return "\n".join(text), convs


def random_params(convs, seed=0):
    """Per conv: dict with kernel (OIHW) and either bias or beta/gamma/mean/var."""
    rng = np.random.default_rng(seed)
    out = []
    for filters, size, cin, bn in convs:
        p = {"kernel": rng.normal(0, 0.3, (filters, cin, size, size)).astype(np.float32)}
        if bn:
            p["beta"] = rng.normal(0, 0.1, filters).astype(np.float32)
            p["gamma"] = rng.uniform(0.5, 1.5, filters).astype(np.float32)
            p["mean"] = rng.normal(0, 0.1, filters).astype(np.float32)
            p["var"] = rng.uniform(0.5, 2.0, filters).astype(np.float32)
        else:
            p["bias"] = rng.normal(0, 1.0, filters).astype(np.float32)
        out.append(p)
    return out


def write_weights(path: Path, params) -> None:
    with open(path, "wb") as f:
        f.write(np.array([0, 2, 5], "<i4").tobytes() + np.array([123456], "<i8").tobytes())
        for p in params:
            keys = ("beta", "gamma", "mean", "var") if "beta" in p else ("bias",)
            for k in keys:
                f.write(p[k].astype("<f4").tobytes())
            f.write(p["kernel"].astype("<f4").tobytes())


def write_h5(path: Path, params, start: int = 1, eps: float | None = 1e-5,
             conv_prefix="conv2d", bn_prefix="batch_normalization") -> None:
    """keras-yolo3 layout: model_weights/<layer>/<layer>/<var>:0, HWIO kernels."""
    def name(prefix, i):
        n = start + i
        return prefix if n == 0 else f"{prefix}_{n}"

    with h5py.File(path, "w") as f:
        g = f.create_group("model_weights")
        layers = ["input_1"]
        g.create_group("input_1").attrs["weight_names"] = np.array([], dtype="S")
        nbn = 0
        for i, p in enumerate(params):
            cname = name(conv_prefix, i)
            lg = g.create_group(cname)
            sub = lg.create_group(cname)
            sub["kernel:0"] = p["kernel"].transpose(2, 3, 1, 0)  # OIHW -> HWIO
            wn = [f"{cname}/kernel:0"]
            if "bias" in p:
                sub["bias:0"] = p["bias"]
                wn.append(f"{cname}/bias:0")
            lg.attrs["weight_names"] = np.array(wn, dtype="S")
            layers.append(cname)
            if "beta" in p:
                bname = name(bn_prefix, nbn)
                nbn += 1
                bg = g.create_group(bname)
                bsub = bg.create_group(bname)
                keras = {"gamma": "gamma", "beta": "beta", "mean": "moving_mean",
                         "var": "moving_variance"}
                for ours, theirs in keras.items():
                    bsub[f"{theirs}:0"] = p[ours]
                bg.attrs["weight_names"] = np.array(
                    [f"{bname}/{t}:0" for t in keras.values()], dtype="S")
                layers.append(bname)
        # Keras lists layers topologically, not in creation order: shuffle to prove
        # the reader orders by the names' creation index
        rng = np.random.default_rng(1)
        rng.shuffle(layers)
        g.attrs["layer_names"] = np.array(layers, dtype="S")
        if eps is not None:
            f.attrs["model_config"] = json.dumps({"class_name": "Model", "config": {"layers": [
                {"class_name": "BatchNormalization", "config": {"epsilon": eps}}]}})


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("yolo")
    text, convs = tiny_cfg()
    params = random_params(convs)
    (d / "tiny.cfg").write_text(text)
    write_weights(d / "tiny.weights", params)
    write_h5(d / "tiny.h5", params)
    (d / "names.txt").write_text("car\nlicense-plate\n")
    return {"dir": d, "cfg": d / "tiny.cfg", "weights": d / "tiny.weights", "h5": d / "tiny.h5",
            "names": d / "names.txt", "params": params, "convs": convs}


def _save(checkpoint, path):
    torch.save(checkpoint, path)
    return path


def test_darknet_and_keras_fill_identical_state_dicts(files):
    a = convert_darknet(files["weights"], files["cfg"], str(files["names"]))
    b = convert_keras_h5(files["h5"], str(files["names"]), anchors=ANCHORS, input_size=SIZE)
    assert a["config"] == b["config"]
    assert a["names"] == b["names"] == ["car", "license-plate"]
    assert a["config"]["blocks"] == BLOCKS and a["config"]["width"] == WIDTH
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for k in a["state_dict"]:
        assert torch.equal(a["state_dict"][k], b["state_dict"][k]), k
    # the values are the ones written, in the right places
    first, last = files["params"][0], files["params"][-1]
    sd = a["state_dict"]
    assert torch.equal(sd["stem.conv.weight"], torch.from_numpy(first["kernel"]))
    assert torch.equal(sd["stem.bn.bias"], torch.from_numpy(first["beta"]))
    assert torch.equal(sd["stem.bn.running_var"], torch.from_numpy(first["var"]))
    assert torch.equal(sd["head3.pred.bias"], torch.from_numpy(last["bias"]))
    assert a["source"]["seen"] == 123456 and a["source"]["version"] == [0, 2, 5]


def test_both_converters_detect_the_same_boxes(files):
    d = files["dir"]
    pa = _save(convert_darknet(files["weights"], files["cfg"], str(files["names"])), d / "a.pt")
    pb = _save(convert_keras_h5(files["h5"], str(files["names"]), anchors=ANCHORS,
                                input_size=SIZE), d / "b.pt")
    da, db = build(pa, thresh=0.05), build(pb, thresh=0.05)
    rng = np.random.default_rng(3)
    frames = rng.integers(0, 255, (2, 90, 150, 3), dtype=np.uint8)
    ra, rb = da(frames), db(frames)
    assert len(ra) == 2 and sum(len(r) for r in ra) > 0
    for x, y in zip(ra, rb, strict=True):
        assert x == y
        assert set(x.class_id.tolist()) <= {CAR, PLATE}
        assert (x.xyxy[:, [0, 2]] <= 150).all() and (x.xyxy[:, [1, 3]] <= 90).all()
        assert (x.xyxy >= 0).all()
    crops = [frames[0, :40, :70], frames[1, 10:80, 30:60], frames[0, 5:9, 5:9]]
    ca, cb = da.detect_crops(crops, 0.05, 64), db.detect_crops(crops, 0.05, 64)
    assert len(ca) == 3 and sum(len(r) for r in ca) > 0
    db.max_batch = 2  # batching in chunks gives the same boxes
    for x, y in zip(db.detect_crops(crops, 0.05, 64), ca, strict=True):
        assert x.class_id.tolist() == y.class_id.tolist()
        np.testing.assert_allclose(x.xyxy, y.xyxy, atol=1e-3)
    for x, y, crop in zip(ca, cb, crops, strict=True):
        assert x == y
        assert (x.xyxy[:, [0, 2]] <= crop.shape[1]).all() and (x.xyxy[:, [1, 3]] <= crop.shape[0]).all()
    assert da.detect_crops([], 0.05) == []


def test_keras_epsilon_defaults_to_keras_value(files, tmp_path):
    write_h5(tmp_path / "noeps.h5", files["params"], start=0, eps=None)
    ck = convert_keras_h5(tmp_path / "noeps.h5", ["car", "plate"])
    assert ck["config"]["bn_eps"] == 1e-3
    ref = convert_darknet(files["weights"], files["cfg"], ["car", "plate"])
    for k in ref["state_dict"]:  # TF2-style names (conv2d, conv2d_1, ...) map the same way
        assert torch.equal(ck["state_dict"][k], ref["state_dict"][k]), k


def test_imageai_custom_layout_and_detection_config(files, tmp_path):
    """experiencor/ImageAI custom training names layers conv_<i>/bnorm_<i> and stores
    labels and anchors (large first) in detection_config.json."""
    write_h5(tmp_path / "custom.h5", files["params"], start=0, conv_prefix="conv",
             bn_prefix="bnorm")
    config = tmp_path / "detection_config.json"
    config.write_text(json.dumps({"labels": ["car", "plate"], "anchors": [
        [116, 90, 156, 198, 373, 326], [30, 61, 62, 45, 59, 119], [10, 13, 16, 30, 33, 23]]}))
    ck = convert_keras_h5(tmp_path / "custom.h5", str(config))
    assert ck["names"] == ["car", "plate"]
    assert ck["config"]["anchors"][0] == [10, 13] and ck["config"]["anchors"][-1] == [373, 326]


def test_truncated_weights_raise(files, tmp_path):
    raw = files["weights"].read_bytes()
    (tmp_path / "cut.weights").write_bytes(raw[: len(raw) - 100])
    with pytest.raises(WeightsError, match="truncated"):
        convert_darknet(tmp_path / "cut.weights", files["cfg"], str(files["names"]))
    (tmp_path / "long.weights").write_bytes(raw + b"\0" * 8)
    with pytest.raises(WeightsError, match="left over"):
        convert_darknet(tmp_path / "long.weights", files["cfg"], str(files["names"]))
    (tmp_path / "junk.weights").write_bytes(b"\xff" * 64)
    with pytest.raises(WeightsError, match="not a darknet weights file"):
        convert_darknet(tmp_path / "junk.weights", files["cfg"], str(files["names"]))


def test_wrong_cfg_and_wrong_files_raise(files, tmp_path):
    bad = files["cfg"].read_text().replace("layers = -1, ", "layers = -2, ", 1)
    (tmp_path / "bad.cfg").write_text(bad)
    with pytest.raises(WeightsError, match="route"):
        convert_darknet(files["weights"], tmp_path / "bad.cfg", str(files["names"]))
    with pytest.raises(WeightsError, match="not a Keras HDF5 file"):
        convert_keras_h5(files["weights"], str(files["names"]))
    with pytest.raises(WeightsError, match="2 classes"):
        convert_darknet(files["weights"], files["cfg"], "coco")
    # one kernel with the wrong shape: a clear size mismatch
    params = [dict(p) for p in files["params"]]
    k = params[3]["kernel"]
    params[3]["kernel"] = np.zeros((k.shape[0], k.shape[1] + 1, *k.shape[2:]), np.float32)
    write_h5(tmp_path / "mismatch.h5", params)
    with pytest.raises(WeightsError, match="size mismatch|does not fit"):
        convert_keras_h5(tmp_path / "mismatch.h5", str(files["names"]))


def test_full_yolov3_cfg_layout_matches_darknet():
    """The generated full-size cfg has darknet's 107 layers and routes to layers 61/36."""
    sections = parse_cfg(yolov3_cfg_text(make_config()))
    assert len(sections) - 1 == 107
    routes = [s["layers"] for s in sections if s["type"] == "route"]
    assert routes == ["-4", "-1,61", "-4", "-1,36"]
    config = config_from_cfg(sections)
    assert config["blocks"] == [1, 2, 8, 8, 4] and config["num_classes"] == 80
    check_layout(sections, config)


def test_decode_follows_darknet_yolo_layer():
    model = YoloV3(make_config(width=4, blocks=[1, 1, 1, 1, 1], num_classes=1))
    nc = 1
    outs = [torch.zeros(1, 3 * (5 + nc), s, s) for s in (2, 4, 8)]
    outs[0][0, 0:2, 1, 0] = 0.0  # anchor 6 at cell (x=0, y=1): sigmoid(0) = 0.5
    outs[0][0, 2:4, 1, 0] = torch.log(torch.tensor([2.0, 0.5]))
    pred = model.decode(outs, 64, 64)
    assert pred.shape == (1, 3 * (4 + 16 + 64), 5 + nc)
    row = pred[0, 1 * 2 + 0]  # anchor 0 of the mask, cell (y=1, x=0)
    cx, cy = 0.5 * 32, 1.5 * 32
    w, h = 116 * 2.0, 90 * 0.5
    assert torch.allclose(row[:4], torch.tensor([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]))
    assert torch.allclose(row[4:], torch.tensor([0.5, 0.5]))


def test_letterbox_boxes_map_back_to_frame_pixels():
    model = YoloV3(make_config(width=4, blocks=[1, 1, 1, 1, 1], num_classes=1,
                               anchors=[[16, 16]] * 9, input_size=64))
    det = YoloV3Detector(model, ["plate"], thresh=0.5)
    big = torch.tensor(10.0)

    def fake_forward(x):
        outs = [torch.full((x.shape[0], 18, s, s), -big) for s in (2, 4, 8)]
        outs[0][:, 0:4, 1, 1] = 0.0  # centre (48, 48) in the 64×64 input, 16×16 box
        outs[0][:, 4:6, 1, 1] = big
        return outs

    det.model.forward = fake_forward
    frame = np.zeros((100, 200, 3), np.uint8)  # scale 0.32, 64×32 image, 16 px top pad
    (d,) = det.detect(frame)
    assert d.class_id.tolist() == [PLATE]
    expected = np.array([(40 - 0) / 0.32, (40 - 16) / 0.32, (56 - 0) / 0.32, 100.0])
    np.testing.assert_allclose(d.xyxy[0], expected, rtol=1e-4)


def test_coco_names_map_to_vehicle_labels():
    cmap = default_class_map(COCO_NAMES)
    assert cmap == {2: CAR, 3: MOTORCYCLE, 5: BUS, 7: TRUCK}
    assert default_class_map(["person", "motorbike", "Number Plate"]) == {1: MOTORCYCLE, 2: PLATE}


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "anonymize", "convert-weights", *map(str, args)],
                          capture_output=True, text=True, cwd=ROOT)


@pytest.mark.slow
def test_cli_round_trip(files, tmp_path):
    r1 = _cli("--weights", files["weights"], "--cfg", files["cfg"], "-o", tmp_path / "d.pt",
              "--names", files["names"])
    assert r1.returncode == 0, r1.stderr
    assert "2 classes" in r1.stdout
    r2 = _cli("--keras", files["h5"], "-o", tmp_path / "k.pt", "--names", files["names"],
              "--anchors", ANCHORS.replace(" ", ""), "--input-size", SIZE)
    assert r2.returncode == 0, r2.stderr
    a = torch.load(tmp_path / "d.pt", weights_only=True)
    b = torch.load(tmp_path / "k.pt", weights_only=True)
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])
    det = build(tmp_path / "k.pt", thresh=0.05)
    assert len(det.detect(np.zeros((64, 64, 3), np.uint8))) == 1


@pytest.mark.slow
def test_cli_reports_bad_weights_in_one_line(files, tmp_path):
    raw = files["weights"].read_bytes()
    (tmp_path / "cut.weights").write_bytes(raw[:1000])
    r = _cli("--weights", tmp_path / "cut.weights", "--cfg", files["cfg"], "-o", tmp_path / "x.pt",
             "--names", files["names"])
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("anonymize: error:") and "truncated" in lines[0]
    assert not (tmp_path / "x.pt").exists()
    r = _cli("--weights", files["weights"], "-o", tmp_path / "x.pt")
    assert r.returncode == 2 and "--cfg" in r.stderr


@pytest.mark.parametrize("size", [0, -5, 33])
def test_keras_input_size_that_no_yolov3_takes_is_refused(files, tmp_path, size):
    """--input-size 0, -5 or 33 wrote a checkpoint, exit 0, that failed when loaded
    (0: a traceback from torch's resize as a vehicle model)."""
    from models.errors import WeightsError

    with pytest.raises(WeightsError, match=f"input size must be a positive multiple of 32, "
                                           f"got {size}"):
        convert_keras_h5(files["h5"], str(files["names"]), anchors=ANCHORS, input_size=size)


def test_keras_only_options_with_darknet_weights_are_refused(files, tmp_path, capsys):
    """--anchors and --input-size were ignored with --weights (the cfg has its own)."""
    from anonymize.cli import main

    for extra in (["--anchors", ANCHORS.replace(" ", "")], ["--input-size", "608"]):
        assert main(["convert-weights", "--weights", str(files["weights"]), "--cfg",
                     str(files["cfg"]), "-o", str(tmp_path / "x.pt"), *extra]) == 2
        assert capsys.readouterr().err.splitlines() == [
            "anonymize: error: --anchors and --input-size are only used with --keras (a "
            "darknet cfg states its own)"]
    assert not (tmp_path / "x.pt").exists()


def test_build_refuses_other_checkpoints(tmp_path):
    torch.save({"arch": "yolov8", "state_dict": {}}, tmp_path / "other.pt")
    with pytest.raises(WeightsError, match="not a YOLOv3 checkpoint"):
        build(tmp_path / "other.pt")


def test_cli_output_that_is_a_folder_or_below_a_file_is_one_line_and_leaves_nothing(
        files, tmp_path, capsys):
    """-o naming a folder failed at the end with '[Errno 21] ... out.tmp -> out'
    and left out.tmp beside it; -o below a file was a FileExistsError traceback.
    Both are refused before converting; a conversion leaves no temporary file."""
    from anonymize.cli import main

    (tmp_path / "out").mkdir()
    (tmp_path / "afile").write_text("x")
    for target in (tmp_path / "out", tmp_path / "afile" / "x.pt"):
        rc = main(["convert-weights", "--weights", str(files["weights"]), "--cfg",
                   str(files["cfg"]), "--names", str(files["names"]), "-o", str(target)])
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and len(err) == 1 and err[0].startswith("anonymize: error:"), err
        assert str(target if target.is_dir() else target.parent) in err[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "out"]
    assert not any((tmp_path / "out").iterdir())
    rc = main(["convert-weights", "--weights", str(files["weights"]), "--cfg", str(files["cfg"]),
               "--names", str(files["names"]), "-o", str(tmp_path / "new" / "m.pt")])
    assert rc == 0 and [p.name for p in (tmp_path / "new").iterdir()] == ["m.pt"]
    assert build(tmp_path / "new" / "m.pt").input_size == SIZE


@pytest.mark.parametrize("bad", ["-5", "0", "nan"])
def test_anchors_that_are_not_pixel_sizes_are_refused(files, tmp_path, bad):
    """--anchors ending in -5 (or 0) was converted into a checkpoint whose boxes
    have negative (or no) size; nan was refused with 'cannot convert float NaN'."""
    anchors = ANCHORS.replace(" ", "").rsplit(",", 1)[0] + "," + bad
    with pytest.raises(WeightsError, match="anchors are box widths and heights in pixels"):
        convert_keras_h5(files["h5"], str(files["names"]), anchors=anchors, input_size=SIZE)
    (tmp_path / "neg.cfg").write_text(files["cfg"].read_text().replace(
        "anchors = 10,13", f"anchors = {bad if bad != 'nan' else '-1'},13"))
    with pytest.raises(WeightsError, match="anchors are widths and heights in pixels"):
        convert_darknet(files["weights"], tmp_path / "neg.cfg", str(files["names"]))


@pytest.mark.parametrize("text", ['[1, 2]', '{bad', '{}', '{"labels": "car"}',
                                  '{"labels": ["car", "plate"], "anchors": "x"}'])
def test_a_detection_config_that_is_not_one_is_named_in_one_line(files, tmp_path, text):
    """An ImageAI detection_config.json given as --names that is a list ended in
    an AttributeError traceback, one without 'labels' in a KeyError; bad JSON or
    bad anchors were blamed on the .h5 ('not a Keras YOLOv3 layout'), and labels
    given as one string were read letter by letter."""
    config = tmp_path / "detection_config.json"
    config.write_text(text)
    with pytest.raises(WeightsError) as err:
        convert_keras_h5(files["h5"], str(config), input_size=SIZE)
    message = str(err.value)
    assert message.startswith(str(config)) and "\n" not in message, message
    config.write_text('{"labels": ["car", "plate"], "anchors": [[1, 2, 3, 4, 5, 6], '
                      '[7, 8, 9, 10, 11, 12], [13, 14, 15, 16, 17, 18]]}')
    checkpoint = convert_keras_h5(files["h5"], str(config), input_size=SIZE)
    assert checkpoint["names"] == ["car", "plate"]
