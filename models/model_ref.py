"""The words of a model setting: the tasks and the flags that name their models,
the resolved reference (:class:`ModelRef`) and the one-line :class:`ModelError`.

Separate from the code that resolves, sniffs and builds so that each of those,
and the commands and workers that only need a flag's name or a file's report
name, share these without importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from .detections import FACE, PLATE, VEHICLE_IDS
from .fetch import WeightsError, sha256_file

TASKS = ("faces", "plates", "vehicles")
#: the setting (and flag) that names each task's model
SETTING = {"faces": "face_model", "plates": "plate_model", "vehicles": "vehicle_model"}
FLAG = {t: "--" + s.replace("_", "-") for t, s in SETTING.items()}
NOUN = {"faces": "face", "plates": "plate", "vehicles": "vehicle"}
TASK_LABELS = {"faces": frozenset({FACE}), "plates": frozenset({PLATE}),
               "vehicles": frozenset(VEHICLE_IDS)}


class ModelError(WeightsError):
    """A model setting that cannot be used (unknown name, not fetched, unrecognised
    file, wrong task); the message is one line."""


@dataclass(frozen=True)
class ModelRef:
    """A resolved model setting: what to build, from which files, for which task."""

    task: str | None
    value: str  # the setting as given
    record: str  # registry record whose builder makes the detector
    format: str | None  # file format; None for a registry name
    path: Path  # the fetched checkpoint, or the user's file
    companions: dict[str, Path] = field(default_factory=dict)  # role -> file beside it
    labels: frozenset[int] | None = None  # what the model finds, where known
    parts: tuple[ModelRef, ...] = ()  # a union ``a+b``: the models it merges

    @property
    def is_file(self) -> bool:
        return self.format is not None

    @cached_property
    def sha256(self) -> str:
        return sha256_file(self.path)

    @property
    def display(self) -> str:
        """The name recorded in reports and metrics: the registry name, or the file's
        name, format and content hash (the same on every machine that loads it)."""
        if self.parts:
            return "+".join(p.display for p in self.parts)
        if not self.is_file:
            return self.record
        return file_display(self.path.name, self.format, self.sha256)


def file_display(name: str, fmt: str, sha256: str) -> str:
    """How a model file is named in reports: ``yolo.weights (darknet, sha256 1a2b…)``."""
    return f"{name} ({fmt}, sha256 {sha256[:12]})"


def companion_name(main_name: str, companion: str) -> str:
    """Local name of a companion file next to ``main_name`` (same stem, its own
    suffix): how a worker lays out files that travelled through storage."""
    return Path(main_name).stem + Path(companion).suffix
