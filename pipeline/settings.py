"""Every knob of the pipeline, with its default, type and help, in one place.

Each setting has exactly one name, used three ways: the flag ``--lp-thresh``,
the config-file key ``lp_thresh`` (YAML or JSON; ``lp-thresh`` is accepted
too) and the environment variable ``ANONYMIZE_LP_THRESH``. The command-line
flags are generated from the table below, so the three can never drift apart.
Precedence: command line > environment > config file > defaults.

A privacy tool must never misread a setting silently, so reading is strict:
a value that cannot be parsed (``ANONYMIZE_FACES=maybe``), a value out of
range, an unknown config key or an unknown ``ANONYMIZE_*`` variable is an
error naming the source, never a default. A job's settings travel with the
job (as a dict in its manifest), so every worker processing one video uses
exactly the same values.
"""

from __future__ import annotations

import difflib
import json
import os
import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from models.errors import one_line
from models.registry import FILE_FORMATS

ENV_PREFIX = "ANONYMIZE_"

PLATE_MODES = ("both", "one-stage", "two-stage", "off")
BLUR_MODES = ("blur", "pixelate", "solid")
SHAPES = ("box", "ellipse")
MODEL_FORMATS = ("auto", *FILE_FORMATS)
#: what --device takes (torch would take more, such as "CPU" or "mps", and fail
#: with a traceback once the models load, after the video was probed and cut)
DEVICE_FORM = (r"auto|cpu|cuda(:[0-9]+)?", "cpu, cuda, cuda:N or auto")
BOOL_WORDS = {"true": True, "1": True, "yes": True, "on": True,
              "false": False, "0": False, "no": False, "off": False}

#: ``ANONYMIZE_*`` variables that are not anonymization settings, and who reads them.
#: The distributed path's are read by ``tasks/`` (``tasks.service.ServiceSettings``,
#: ``tasks.config``); they are named here only so that the strict check below accepts
#: them (a test keeps the two lists equal).
OTHER_ENV = {
    "ANONYMIZE_CONFIG": "settings file read before the environment (same as --config)",
    "ANONYMIZE_MODELS_DIR": "cache of fetched and converted model weights",
    "ANONYMIZE_CLUSTER_ENV": "file of service variables written by `make up`",
    "ANONYMIZE_WORKER_DEVICE": "device of a worker's pool processes (`worker --device`)",
    "ANONYMIZE_RUNTIME": "inference backend on CPU: auto, torch, onnxruntime or openvino",
    "ANONYMIZE_BROKER_URL": "distributed path: the task queue's server",
    "ANONYMIZE_RESULT_BACKEND": "distributed path: where task results and job state live",
    "ANONYMIZE_STORAGE_URL": "distributed path: object storage of job files",
    "ANONYMIZE_S3_ENDPOINT_URL": "distributed path: endpoint of a non-AWS object store",
    "ANONYMIZE_VISIBILITY_TIMEOUT": "distributed path: seconds before a task is handed out again",
    "ANONYMIZE_TASK_MAX_RETRIES": "distributed path: retries of a failing task",
    "ANONYMIZE_WORKER_MAX_MEMORY_MB": "distributed path: pool process memory limit",
    "ANONYMIZE_UNACKED_RESTORE_INTERVAL": "kombu Redis transport: restore sweep interval",
    "ANONYMIZE_UNACKED_RESTORE_THROTTLE": "kombu Redis transport: restore sweep throttle",
    "ANONYMIZE_UNACKED_MUTEX_EXPIRE": "kombu Redis transport: restore mutex expiry",
}


class SettingsError(ValueError):
    """A setting that cannot be used as given; the message is one line naming its source."""


def _opt(default: Any, help: str, *, choices: tuple[str, ...] | None = None,
         lo: float | None = None, hi: float | None = None, video_only: bool = False,
         group: str = "detection", flag: str | None = None,
         form: tuple[str, str] | None = None) -> Any:
    """A settings field with its help text and limits (read by the CLI and validate());
    ``form`` is (regular expression a text value must match in full, what it says)."""
    meta = {"help": help, "choices": choices, "lo": lo, "hi": hi, "video_only": video_only,
            "group": group, "flag": flag, "form": form}
    return field(default=default, metadata=meta)


@dataclass
class Settings:
    """Anonymization settings; field names are the flag names with '_' for '-'."""

    # what to find
    faces: bool = _opt(True, "detect and anonymize faces")
    plates: str = _opt("both", "licence plates: both (the union of one-stage and two-stage, "
                       "recall first), one-stage, two-stage or off", choices=PLATE_MODES)
    face_model: str = _opt("centerface", "face model: a registry name "
                           "(`anonymize models list`), registry names joined by + (the "
                           "union of what they find) or a weights file")
    plate_model: str = _opt("plate-yolov8n-pyplatex", "plate model: a registry name, names "
                            "joined by + (their union) or a weights file")
    vehicle_model: str = _opt("vehicles-nanodet-g", "vehicle model of the two-stage plate "
                              "search: a registry name or a weights file")
    face_model_format: str = _opt("auto", "format of a --face-model file: auto "
                                  "(recognised from its content) or one of "
                                  + ", ".join(FILE_FORMATS), choices=MODEL_FORMATS)
    plate_model_format: str = _opt("auto", "format of a --plate-model file (as "
                                   "--face-model-format)", choices=MODEL_FORMATS)
    vehicle_model_format: str = _opt("auto", "format of a --vehicle-model file (as "
                                     "--face-model-format)", choices=MODEL_FORMATS)
    # thresholds (research names)
    vehicle_thresh: float = _opt(0.2, "vehicle score threshold for two-stage, 0-1 "
                                 "(0.3 loses a fifth of the plates)", lo=0, hi=1)
    lp_thresh: float = _opt(0.05, "plate score threshold, 0-1 (low: recall first; 0.1 "
                            "covers 0.900 instead of 0.922 of the Open Images plates)",
                            lo=0, hi=1)
    face_thresh: float = _opt(0.15, "face score threshold, 0-1 (low: recall first; 0.2 "
                              "misses 1 face in 100 more on the face-mask set)", lo=0,
                              hi=1)
    nms_thresh: float = _opt(0.5, "IoU above which plate boxes of two sources (input "
                             "sizes, vehicle crops) count as one plate and are joined "
                             "into their enclosing box, 0-1", lo=0, hi=1)
    # detector input sizes
    min_face: int = _opt(16, "smallest face to find, in frame pixels: each frame is scaled "
                         "so that such a face reaches the size the face model needs (24 px "
                         "for CenterFace: x1.5 at 16); frames too large for one pass are "
                         "tiled", lo=4)
    plate_size: int = _opt(960, "one-stage plate detector input size, px (640 misses "
                           "small plates)", lo=32, hi=4096)
    plate_second_size: int = _opt(640, "one-stage plate detector also runs at this long "
                                  "side, px, and the plates of both sizes are merged: the "
                                  "weights' native 640 finds plates that 960 misses and the "
                                  "reverse; never tiled (0 = off)", lo=0, hi=4096)
    crop_size: int = _opt(320, "two-stage vehicle crop input size, px", lo=32, hi=4096)
    crop_margin: float = _opt(0.1, "vehicle box grown by this share of its size before "
                              "cropping (two-stage)", lo=0, hi=1)
    # temporal filling
    fill_frames: int = _opt(5, "temporal filling window in frames, 0 = off", lo=0,
                            video_only=True, group="anonymization")
    detect_every: int = _opt(1, "run the detectors on every Nth frame only (frame index "
                             "divisible by N); the frames between get the boxes temporal "
                             "filling interpolates, so N-1 must not exceed --fill-frames. "
                             "1 = every frame (default; see README, \"Detecting every "
                             "Nth frame\" for what 2 and 3 cost in coverage)", lo=1,
                             video_only=True, group="execution")
    reference_every: int = _opt(0, "look again only where the picture changed: one frame in N "
                                "is detected whole, the N-1 after it only where the picture "
                                "changed, keeping the boxes elsewhere (fixed cameras; see "
                                "README, \"Looking only where the picture changed\"). 0 or 1 "
                                "= every frame whole; CPU only; --detect-every above 1 goes first",
                                lo=0, video_only=True, group="execution")
    # blurring
    mode: str = _opt("blur", "how regions are hidden", choices=BLUR_MODES,
                     group="anonymization")
    shape: str = _opt("box", "face region shape; plates are always boxes", choices=SHAPES,
                      group="anonymization")
    mask_scale: float = _opt(1.3, "box dilation factor before anonymizing, >= 1", lo=1,
                             group="anonymization")
    # encoding
    crf: int = _opt(18, "x264 constant rate factor, 0-51", lo=0, hi=51, video_only=True,
                    group="encoding")
    preset: str = _opt("medium", "x264 preset", video_only=True, group="encoding",
                       choices=("ultrafast", "superfast", "veryfast", "faster", "fast",
                                "medium", "slow", "slower", "veryslow", "placebo"))
    keep_metadata: bool = _opt(False, "keep container metadata such as GPS location "
                               "(stripped by default)", video_only=True, group="encoding")
    # execution
    device: str = _opt("auto", "cpu, cuda, cuda:N or auto (CUDA when present)",
                       group="execution", form=DEVICE_FORM)
    batch_size: int = _opt(8, "frames per detector batch", lo=1, group="execution")
    half: bool = _opt(True, "half precision: fp16 on CUDA; bf16 on CPUs with AMX (the "
                            "face, plate and vehicle networks; RetinaFace stays fp32)",
                      group="execution")
    threads: int = _opt(0, "CPU threads for the whole run, split between decoding, detection "
                        "and encoding; 0 = the cores this process may use (CPU affinity and "
                        "cgroup quota); at most 1024 (thousands of threads failed to start)",
                        lo=0, hi=1024, group="execution")
    segment_frames: int = _opt(250, "frames per segment / distributed batch; segments "
                               "start on keyframes", lo=1, video_only=True, group="execution")

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> Settings:
        """Check every value against its type and limits (one-line SettingsError)."""
        for f in fields(self):
            setattr(self, f.name, coerce(f.name, getattr(self, f.name), "setting"))
        if 0 < self.plate_second_size < 32:
            raise SettingsError(f"plate_second_size must be 0 (off) or at least 32, got "
                                f"{self.plate_second_size}")
        if self.detect_every - 1 > self.fill_frames:
            raise SettingsError(f"detect_every {self.detect_every} needs fill_frames >= "
                                f"{self.detect_every - 1} (got {self.fill_frames}): the "
                                "frames between detections would get no boxes")
        return self

    @property
    def plate_sizes(self) -> tuple[int, ...]:
        """Long sides the one-stage plate pass runs at (the first is ``plate_size``)."""
        second = self.plate_second_size
        return (self.plate_size,) + ((second,) if second and second != self.plate_size else ())

    @property
    def plate_mode(self) -> str | None:
        """The plate mode, or None when plates are off."""
        return None if self.plates == "off" else self.plates

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "setting") -> Settings:
        unknown = set(data) - set(FIELDS)
        if unknown:
            raise SettingsError(_unknown(sorted(unknown)[0], FIELDS, source))
        return cls(**{k: coerce(k, v, source) for k, v in data.items()})

    @classmethod
    def load(cls, config: str | Path | None = None, overrides: dict[str, Any] | None = None,
             environ: dict[str, str] | None = None) -> Settings:
        """Defaults < config file < environment < ``overrides`` (CLI flags that were given)."""
        return cls.resolve(config, overrides, environ)[0]

    @classmethod
    def resolve(cls, config: str | Path | None = None, overrides: dict[str, Any] | None = None,
                environ: dict[str, str] | None = None) -> tuple[Settings, dict[str, str]]:
        """The settings and, per field, where its value came from (default, the config
        file's path, ``ANONYMIZE_<NAME>``, or ``--<name>``)."""
        env = os.environ if environ is None else environ
        check_environment(env)
        values: dict[str, Any] = {}
        sources = {name: "default" for name in FIELDS}
        where = "--config"
        if config is None and "ANONYMIZE_CONFIG" in env:
            config, where = env["ANONYMIZE_CONFIG"], "ANONYMIZE_CONFIG"
        if config is not None and not str(config).strip():
            # `--config "$UNSET"` read no file, and the defaults ran instead of its values
            raise SettingsError(f"{where}: {str(config)!r} is not a file name")
        if config:
            for key, value in read_config(Path(config)).items():
                values[key] = coerce(key, value, f"{config}: {key}")
                sources[key] = str(config)
        for name in FIELDS:
            var = ENV_PREFIX + name.upper()
            if var in env:
                values[name] = coerce(name, env[var], var)
                sources[name] = var
        for name, value in (overrides or {}).items():
            if value is None:
                continue
            if name not in FIELDS:
                raise SettingsError(_unknown(name, FIELDS, "setting"))
            # a switch set off came from its --no- form (--no-faces)
            flag = ("--no-" if value is False else "--") + name.replace("_", "-")
            values[name] = coerce(name, value, flag)
            sources[name] = flag
        return cls(**values), sources


FIELDS: dict[str, Any] = {f.name: f for f in fields(Settings)}


def check_something_hidden(settings: Settings, zones: list[dict] | None = None) -> None:
    """Refuse settings that detect nothing (no faces, plates off) when no forced region
    (a ``force`` zone) is given either: the output would be the input re-encoded under
    an anonymized name. ``zones`` is None for a command that takes none."""
    if settings.faces or settings.plate_mode or any(z.get("kind") == "force"
                                                    for z in zones or ()):
        return
    hint = "" if zones is None else (" (or, to blur fixed regions only, give --zones with a "
                                     "force zone)")
    raise SettingsError(f"faces and plates are both off, so nothing would be anonymized: "
                        f"turn one on{hint}")


def env_names() -> set[str]:
    """Every ``ANONYMIZE_*`` variable the project reads."""
    from_settings = {ENV_PREFIX + name.upper() for name in FIELDS}
    return from_settings | set(OTHER_ENV)


#: how an ``ANONYMIZE_*`` name may begin when typed in another case or the British
#: spelling (``anonymize_faces``, ``ANONYMISE_FACES``): read by nothing, so refused too
_PREFIX_SLIPS = (ENV_PREFIX, "ANONYMISE_")


def check_environment(env: dict[str, str] | os._Environ) -> None:
    """An unknown ``ANONYMIZE_*`` variable is a typo that would silently change
    nothing: refuse it, suggesting the closest known name. So is a known name in
    another case or spelled with an s (``anonymize_lp_thresh``, ``ANONYMISE_FACES``)."""
    known = env_names()
    for var in sorted(env):
        if var in known or not var.upper().startswith(_PREFIX_SLIPS):
            continue
        meant = ENV_PREFIX + var.upper()[len(ENV_PREFIX):]
        if meant in known:
            raise SettingsError(f"unknown environment variable {var} (did you mean {meant}?)")
        close = difflib.get_close_matches(meant, sorted(known), n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise SettingsError(f"unknown environment variable {var}{hint}")


def _unknown(name: str, known, source: str) -> str:
    close = difflib.get_close_matches(name, sorted(known), n=1)
    hint = f"; did you mean {close[0]}?" if close else ""
    where = "" if source == "setting" else f" in {source.split(': ')[0]}"
    return f"unknown setting {name!r}{where}{hint}"


def coerce(name: str, value: Any, source: str) -> Any:
    """``value`` as the type of setting ``name``, within its limits, or a SettingsError
    naming ``source`` (the flag, variable or file the value came from)."""
    f = FIELDS[name]
    kind = type(f.default)
    meta = f.metadata
    shown = value if not isinstance(value, str) else repr(value)

    def fail(why: str) -> SettingsError:
        return SettingsError(f"{source}: {shown} is not {why}")

    if kind is bool:
        if isinstance(value, bool):
            out: Any = value
        elif type(value) is int and value in (0, 1):  # `faces: 0` in YAML or JSON is a number
            out = bool(value)
        elif isinstance(value, str) and value.strip().lower() in BOOL_WORDS:
            out = BOOL_WORDS[value.strip().lower()]
        else:
            raise fail("a boolean (true/false, 1/0, yes/no, on/off)")
    elif kind is int:
        if isinstance(value, bool):
            raise fail("a whole number")
        if isinstance(value, int):
            out = value
        elif isinstance(value, float) and value.is_integer():
            out = int(value)
        elif isinstance(value, str):
            try:
                out = int(value.strip())
            except ValueError:
                raise fail("a whole number") from None
        else:
            raise fail("a whole number")
    elif kind is float:
        if isinstance(value, bool):
            raise fail("a number")
        try:
            out = float(value.strip() if isinstance(value, str) else value)
        except (TypeError, ValueError):
            raise fail("a number") from None
        if out != out or out in (float("inf"), float("-inf")):
            raise fail("a finite number")
    else:
        if not isinstance(value, str) or not value.strip():
            raise fail("a non-empty text")
        out = value.strip()
    form = meta.get("form")
    if form and not re.fullmatch(form[0], out):
        raise fail(form[1])
    choices = meta.get("choices")
    if choices and out not in choices:
        raise fail(f"one of {', '.join(choices)}")
    lo, hi = meta.get("lo"), meta.get("hi")
    if lo is not None and out < lo or hi is not None and out > hi:
        span = (f"between {lo:g} and {hi:g}" if hi is not None else f">= {lo:g}")
        raise fail(span)
    return out


def _unique_keys(pairs: list[tuple[Any, Any]]) -> dict[Any, Any]:
    """A mapping's pairs as a dict, unless a key comes twice: JSON and YAML readers
    keep the last value, and which one was meant is not known."""
    seen: list[Any] = []
    for key, _ in pairs:
        if key in seen:
            raise ValueError(f"key {key!r} appears twice")
        seen.append(key)
    return dict(pairs)


def _yaml_loader():
    """PyYAML's SafeLoader, refusing a key given twice in one mapping."""
    import yaml

    class UniqueKeyLoader(yaml.SafeLoader):
        def construct_mapping(self, node, deep=False):
            if isinstance(node, yaml.MappingNode):
                self.flatten_mapping(node)
                _unique_keys([(self.construct_object(k, deep=deep), None)
                              for k, _ in node.value])
            return super().construct_mapping(node, deep)

    return UniqueKeyLoader


def read_config(path: Path) -> dict[str, Any]:
    """A settings file's mapping, keys normalised to the field names."""
    if not path.is_file():
        raise SettingsError(f"config file {path} is a folder, not a file" if path.is_dir()
                            else f"config file not found: {path}")
    try:
        # a Latin-1 file: name it, not only the byte; utf-8-sig: also with the byte-order
        # mark Windows editors write first, which JSON refused ('Unexpected UTF-8 BOM')
        text = path.read_text(encoding="utf-8-sig")
        if path.suffix.lower() in (".yaml", ".yml"):
            import yaml

            data = yaml.load(text, Loader=_yaml_loader())  # a SafeLoader
        else:
            data = json.loads(text, object_pairs_hook=_unique_keys)
    except Exception as exc:  # UnicodeDecodeError / YAMLError / JSONDecodeError / a key twice
        raise SettingsError(f"config file {path} cannot be read: {one_line(exc)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise SettingsError(f"config file {path} must hold a mapping of settings")
    out: dict[str, Any] = {}
    spelt: dict[str, str] = {}
    for key, value in data.items():
        name = str(key).replace("-", "_")
        if name not in FIELDS:
            raise SettingsError(_unknown(str(key), FIELDS, f"{path}: {key}"))
        if name in out:  # lp-thresh and lp_thresh: which one was meant is not known
            raise SettingsError(f"config file {path} sets {name} twice, as {spelt[name]} and "
                                f"as {key}")
        out[name], spelt[name] = value, str(key)
    return out


def describe(settings: Settings, sources: dict[str, str]) -> str:
    """The effective settings, one ``name: value  # source`` line each (``--print-settings``)."""
    width = max(len(n) for n in FIELDS)
    lines = []
    for name in FIELDS:
        value = json.dumps(getattr(settings, name))
        lines.append(f"{name}:{' ' * (width - len(name))} {value:<32} # {sources[name]}")
    return "\n".join(lines)
