"""Detection records at the edge: research pickles, JSON, report.

Everything inside the pipeline is :class:`Detections`; this module is the
one place that turns per-frame detections into the formats people read:

* ``faces.pkl`` — the research face pickle (DESIGN.md): a dict keyed by
  frame name -> ``{"frame_idx", "face_id", "image_path", "bbox", "confidence"}``.
* ``plates.pkl`` — a list, one dict per frame: ``{"frame_idx", "pts",
  "time_s", "filename", "det"}`` with ``det`` in the ImageAI format of the
  evaluation pickle (name, percentage_probability 0-100, box_points).
* ``detections.json`` — every frame's faces and plates as JSON rows
  (id, label, xyxy, confidence, filled), with the frame size, the settings
  that shape the output and the zones; the format ``anonymize render`` reads
  back after a person's edits (``detections.schema.json``). Coordinates and
  confidences are written as the shortest decimals that read back to the
  very same float32 values, so rendering an unedited file blurs exactly the
  pixels the run blurred.
* ``report.json`` — stream facts, counts, timings, review flags (written by
  the caller).
"""

from __future__ import annotations

import json
import pickle
from collections.abc import Mapping
from fractions import Fraction
from pathlib import Path

from models.detections import FACE, PLATE, Detections

from .video.output import write_atomic, write_atomic_all

FACES_PKL = "faces.pkl"
PLATES_PKL = "plates.pkl"
DETECTIONS_JSON = "detections.json"
REPORT_JSON = "report.json"
REPORT_HTML = "report.html"
#: every file a run writes beside its video
RECORD_FILES = (FACES_PKL, PLATES_PKL, DETECTIONS_JSON, REPORT_JSON, REPORT_HTML)


def frame_name(index: int) -> str:
    return f"frame_{index:06d}"


def face_pickle(frames: Mapping[int, Detections], names: Mapping[int, str] | None = None) -> dict:
    """The research face pickle for frames (index -> detections)."""
    out = {}
    for idx in sorted(frames):
        faces = frames[idx].with_class(FACE)
        name = names[idx] if names else frame_name(idx)
        out[name] = {
            "frame_idx": idx,
            "face_id": list(range(len(faces))),
            "image_path": [name] * len(faces),
            "bbox": [[float(v) for v in box] for box in faces.xyxy],
            "confidence": [float(c) for c in faces.confidence],
        }
    return out


def plate_records(frames: Mapping[int, Detections], frame_pts: list[int],
                  time_base: Fraction) -> list[dict]:
    return [
        {"frame_idx": idx, "pts": frame_pts[idx], "time_s": float(frame_pts[idx] * time_base),
         "filename": frame_name(idx), "det": frames[idx].with_class(PLATE).to_imageai()}
        for idx in sorted(frames)
    ]


def detection_rows(frame: int, d: Detections) -> list[dict]:
    """detections.json rows of one frame (:meth:`Detections.to_dicts`, exact);
    ``id`` is ``<frame>:<row>``."""
    return [{"id": f"{frame}:{j}", **row} for j, row in enumerate(d.to_dicts())]


def write_records(out_dir: Path, frames: Mapping[int, Detections], frame_pts: list[int],
                  time_base: Fraction, source_name: str, header: dict | None = None
                  ) -> dict[str, Path]:
    """Write faces.pkl, plates.pkl and detections.json into ``out_dir`` (each
    atomically: a reader never sees half a file; and all three or none). ``header``: more top-level
    fields of detections.json (width, height, settings, zones)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"faces_pickle": out_dir / FACES_PKL, "plates_pickle": out_dir / PLATES_PKL,
             "detections_json": out_dir / DETECTIONS_JSON}
    header = dict(header or {})
    zones = header.pop("zones", [])
    doc = {
        "source": source_name,
        "time_base": str(time_base),
        **header,
        "frames": [
            {"frame_idx": idx, "pts": frame_pts[idx],
             "detections": detection_rows(idx, frames[idx].with_class(FACE, PLATE))}
            for idx in sorted(frames)
        ],
    }
    if zones:
        doc["zones"] = zones
    # all three or none: one left out (a full disk) must not leave a set that no run wrote
    write_atomic_all({
        paths["faces_pickle"]: pickle.dumps(face_pickle(frames), protocol=4),
        paths["plates_pickle"]: pickle.dumps(plate_records(frames, frame_pts, time_base),
                                             protocol=4),
        paths["detections_json"]: json.dumps(doc, separators=(",", ":")).encode(),
    })
    return paths


def write_report(out_dir: Path, report: dict) -> Path:
    """``report.json`` in ``out_dir``; written once the report is complete."""
    return write_atomic(Path(out_dir) / REPORT_JSON, json.dumps(report, indent=2).encode())
