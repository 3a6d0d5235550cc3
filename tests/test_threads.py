"""One thread budget: the cores this process may use, split between the stages."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.settings import Settings
from pipeline.threads import ThreadBudget, available_cores, cgroup_cpu_limit, resolve_threads

ROOT = Path(__file__).resolve().parent.parent


def _v2(tmp_path, text):
    tmp_path.mkdir(parents=True)
    (tmp_path / "cpu.max").write_text(text)
    return tmp_path


def _v1(tmp_path, quota, period):
    (tmp_path / "cpu").mkdir(parents=True)
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text(f"{quota}\n")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text(f"{period}\n")
    return tmp_path


def test_cgroup_quota_is_read_from_v2_and_v1_files(tmp_path):
    assert cgroup_cpu_limit(_v2(tmp_path / "a", "150000 100000\n")) == 1.5
    assert cgroup_cpu_limit(_v2(tmp_path / "b", "max 100000\n")) is None
    assert cgroup_cpu_limit(_v1(tmp_path / "c", 300000, 100000)) == 3.0
    assert cgroup_cpu_limit(_v1(tmp_path / "d", -1, 100000)) is None
    assert cgroup_cpu_limit(tmp_path / "missing") is None


def test_quota_caps_the_affinity_and_never_gives_zero(tmp_path):
    affinity = len(os.sched_getaffinity(0))
    assert available_cores(_v2(tmp_path / "a", "50000 100000")) == 1  # half a core -> 1
    assert available_cores(_v2(tmp_path / "b", "max 100000")) == affinity
    assert available_cores(_v2(tmp_path / "c", f"{(affinity + 8) * 100000} 100000")) == affinity


def test_affinity_is_what_a_process_may_use():
    """A process pinned to one core (as `taskset -c 0` does) counts one core."""
    code = ("import os; os.sched_setaffinity(0, {0}); "
            "from pipeline.threads import available_cores; print(available_cores())")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "1"


def test_setting_zero_means_the_available_cores():
    assert resolve_threads(0) == available_cores()
    assert resolve_threads(3) == 3


@pytest.mark.parametrize("total", [1, 2, 4, 16])
def test_budget_split_gives_detection_every_core(total):
    cpu = ThreadBudget.split(total, "cpu")
    # x264's own rule, 1.5 frame threads per core, from the budget, not the machine
    assert cpu.detect == total and cpu.encode == max(1, total * 3 // 2) and cpu.decode == 1
    gpu = ThreadBudget.split(total, "cuda:0")
    assert gpu.detect == 1 and gpu.encode == max(1, total - 1)


@pytest.mark.models
def test_detectors_get_the_threads_setting(monkeypatch):
    """--threads reaches every exported graph, not only torch's pool."""
    from pipeline.detect import DetectionStack

    monkeypatch.setenv("ANONYMIZE_RUNTIME", "onnxruntime")
    stack = DetectionStack.from_settings(Settings(threads=1, device="cpu"))
    for det in (stack.face_detector, stack.plate_detector):
        assert det.net.threads == 1, det.name
    assert stack.vehicle_detector.module(416).threads == 1


def test_detect_threads_limit_torch_and_opencv_pools_to_one_lane():
    """The frame resize runs in OpenCV's pool, which defaults to every core; each
    lane of the detection stage resizes its own frame, so a pool gets a lane's width."""
    import cv2
    import torch

    from pipeline.threads import apply_detect_threads

    before = torch.get_num_threads(), cv2.getNumThreads()
    try:
        for budget, width in ((1, 1), (2, 1), (4, 1), (8, 2)):
            apply_detect_threads(budget)
            assert (torch.get_num_threads(), cv2.getNumThreads()) == (width, width)
    finally:
        torch.set_num_threads(before[0])
        cv2.setNumThreads(before[1])
