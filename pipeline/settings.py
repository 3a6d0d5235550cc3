"""Every knob of the pipeline, with its default, in one place.

The same names serve the command line (``--lp-thresh``), a YAML/JSON config
file (``lp_thresh: 0.1``) and the environment (``ANONYMIZE_LP_THRESH=0.1``).
Precedence: command line > environment > config file > defaults below.
A job's settings travel with the job (as a dict in its manifest), so every
worker processing one video uses exactly the same values.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

ENV_PREFIX = "ANONYMIZE_"

PLATE_MODES = ("two-stage", "one-stage", "both")
BLUR_MODES = ("blur", "pixelate", "solid")
SHAPES = ("box", "ellipse")


@dataclass
class Settings:
    """Anonymization settings; field names are the flag names with '_' for '-'."""

    # what to find
    faces: bool = True
    plates: bool = True
    plate_mode: str = "both"  # recall-first default, see README "Plate modes"
    face_model: str = "retinaface-mobilenet0.25"
    plate_model: str = "plate-yolov8n-pyplatex"
    vehicle_model: str = "vehicles-centernet-mobilenetv3"
    # thresholds (research names)
    vehicle_thresh: float = 0.2
    lp_thresh: float = 0.1
    face_thresh: float = 0.5
    nms_thresh: float = 0.5
    # detector input sizes
    face_size: int = 1280  # long side the frame is scaled to for RetinaFace
    plate_size: int = 960  # one-stage input size: 640 misses small plates (see README)
    crop_size: int = 320  # two-stage vehicle crop letterbox size
    crop_margin: float = 0.1  # vehicle box grown by this share before cropping
    # temporal filling
    fill_frames: int = 5
    # blurring
    mode: str = "blur"
    shape: str = "box"  # recall-first: an ellipse leaves the corners of a face box
    mask_scale: float = 1.3
    # encoding
    crf: int = 18
    preset: str = "medium"
    keep_metadata: bool = False
    # execution
    device: str = "auto"
    batch_size: int = 8
    half: bool = True
    segment_frames: int = 250  # target frames per segment / distributed batch

    def validate(self) -> Settings:
        def need(cond: bool, msg: str) -> None:
            if not cond:
                raise ValueError(msg)

        need(self.plate_mode in PLATE_MODES, f"plate_mode must be one of {', '.join(PLATE_MODES)}")
        need(self.mode in BLUR_MODES, f"mode must be one of {', '.join(BLUR_MODES)}")
        need(self.shape in SHAPES, f"shape must be one of {', '.join(SHAPES)}")
        for name in ("vehicle_thresh", "lp_thresh", "face_thresh", "nms_thresh"):
            need(0.0 <= getattr(self, name) <= 1.0, f"{name} must be between 0 and 1")
        need(self.mask_scale >= 1.0, "mask_scale must be >= 1.0")
        need(self.fill_frames >= 0, "fill_frames must be >= 0")
        need(self.batch_size >= 1, "batch_size must be >= 1")
        need(self.segment_frames >= 1, "segment_frames must be >= 1")
        need(0 <= self.crf <= 51, "crf must be between 0 and 51")
        return self

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Settings:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown setting(s): {', '.join(sorted(unknown))}")
        return cls(**data).validate()

    @classmethod
    def load(cls, config: str | Path | None = None, overrides: dict[str, Any] | None = None,
             environ: dict[str, str] | None = None) -> Settings:
        """Defaults < config file < environment < ``overrides`` (CLI flags that were given)."""
        values: dict[str, Any] = {}
        if config:
            values.update(_read_config(Path(config)))
        env = os.environ if environ is None else environ
        types = {f.name: f.type for f in fields(cls)}
        for name in types:
            raw = env.get(ENV_PREFIX + name.upper())
            if raw is not None:
                values[name] = _coerce(cls, name, raw)
        values.update({k: v for k, v in (overrides or {}).items() if v is not None})
        return cls.from_dict(values)


def _coerce(cls, name: str, raw: str) -> Any:
    default = getattr(cls(), name)
    if isinstance(default, bool):
        return raw.strip().lower() in ("1", "true", "yes", "on")
    if isinstance(default, int):
        return int(raw)
    if isinstance(default, float):
        return float(raw)
    return raw


def _read_config(path: Path) -> dict[str, Any]:
    if not path.exists():
        raise FileNotFoundError(f"config file not found: {path}")
    text = path.read_text()
    if path.suffix in (".yaml", ".yml"):
        import yaml

        data = yaml.safe_load(text) or {}
    else:
        data = json.loads(text)
    if not isinstance(data, dict):
        raise ValueError(f"config file {path} must hold a mapping")
    return {k.replace("-", "_"): v for k, v in data.items()}


@dataclass
class ServiceSettings:
    """Where the distributed path finds its servers. Read from the environment only;
    these names are the ones deploy/ (compose, Kubernetes) sets."""

    broker_url: str = "redis://127.0.0.1:6379/0"
    result_backend: str = ""  # defaults to broker_url
    storage_url: str = "file://./anonymize-store"  # or s3://bucket/prefix
    s3_endpoint_url: str = ""  # empty: AWS; else MinIO/SeaweedFS endpoint
    visibility_timeout: int = 3600  # seconds; must exceed the longest batch
    task_max_retries: int = 3
    worker_max_memory_mb: int = 0  # per pool child, 0 = unlimited
    extra: dict[str, str] = field(default_factory=dict)

    ENV = {
        "broker_url": "ANONYMIZE_BROKER_URL",
        "result_backend": "ANONYMIZE_RESULT_BACKEND",
        "storage_url": "ANONYMIZE_STORAGE_URL",
        "s3_endpoint_url": "ANONYMIZE_S3_ENDPOINT_URL",
        "visibility_timeout": "ANONYMIZE_VISIBILITY_TIMEOUT",
        "task_max_retries": "ANONYMIZE_TASK_MAX_RETRIES",
        "worker_max_memory_mb": "ANONYMIZE_WORKER_MAX_MEMORY_MB",
    }

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> ServiceSettings:
        env = os.environ if environ is None else environ
        out = cls()
        for name, var in cls.ENV.items():
            if var in env and env[var] != "":
                current = getattr(out, name)
                setattr(out, name, type(current)(env[var]))
        if not out.result_backend:
            out.result_backend = out.broker_url
        return out
