"""Fast CPU graphs (models/runtime.py, graph_export.py, graph_runners.py): same
numbers as torch eager, a cache that notices tampering, the backend a setting
asks for, the thread count it is given."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from models import centerface, graph_export, graph_runners, nanodet, retinaface, runtime, yolov8
from models.boxes import box_iou_np
from models.fetch import sha256_file
from models.registry import models_home
from pipeline.datasets import read_image

GRAPH_BACKENDS = ("onnxruntime", "openvino")
FACES = "retinaface-mobilenet0.25"
PLATES = "plate-yolov8n-pyplatex"

# Tolerances, fp32 graph vs fp32 eager; the differences measured on these images
# are 13-75× smaller (RetinaFace loc 4e-5, conf 3e-6; YOLOv8 box 4e-4 px of the
# input, score 1.3e-6; final boxes 6e-5 px, scores 9e-7). Raw outputs: RetinaFace
# loc offsets and softmax scores; YOLOv8 rows of (cx, cy, w, h) in input pixels
# (up to 960) and sigmoid scores.
RAW_ATOL = {"loc": 1e-3, "conf": 1e-4, "yolo_box": 5e-3, "yolo_score": 1e-4}
BOX_ATOL_PX = 1e-3  # final boxes in frame pixels
SCORE_ATOL = 1e-4


# -- real detectors, fast vs eager ---------------------------------------------------------

@pytest.fixture(scope="module")
def built(checkpoint):
    """``built(module, name, backend, **opts)`` -> detector, cached per arguments."""
    cache: dict[tuple, object] = {}

    def get(mod, name: str, backend: str, **opts):
        key = (mod.__name__, name, backend, tuple(sorted(opts.items())))
        if key not in cache:
            # fp32 graphs (half=False): these tests hold them to eager's numbers
            cache[key] = mod.build(checkpoint(name), device="cpu", runtime=backend, threads=2,
                                   half=False, **opts)
        return cache[key]

    return get


def _frames(folder: Path, n: int, shape: tuple[int, int]) -> np.ndarray:
    """The first ``n`` images of a real data set, resized to one (height, width)."""
    files = sorted((folder / "images").iterdir())[:n]
    return np.stack([cv2.resize(read_image(f), shape[::-1]) for f in files])


def _assert_same_detections(fast, eager) -> int:
    assert len(fast) == len(eager)
    total = 0
    for f, e in zip(fast, eager, strict=True):
        assert len(f) == len(e)
        np.testing.assert_allclose(f.xyxy, e.xyxy, atol=BOX_ATOL_PX, rtol=0)
        np.testing.assert_allclose(f.confidence, e.confidence, atol=SCORE_ATOL, rtol=0)
        np.testing.assert_array_equal(f.class_id, e.class_id)
        total += len(f)
    return total


@pytest.mark.models
@pytest.mark.slow
@pytest.mark.parametrize("backend", GRAPH_BACKENDS)
@pytest.mark.parametrize("face_size", [640, 1280])
@pytest.mark.parametrize("batch", [1, 3])
def test_retinaface_graph_matches_torch(data_dir, built, backend, face_size, batch):
    fast = built(retinaface, FACES, backend, face_size=face_size)
    eager = built(retinaface, FACES, "torch", face_size=face_size)
    assert not isinstance(fast.net, torch.nn.Module) and isinstance(eager.net, torch.nn.Module)
    frames = _frames(data_dir / "faces_kaggle_facemask", batch, (480, 640))
    with torch.inference_mode():
        x = eager.preprocess(torch.from_numpy(frames))
        loc_e, conf_e = eager.net(x)
        loc_f, conf_f = fast.net(x)
    assert loc_f.shape == loc_e.shape and conf_f.shape == conf_e.shape
    assert (loc_f - loc_e).abs().max() <= RAW_ATOL["loc"]
    assert (conf_f - conf_e).abs().max() <= RAW_ATOL["conf"]
    found = _assert_same_detections(fast(frames), eager(frames))
    assert found > 0  # the comparison covered real faces


@pytest.mark.models
@pytest.mark.slow
@pytest.mark.parametrize("backend", GRAPH_BACKENDS)
@pytest.mark.parametrize("size", [640, 960])
@pytest.mark.parametrize("batch", [1, 3])
def test_yolov8_graph_matches_torch(data_dir, built, backend, size, batch):
    fast = built(yolov8, PLATES, backend)
    eager = built(yolov8, PLATES, "torch")
    frames = _frames(data_dir / "plates_openalpr_us", batch, (720, 1280))
    x, _ = eager._letterbox(torch.from_numpy(frames), size, square=False)
    with torch.inference_mode():
        ref, got = eager.net(x), fast.net(x)
    assert got.shape == ref.shape == (batch, 5, x.shape[2] * x.shape[3] // 64 * 21 // 16)
    assert (got[:, :4] - ref[:, :4]).abs().max() <= RAW_ATOL["yolo_box"]
    assert (got[:, 4:] - ref[:, 4:]).abs().max() <= RAW_ATOL["yolo_score"]
    found = _assert_same_detections(fast.detect(frames, size=size),
                                     eager.detect(frames, size=size))
    assert found > 0


@pytest.mark.models
@pytest.mark.parametrize("backend", GRAPH_BACKENDS)
def test_yolov8_graph_matches_torch_on_crops(data_dir, built, backend):
    """Two-stage: crops of any shape letterboxed to one 320 batch."""
    fast = built(yolov8, PLATES, backend)
    eager = built(yolov8, PLATES, "torch")
    frames = _frames(data_dir / "plates_openalpr_us", 3, (480, 640))
    crops = [frames[0][100:400, 50:500], frames[1][:, 100:], frames[2][200:, :300]]
    found = _assert_same_detections(fast.detect_crops(crops), eager.detect_crops(crops))
    assert found > 0


# -- backend selection and threads ---------------------------------------------------------

def test_backend_follows_argument_then_environment(monkeypatch):
    monkeypatch.delenv(runtime.ENV, raising=False)
    assert runtime.select_backend(None, "cpu") == runtime.CPU_DEFAULT
    monkeypatch.setenv(runtime.ENV, "openvino")
    assert runtime.select_backend(None, "cpu") == "openvino"
    assert runtime.select_backend("torch", "cpu") == "torch"  # the argument wins
    monkeypatch.setenv(runtime.ENV, "tensorrt")
    with pytest.raises(ValueError, match="runtime must be one of"):
        runtime.select_backend(None, "cpu")  # unreadable: an error, never a default


def test_cuda_runs_the_torch_modules():
    assert runtime.select_backend(None, "cuda") == "torch"
    assert runtime.select_backend("auto", "cuda:1") == "torch"
    with pytest.raises(ValueError, match="CPU only"):
        runtime.select_backend("onnxruntime", "cuda")


@pytest.mark.models
@pytest.mark.parametrize("backend", ["torch", *GRAPH_BACKENDS])
def test_environment_setting_picks_the_detectors_backend(checkpoint, monkeypatch, backend):
    monkeypatch.setenv(runtime.ENV, backend)
    det = retinaface.build(checkpoint(FACES), device="cpu")
    if backend == "torch":
        assert isinstance(det.net, torch.nn.Module)
        assert det.memory_format == torch.channels_last
    else:
        assert det.net.backend == backend
        assert det.memory_format == torch.contiguous_format  # graphs take plain NCHW


@pytest.mark.models
@pytest.mark.parametrize("threads", [1, 2])
def test_thread_count_is_honoured(checkpoint, threads):
    """On 1 or 2 cores every thread is a lane of its own (graph_runners.lane_split)."""
    ort_det = yolov8.build(checkpoint(PLATES), runtime="onnxruntime", threads=threads)
    assert ort_det.net.settings() == {"threads": threads, "lanes": threads,
                                      "threads_per_lane": 1, "spinning": "0"}
    ov_det = yolov8.build(checkpoint(PLATES), runtime="openvino", threads=threads, half=False)
    ov = ov_det.net.settings()
    assert ov["INFERENCE_NUM_THREADS"] == threads
    assert ov["NUM_STREAMS"] == threads and ov["ENABLE_CPU_PINNING"] is False
    assert str(ov["INFERENCE_PRECISION_HINT"]) in ("f32", "<Type: 'float32'>")


def test_default_threads_are_the_cores_this_process_may_use():
    from pipeline.threads import available_cores

    assert graph_runners.cpu_budget() == available_cores()
    with pytest.raises(ValueError, match="threads"):
        graph_runners.load_graph("unused.onnx", "onnxruntime", threads=0)


# -- half precision on CPU ------------------------------------------------------------------

def test_auto_runs_bf16_on_openvino_only_with_half_on_an_amx_cpu(monkeypatch):
    monkeypatch.delenv(runtime.ENV, raising=False)
    monkeypatch.setattr(runtime, "cpu_has_bf16", lambda: True)
    assert runtime.select_backend(None, "cpu", half=True) == "openvino"
    assert runtime.cpu_precision("openvino", True) == "bf16"
    assert runtime.select_backend(None, "cpu", half=False) == runtime.CPU_DEFAULT
    assert runtime.cpu_precision("openvino", False) == "f32"
    assert runtime.cpu_precision("onnxruntime", True) == "f32"
    assert runtime.select_backend("onnxruntime", "cpu", half=True) == "onnxruntime"
    assert runtime.select_backend(None, "cuda", half=True) == "torch"
    monkeypatch.setattr(runtime, "cpu_has_bf16", lambda: False)
    assert runtime.select_backend(None, "cpu", half=True) == runtime.CPU_DEFAULT
    assert runtime.cpu_precision("openvino", True) == "f32"


def test_amx_is_read_from_the_cpu_flags(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16 avx_vnni\n")
    assert not graph_runners.amx_bf16(info)  # AVX512-BF16 alone: stays fp32
    info.write_text("processor\t: 0\nflags\t\t: fpu avx512f avx512_bf16 amx_bf16 amx_tile\n")
    assert graph_runners.amx_bf16(info)
    assert not graph_runners.amx_bf16(tmp_path / "absent")


def test_only_networks_whose_spec_allows_it_run_bf16(home, monkeypatch):
    """The precision comes from the spec, the half setting and the CPU; the
    exported graph is the same file either way (not re-exported)."""
    ckpt, exports = home
    monkeypatch.delenv(runtime.ENV, raising=False)
    monkeypatch.setattr(runtime, "cpu_has_bf16", lambda: True)
    loaded = []
    monkeypatch.setattr(runtime, "load_graph",
                        lambda path, backend, threads, precision: loaded.append(
                            (Path(path).name, backend, precision)))
    module = _Tiny().eval()
    allowed = dataclasses.replace(TINY, cpu_bf16=True)
    runtime.accelerate(module, TINY, ckpt, "cpu", threads=1, half=True)
    runtime.accelerate(module, allowed, ckpt, "cpu", threads=1, half=True)
    runtime.accelerate(module, allowed, ckpt, "cpu", threads=1, half=False)
    runtime.accelerate(module, allowed, ckpt, "cpu", backend="onnxruntime", threads=1, half=True)
    assert loaded == [("tiny.onnx", runtime.CPU_DEFAULT, "f32"), ("tiny.onnx", "openvino", "bf16"),
                      ("tiny.onnx", runtime.CPU_DEFAULT, "f32"), ("tiny.onnx", "onnxruntime", "f32")]
    assert len(exports) == 1


def test_only_networks_measured_in_bf16_may_run_it():
    """CenterFace (with its edge margin), plates and vehicles were measured in
    bf16 without coverage lost (docs/benchmarks.md); RetinaFace was not."""
    assert not retinaface.GRAPH.cpu_bf16
    assert centerface.GRAPH.cpu_bf16 and yolov8.GRAPH.cpu_bf16 and nanodet.GRAPH.cpu_bf16


def _matched(ref, got, iou: float) -> None:
    """Every box of ``ref`` scoring >= 0.3 has a box of ``got`` overlapping it by ``iou``."""
    for r, g in zip(ref, got, strict=True):
        strong = r.xyxy[r.confidence >= 0.3]
        if len(strong):
            assert len(g), "a bf16 frame lost every box"
            assert (box_iou_np(strong, g.xyxy).max(axis=1) >= iou).all()


@pytest.mark.models
@pytest.mark.skipif(not graph_runners.cpu_has_bf16(), reason="this CPU has no AMX bf16 units")
def test_bf16_graphs_find_what_fp32_finds_on_real_images(data_dir, checkpoint):
    """bf16 keeps 7 bits of mantissa: boxes move by a pixel, scores by ~0.01
    (measured: plates IoU >= 0.876, vehicles >= 0.973, faces >= 0.80 against fp32; small faces
    move more: 0.69 on dlib frames at 768x432)."""
    def pair(mod, name, **opts):
        return [mod.build(checkpoint(name), device="cpu", runtime="openvino", threads=2,
                          half=half, **opts) for half in (False, True)]

    faces32, faces16 = pair(centerface, "centerface", min_face=16)
    assert (faces32.net.precision, faces16.net.precision) == ("f32", "bf16")
    frames = _frames(data_dir / "faces_kaggle_facemask", 6, (432, 768))
    ref = faces32.detect(frames, 0.3)
    assert sum(map(len, ref)) > 0
    _matched(ref, faces16.detect(frames, 0.3), iou=0.8)

    plates32, plates16 = pair(yolov8, PLATES)
    assert (plates32.net.precision, plates16.net.precision) == ("f32", "bf16")
    frames = _frames(data_dir / "plates_openalpr_us", 6, (720, 1280))
    ref = plates32.detect(frames, 0.2, size=960)
    assert sum(map(len, ref)) > 0
    _matched(ref, plates16.detect(frames, 0.2, size=960), iou=0.8)
    cars32, cars16 = pair(nanodet, "vehicles-nanodet-g")
    frames = _frames(data_dir / "plates_vehicles_openimages_roboflow", 6, (720, 1280))
    ref = cars32.detect(frames, 0.2)
    assert sum(map(len, ref)) > 0
    _matched(ref, cars16.detect(frames, 0.2), iou=0.9)


# -- the graph cache ------------------------------------------------------------------------

class _Tiny(torch.nn.Module):
    """A small strided network: exports in seconds, still has dynamic shapes."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 4, 3, 2, 1)

    def forward(self, x):
        y = torch.relu(self.conv(x))
        return y, y.mean(dim=(2, 3))


TINY = runtime.GraphSpec("tiny", example=(2, 3, 32, 48), outputs=("features", "pooled"))


@pytest.fixture
def home(tmp_path, monkeypatch):
    """A private models home holding one 'fetched' checkpoint; exports counted."""
    monkeypatch.setenv("ANONYMIZE_MODELS_DIR", str(tmp_path))
    ckpt = tmp_path / "tiny-model" / "model.pt"
    ckpt.parent.mkdir()
    torch.save(_Tiny().state_dict(), ckpt)
    exports = []
    real = graph_export.export_onnx

    def counting(module, spec, path):
        exports.append(path)
        real(module, spec, path)

    monkeypatch.setattr(graph_export, "export_onnx", counting)
    return ckpt, exports


def test_graph_is_exported_once_beside_the_checkpoint_and_runs(home):
    ckpt, exports = home
    module = _Tiny().eval()
    graph = runtime.accelerate(module, TINY, ckpt, "cpu", backend="onnxruntime", threads=1)
    assert len(exports) == 1
    folder = ckpt.parent
    record = json.loads((folder / "tiny.json").read_text())
    assert record["checkpoint_sha256"] == sha256_file(ckpt)
    assert record["onnx_sha256"] == sha256_file(folder / "tiny.onnx")
    for shape in ((1, 3, 32, 48), (3, 3, 50, 70)):  # dynamic batch, height and width
        x = torch.randn(shape)
        with torch.no_grad():
            want = module(x)
        got = graph(x)
        assert isinstance(got, tuple) and len(got) == 2
        for g, w in zip(got, want, strict=True):
            torch.testing.assert_close(g, w, atol=1e-5, rtol=1e-5)
    runtime.accelerate(module, TINY, ckpt, "cpu", backend="openvino", threads=1)
    assert len(exports) == 1  # cached: both backends read the same graph


def test_tampered_graph_is_exported_again(home, caplog):
    ckpt, exports = home
    module = _Tiny().eval()
    graph_export.ensure_graph(module, TINY, ckpt)
    path = ckpt.parent / "tiny.onnx"
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF
    path.write_bytes(bytes(data))
    with caplog.at_level("WARNING", logger="models.graph_export"):
        graph_export.ensure_graph(module, TINY, ckpt)
    assert len(exports) == 2
    assert "differs from its recorded sha256" in caplog.text and "exporting" in caplog.text
    assert sha256_file(path) == json.loads((ckpt.parent / "tiny.json").read_text())[
        "onnx_sha256"]


def test_changed_checkpoint_or_weights_export_again(home):
    ckpt, exports = home
    module = _Tiny().eval()
    graph_export.ensure_graph(module, TINY, ckpt)
    torch.save({"other": torch.zeros(1)}, ckpt)  # a new checkpoint file
    graph_export.ensure_graph(module, TINY, ckpt)
    assert len(exports) == 2
    with torch.no_grad():
        module.conv.bias.add_(1.0)  # same file, different module (e.g. a conversion change)
    graph_export.ensure_graph(module, TINY, ckpt)
    assert len(exports) == 3
    graph_export.ensure_graph(module, TINY, ckpt)
    assert len(exports) == 3


def test_edited_record_exports_again(home):
    ckpt, exports = home
    module = _Tiny().eval()
    graph_export.ensure_graph(module, TINY, ckpt)
    meta = ckpt.parent / "tiny.json"
    record = json.loads(meta.read_text())
    meta.write_text(json.dumps(record | {"checkpoint_sha256": "0" * 64}))
    graph_export.ensure_graph(module, TINY, ckpt)
    assert len(exports) == 2


def test_user_supplied_weights_get_a_graph_folder_by_hash(home, tmp_path_factory):
    ckpt, _ = home
    elsewhere = tmp_path_factory.mktemp("user") / "weights.pt"
    elsewhere.write_bytes(ckpt.read_bytes())
    path = graph_export.ensure_graph(_Tiny().eval(), TINY, elsewhere)
    assert path.parent == models_home().resolve() / "graphs" / sha256_file(
        elsewhere)[:16]


def test_export_only_prepares_the_graph_and_keeps_the_module(home):
    ckpt, exports = home
    module = _Tiny().eval()
    with runtime.export_only():
        out = runtime.accelerate(module, TINY, ckpt, "cpu", backend="torch")
    assert out is module and len(exports) == 1 and (ckpt.parent / "tiny.onnx").exists()


def test_a_read_only_models_folder_gets_a_graph_for_this_process(home, monkeypatch, caplog):
    """A shared read-only models folder whose graph is missing or stale (a volume
    holding only the checkpoints, a project upgrade that changed a network): the
    run ended in an OSError traceback opening the export's lock file."""
    import builtins
    import errno

    ckpt, exports = home

    def read_only_open(file, *args, **kwargs):
        if Path(file).parent == ckpt.parent:
            raise OSError(errno.EROFS, "Read-only file system", str(file))
        return builtins.open(file, *args, **kwargs)

    monkeypatch.setattr(graph_export, "open", read_only_open, raising=False)
    module = _Tiny().eval()
    with caplog.at_level("WARNING", logger="models.graph_export"):
        graph = runtime.accelerate(module, TINY, ckpt, "cpu", backend="onnxruntime", threads=1)
    assert len(exports) == 1 and not exports[0].is_relative_to(ckpt.parent)
    assert [r.getMessage() for r in caplog.records] == [
        f"{ckpt.parent} cannot be written: exporting the tiny graph (no exported graph) for "
        "this process only; `anonymize models fetch --force` where it can be writes it once"]
    x = torch.randn(1, 3, 32, 48)
    with torch.no_grad():
        torch.testing.assert_close(graph(x)[1], module(x)[1], atol=1e-5, rtol=1e-5)
    graph_export.ensure_graph(module, TINY, ckpt)
    assert len(exports) == 1  # once per process
    assert not (ckpt.parent / "tiny.onnx").exists()


@pytest.mark.models
def test_fetch_exports_the_graph_after_conversion(checkpoint, tmp_path, monkeypatch):
    """models/fetch.py builds the converted model once in export-only mode."""
    import shutil

    from models.fetch import export_graphs
    from models.registry import get

    source = checkpoint(FACES)
    monkeypatch.setenv("ANONYMIZE_MODELS_DIR", str(tmp_path))
    ckpt = tmp_path / FACES / "model.pt"
    ckpt.parent.mkdir()
    shutil.copy(source, ckpt)
    exported = []

    def fake_export(module, spec, path):  # the real export is covered above
        exported.append((type(module).__name__, spec.name))
        path.write_bytes(b"graph")

    monkeypatch.setattr(graph_export, "export_onnx", fake_export)
    export_graphs(get(FACES), ckpt)
    assert exported == [("_Boxes", "retinaface")]
    record = json.loads((ckpt.parent / "retinaface.json").read_text())
    assert record["checkpoint_sha256"] == sha256_file(ckpt)


def test_large_batches_run_in_chunks_and_join_in_order(monkeypatch):
    """A CPU graph never sees more than MAX_PIXELS_PER_CALL input pixels at once
    (its arena keeps the peak), and the caller still gets one batch back."""
    monkeypatch.setattr(graph_runners, "MAX_PIXELS_PER_CALL", 2 * 8 * 8)
    calls = []

    def run(arr):
        calls.append(len(arr))
        return [arr.sum(axis=(1, 2, 3)), arr[:, :1]]

    x = torch.arange(5 * 3 * 8 * 8, dtype=torch.float32).reshape(5, 3, 8, 8)
    total, first = graph_runners.run_in_chunks(run, x)
    assert calls == [2, 2, 1]
    assert torch.equal(total, x.sum(dim=(1, 2, 3))) and torch.equal(first, x[:, :1])
    calls.clear()
    big = torch.zeros(1, 3, 16, 16)  # larger than the budget: still one image per call
    graph_runners.run_in_chunks(run, big)
    assert calls == [1]


# -- lanes --------------------------------------------------------------------------------

def test_lane_split_keeps_one_thread_per_lane_up_to_four_lanes():
    assert [graph_runners.lane_split(t) for t in (1, 2, 3, 4, 5, 6, 8, 16)] == [
        (1, 1), (2, 1), (3, 1), (4, 1), (2, 2), (3, 2), (4, 2), (4, 4)]


class _Recorder:
    """Runners for :class:`graph_runners.Lanes` that note who ran what."""

    def __init__(self):
        self.made, self.calls = 0, []
        self.lock = threading.Lock()

    def make(self):
        with self.lock:
            self.made += 1
            ident = self.made
        busy = threading.Lock()

        def run(arr):
            assert busy.acquire(blocking=False), "a runner was given two slices at once"
            try:
                with self.lock:
                    self.calls.append((ident, len(arr)))
                return [arr.sum(axis=(1, 2, 3)), arr[:, :1]]
            finally:
                busy.release()

        return run


def test_batches_are_spread_over_lanes_and_join_in_order():
    rec = _Recorder()
    lanes = graph_runners.Lanes(rec.make, 2)
    single: list = []
    x = torch.arange(5 * 3 * 4 * 4, dtype=torch.float32).reshape(5, 3, 4, 4)
    total, first = graph_runners.run_in_chunks(lambda a: single.append(a) or [a], x, lanes)
    assert torch.equal(total, x.sum(dim=(1, 2, 3))) and torch.equal(first, x[:, :1])
    assert sorted(n for _, n in rec.calls) == [2, 3] and not single  # ceil(5 / 2) per slice
    assert rec.made == 2

def test_a_lone_slice_runs_on_a_lane_whatever_its_size():
    """No second, lock-step runner is ever made: it cost a compiled graph and its
    memory for the lone last frame of a segment."""
    on_lane = []

    class Graph(graph_runners._LanedGraph):
        def __init__(self):
            self._setup_lanes(2)

        def _lane_runner(self):
            return lambda arr: on_lane.append(arr.shape) or [arr.sum(axis=(1, 2, 3))]

    graph = Graph()
    for shape in ((1, 3, 4, 4), (1, 3, 1024, 1024)):
        x = torch.ones(shape)
        assert torch.equal(graph(x), x.sum(dim=(1, 2, 3)))
    assert on_lane == [(1, 3, 4, 4), (1, 3, 1024, 1024)]


def test_lanes_run_at_the_same_time_after_first_runs_one_at_a_time():
    """First runs never overlap (bindings initialise statics there, see
    graph_runners._first_run_alone); later runs of two lanes meet at a barrier
    that only opens when both run concurrently."""
    barrier = threading.Barrier(2, timeout=10)
    state = {"first": 0, "most": 0}
    lock = threading.Lock()

    def make():
        calls = []

        def run(arr):
            calls.append(1)
            if len(calls) == 1:
                with lock:
                    state["first"] += 1
                    state["most"] = max(state["most"], state["first"])
                time.sleep(0.05)
                with lock:
                    state["first"] -= 1
            else:
                barrier.wait()
            return [arr]
        return run

    lanes = graph_runners.Lanes(make, 2)
    chunks = [np.zeros((1, 3, 2, 2), np.float32), np.ones((1, 3, 2, 2), np.float32)]
    for _ in range(2):
        lanes.map(chunks)  # every runner's first run, whichever lane takes it
    assert state["most"] == 1
    out = lanes.map(chunks)
    assert [float(o[0].max()) for o in out] == [0.0, 1.0]


def test_lanes_start_again_after_a_fork(monkeypatch):
    """A prefork worker child inherits no threads: the lanes notice the new pid."""
    rec = _Recorder()
    lanes = graph_runners.Lanes(rec.make, 2)
    chunk = [np.zeros((1, 3, 2, 2), np.float32)] * 3
    lanes.map(chunk)
    assert rec.made == 2
    monkeypatch.setattr(graph_runners.os, "getpid", lambda: -1)
    lanes.map(chunk)
    assert rec.made == 4


@pytest.mark.models
@pytest.mark.parametrize("backend", GRAPH_BACKENDS)
@pytest.mark.parametrize("threads", [2, 5])  # 2 lanes of 1 thread, 2 lanes of 2
def test_lanes_give_the_lock_step_numbers(checkpoint, backend, threads):
    """Same graph, 2 lanes vs one lock-step runner: the same outputs (a slice's
    numbers do not depend on which runner computed them)."""
    path = yolov8.build(checkpoint(PLATES), runtime=backend, threads=1, half=False).net.path
    laned = graph_runners.load_graph(path, backend, threads=threads)
    lockstep = graph_runners.load_graph(path, backend, threads=1)
    assert laned.lanes is not None and lockstep.lanes is None
    x = torch.rand(5, 3, 320, 320) * 255
    np.testing.assert_allclose(laned(x).numpy(), lockstep(x).numpy(), atol=1e-3, rtol=1e-4)


def test_openvino_graphs_compile_through_a_cache_beside_them(home, monkeypatch):
    """The second process start loads the compiled blob; a cache that cannot be
    written (read-only models folder) only costs the compile."""
    ckpt, _ = home
    path = graph_export.ensure_graph(_Tiny().eval(), TINY, ckpt)
    cache = graph_runners.openvino_cache_dir(path)
    assert not cache.exists()
    x = torch.rand(2, 3, 32, 48)
    first = graph_runners.OpenVINOGraph(path, 1)(x)
    blobs = {p.name: p.stat().st_mtime_ns for p in cache.iterdir()}
    assert blobs  # the compiled graph was kept
    again = graph_runners.OpenVINOGraph(path, 1)(x)
    # and loaded: no blob added or written again
    assert {p.name: p.stat().st_mtime_ns for p in cache.iterdir()} == blobs
    monkeypatch.setattr(graph_runners, "openvino_cache_dir",
                        lambda graph: Path("/proc/no-such-folder/cache"))
    fresh = graph_runners.OpenVINOGraph(path, 1)(x)
    for a, b, c in zip(first, again, fresh, strict=True):
        torch.testing.assert_close(a, b)
        torch.testing.assert_close(a, c)


def test_openvino_sends_no_telemetry_and_writes_nothing_home(tmp_path):
    """Importing OpenVINO through the runners: no usage event, no ~/intel client id."""
    code = ("import sys; from models import graph_runners; graph_runners._ov_core(); "
            "import openvino.tools.ovc.telemetry_utils as t; "
            "print(sys.modules.get('openvino_telemetry'), t.tm.__name__)")
    env = {**os.environ, "HOME": str(tmp_path), "CI": ""}
    out = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parent.parent, env=env,
                         capture_output=True, text=True, timeout=120, check=True).stdout.split()
    assert out == ["None", "openvino.tools.ovc.telemetry_stub"]
    assert not (tmp_path / "intel").exists()


def test_a_graph_called_on_a_lane_thread_runs_there_on_a_runner_of_its_own():
    """Frames on lanes (pipeline/detect.py): a lane's graph calls run on that lane's
    thread, never on the graph's own lanes or its lock-step runner, and two lanes
    never share a runner at once (the recorder asserts it)."""
    rec = _Recorder()
    lanes = graph_runners.Lanes(rec.make, 2)
    threads: list = []

    def run_single(arr):
        raise AssertionError("the lock-step runner ran")

    def on_lane(k):
        x = torch.full((3, 3, 4, 4), float(k))
        total, _ = graph_runners.run_in_chunks(run_single, x, lanes)
        threads.append(threading.current_thread().name)
        return total

    pool = graph_runners.LanePool(2, "test-lane")
    out = pool.map(on_lane, range(6))
    assert [float(t[0]) for t in out] == [k * 48.0 for k in range(6)]
    assert {n for _, n in rec.calls} == {3}  # the whole batch at once: not split again
    assert {name.rsplit("_", 1)[0] for name in threads} == {"test-lane"}
    assert not lanes._pool.started  # the graph's own lane threads never started
    assert not graph_runners.on_lane_thread()
