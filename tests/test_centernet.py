"""CenterNet vehicles: TFJS reader, generated module fidelity, real detections, export,
weight errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from models.centernet import CenterNetModule, build, convert_tfjs, load_graph
from models.coco_vehicles import greedy_nms, pairwise_iou
from models.detections import CAR, VEHICLE_IDS
from models.fetch import WeightsError
from models.ops import box_iou, box_iou_np, nms
from models.tfjs import TFJSFormatError, read_graph_model
from models.tfjs_torch import build_module
from pipeline.datasets import read_image
from tests.detector_checks import check_mixed_size_batch
from tests.fixtures.centernet_reference import VEHICLE_CHANNELS, graph_input

MODEL = "vehicles-centernet-mobilenetv3"
REFERENCE = Path(__file__).parent / "fixtures" / "centernet_reference.npz"
IMAGES = "plates_vehicles_openimages_roboflow"


def _b64(text: str) -> str:
    import base64

    return base64.b64encode(text.encode()).decode()


def _write_model(folder: Path, nodes: list[dict], weights: list[tuple[dict, bytes]],
                 signature: dict | None = None, shards: int = 1) -> Path:
    """A TFJS graph model.json + weight shard(s) written by hand."""
    blob = b"".join(data for _, data in weights)
    cut = [0] + [len(blob) * (i + 1) // shards for i in range(shards)]
    paths = []
    for i in range(shards):
        name = f"group1-shard{i + 1}of{shards}.bin"
        (folder / name).write_bytes(blob[cut[i]:cut[i + 1]])
        paths.append(name)
    model = {
        "format": "graph-model", "generatedBy": "test", "convertedBy": "test",
        "signature": signature or {},
        "modelTopology": {"node": nodes, "versions": {"producer": 1}},
        "weightsManifest": [{"paths": paths, "weights": [spec for spec, _ in weights]}],
    }
    path = folder / "model.json"
    path.write_text(json.dumps(model))
    return path


def _const(name: str, dtype: str = "DT_FLOAT") -> dict:
    return {"name": name, "op": "Const", "attr": {"dtype": {"type": dtype}, "value": {}}}


# -- TFJS reader ---------------------------------------------------------------

def test_reader_decodes_float16_affine_quantized_and_plain_weights_across_shards(tmp_path):
    half = np.array([[0.5, -1.25, 3.0], [1e-3, 65504.0, -0.0]], np.float16)
    q8 = np.array([0, 1, 2, 255], np.uint8)
    q16 = np.array([0, 4, 65535], np.uint16)
    ints = np.array([7, -3], np.int32)
    plain = np.array([1.5, -2.5, 1e-7], np.float32)
    weights = [
        ({"name": "h", "shape": [2, 3], "dtype": "float32",
          "quantization": {"dtype": "float16", "original_dtype": "float32"}}, half.tobytes()),
        ({"name": "q8", "shape": [4], "dtype": "float32",
          "quantization": {"dtype": "uint8", "scale": 0.5, "min": -1.0}}, q8.tobytes()),
        ({"name": "q16", "shape": [3], "dtype": "float32",
          "quantization": {"dtype": "uint16", "scale": 0.25, "min": 10.0}}, q16.tobytes()),
        ({"name": "i", "shape": [2], "dtype": "int32"}, ints.tobytes()),
        ({"name": "f", "shape": [3], "dtype": "float32"}, plain.tobytes()),
        ({"name": "s", "shape": [], "dtype": "int32"}, np.int32(5).tobytes()),
    ]
    nodes = [_const(spec["name"]) for spec, _ in weights] + [{
        "name": "conv", "op": "Conv2D", "input": ["x", "h"],
        "attr": {"padding": {"s": _b64("SAME")}, "strides": {"list": {"i": ["1", "2", "2", "1"]}},
                 "explicit_paddings": {"list": {}}, "use_cudnn_on_gpu": {"b": True},
                 "epsilon": {"f": 0.5}, "T": {"type": "DT_FLOAT"}}}]
    graph = read_graph_model(_write_model(tmp_path, nodes, weights, shards=3))

    np.testing.assert_array_equal(graph.weights["h"], half.astype(np.float32))
    assert graph.weights["h"].dtype == np.float32
    np.testing.assert_allclose(graph.weights["q8"], [-1.0, -0.5, 0.0, 126.5])
    np.testing.assert_allclose(graph.weights["q16"], [10.0, 11.0, 10.0 + 65535 * 0.25])
    np.testing.assert_array_equal(graph.weights["i"], ints)
    assert graph.weights["i"].dtype == np.int32
    np.testing.assert_array_equal(graph.weights["f"], plain)
    assert graph.weights["s"].shape == () and int(graph.weights["s"]) == 5
    attr = graph.node("conv")["attr"]
    assert attr == {"padding": "SAME", "strides": [1, 2, 2, 1], "explicit_paddings": [],
                    "use_cudnn_on_gpu": True, "epsilon": 0.5, "T": "DT_FLOAT"}
    assert graph.node("conv")["inputs"] == ["x", "h"]


def test_reader_rejects_truncated_and_oversized_shards(tmp_path):
    spec = {"name": "w", "shape": [4], "dtype": "float32"}
    path = _write_model(tmp_path, [_const("w")], [(spec, np.zeros(4, np.float32).tobytes())])
    shard = tmp_path / "group1-shard1of1.bin"
    shard.write_bytes(shard.read_bytes()[:10])
    with pytest.raises(TFJSFormatError, match="needs bytes"):
        read_graph_model(path)
    shard.write_bytes(bytes(20))
    with pytest.raises(TFJSFormatError, match="hold 20 bytes"):
        read_graph_model(path)


# -- generated module on a hand-made graph ---------------------------------------------

def _tf_depthwise_same_stride2(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    """TF depthwise conv, NHWC, 3×3, stride 2, SAME on even sizes: pad 0 before, 1 after."""
    n, h, wd, c = x.shape
    mult = w.shape[3]
    xp = np.zeros((n, h + 1, wd + 1, c), x.dtype)
    xp[:, :h, :wd] = x
    out = np.zeros((n, h // 2, wd // 2, c * mult), np.float64)
    for i in range(h // 2):
        for j in range(wd // 2):
            patch = xp[:, 2 * i:2 * i + 3, 2 * j:2 * j + 3, :]  # n,3,3,c
            for ch in range(c):
                for m in range(mult):
                    out[:, i, j, ch * mult + m] = (patch[..., ch] * w[:, :, ch, m]).sum((1, 2))
    return out + b


def _tf_resize_legacy(x: np.ndarray, oh: int, ow: int) -> np.ndarray:
    """TF ResizeBilinear with align_corners=False, half_pixel_centers=False (NHWC)."""
    h, w = x.shape[1:3]
    out = np.zeros((x.shape[0], oh, ow, x.shape[3]))
    for i in range(oh):
        sy = i * h / oh
        y0 = int(np.floor(sy))
        y1, fy = min(y0 + 1, h - 1), sy - y0
        for j in range(ow):
            sx = j * w / ow
            x0 = int(np.floor(sx))
            x1, fx = min(x0 + 1, w - 1), sx - x0
            top = x[:, y0, x0] + (x[:, y0, x1] - x[:, y0, x0]) * fx
            bottom = x[:, y1, x0] + (x[:, y1, x1] - x[:, y1, x0]) * fx
            out[:, i, j] = top + (bottom - top) * fy
    return out


def test_module_follows_tf_padding_depthwise_multiplier_fused_relu6_and_legacy_resize(tmp_path):
    rng = np.random.default_rng(0)
    w = rng.normal(size=(3, 3, 3, 2)).astype(np.float16)
    b = rng.normal(size=6).astype(np.float32)
    conv_attr = {"padding": {"s": _b64("SAME")}, "strides": {"list": {"i": ["1", "2", "2", "1"]}},
                 "dilations": {"list": {"i": ["1", "1", "1", "1"]}},
                 "data_format": {"s": _b64("NHWC")}, "num_args": {"i": "1"},
                 "fused_ops": {"list": {"s": [_b64("BiasAdd"), _b64("Relu6")]}}}
    nodes = [
        {"name": "x", "op": "Placeholder", "attr": {"dtype": {"type": "DT_FLOAT"}}},
        _const("w"), _const("b"), _const("size", "DT_INT32"),
        {"name": "dw", "op": "FusedDepthwiseConv2dNative", "input": ["x", "w", "b"],
         "attr": conv_attr},
        {"name": "up", "op": "ResizeBilinear", "input": ["dw", "size"],
         "attr": {"align_corners": {"b": False}, "half_pixel_centers": {"b": False}}},
        {"name": "out", "op": "Identity", "input": ["up"]},
    ]
    weights = [
        ({"name": "w", "shape": [3, 3, 3, 2], "dtype": "float32",
          "quantization": {"dtype": "float16", "original_dtype": "float32"}}, w.tobytes()),
        ({"name": "b", "shape": [6], "dtype": "float32"}, b.tobytes()),
        ({"name": "size", "shape": [2], "dtype": "int32"}, np.array([7, 11], np.int32).tobytes()),
    ]
    dims = {"dim": [{"size": "1"}, {"size": "8"}, {"size": "10"}, {"size": "6"}]}
    signature = {"inputs": {"x": {"name": "x"}}, "outputs": {"out": {"name": "out",
                                                                     "tensorShape": dims}}}
    path = _write_model(tmp_path, nodes, weights, signature)
    ckpt = convert_tfjs({"graph": path, "weights": path.parent / "group1-shard1of1.bin"})
    module = build_module(ckpt, ckpt["heads"], input_hw=(8, 10))

    x = rng.uniform(-2, 2, size=(2, 8, 10, 3)).astype(np.float32)
    with torch.inference_mode():
        got = module(torch.from_numpy(x).permute(0, 3, 1, 2))[0].numpy()  # NHWC, as TF
    expected = _tf_resize_legacy(np.clip(_tf_depthwise_same_stride2(
        x, w.astype(np.float32), b), 0, 6), 7, 11)
    assert got.shape == (2, 7, 11, 6)
    np.testing.assert_allclose(got, expected, atol=1e-4)


# -- errors ---------------------------------------------------------------------

def test_corrupt_or_missing_source_files_raise_one_line_weights_error(tmp_path):
    graph = tmp_path / "centernet.json"
    weights = tmp_path / "centernet.bin"
    with pytest.raises(WeightsError) as err:
        convert_tfjs({"graph": graph, "weights": weights})
    assert "\n" not in str(err.value)
    graph.write_text("{not json")
    with pytest.raises(WeightsError) as err:
        convert_tfjs({"graph": graph, "weights": weights})
    assert "\n" not in str(err.value)
    spec = {"name": "w", "shape": [8], "dtype": "float32"}
    path = _write_model(tmp_path, [_const("w")], [(spec, bytes(16))],
                        {"inputs": {"x": {}}, "outputs": {"w": {}}})
    with pytest.raises(WeightsError, match="needs bytes") as err:
        convert_tfjs({"graph": path, "weights": tmp_path / "group1-shard1of1.bin"})
    assert "\n" not in str(err.value)


def test_missing_or_corrupt_checkpoint_raises_one_line_weights_error(tmp_path):
    with pytest.raises(WeightsError, match="not found"):
        build(tmp_path / "absent.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"this is not a checkpoint")
    with pytest.raises(WeightsError) as err:
        build(bad)
    assert "\n" not in str(err.value)
    other = tmp_path / "other.pt"
    torch.save({"format": "something-else"}, other)
    with pytest.raises(WeightsError, match="not a converted TFJS graph"):
        build(other)


# -- the real model ---------------------------------------------------------------

@pytest.fixture(scope="module")
def graph(checkpoint) -> CenterNetModule:
    return load_graph(checkpoint(MODEL))


@pytest.fixture(scope="module")
def detector(checkpoint):
    return build(checkpoint(MODEL), device="cpu")


@pytest.mark.models
@pytest.mark.slow
def test_graph_matches_tensorflow_js_reference_output(graph, data_dir):
    ref = np.load(REFERENCE)
    assert str(ref["image"]).startswith(IMAGES)
    x = torch.from_numpy(graph_input(data_dir)).permute(2, 0, 1)[None].float()
    with torch.inference_mode():
        heads = graph.heads(x)
        rows = graph(x)[0].numpy()
    kp = heads["tower_0/keypoints"][0].numpy()  # NHWC, as the graph
    wh = heads["tower_0/wh"][0].numpy()
    # Same fp16-exact weights on both sides: only float32 summation order differs.
    np.testing.assert_allclose(kp.max(-1), ref["keypoints_max"].astype(np.float32), atol=2e-3)
    np.testing.assert_allclose(kp[::2, ::2, VEHICLE_CHANNELS],
                               ref["keypoints_vehicles"].astype(np.float32), atol=2e-3)
    np.testing.assert_allclose(wh[::2, ::2], ref["wh"].astype(np.float32), atol=0.2, rtol=2e-3)
    expected = ref["detections"]
    strong = expected[:, 4] > 0.1  # top-k order is only stable where scores differ clearly
    assert strong.sum() >= 10
    np.testing.assert_array_equal(rows[strong, 5], expected[strong, 5])
    np.testing.assert_allclose(rows[strong, 4], expected[strong, 4], atol=1e-3)
    np.testing.assert_allclose(rows[strong, :4], expected[strong, :4], atol=0.05)


@pytest.mark.models
@pytest.mark.slow
def test_finds_annotated_cars_on_a_real_street_image(detector, data_dir):
    ann = json.loads((data_dir / IMAGES / "annotations.json").read_text())
    entry = next(im for im in ann["images"] if im["file"].endswith(
        Path(np.load(REFERENCE)["image"].item()).name))
    cars = np.array([b["xyxy"] for b in entry["boxes"] if b["label"] == "car"])
    det = detector(read_image(data_dir / IMAGES / entry["file"]), thresh=0.2)[0]
    assert set(det.class_id.tolist()) <= set(VEHICLE_IDS)
    assert (det.xyxy[:, 2] <= entry["width"]).all() and (det.xyxy[:, 3] <= entry["height"]).all()
    found = (box_iou_np(cars, det.with_class(CAR).xyxy) >= 0.5).any(axis=1)
    assert len(cars) >= 5 and found.sum() >= 6


@pytest.mark.models
@pytest.mark.slow
def test_batch_of_different_sizes_matches_frames_run_alone(detector, data_dir):
    check_mixed_size_batch(detector, data_dir)


@pytest.mark.models
@pytest.mark.slow
def test_graph_decodes_each_item_of_a_batch_like_a_batch_of_one(graph, data_dir):
    """The decode constants were frozen for batch 1; batches must still decode per item."""
    image = torch.from_numpy(graph_input(data_dir)).permute(2, 0, 1).float()
    batch = torch.stack([image, image.flip(-1), image.flip(-2)])
    with torch.inference_mode():
        together = graph(batch).numpy()
        alone = [graph(item[None])[0].numpy() for item in batch]
    assert together.shape == (3, 100, 6)
    for got, expected in zip(together, alone, strict=True):
        strong = expected[:, 4] > 0.1
        np.testing.assert_allclose(got[strong], expected[strong], atol=1e-2)
    # the mirrored image finds the same strongest car, mirrored
    top, mirrored = alone[0][0], alone[1][0]
    assert top[5] == mirrored[5] == 2
    np.testing.assert_allclose([512 - mirrored[2], 512 - mirrored[0]], top[[0, 2]], atol=8)  # two heatmap cells


# -- a real module: batched decode, generated code, export ---------------------------------

def test_batched_greedy_nms_keeps_what_the_sequential_nms_keeps():
    gen = torch.Generator().manual_seed(0)
    for n in (0, 1, 7, 60):
        xy = torch.rand(3, n, 2, generator=gen) * 100
        boxes = torch.cat([xy, xy + 5 + torch.rand(3, n, 2, generator=gen) * 40], dim=-1)
        scores = torch.rand(3, n, generator=gen).round(decimals=1)  # ties too
        valid = scores > 0.2
        order = torch.argsort(torch.where(valid, scores, -torch.inf), dim=1, descending=True,
                              stable=True)
        sorted_boxes = torch.gather(boxes, 1, order[..., None].expand(-1, -1, 4))
        keep = greedy_nms(sorted_boxes, torch.gather(valid, 1, order), 0.4)
        for b in range(3):
            expected = nms(boxes[b][valid[b]], scores[b][valid[b]], 0.4)
            kept = order[b][keep[b]]
            np.testing.assert_array_equal(kept.numpy(),
                                          torch.nonzero(valid[b])[:, 0][expected].numpy())
        if n:
            np.testing.assert_array_equal(pairwise_iou(boxes)[1].numpy(),
                                          box_iou(boxes[1], boxes[1]).numpy())


@pytest.mark.models
def test_generated_trunk_is_straight_line_torch_code(graph):
    code = graph.trunk.code
    assert code.count("torch.conv2d(") > 50
    assert "env[" not in code and "node[" not in code


@pytest.mark.models
@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the TorchScript-based exporter
def test_onnx_export_with_dynamic_batch_matches_onnxruntime(graph, data_dir, tmp_path):
    import onnxruntime as ort
    image = torch.from_numpy(graph_input(data_dir)).permute(2, 0, 1)[None].float()
    path = tmp_path / "centernet.onnx"
    torch.onnx.export(graph, (image,), str(path), input_names=["images"], output_names=["rows"],
                      dynamic_axes={"images": {0: "batch"}, "rows": {0: "batch"}},
                      opset_version=17, dynamo=False)
    batch = torch.cat([image, image.flip(-1), image.flip(-2)])
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {"images": batch.numpy()})[0]
    with torch.inference_mode():
        expected = graph(batch).numpy()
    assert got.shape == expected.shape == (3, 100, 6)
    strong = expected[..., 4] > 0.1  # top-k order is only stable where scores differ clearly
    assert strong.sum() >= 10
    np.testing.assert_allclose(got[strong], expected[strong], atol=1e-2)


@pytest.mark.models
@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.jit.trace
def test_jit_trace_runs_other_batch_sizes(graph, data_dir):
    image = torch.from_numpy(graph_input(data_dir)).permute(2, 0, 1)[None].float()
    with torch.inference_mode():
        traced = torch.jit.trace(graph, image, check_trace=False)
        batch = torch.cat([image, image.flip(-1)])
        np.testing.assert_allclose(traced(batch).numpy(), graph(batch).numpy(), atol=1e-4)
