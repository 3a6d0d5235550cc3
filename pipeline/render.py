"""Re-rendering from a detections file: a person's corrections, no detector.

No detector is perfect, so people who publish anonymized footage check it,
fix the detections (add a missed plate, drop a blurred shop sign, mark the
camera car's bonnet as never to blur) and render again. ``anonymize render``
does that with the very pipeline of ``anonymize run`` (same segments,
temporal filling, blurring, encoding and timing guarantees): only the
detection step differs, :class:`RecordedDetections` hands out the file's
boxes for each frame index instead of running models. Filling runs again on
the boxes the file does not mark ``filled``, so an added box is held and
interpolated like a detected one, and a removed box takes its filled
neighbours with it.

The file is checked completely before any frame is decoded: against the
JSON Schema beside this module (``detections.schema.json``, also the
documentation of the format) and against the video (frame size, frame
indexes and timestamps, boxes and zones inside the frame). Every problem is
one line naming the file, the frame and the field.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

from models.detections import FACE, PLATE, Detections, label_id

SCHEMA_PATH = Path(__file__).with_name("detections.schema.json")
#: settings recorded in detections.json that ``render`` takes over when no flag,
#: variable or config file sets them (they decide what the output looks like)
RECORDED_SETTINGS = ("fill_frames", "mode", "shape", "mask_scale", "crf", "preset",
                     "keep_metadata", "segment_frames", "face_thresh", "lp_thresh")


class DetectionsFileError(ValueError):
    """A detections or zones file that cannot be used; one line naming file, frame, field."""


@lru_cache(maxsize=1)
def schema() -> dict:
    return json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))


@dataclass
class Edits:
    """What a detections file asks for: per frame the boxes to start from (faces and
    plates, neither filled, disabled nor removed), the zones, the settings it recorded."""

    name: str
    frames: dict[int, Detections]
    zones: list[dict] = field(default_factory=list)
    settings: dict = field(default_factory=dict)
    counts: dict = field(default_factory=dict)

    def summary(self) -> dict:
        return {"detections_file": self.name, **self.counts, "zones": len(self.zones)}


# ------------------------------------------------------------------- reading


def load_document(path: Path, what: str = "detections file") -> dict:
    """The JSON document of ``path``, or a one-line error (``what`` names the file's
    role: a --zones file was called a detections file)."""
    path = Path(path)
    if not path.is_file():
        raise DetectionsFileError(f"{what} {path} is a folder, not a file" if path.is_dir()
                                  else f"{what} not found: {path}")
    def not_json(constant: str):
        # Python reads NaN and Infinity, JSON has neither: a NaN corner compares false
        # with every bound, so such a box passed every check and blurred nothing
        raise DetectionsFileError(f"{path}: not valid JSON ({constant} is not a JSON number)")

    with open(path, "rb") as f:
        head = f.read(1 << 16)
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):  # PowerShell 5's `>` writes UTF-16
        raise DetectionsFileError(f"{path}: UTF-16 text, not UTF-8: save it as UTF-8")
    # JSON text holds no NUL byte, and every video does near its start: a video given
    # by mistake (--detections street.mp4) was read whole into memory first
    if b"\0" in head:
        raise DetectionsFileError(f"{path}: not a JSON text file (binary data: a video "
                                  f"given as the {what}?)")
    try:
        # utf-8-sig: a byte order mark, as Notepad and PowerShell can write, is read past
        # (RFC 8259 lets a reader ignore it); it was refused as "not valid JSON"
        text = path.read_text(encoding="utf-8-sig")
        return json.loads(text, parse_constant=not_json, object_pairs_hook=_unique_keys,
                          parse_int=_json_int)
    except UnicodeDecodeError:
        raise DetectionsFileError(f"{path}: not a JSON text file") from None
    except json.JSONDecodeError as exc:
        raise DetectionsFileError(f"{path}: not valid JSON (line {exc.lineno}, column "
                                  f"{exc.colno}: {exc.msg})") from None
    except _KeyTwice as exc:
        # a JSON reader keeps the last of two equal keys: "zones" added at the top of a
        # file that ends with the run's own "zones" was dropped without a word
        line, column = _duplicate_at(text)
        raise DetectionsFileError(f"{path}: line {line}, column {column}: {exc.args[0]!r} "
                                  f"is given twice in one object (only the last would be "
                                  f"read)") from None


def _json_int(text: str) -> int | float:
    """An integer as JSON writes it; one longer than any field takes (int64: a pts) is
    read as a float, so it fails the checks as the same number written 1e400 does: a
    400-digit corner failed with an OverflowError traceback, 5000 digits with Python's
    limit on integer strings, naming no file."""
    return int(text) if len(text) <= 20 else float(text)


class _KeyTwice(ValueError):
    pass


def _unique_keys(pairs: list) -> dict:
    d = dict(pairs)
    if len(d) != len(pairs):
        seen: set = set()
        raise _KeyTwice(next(k for k, _ in pairs if k in seen or seen.add(k)))
    return d


def _duplicate_at(text: str) -> tuple[int, int]:
    """Line and column of the ``{`` of the first object in ``text`` with a key given
    twice (read again by the Python scanner, which tells where each object starts)."""
    from json import decoder, scanner

    def parse_object(s_and_end, strict, scan_once, object_hook, object_pairs_hook, memo=None):
        s, start = s_and_end
        pairs, end = decoder.JSONObject(s_and_end, strict, scan_once, None, list, memo)
        if len({k for k, _ in pairs}) != len(pairs):
            pos = start - 1
            raise _KeyTwice(s.count("\n", 0, pos) + 1, pos - s.rfind("\n", 0, pos))
        return dict(pairs), end

    dec = json.JSONDecoder()
    dec.parse_object = parse_object
    dec.scan_once = scanner.py_make_scanner(dec)
    try:
        dec.decode(text)
    except _KeyTwice as exc:
        return exc.args
    return 1, 1


def _where(doc: dict, path: Sequence) -> str:
    """``frame 12, detections[0].xyxy`` for a JSON path into the document."""
    parts = list(path)
    head = ""
    if len(parts) >= 2 and parts[0] == "frames" and isinstance(parts[1], int):
        entry = doc["frames"][parts[1]] if isinstance(doc.get("frames"), list) else None
        idx = entry.get("frame_idx") if isinstance(entry, dict) else None
        head = f"frame {idx}" if isinstance(idx, int) else f"frames[{parts[1]}]"
        parts = parts[2:]
    text = ""
    for p in parts:
        text += f"[{p}]" if isinstance(p, int) else (f".{p}" if text else str(p))
    return ", ".join(x for x in (head, text) if x) or "top level"


def validate_document(doc, path: Path) -> None:
    """Check ``doc`` against the schema and for what a schema cannot say (unique
    frames and ids, removals that name existing boxes)."""
    import jsonschema

    validator = jsonschema.Draft202012Validator(schema())
    error = jsonschema.exceptions.best_match(validator.iter_errors(doc))
    if error is not None:
        where = _where(doc, error.absolute_path) if isinstance(doc, dict) else "top level"
        raise DetectionsFileError(f"{path}: {where}: {_message(error)}")
    seen_frames: set[int] = set()
    ids: set[str] = set()
    for entry in doc.get("frames", []):
        for key in ("frame_idx", "pts"):  # JSON Schema's integers include 5.0
            if isinstance(entry.get(key), float):
                entry[key] = int(entry[key])
        f = entry["frame_idx"]
        if f in seen_frames:
            raise DetectionsFileError(f"{path}: frame {f}: listed twice")
        seen_frames.add(f)
        for j, row in enumerate(entry["detections"]):
            if "id" in row:
                if row["id"] in ids:
                    raise DetectionsFileError(f"{path}: frame {f}, detections[{j}].id: "
                                              f"{row['id']!r} is used twice")
                ids.add(row["id"])
    for k, rid in enumerate(doc.get("remove", [])):
        if rid not in ids:
            raise DetectionsFileError(f"{path}: remove[{k}]: no box has id {rid!r}")


def _message(error) -> str:
    """jsonschema's message, kept to one short line."""
    if error.validator == "additionalProperties":
        return error.message.replace(" were unexpected", " not allowed").replace(
            " was unexpected", " not allowed")
    if error.validator == "oneOf" and "box" in str(error.schema):
        return "a zone needs exactly one of box or polygon"
    if error.validator == "not" and "time_s" in str(error.schema):
        return "a zone takes frames or time_s, not both"
    if error.validator == "pattern":  # time_base; 1/0 failed `review` with a traceback
        return f"{error.instance!r} is not a fraction like 1/12800 (denominator above 0)"
    text = error.message.splitlines()[0]
    return text if len(text) <= 160 else text[:157] + "..."


def check_against_video(doc: dict, path: Path, info) -> None:
    """What only the video can tell: same frame size, frame indexes within the video,
    the timestamps of the frames, boxes and zones that touch the frame."""
    w, h, n = info.width, info.height, info.n_frames
    for key, want in (("width", w), ("height", h)):
        if key in doc and doc[key] != want:
            raise DetectionsFileError(f"{path}: {key}: {doc[key]} but the video is {w}x{h} "
                                      f"(detections of another video?)")
    # another clip of the same camera has the size and timestamps of this one: the
    # boxes of a shorter one ended part-way and the rest of the video went unblurred
    if "frame_count" in doc and doc["frame_count"] != n:
        raise DetectionsFileError(f"{path}: frame_count: {doc['frame_count']} but the video "
                                  f"has {n} frames (detections of another video?)")
    for entry in doc.get("frames", []):
        f = entry["frame_idx"]
        if f >= n:
            raise DetectionsFileError(f"{path}: frame {f}: beyond the video, which has {n} "
                                      f"frames (0-{n - 1})")
        if "pts" in entry and entry["pts"] != info.frame_pts[f]:
            raise DetectionsFileError(f"{path}: frame {f}, pts: {entry['pts']} but that frame "
                                      f"of the video has {info.frame_pts[f]} "
                                      f"({_pts_hint(entry['pts'], info.frame_pts)})")
        for j, row in enumerate(entry["detections"]):
            problem = _box_problem(row["xyxy"], w, h)
            if problem:
                raise DetectionsFileError(f"{path}: frame {f}, detections[{j}].xyxy: {problem}")
    check_zones(doc.get("zones", []), path, info)


def _pts_hint(pts: int, frame_pts: Sequence[int]) -> str:
    """Why a frame's pts may differ: an entry copied from another frame to add boxes
    (its pts is that frame's) was called "detections of another video?"."""
    if pts in frame_pts:
        k = list(frame_pts).index(pts)
        return (f"{pts} is frame {k}'s: an entry copied from frame {k}? give this frame's "
                f"pts or leave pts out")
    return "detections of another video?"


def check_zones(zones: list[dict], path: Path, info) -> None:
    w, h, n = info.width, info.height, info.n_frames
    for k, z in enumerate(zones):
        shape = "box" if "box" in z else "polygon"
        pts = np.array(z["box"] if shape == "box" else z["polygon"], np.float64).reshape(-1, 2)
        bounds = [*pts.min(axis=0), *pts.max(axis=0)]
        if shape == "box" and (z["box"][2] <= z["box"][0] or z["box"][3] <= z["box"][1]):
            raise DetectionsFileError(f"{path}: zones[{k}].box: {z['box']} is empty "
                                      f"(x2 <= x1 or y2 <= y1)")
        problem = _box_problem(bounds, w, h, what=shape)
        if problem:
            raise DetectionsFileError(f"{path}: zones[{k}].{shape}: {problem}")
        if not _covers_a_pixel(z, w, h):
            # a polygon drawn along a line, a box thinner than a pixel, or one that reaches
            # less than half a pixel into the frame: a forced region that blurred nothing
            raise DetectionsFileError(f"{path}: zones[{k}].{shape}: covers no pixel of the "
                                      f"{w}x{h} frame (a pixel is in a zone when its centre "
                                      f"is inside)")
        if "frames" in z:
            a, b = z["frames"]
            if b < a:
                raise DetectionsFileError(f"{path}: zones[{k}].frames: last {b} before first {a}")
            if a >= n:
                raise DetectionsFileError(f"{path}: zones[{k}].frames: frame {a} is beyond the "
                                          f"video, which has {n} frames (0-{n - 1})")
        if "time_s" in z:
            a, b = z["time_s"]
            if not all(math.isfinite(t) for t in (a, b)):
                # 1e400 is read as infinity, which the records then wrote as Infinity:
                # JSON has no such number, so they could not be read back
                raise DetectionsFileError(f"{path}: zones[{k}].time_s: {_show(z['time_s'])} "
                                          f"holds a number too large for a time")
            if b < a:
                raise DetectionsFileError(f"{path}: zones[{k}].time_s: end {b} before start {a}")
            _check_zone_times(a, b, f"{path}: zones[{k}].time_s", info)


def _covers_a_pixel(zone: dict, w: int, h: int) -> bool:
    from .zones import ZoneSet

    return bool(ZoneSet.from_dicts([zone], w, h).raster[0].mask.any())


def _check_zone_times(a: float, b: float, where: str, info) -> None:
    """A time range that holds no frame's timestamp applies to no frame: a forced region
    given in minutes, or for another clip, blurred nothing and said nothing (frames
    beyond the video are refused likewise)."""
    times = [float(p * info.time_base) for p in info.frame_pts]
    if times and not any(a <= t <= b for t in times):
        raise DetectionsFileError(f"{where}: no frame of the video is shown from {a:g} to "
                                  f"{b:g} s (its frames are at {min(times):g} to "
                                  f"{max(times):g} s)")


#: no corner lies further than this from a frame (pixels): 1e300 passed as "past
#: the edge" and overflowed when the box was drawn, leaving it unblurred
FAR = 1e6


def _box_problem(xyxy, w: int, h: int, what: str = "box") -> str | None:
    x1, y1, x2, y2 = (float(v) for v in xyxy)
    if not all(abs(v) <= FAR for v in (x1, y1, x2, y2)):
        return f"{_show(xyxy)} has a corner {FAR:g} pixels or more off the {w}x{h} frame"
    if what == "box" and (x2 <= x1 or y2 <= y1):
        return f"{_show(xyxy)} is empty (x2 <= x1 or y2 <= y1)"
    if x1 >= w or y1 >= h or x2 <= 0 or y2 <= 0:
        return f"{what} {_show(xyxy)} lies outside the {w}x{h} frame"
    return None


def _show(values) -> str:
    return "[" + ", ".join(f"{float(v):g}" for v in values) + "]"


def read_document(path: Path) -> dict:
    """A detections file read and checked against the schema (not yet the video)."""
    doc = load_document(Path(path))
    validate_document(doc, Path(path))
    return doc


def read_detections(path: Path, info) -> Edits:
    """Read, check and interpret a detections file for the video ``info`` describes."""
    return edits_from(read_document(path), Path(path), info)


#: the confidence of a box added by hand (a row without one)
ADDED_CONFIDENCE = 1.0


def edited_out(row: dict, removed: set) -> str | None:
    """Why an edit leaves a detections row out of the boxes: "disabled" (its own
    flag), "removed" (its id in the document's ``remove``), or None: kept. The one
    rule for render and for the page `review` builds."""
    if row.get("disabled", False):
        return "disabled"
    if row.get("id") in removed:
        return "removed"
    return None


def edits_from(doc: dict, path: Path, info) -> Edits:
    """The edits of a schema-checked document, once checked against the video."""
    path = Path(path)
    if "frames" not in doc:
        # a zones file (or {}) given by mistake rendered the video with nothing blurred
        raise DetectionsFileError(f"{path}: no 'frames': not the detections of a run (zones "
                                  f"alone go with --zones)")
    check_against_video(doc, path, info)
    removed = set(doc.get("remove", []))
    frames: dict[int, Detections] = {}
    counts = {"boxes": 0, "added": 0, "disabled": 0, "removed": 0, "filled_ignored": 0}
    for entry in doc.get("frames", []):
        rows = []
        for row in entry["detections"]:
            why = edited_out(row, removed)
            if row.get("filled", False):
                counts["filled_ignored"] += 1
            elif why:
                counts[why] += 1
            else:
                counts["boxes"] += 1
                counts["added"] += "id" not in row
                rows.append(row)
        if rows:
            frames[entry["frame_idx"]] = Detections(
                [r["xyxy"] for r in rows], [r.get("confidence", ADDED_CONFIDENCE) for r in rows],
                [label_id(r["label"]) for r in rows])
    return Edits(path.name, frames, list(doc.get("zones", [])), dict(doc.get("settings", {})),
                 counts)


def other_source(doc: dict, path: Path, source_name: str) -> str | None:
    """A warning when the file names another video than the one rendered. Frame size,
    frame indexes and timestamps tell most videos apart, but not two clips of one
    camera (same size, rate and first timestamp): another clip's boxes were drawn on
    this one's frames without a word. A renamed copy of the video is fine, so this
    is a warning, not a refusal."""
    from pathlib import PurePosixPath, PureWindowsPath

    recorded = doc.get("source")
    if not recorded:
        return None
    names = {PurePosixPath(recorded).name, PureWindowsPath(recorded).name}
    if PurePosixPath(source_name).name in names:
        return None
    return (f"{path} holds the detections of {recorded}, not of {source_name}: if that is "
            f"another video, its boxes do not cover this one's faces and plates")


def read_zones(path: Path, info=None) -> list[dict]:
    """The zones of a ``--zones FILE`` (a document holding only zones)."""
    path = Path(path)
    doc = load_document(path, "zones file")
    validate_document(doc, path)
    if doc.get("frames") or doc.get("remove"):
        raise DetectionsFileError(f"{path}: --zones reads zones only, but the file has "
                                  f"frames; re-render detections with `anonymize render "
                                  f"--detections {path}`")
    if info is not None:
        check_zones(doc.get("zones", []), path, info)
    return list(doc.get("zones", []))


def recorded_settings(settings, sources: dict[str, str], recorded: dict,
                      where: str = "detections file"):
    """``settings`` with every value that came from the defaults replaced by the one
    the detections file recorded (flag > environment > config file > file > default).
    A key a run does not record (a misspelt ``mask_scael``) or a value that cannot
    be read is one error naming ``where`` and the key: it was ignored, or named
    neither file nor field."""
    from .settings import Settings, SettingsError, coerce

    for k in recorded:
        if k not in RECORDED_SETTINGS:
            raise SettingsError(f"{where}: settings.{k}: not a setting a run records "
                                f"({', '.join(RECORDED_SETTINGS)})")
    changes = {k: coerce(k, v, f"{where}: settings.{k}") for k, v in recorded.items()
               if sources.get(k) == "default"}
    if not changes:
        return settings
    return Settings.from_dict({**settings.to_dict(), **changes}, where)


# ------------------------------------------------------------------- the stack


class RecordedDetections:
    """A detection stack that reads boxes from a file instead of running models.

    :class:`pipeline.segment_job.SegmentJob` asks it through :meth:`detect_at`, with the
    frame indexes of the batch; it holds no model, so the segment's threads go to
    decoding and encoding (``video_only``)."""

    device = "cpu"
    video_only = True

    def __init__(self, frames: dict[int, Detections], name: str = "detections.json"):
        self.frames = frames
        self.name = name

    @classmethod
    def from_edits(cls, edits: Edits) -> RecordedDetections:
        return cls(edits.frames, edits.name)

    @property
    def model_names(self) -> dict[str, str]:
        return {"detections": f"{self.name} (no detector)"}

    def detect_at(self, indices: Sequence[int], frames) -> list[Detections]:
        empty = Detections.empty()
        return [self.frames.get(int(i), empty).with_class(FACE, PLATE) for i in indices]

    def detect(self, frames):
        raise TypeError("RecordedDetections needs frame indexes: call detect_at")
