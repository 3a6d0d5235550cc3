"""Allocator settings: accepted by glibc, and frame-sized buffers reused rather
than mapped afresh for every frame."""

import platform
import subprocess
import sys
import textwrap

import pytest

glibc = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's allocator settings")

CHILD = textwrap.dedent("""
    import resource
    import numpy as np
    from pipeline.memory import limit_heap_growth
    assert limit_heap_growth(), "glibc refused the settings"
    def faults():
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(3):  # warm up: the arena grows once
        np.ones((672, 1152, 3), np.float32)
    before = faults()
    for _ in range(20):  # a 768x432 frame's CenterFace input, made and dropped per frame
        np.ones((672, 1152, 3), np.float32)
    print(faults() - before)
""")


def _faults() -> int:
    out = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True,
                         check=True)
    return int(out.stdout.strip())


@glibc
def test_network_inputs_are_reused_from_the_heap_not_mapped_afresh_per_frame():
    pages = 672 * 1152 * 3 * 4 // 4096  # of one 9 MB input
    # a buffer over the mmap threshold, or freed at the top of a heap above the
    # trim threshold, comes back from the kernel zero-filled page by page
    # (about 700 faults per buffer with the earlier 128 KB threshold)
    assert _faults() < pages, "each input was mapped and zero-filled afresh"


def test_a_refused_setting_does_not_keep_the_others_from_applying(monkeypatch):
    """glibc's mallopt cannot be made to refuse a valid value, so a stand-in
    library refuses the first setting; the later ones must still be tried."""
    import pipeline.memory as memory

    calls = []

    def mallopt(param, value):
        calls.append(param)
        return 0 if param == memory.M_ARENA_MAX else 1

    class Libc:  # ctypes functions take an argtypes attribute; a plain function does too
        pass

    Libc.mallopt = staticmethod(mallopt)
    monkeypatch.setattr(memory, "_done", False)
    monkeypatch.setattr(memory.ctypes.util, "find_library", lambda _: "libc.so.6")
    monkeypatch.setattr(memory.ctypes, "CDLL", lambda _: Libc())
    assert memory.limit_heap_growth() is False
    assert calls == [memory.M_ARENA_MAX, memory.M_MMAP_THRESHOLD, memory.M_TRIM_THRESHOLD]
