"""Per-process caches of a worker: models, storage clients, job state, manifests.

Models are loaded on the first task a pool process runs (or eagerly by
``workers`` in ``worker_process_init``), never in the parent before fork, so
CUDA is initialised only inside the process that uses it. The device is the
worker's (``anonymize worker --device cuda:1`` sets ``ANONYMIZE_WORKER_DEVICE``);
the job's own ``device`` setting is used only where the worker names none.
"""

from __future__ import annotations

import json
import os
import threading
from collections import OrderedDict
from typing import Any

DEVICE_ENV = "ANONYMIZE_WORKER_DEVICE"
_lock = threading.Lock()
_stacks: OrderedDict[str, Any] = OrderedDict()
_storages: dict[str, Any] = {}
_state = None
MAX_STACKS = 2  # a worker serving jobs with different model settings keeps two loaded


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
    global _state
    with _lock:
        _stacks.clear()
        _storages.clear()
        _state = None
