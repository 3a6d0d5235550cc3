"""Keep the process's memory flat over long videos.

Frames are large (6 MB at 1080p) and come and go 25 times a second from
several threads. With glibc's defaults each thread gets its own heap arena
and freed frame buffers stay in them, so resident memory creeps up with the
length of the video (measured: 410 MB after 100 frames, 487 MB after 1000
frames of the same clip). Two allocator settings stop that: few arenas, and
a fixed threshold above which buffers are mapped and returned to the system
when freed (glibc otherwise moves the threshold with every free).

The threshold is 32 MB, glibc's largest, and up to 64 MB of free memory at
the top of a heap is kept rather than handed back at every free: frames and
network inputs (up to 9 MB per call at 768×432, 25 MB for a 1920-px tile)
are then reused from the two arenas instead of being mapped afresh and
zero-filled by the kernel for every call. With a 128 KB threshold a run of
the 768×432 clip took about 5,000 page faults per frame (1.9 M for 377
frames, faces only) and spent 6–7 % of its CPU time in the kernel; now
0.2 M, 2–11 % less CPU time, and a peak RSS 70–105 MB higher that stays
flat with length (1005 vs 1043 MB at 100 and 1000 frames). At 1080p the
trade is larger: 15 % less CPU time, 343 MB more peak RSS (2366 -> 2709 MB
faces only, fp32). malloc_trim still hands everything free back after each
segment (docs/benchmarks.md, "Page faults: frame buffers reused").
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc

M_MMAP_THRESHOLD = -3  # mallopt parameter numbers from glibc's malloc.h
M_ARENA_MAX = -8
M_TRIM_THRESHOLD = -1
MMAP_THRESHOLD = 32 * 1024 * 1024  # glibc's maximum (HEAP_MAX_SIZE / 2 on 64-bit)
ARENA_MAX = 2
#: free memory at the top of a heap kept for reuse rather than handed back at once
TRIM_THRESHOLD = 64 * 1024 * 1024

_done = False


def limit_heap_growth() -> bool:
    """Apply the allocator settings once per process (glibc only; elsewhere a
    no-op). Returns whether all of them were applied."""
    global _done
    if _done:
        return True
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    # every setting is tried, a refused one does not keep the others from applying
    results = [mallopt(param, value) for param, value in (
        (M_ARENA_MAX, ARENA_MAX), (M_MMAP_THRESHOLD, MMAP_THRESHOLD),
        (M_TRIM_THRESHOLD, TRIM_THRESHOLD))]
    ok = all(results)
    _done = ok
    return ok


def release_free_memory() -> None:
    """Between segments: collect what one segment's job left in reference
    cycles (its stage threads refer back to it, and through it to the closed
    encoder and decoder), then hand freed heap pages back to the system."""
    gc.collect()
    name = ctypes.util.find_library("c")
    if name:
        try:
            ctypes.CDLL(name).malloc_trim(0)
        except (OSError, AttributeError):
            pass
