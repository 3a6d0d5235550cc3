"""Per-process caches of a worker: models, storage clients, job state, manifests.

Models are loaded on the first task a pool process runs (or eagerly by
``workers`` in ``worker_process_init``), never in the parent before fork, so
CUDA is initialised only inside the process that uses it. The device is the
worker's (``anonymize worker --device cuda:1`` sets ``ANONYMIZE_WORKER_DEVICE``);
the job's own ``device`` setting is used only where the worker names none.

Model files that travelled with a job (``tasks/stored_models.py``, ``stored:``
model settings) are downloaded once per process into a temporary directory, laid
out as the loader expects (companions beside the file, same stem), and
checked against the sha256 the job names before anything loads them: a
mismatch fails the job with one line rather than running other weights.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import tempfile
import threading
from collections import OrderedDict
from pathlib import Path, PurePosixPath
from typing import Any

DEVICE_ENV = "ANONYMIZE_WORKER_DEVICE"
_lock = threading.Lock()
_stacks: OrderedDict[str, Any] = OrderedDict()
_storages: dict[str, Any] = {}
_state = None
MAX_STACKS = 2  # a worker serving jobs with different model settings keeps two loaded
_model_lock = threading.Lock()
_model_dir: Path | None = None
_model_files: dict[tuple, Path] = {}  # (sha256, name, companions) -> verified local file


def worker_device(job_device: str = "auto") -> str:
    return os.environ.get(DEVICE_ENV) or job_device


def detection_stack(settings) -> Any:
    """The models for ``settings`` (a ``pipeline.settings.Settings``), loaded once per process."""
    from pipeline.detect import DetectionStack

    device = worker_device(settings.device)
    key = json.dumps([device, settings.to_dict()], sort_keys=True)
    with _lock:
        if key in _stacks:
            _stacks.move_to_end(key)
            return _stacks[key]
        stack = DetectionStack.from_settings(settings, device=device)
        _stacks[key] = stack
        while len(_stacks) > MAX_STACKS:
            _stacks.popitem(last=False)
        return stack


def local_models(settings, store) -> Any:
    """``settings`` with each model stored with the job (``stored:`` setting) replaced by
    the path of a verified local copy; other settings unchanged."""
    from models.model_ref import SETTING
    from pipeline.settings import Settings

    from .stored_models import STORED

    changes = {field: str(_stored_model(store, getattr(settings, field)))
               for field in SETTING.values() if getattr(settings, field).startswith(STORED)}
    return Settings.from_dict({**settings.to_dict(), **changes}) if changes else settings


def _stored_model(store, value: str) -> Path:
    from models.model_ref import companion_name

    from .stored_models import parse_stored_model

    key, sha256, name, companions = parse_stored_model(value)
    name = PurePosixPath(name).name or "model" + PurePosixPath(key).suffix
    cache_key = (sha256, name, tuple(sorted((r, PurePosixPath(k).stem)
                                            for r, k in companions.items())))
    with _model_lock:
        if cache_key in _model_files and _model_files[cache_key].is_file():
            return _model_files[cache_key]
        folder = _models_dir() / sha256
        main = _download_verified(store, key, folder / name, sha256, name)
        for ckey in companions.values():
            cname = companion_name(name, ckey)
            _download_verified(store, ckey, folder / cname, PurePosixPath(ckey).stem, cname)
        _model_files[cache_key] = main
        return main


def _download_verified(store, key: str, dest: Path, sha256: str, shown: str) -> Path:
    from models.fetch import WeightsError, sha256_file

    try:
        store.get_file(key, dest)
    except FileNotFoundError:
        raise WeightsError(f"model file {shown} is missing from the job's storage ({key})"
                           ) from None
    actual = sha256_file(dest)
    if actual != sha256:
        dest.unlink(missing_ok=True)
        raise WeightsError(f"model file {shown}: the stored copy has sha256 {actual[:16]}…, "
                           f"the job names {sha256[:16]}…; refusing to load it")
    return dest


def _models_dir() -> Path:
    """This process's directory of downloaded model files (removed at exit)."""
    global _model_dir
    if _model_dir is None or not _model_dir.is_dir():
        _model_dir = Path(tempfile.mkdtemp(prefix=f"anonymize-models-{os.getpid()}-"))
        atexit.register(_remove_dir, _model_dir, os.getpid())
    return _model_dir


def _remove_dir(path: Path, owner: int) -> None:
    if os.getpid() == owner:  # not from a forked child that inherited the handler
        shutil.rmtree(path, ignore_errors=True)


def storage(url: str):
    from .app import service
    from .storage import open_storage

    with _lock:
        if url not in _storages:
            _storages[url] = open_storage(url, endpoint_url=service().s3_endpoint_url or None)
        return _storages[url]


def job_state():
    """JobState on the result backend's Redis (the broker's if the backend is not Redis),
    patient enough to ride out a restart of that Redis."""
    global _state
    from .app import service
    from .state import JobState

    with _lock:
        if _state is None:
            _state = JobState(service().state_url, patient=True)
        return _state


def reset() -> None:
    """Forget every cached object (after fork, or in tests)."""
    global _state, _model_dir
    with _lock:
        _stacks.clear()
        _storages.clear()
        _state = None
    with _model_lock:
        _model_files.clear()
        _model_dir = None  # a forked child downloads into a directory of its own
