"""The first step of a job: check the user's files, probe once, cut into segments.

Kept free of torch and the detectors so that everything that can fail on
the user's input fails in a fraction of a second, before any model loads
or frame is decoded (``anonymize run`` and ``submit`` call it first).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

from . import video
from .records import RECORD_FILES
from .settings import Settings
from .temporal import context_frames
from .video.contain import readable
from .video.join import check_output_streams
from .video.output import check_output_path, check_records_folder


@dataclass
class Manifest:
    """Everything a worker needs to process a segment of a job (JSON)."""

    source_name: str
    info: video.VideoInfo
    segments: list[video.Segment]
    settings: Settings
    context: int
    #: source streams left out of the output, with the reason (told to the user)
    dropped_streams: list[dict] = field(default_factory=list)
    #: exclusion zones and forced regions (``pipeline/zones.py``), applied at blur time
    zones: list[dict] = field(default_factory=list)
    #: name of the detections file a render reads instead of running detectors
    detections_file: str | None = None
    #: what the user is told of how the input was read (a raw stream put in a
    #: container, :mod:`.video.contain`); None for most inputs
    input_note: str | None = None

    def to_dict(self) -> dict:
        return {"source_name": self.source_name, "info": self.info.to_dict(),
                "segments": [s.to_dict() for s in self.segments],
                "settings": self.settings.to_dict(), "context": self.context,
                "dropped_streams": self.dropped_streams, "zones": self.zones,
                "detections_file": self.detections_file, "input_note": self.input_note}

    @classmethod
    def from_dict(cls, d: dict) -> Manifest:
        return cls(d["source_name"], video.VideoInfo.from_dict(d["info"]),
                   [video.Segment.from_dict(s) for s in d["segments"]],
                   Settings.from_dict(d["settings"]), d["context"],
                   d.get("dropped_streams", []), d.get("zones", []),
                   d.get("detections_file"), d.get("input_note"))

    @property
    def time_base(self) -> Fraction:
        return Fraction(str(self.info.time_base))


def plan(source: Path, settings: Settings, out_suffix: str = ".mp4",
         info: video.VideoInfo | None = None) -> Manifest:
    """Probe (unless ``info`` is given), check that the output container can hold
    what will be copied, and cut the video into segments."""
    info = info or video.probe(source)
    streams = check_output_streams(source, info, out_suffix, settings.keep_metadata)
    ctx = context_frames(settings.fill_frames)
    segments = video.plan_segments(info, settings.segment_frames, ctx)
    return Manifest(Path(source).name, info, segments, settings, ctx, streams.dropped)


def prepare_local(source: Path, output: Path, settings: Settings,
                  detections_dir: Path | None = None) -> Manifest:
    """Everything that can fail on the user's input, done before any frame is
    processed: the output path (container, not the input, folder creatable),
    the records folder, the input (a readable video, probed once) and the
    streams the output container must hold."""
    source, output = Path(source), Path(output)
    check_output_path(source, output)
    check_records_folder(output, Path(detections_dir) if detections_dir is not None
                         else output.parent, RECORD_FILES)
    return plan(source, settings, output.suffix)


@contextmanager
def prepared_local(source: Path, output: Path, settings: Settings,
                   detections_dir: Path | None = None
                   ) -> Iterator[tuple[Path, Manifest, str | None]]:
    """:func:`prepare_local` for the user's file as given on the command line,
    which may need putting in a container first (a raw stream with no
    timestamps, :mod:`.video.contain`). Yields the file to read frames from
    (the user's own, or a temporary contained copy removed on exit), the
    manifest, named after the user's file, and the note for the user (None
    unless contained). The output path is checked against the user's file,
    which a copy elsewhere could never equal."""
    source, output = Path(source), Path(output)
    check_output_path(source, output)
    with readable(source) as (frames_source, note):
        manifest = prepare_local(frames_source, output, settings, detections_dir)
        manifest.source_name = source.name
        manifest.input_note = note
        yield frames_source, manifest, note
