"""One thread budget for the whole process, split between the frame stages.

Decoding, detection and blur+encoding overlap (each stage in its own
thread; PyAV, x264 and the inference runtimes release the GIL), so the
cores stay busy. Oversubscription is what makes throughput collapse on a
shared machine: torch's OpenMP pool, x264's frame threads and the decoder's
threads each default to "all cores", and spin-waiting threads that lose
their core to a neighbour stall everyone else. So the budget (``--threads``;
default: the cores this process may really use, read from its CPU affinity
and its cgroup CPU quota) is divided explicitly: detection gets the bulk,
x264 its own thread rule applied to the budget (its threads block, never
spin), decoding one thread.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")


def cgroup_cpu_limit(root: Path = CGROUP_ROOT) -> float | None:
    """CPUs allowed by the cgroup quota (v2 ``cpu.max`` or v1 ``cfs_quota_us``);
    None when unlimited or unknown."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        if quota != "max":
            return int(quota) / int(period)
        return None
    except (OSError, ValueError):
        pass
    try:
        quota = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((root / "cpu" / "cpu.cfs_period_us").read_text())
        return quota / period if quota > 0 and period > 0 else None
    except (OSError, ValueError):
        return None


def available_cores(root: Path = CGROUP_ROOT) -> int:
    """Cores this process may use: its CPU affinity, capped by the cgroup quota."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    limit = cgroup_cpu_limit(root)
    if limit is not None:
        cores = min(cores, max(1, math.floor(limit)))
    return max(1, cores)


@dataclass(frozen=True)
class ThreadBudget:
    """Threads per stage for a budget of ``total`` cores.

    ``detect`` runs the detectors (intra-op threads of the inference
    runtime); ``encode`` is x264's thread count; ``decode`` the decoder's.
    On a CPU-only run detection is most of the work (80-90 % of the CPU
    time per frame), so it gets every core. x264 gets its own default, 1.5
    frame threads per core (counted from this budget, so a cgroup quota
    holds): its threads block rather than spin, so they only take what
    detection leaves, and when detection is done they flush the frames x264
    still holds (its look-ahead, 40 frames at ``medium``) on every core
    instead of one. One x264 thread left a core idle for that flush, about
    1.5 s at the end of each segment (docs/benchmarks.md, "x264 threads").
    On a GPU the CPU does the video work, so x264 gets the cores."""

    total: int
    detect: int
    encode: int
    decode: int

    @classmethod
    def split(cls, total: int, device: str = "cpu") -> ThreadBudget:
        total = max(1, int(total))
        if device.startswith("cuda"):
            return cls(total, detect=1, encode=max(1, total - 1), decode=1)
        return cls(total, detect=total, encode=total * 3 // 2 or 1, decode=1)


def resolve_threads(threads: int) -> int:
    """The ``threads`` setting (0 = automatic) as a core count."""
    return threads if threads > 0 else available_cores()


def apply_detect_threads(n: int) -> None:
    """Size the process-wide pools the detection stage uses for a budget of ``n``
    threads: torch's intra-op pool and OpenCV's (frame resizing,
    models/resize.py) get the width of one lane, since the frames of a batch
    run on lanes of their own (pipeline/detect.py; one thread each up to four
    cores). The exported graphs get their thread count when they are built."""
    import cv2
    import torch

    from models.graph_runners import lane_split

    n = lane_split(n)[1]

    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    if cv2.getNumThreads() != n:
        cv2.setNumThreads(n)
