"""Review: the frames a person should look at before publishing, and the page showing them.

This module puts a run's review together from its records: the ``review``
entries of report.json (:func:`review_flags`) and ``report.html`` of a video
(:func:`write_page`) or of an image folder (:func:`write_image_page`). Which
frames to flag and why is decided in ``review_flags.py``, the thumbnails are
taken by ``thumbnails.py``, and the page itself is drawn by ``review_html.py``.

Every flag has a reason in words; ``report.json`` lists them under
``review`` (bounded, most urgent first), and ``report.html`` shows a
timeline of the detections per frame and class (filled boxes apart, flags
marked) and a contact sheet of the most urgent frames. Thumbnails are taken
from the *output* video, so they only ever show anonymized pixels; the
regions blurred are outlined on them. The flags are decided from the
detections alone, which every path has once all segments are done (also
the distributed reassemble step). ``anonymize review DIR`` rebuilds the page
from a run's records (detections.json, report.json, the output video).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from fractions import Fraction
from pathlib import Path

from models.detections import Detections

from .records import REPORT_HTML
from .render import ADDED_CONFIDENCE, edited_out
from .review_flags import find_flags, image_flags, pick_frames, review_report
from .thumbnails import grab_thumbnails, jpeg_thumbnail


def frames_of(doc: dict) -> tuple[dict[int, Detections], dict[int, Fraction]]:
    """Final boxes and exact times (seconds) per frame of a detections.json document,
    read as ``render`` reads an edited one: a box added by hand has confidence 1, a
    disabled or removed box is left out (a hand-added box failed with a KeyError)."""
    tb = Fraction(doc.get("time_base", "0"))
    removed = set(doc.get("remove", []))
    frames, times = {}, {}
    for entry in doc.get("frames", []):
        f = entry["frame_idx"]
        frames[f] = Detections.from_dicts(
            [{"confidence": ADDED_CONFIDENCE, **r} for r in entry["detections"]
             if edited_out(r, removed) is None])
        if "pts" in entry:
            times[f] = entry["pts"] * tb
    return frames, times


def review_flags(frames: Mapping[int, Detections], times: Mapping[int, Fraction],
                 settings: Mapping, width: int, height: int) -> dict:
    """The ``review`` entries and summary for report.json (see :func:`find_flags`)."""
    flags, n_objects = find_flags(frames, settings, width, height)
    picked = pick_frames(flags)
    return review_report(flags, n_objects, {k: float(v) for k, v in times.items()}, len(picked))


#: the fields of report.json that the page computes with, and the JSON type each must
#: have (or null): a damaged report.json failed with an AttributeError or a ValueError
#: that named neither the file nor the field
REPORT_FIELDS = {
    **dict.fromkeys(("input", "output_stream", "settings", "detections", "filled_boxes",
                     "models", "timings", "render", "rescaled"), "object"),
    **dict.fromkeys(("zones", "left_out"), "array"),
    **dict.fromkeys(("start_shift_s", "settings.face_thresh", "settings.lp_thresh",
                     "settings.mask_scale"), "number"),
    **dict.fromkeys(("input.width", "input.height", "input.frames", "input.rotation",
                     "settings.fill_frames", "output_bytes"), "whole number"),
}
_KINDS = {"object": dict, "array": list, "number": (int, float), "whole number": (int, float)}


def read_report(path: Path) -> dict:
    """A run's report.json, or a one-line ``ValueError`` naming the file (and the field)."""
    path = Path(path)
    try:
        report = json.loads(path.read_text(encoding="utf-8-sig"))  # a BOM is read past
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not a JSON text file") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON (line {exc.lineno}, column {exc.colno}: "
                         f"{exc.msg})") from None
    if not isinstance(report, dict):
        raise ValueError(f"{path}: not a run's report (a JSON object), but "
                         f"{json.dumps(report)[:40]}")
    for key, kind in REPORT_FIELDS.items():
        *outer, name = key.split(".")
        holder = report.get(outer[0]) if outer else report
        value = holder.get(name) if isinstance(holder, dict) else None
        if value is None:
            continue
        if (isinstance(value, bool) or not isinstance(value, _KINDS[kind])
                or (isinstance(value, float) and not math.isfinite(value))
                or (kind == "whole number" and isinstance(value, float)
                    and not value.is_integer())):
            raise ValueError(f"{path}: {key}: {json.dumps(value)[:40]} is not "
                             f"{'a whole number' if kind == 'whole number' else 'a JSON ' + kind}")
    return report


def write_page(records_dir: Path, video: Path | None = None, report: dict | None = None,
               out: Path | None = None) -> Path:
    """Build ``report.html`` in ``records_dir`` from its detections.json and report.json
    (or ``report``) and thumbnails of ``video`` (the anonymized output)."""
    from .records import DETECTIONS_JSON, REPORT_JSON
    from .review_html import render_page
    from .video.output import write_atomic

    records_dir = Path(records_dir)
    doc = json.loads((records_dir / DETECTIONS_JSON).read_text(encoding="utf-8-sig"))
    if report is None:
        report = read_report(records_dir / REPORT_JSON)
    frames, exact = frames_of(doc)
    times = {k: float(v) for k, v in exact.items()}
    inp = report.get("input", {})
    width = int(doc.get("width") or inp.get("width") or 1)
    height = int(doc.get("height") or inp.get("height") or 1)
    flags, _ = find_flags(frames, report.get("settings", {}), width, height)
    picked = pick_frames(flags)
    thumbs: dict[int, str] = {}
    note = ""
    turns = int(inp.get("rotation") or 0) // 90 % 4  # thumbnails as a player shows them
    # the output's times: the source's, moved when the source started before 0
    shift = Fraction(str(report.get("start_shift_s") or 0))
    if video is not None and Path(video).is_file():
        try:
            thumbs = grab_thumbnails(Path(video), {f: exact[f] + shift for f, _ in picked
                                                   if f in exact}, turns=turns)
        except Exception as exc:  # a page without thumbnails beats no page
            note = f"thumbnails could not be taken from {Path(video).name}: {exc}"
    elif picked:
        note = "the output video was not found, so there are no thumbnails"
    n_frames = int(report.get("input", {}).get("frames") or (max(frames) + 1 if frames else 0))
    page = render_page(report, frames, times, n_frames, flags, picked, thumbs,
                       doc.get("zones", []), width, height, note, turns)
    return write_atomic(Path(out or records_dir / REPORT_HTML), page_bytes(page))


def page_bytes(page: str) -> bytes:
    """The page as UTF-8. A file name that is not UTF-8 (``caf\\xe9.jpg`` from a
    Latin-1 share) reaches here with surrogate escapes, which UTF-8 cannot
    carry: such bytes are shown as ``\\xe9``, so the page still names the file."""
    raw = page.encode("utf-8", "surrogateescape")
    return raw.decode("utf-8", "backslashreplace").encode("utf-8")


def write_image_page(out_dir: Path, found: Mapping[str, Detections], report: dict) -> Path:
    """``report.html`` for an image folder: counts per image and a contact sheet of the
    images most worth a look, thumbnails of the blurred images written in ``out_dir``."""
    from .datasets import read_image
    from .review_html import render_image_page
    from .video.output import write_atomic

    out_dir = Path(out_dir)
    order = list(found)
    names = dict(enumerate(order))
    frames = {i: found[name] for i, name in names.items()}
    flags = image_flags(frames, names, report.get("settings", {}))
    picked = pick_frames(flags)
    thumbs, sizes = {}, {}
    for i, _ in picked:
        try:  # from the file's bytes: OpenCV's path functions crash on a non-UTF-8 name
            rgb = read_image(out_dir / names[i])
        except (OSError, ValueError):
            continue
        sizes[i] = rgb.shape[1], rgb.shape[0]
        thumbs[i] = jpeg_thumbnail(rgb)
    page = render_image_page(report, names, frames, flags, picked, thumbs, sizes)
    return write_atomic(out_dir / REPORT_HTML, page_bytes(page))
