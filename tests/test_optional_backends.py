"""Optional backends: EgoBlur TorchScript, serengil retina-face, mmdetection.

Third-party packages are imported only inside the tests that need them
(``pytest.importorskip``); the parts that are ours (checkpoint reading,
the mmcv kernel stand-ins, missing-file errors, the registry records) are
tested without them.
"""

from __future__ import annotations

import os
import pickle
import sys
import types
from collections import OrderedDict

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from models.detections import FACE, PLATE
from models.fetch import WeightsError

# -- registry ---------------------------------------------------------------


def test_user_models_are_registered_as_files():
    from models.optional import register_user_models
    from models.registry import REGISTRY

    names = register_user_models()
    assert set(names) == {"retinaface-biubug6", "yolov8-ultralytics", "yolov3-darknet",
                          "yolov3-keras", "mmdet", "serengil-retinaface", "egoblur-face",
                          "egoblur-plate"}
    assert register_user_models() == names  # idempotent
    for name in names:
        spec = REGISTRY[name]
        assert spec.source.kind == "file"
        assert callable(spec.load_function("builder"))
        assert callable(spec.load_function("converter"))


# -- EgoBlur ------------------------------------------------------------------

class _FakeEgoBlur(torch.nn.Module):
    """Mimics the EgoBlur TorchScript interface: CHW float 0..255 (BGR) in,
    (boxes, labels, scores, image size) out. The score of the first two boxes
    is the mean of channel 0 / 255, so only BGR float input scores 1.0."""

    def forward(self, x: torch.Tensor):
        if x.dtype != torch.float32 or x.dim() != 3:
            raise RuntimeError("expected a CHW float32 tensor")
        s = x[0].mean() / 255.0
        boxes = torch.tensor([[10.0, 20.0, 30.0, 40.0], [11.0, 21.0, 31.0, 41.0],
                              [50.0, 50.0, 300.0, 70.0]], device=x.device)
        scores = torch.stack([s, s * 0.95, torch.tensor(0.2, device=x.device)])
        labels = torch.ones(3, dtype=torch.long, device=x.device)
        return boxes, labels, scores, [int(x.shape[1]), int(x.shape[2])]


@pytest.fixture(scope="module")
def egoblur_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("ego") / "ego_blur_face.jit"
    torch.jit.save(torch.jit.script(_FakeEgoBlur()), str(path))
    return path


def test_egoblur_torchscript_detects_with_nms_and_threshold(egoblur_file):
    from models.optional.egoblur_backend import build_face, build_plate

    frame = np.zeros((60, 100, 3), np.uint8)
    frame[..., 2] = 255  # blue in RGB = channel 0 in BGR
    det = build_face(egoblur_file, thresh=0.5)
    (d,) = det(frame)
    assert d.class_id.tolist() == [FACE]
    np.testing.assert_allclose(d.xyxy, [[10, 20, 30, 40]])
    assert d.confidence[0] == pytest.approx(1.0)
    (low,) = det(frame, thresh=0.1)  # the wide box is kept, clipped to the frame
    assert sorted(low.confidence.tolist()) == pytest.approx([0.2, 1.0])
    assert low.xyxy[:, 2].max() == 100
    rgb = build_plate(egoblur_file, thresh=0.5, channels="RGB")
    (p,) = rgb([frame])
    assert len(p) == 0  # channel 0 is red = 0 when fed as RGB
    assert build_plate(egoblur_file, thresh=0.1)(frame)[0].class_id.tolist() == [PLATE, PLATE]


def test_egoblur_bad_file_is_one_line_error(tmp_path):
    from models.optional.egoblur_backend import build_face

    (tmp_path / "x.jit").write_bytes(b"not a model")
    with pytest.raises(WeightsError, match="not a TorchScript model"):
        build_face(tmp_path / "x.jit")
    with pytest.raises(WeightsError, match="not found"):
        build_face(tmp_path / "missing.jit")


# -- serengil -------------------------------------------------------------------

def test_serengil_refuses_to_download(tmp_path, monkeypatch):
    from models.optional.serengil_backend import build, expected_weights_path

    monkeypatch.setenv("DEEPFACE_HOME", str(tmp_path))
    expected = tmp_path / ".deepface" / "weights" / "retinaface.pth"
    assert expected_weights_path() == expected
    with pytest.raises(WeightsError) as info:
        build()
    assert str(expected) in str(info.value) and "\n" not in str(info.value)


def test_serengil_runs_from_local_weights(tmp_path, monkeypatch):
    pytest.importorskip("retinaface")
    weights = os.path.join(os.environ.get("DEEPFACE_HOME") or os.path.expanduser("~"),
                           ".deepface", "weights", "retinaface.pth")
    if not os.path.isfile(weights):
        pytest.skip(f"no serengil weights at {weights}")
    from models.optional.serengil_backend import build

    det = build()
    (d,) = det(np.zeros((120, 160, 3), np.uint8))
    assert len(d) == 0  # a blank image has no face


# -- mmdet: checkpoint reading ---------------------------------------------------

def _runner_checkpoint(path, monkeypatch, evil=False):
    """A checkpoint shaped like mmengine's runner output, with a class from a
    package that is not installed (pickled under its mmengine module name)."""
    mod = types.ModuleType("mmengine.logging.history_buffer")

    class HistoryBuffer:
        def __init__(self):
            self._log_history = np.arange(5.0)

    HistoryBuffer.__module__ = mod.__name__
    HistoryBuffer.__qualname__ = "HistoryBuffer"
    mod.HistoryBuffer = HistoryBuffer
    state = OrderedDict([("backbone.conv1.weight", torch.randn(4, 3, 3, 3)),
                         ("roi_head.bbox_head.0.fc_cls.bias", torch.randn(3))])
    ckpt = {"meta": {"epoch": 12, "iter": 100, "mmengine_version": "0.10.7",
                     "dataset_meta": {"classes": ("car", "plate")}},
            "state_dict": state,
            "message_hub": {"log_scalars": {"train/loss": HistoryBuffer()}},
            "optimizer": {"state": {}, "param_groups": [{"lr": 0.02, "params": [0, 1]}]}}
    if evil:
        ckpt["meta"]["hook"] = _Evil()
    with monkeypatch.context() as m:  # the class must be importable while pickling only
        for name in ("mmengine", "mmengine.logging"):
            m.setitem(sys.modules, name, types.ModuleType(name))
        m.setitem(sys.modules, mod.__name__, mod)
        torch.save(ckpt, path)
    return state


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo should-not-run",))


def test_runner_checkpoint_converts_to_bare_state_dict(tmp_path, monkeypatch):
    from models.optional.mmdet_backend import convert, convert_mmdet_checkpoint

    src = tmp_path / "epoch_12.pth"
    state = _runner_checkpoint(src, monkeypatch)
    with pytest.raises(pickle.UnpicklingError):
        torch.load(src, weights_only=True)  # why the conversion exists
    out = convert_mmdet_checkpoint(src)
    assert out == tmp_path / "epoch_12.state_dict.pth"
    bare = torch.load(out, weights_only=True)
    assert bare["meta"]["classes"] == ["car", "plate"]
    assert bare["state_dict"].keys() == state.keys()
    for k in state:
        assert torch.equal(bare["state_dict"][k], state[k])
    again = convert({"checkpoint": out})  # a bare file reads back the same
    assert again["meta"]["classes"] == ["car", "plate"]


def test_runner_checkpoint_with_code_is_refused(tmp_path, monkeypatch):
    from models.optional.mmdet_backend import read_checkpoint

    src = tmp_path / "evil.pth"
    _runner_checkpoint(src, monkeypatch, evil=True)
    with pytest.raises(WeightsError, match="refusing to load global"):
        read_checkpoint(src)
    (tmp_path / "junk.pth").write_bytes(b"\x80\x02junk")
    with pytest.raises(WeightsError, match="legacy pickle"):
        read_checkpoint(tmp_path / "junk.pth")


# -- mmdet: kernel stand-ins --------------------------------------------------------

def test_roi_align_torch_is_exact_on_linear_maps():
    """Bilinear sampling reproduces a linear ramp, so each bin's average is the
    ramp at the bin centre (aligned: pixel centres at integer - 0.5 shift)."""
    from models.optional.mmcv_ops import roi_align_torch

    h, w = 20, 30
    ramp_x = torch.arange(w, dtype=torch.float32).expand(h, w)
    ramp_y = torch.arange(h, dtype=torch.float32)[:, None].expand(h, w)
    feat = torch.stack([ramp_x, ramp_y])[None].repeat(2, 1, 1, 1)
    rois = torch.tensor([[0, 4.0, 6.0, 40.0, 22.0], [1, 10.0, 2.0, 18.0, 30.0],
                         [1, 3.0, 3.0, 3.0, 3.0]])
    out = roi_align_torch(feat, rois, (2, 3), spatial_scale=0.5, sampling_ratio=0, aligned=True)
    assert out.shape == (3, 2, 2, 3)
    for r, (_, x1, y1, x2, y2) in enumerate(rois.tolist()[:2]):
        xs = x1 * 0.5 - 0.5 + (np.arange(3) + 0.5) * (x2 - x1) * 0.5 / 3
        ys = y1 * 0.5 - 0.5 + (np.arange(2) + 0.5) * (y2 - y1) * 0.5 / 2
        np.testing.assert_allclose(out[r, 0].numpy(), np.tile(xs, (2, 1)), atol=1e-5)
        np.testing.assert_allclose(out[r, 1].numpy(), np.tile(ys[:, None], (1, 3)), atol=1e-5)
    assert torch.count_nonzero(out[2]) == 0  # empty roi
    fixed = roi_align_torch(feat, rois[:2], (2, 3), 0.5, sampling_ratio=2, aligned=True)
    assert torch.allclose(fixed, out[:2], atol=1e-5)


def test_deform_conv_torch_matches_conv_and_shifts():
    from models.optional.mmcv_ops import deform_conv2d_torch

    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 9, 11, generator=g)
    weight = torch.randn(6, 2, 3, 3, generator=g)  # groups=2
    bias = torch.randn(6, generator=g)
    ref = F.conv2d(x, weight, bias, stride=1, padding=1, groups=2)
    offset = torch.zeros(2, 2 * 9, 9, 11)
    out = deform_conv2d_torch(x, offset, weight, bias, (1, 1), (1, 1), (1, 1))
    assert torch.allclose(out, ref, atol=1e-4)
    # dx = +1 everywhere reads the zero-padded input one column to the right
    offset[:, 1::2] = 1.0
    padded = F.pad(x, (1, 2, 1, 1))[..., 1:]
    out = deform_conv2d_torch(x, offset, weight, None, (1, 1), (1, 1), (1, 1))
    assert torch.allclose(out, F.conv2d(padded, weight, None, groups=2), atol=1e-4)
    # modulated: a mask of 0.5 halves the bias-free output; two offset groups read the same
    mask = torch.full((2, 2 * 9, 5, 6), 0.5)
    offset2 = torch.zeros(2, 2 * 2 * 9, 5, 6)
    half = deform_conv2d_torch(x, offset2, weight, None, (2, 2), (1, 1), (1, 1), mask=mask)
    assert torch.allclose(half, 0.5 * F.conv2d(x, weight, None, 2, 1, groups=2), atol=1e-4)


@pytest.mark.slow
def test_mmdet_backend_runs_a_cascade_rcnn(tmp_path):
    pytest.importorskip("mmdet")
    pytest.importorskip("mmengine")
    import importlib.resources

    from models.optional import mmcv_ops

    mmcv_ops.install()
    from mmdet.apis import init_detector

    from models.optional.mmdet_backend import build

    configs = importlib.resources.files("mmdet") / ".mim" / "configs"
    config = configs / "cascade_rcnn" / "cascade-rcnn_r50_fpn_1x_coco.py"
    if not config.is_file():
        pytest.skip("mmdet package has no bundled configs")
    model = init_detector(str(config), None, device="cpu")
    ckpt = tmp_path / "cascade.pth"
    torch.save({"state_dict": model.state_dict(), "meta": {}}, ckpt)
    det = build(ckpt, config=str(config), thresh=0.0)
    (d,) = det(np.random.default_rng(0).integers(0, 255, (96, 128, 3), dtype=np.uint8))
    assert set(d.class_id.tolist()) <= {2, 3, 4, 5}
