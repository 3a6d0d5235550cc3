"""The end of a job: join the encoded segments into the output, write the
detection records and build the report (``anonymize run`` and the
reassembler task both call :func:`finalize`)."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

from models.detections import FACE, LABELS, PLATE, Detections

from . import video
from .plan import Manifest
from .records import write_records
from .render import RECORDED_SETTINGS
from .review import REPORT_HTML, review_flags
from .segment_job import SegmentResult
from .video.damage import damage_report, left_out_report, rescale_report, skipped_indices


def finalize(manifest: Manifest, segment_videos: list[Path], results: list[SegmentResult],
             source: Path, output: Path, detections_dir: Path,
             extra_report: dict | None = None, output_name: str | None = None) -> dict:
    """Join the segments, mux the source's other streams, write the records;
    return the report, which the caller completes (wall time, storage URLs) and
    writes with :func:`records.write_report`. ``output_name`` is what the report
    calls the output when ``output`` is a temporary name."""
    settings = manifest.settings
    results = sorted(results, key=lambda r: r.index)
    if [r.index for r in results] != list(range(len(manifest.segments))):
        raise ValueError("finalize needs exactly one result per segment")
    info = manifest.info
    # the frames a player shows: those listed by the source, less those that do not decode
    skipped = skipped_indices([r.damage for r in results])
    shown = [p for i, p in enumerate(info.frame_pts) if i not in skipped]
    if not shown:
        raise video.VideoError(f"no frame of {manifest.source_name} could be decoded")
    left_out: list[dict] = []  # copied packets the output refused as damaged
    # a source starting before 0 starts at 0; in Matroska its audio does too
    shift = video.output_shift(source, info, Path(output).suffix, settings.keep_metadata)
    video.join_segments(segment_videos, source, info, output,
                        keep_metadata=settings.keep_metadata, frame_pts=shown, left_out=left_out,
                        total_shift=shift)
    frames: dict[int, Detections] = {}
    for r in results:
        frames.update(r.frames)
    header = {"width": info.width, "height": info.height, "frame_count": info.n_frames,
              "settings": {k: getattr(settings, k) for k in RECORDED_SETTINGS},
              "zones": manifest.zones}
    paths = write_records(detections_dir, frames, manifest.info.frame_pts, manifest.time_base,
                          manifest.source_name, header)
    paths["report_html"] = Path(detections_dir) / REPORT_HTML  # written by the caller
    out_info = video.probe(output)
    counts = {LABELS[c]: 0 for c in (FACE, PLATE)}
    filled = {LABELS[c]: 0 for c in (FACE, PLATE)}
    frames_filled = 0
    for d in frames.values():
        for c in (FACE, PLATE):
            sel = d.class_id == c
            counts[LABELS[c]] += int((sel & ~d.filled).sum())
            filled[LABELS[c]] += int((sel & d.filled).sum())
        frames_filled += int(d.filled.any())
    timing_keys = sorted({k for r in results for k in r.timings})
    report = {
        "source": manifest.source_name,
        "output": output_name or str(output),
        "input": _stream_facts(manifest.info),
        **({"input_note": manifest.input_note} if manifest.input_note else {}),
        "output_stream": _stream_facts(out_info),
        # `review` takes thumbnails only from a video of this size: the source beside
        # the records (of the output's frame size, often of its name) gave a page of
        # unblurred faces
        "output_bytes": Path(output).stat().st_size,
        "frames": len(shown),
        "frames_match": same_frame_times(shown, info.time_base, out_info, shift),
        "start_shift_s": float(shift * info.time_base),
        **damage_report(info, [r.damage for r in results]),
        **rescale_report(info, [r.damage for r in results]),
        **left_out_report(left_out),
        "segments": len(manifest.segments),
        "detections": counts,
        "filled_boxes": filled,
        "frames_with_filled_boxes": frames_filled,
        "frames_with_detections": sum(1 for d in frames.values() if len(d)),
        "dropped_streams": manifest.dropped_streams,
        "zones": manifest.zones,
        "settings": settings.to_dict(),
        "timings": {k: round(sum(r.timings.get(k, 0.0) for r in results), 3)
                    for k in timing_keys},
        "files": {k: str(v) for k, v in paths.items()},
    }
    times = {i: Fraction(info.frame_pts[i]) * manifest.time_base for i in frames}
    report.update(review_flags(frames, times, settings.to_dict(), info.width, info.height))
    report.update(extra_report or {})
    return report


def same_frame_times(shown: list[int], time_base, b: video.VideoInfo, shift: int = 0) -> bool:
    """Whether ``b`` holds exactly the frames ``shown`` (source pts in
    ``time_base``: the source's frames that decode) at their times (pts ×
    time base, plus ``shift`` ticks for a source that starts before 0).

    A container may store the time base as an equal finer one (then the times
    are equal), or only a coarser one: Matroska keeps milliseconds, so an
    MPEG-TS's 90 kHz times land on the nearest millisecond. A time within
    half a tick of the output's time base is the same time; a frame out of
    place is a whole frame duration off."""
    if len(shown) != b.n_frames:
        return False
    ta, tb = Fraction(time_base), Fraction(b.time_base)
    return all(abs((p + shift) * ta - q * tb) <= tb / 2
               for p, q in zip(shown, b.frame_pts, strict=True))


def _stream_facts(info: video.VideoInfo) -> dict:
    return {"codec": info.codec, "width": info.width, "height": info.height,
            "pix_fmt": info.pix_fmt, "time_base": str(info.time_base),
            "avg_fps": info.avg_fps, "frames": info.n_frames, "duration_s": info.duration_s,
            "rotation": info.rotation, "other_streams": info.other_streams}
