"""Allocator settings: accepted by glibc, and frame-sized buffers reused rather
than mapped afresh for every frame."""

import subprocess
import sys
import textwrap

import pytest

glibc = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc settings")

CHILD = textwrap.dedent("""
    import resource, sys
    import numpy as np
    from pipeline.memory import limit_heap_growth
    if sys.argv[1] == "on":
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


def _faults(setting: str) -> int:
    out = subprocess.run([sys.executable, "-c", CHILD, setting], capture_output=True,
                         text=True, check=True)
    return int(out.stdout.strip())


@glibc
def test_network_inputs_are_reused_from_the_heap_not_mapped_afresh_per_frame():
    pages = 672 * 1152 * 3 * 4 // 4096  # of one 9 MB input
    # with glibc's own threshold the first buffers are mapped and faulted in
    # page by page; the settings must keep such buffers on the heap
    assert _faults("on") < pages, "each input was mapped and zero-filled afresh"
