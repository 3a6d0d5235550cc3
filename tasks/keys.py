"""Where a job's objects live in storage: one function per kind of object.

Object keys are deterministic (``jobs/<job>/segments/<i>.mkv``,
``jobs/<job>/out/<i>.mp4``, ``jobs/<job>/detections/<i>.json``, …): a task
that is delivered twice overwrites its own outputs. Apart from the steps
because the client (which uploads the source, the edits and the model files)
and the steps share this layout.
"""

from __future__ import annotations

#: what only the steps read, deleted once the job is done, failed or cancelled
#: (``segments/`` holds stream copies of the source's unblurred video)
INTERMEDIATE = ("segments/", "out/", "models/")


def drop_intermediates(storage, job: str) -> None:
    """Delete the job's :data:`INTERMEDIATE` objects from ``storage``."""
    for sub in INTERMEDIATE:
        storage.delete_prefix(job_prefix(job) + sub)


def job_prefix(job: str) -> str:
    return f"jobs/{job}/"


def source_key(job: str, ext: str) -> str:
    return f"jobs/{job}/source{ext}"


def segment_key(job: str, i: int) -> str:
    return f"jobs/{job}/segments/{i}.mkv"


def out_key(job: str, i: int) -> str:
    return f"jobs/{job}/out/{i}.mp4"


def detections_key(job: str, i: int) -> str:
    return f"jobs/{job}/detections/{i}.json"


def manifest_key(job: str) -> str:
    return f"jobs/{job}/manifest.json"


def output_key(job: str, ext: str) -> str:
    return f"jobs/{job}/output{ext}"


def edits_key(job: str) -> str:
    """The zones and, for a re-render, the detections of a job (``tasks/steps.py``)."""
    return f"jobs/{job}/edits.json"


def model_key(job: str, sha256: str, ext: str) -> str:
    return f"jobs/{job}/models/{sha256}{ext}"
