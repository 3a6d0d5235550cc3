"""Join: encoded segments + the source's other streams -> the output file.

Video packets of the segments are concatenated (stream copy); audio,
subtitle and data streams of the source are copied byte for byte; rotation
kept; container metadata stripped unless asked to keep it. ``.mkv`` stores
milliseconds (frame times agree to within 0.5 ms); ``.avi`` is refused (no
per-frame timestamps).
"""

from __future__ import annotations

import heapq
import io
import math
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import av

from models.errors import one_line

from .encode import OUTPUT_SUFFIXES, check_output_suffix, open_output
from .probe import (
    VideoError,
    VideoInfo,
    demux_until_error,
    open_input,
    snap_pts,
    start_shift,
    video_stream,
)

# metadata keys that identify nobody and are kept even when stripping
_NEUTRAL_STREAM_KEYS = {"language"}


@dataclass
class StreamPlan:
    """Which of the source's other streams go into the output, and which are
    left out and why (a user is told: nothing disappears silently).

    Audio and subtitles are copied. Data streams (telemetry such as GPS
    tracks, timecodes) identify where a recording was made, so they follow
    ``keep_metadata``. Further video streams and attached pictures (cover
    art) are never copied: they were not anonymized, so they may show faces
    and plates."""

    copied: list[int] = field(default_factory=list)
    dropped: list[dict] = field(default_factory=list)


def plan_streams(src, info: VideoInfo, keep_metadata: bool) -> StreamPlan:
    plan = StreamPlan()
    for s in src.streams:
        if s.index == info.stream_index:
            continue
        codec = s.codec_context.name if s.codec_context else None
        if (s.type in ("audio", "subtitle") and codec) or (s.type == "data" and keep_metadata
                                                           and codec):
            plan.copied.append(s.index)
            continue
        if s.type in ("audio", "subtitle"):
            # an MP4 cut inside its index at the end: the track's description is gone,
            # and the run was refused with "use the source's container (.mp4)"
            why = ("its codec cannot be read (a damaged or cut-short file?), so it cannot "
                   "be copied")
        elif s.type == "video":
            attached = bool(s.disposition & av.stream.Disposition.attached_pic)
            why = ("an attached picture (cover art) is not anonymized" if attached
                   else "only the video stream a player shows (the first marked default, "
                        "else the first) is anonymized; another could show faces or plates")
        elif s.type == "data" and not codec:
            # FFmpeg reads a QuickTime chapter or timecode track so: no codec to copy
            # it with; chapters travel as the container's, which --keep-metadata keeps
            why = ("a track without a codec to copy it with (chapter text, timecode): "
                   "not copied; --keep-metadata keeps the chapters, not a timecode")
        elif s.type == "data":
            why = "data streams (telemetry such as GPS) are stripped; --keep-metadata keeps them"
        else:
            why = f"{s.type} streams are not copied"
        plan.dropped.append({"index": s.index, "type": s.type, "codec": codec, "reason": why})
    return plan


def _add_copies(src, dst, plan: StreamPlan, keep_metadata: bool, out_suffix: str,
                source) -> dict:
    """Output streams for the planned copies (raises the one-line VideoError when
    the output container cannot hold one)."""
    copies = {}
    for index in plan.copied:
        s = src.streams[index]
        try:
            o = dst.add_stream_from_template(s)
        except (ValueError, av.FFmpegError) as e:
            raise _not_copyable(s, out_suffix, source, e) from None
        o.time_base = s.time_base
        o.disposition = s.disposition
        o.metadata.update(_stream_tags(s.metadata, keep_metadata))
        copies[s.index] = o
    return copies


def _not_copyable(s, out_suffix: str, source, e: Exception) -> VideoError:
    """The refusal, with the output containers that do take the stream. It
    said "use the source's container", which for an AVI (a CCTV camera's,
    with IMA ADPCM or mu-law sound) is a container anonymize refuses to write."""
    codec = s.codec_context.name if s.codec_context else "?"
    fits = [suffix for suffix in _suffixes_taking(s) if suffix != out_suffix.lower()]
    if fits:
        hint = f"write {' or '.join(fits)} instead"
    else:
        writable = ", ".join(dict.fromkeys(_SUFFIX_OF.values()))
        hint = (f"no container anonymize writes ({writable}) can hold it: convert that "
                f"stream first (with ffmpeg, keeping the video as it is: -c:v copy)")
    # FFmpeg's own words, without PyAV's "'<none>' returned 22"
    why = (f"its muxer refused it ({e.strerror})" if isinstance(e, av.FFmpegError) and e.strerror
           else one_line(e))
    return VideoError(f"cannot copy {s.type} stream {s.index} ({codec}) of {source} into "
                      f"{out_suffix}: {why}; {hint}")


# one suffix for each container the output can be written in (the first named)
_SUFFIX_OF: dict[str, str] = {}
for _suffix, _fmt in OUTPUT_SUFFIXES.items():
    _SUFFIX_OF.setdefault(_fmt, _suffix)


def _suffixes_taking(s) -> list[str]:
    """The output suffixes (one per container) whose muxer takes a copy of
    stream ``s`` (its header written in memory)."""
    fits = []
    for fmt, suffix in _SUFFIX_OF.items():
        dst = av.open(io.BytesIO(), "w", format=fmt)
        try:
            o = dst.add_stream_from_template(s)
            o.time_base = s.time_base
            dst.start_encoding()
            fits.append(suffix)
        except (ValueError, av.FFmpegError):
            pass
        finally:
            try:
                dst.close()
            except (ValueError, av.FFmpegError):
                pass
    return fits


def check_output_streams(source, info: VideoInfo, out_suffix: str,
                         keep_metadata: bool = False) -> StreamPlan:
    """Before any frame is processed: can the output container hold an H.264
    video stream and every stream that will be copied? Writes the container
    header into memory with the very streams :func:`join_segments` would add."""
    fmt = OUTPUT_SUFFIXES.get(out_suffix.lower())
    if fmt is None:
        check_output_suffix(Path("output" + out_suffix))  # raises the one-line VideoError
    if fmt in ("mp4", "mov"):
        _check_mp4_gaps(source, info, out_suffix)
    with open_input(source) as src:
        plan = plan_streams(src, info, keep_metadata)
        dst = av.open(io.BytesIO(), "w", format=fmt)
        try:
            v = dst.add_stream("libx264", rate=25)
            v.width, v.height = max(2, info.width // 2 * 2), max(2, info.height // 2 * 2)
            v.pix_fmt = "yuv420p"
            _add_copies(src, dst, plan, keep_metadata, out_suffix, source)
            try:
                dst.start_encoding()
            except (ValueError, av.FFmpegError) as e:
                bad = next((src.streams[i] for i in plan.copied), None)
                if bad is None:
                    raise VideoError(f"cannot write {out_suffix}: {one_line(e)}") from None
                raise _not_copyable(bad, out_suffix, source, e) from None
        finally:
            try:
                dst.close()
            except (ValueError, av.FFmpegError):
                pass
    return plan


def _check_mp4_gaps(source, info: VideoInfo, out_suffix: str) -> None:
    """An MP4/MOV track stores each frame's duration in 32 bits of its time
    base, and FFmpeg takes a packet's duration only below 2^31 ticks: a
    damaged timestamp that puts one frame hours after the others (seen in a
    damaged MPEG-TS: 16.6 h at 1/90000; an MP4 whose timing table was
    overwritten: 53 h at 1/16000, between 2^31 and 2^32, which left the
    output without its video track) cannot be written, and the muxer failed
    only at the very end. Matroska holds it."""
    times = [*info.frame_pts, info.end_pts if info.end_pts is not None else info.frame_pts[-1]]
    gap = max((b - a for a, b in zip(times, times[1:], strict=False)), default=0)
    if gap >= 2**31:
        raise VideoError(f"{source} has {float(gap * info.time_base) / 3600:.1f} h between two "
                         f"frames (a damaged timestamp?), more than {out_suffix} can hold; "
                         f"write .mkv")


def output_shift(source, info: VideoInfo, out_suffix: str, keep_metadata: bool = False) -> int:
    """Ticks (of the source's video time base) added to every time the output
    holds: :func:`start_shift`, and for Matroska, which cannot hold times
    before 0, enough more that no copied packet is before 0 either. An MP4's
    AAC starts before 0 (the encoder's priming, 1024 samples, which the MP4's
    edit list hides): Matroska's muxer moved every stream by that much by
    itself, so the report's times, ``frames_match`` and the exit status said
    the frames were not where the source has them."""
    shift = start_shift(info)
    if OUTPUT_SUFFIXES.get(out_suffix.lower()) != "matroska":
        return shift
    with open_input(source) as src:
        copied = plan_streams(src, info, keep_metadata).copied
        earliest = _earliest_packet(src, copied) if copied else None
    if earliest is None:
        return shift
    before = -(earliest + shift * info.time_base)
    return shift + max(0, math.ceil(before / info.time_base))


def _earliest_packet(src, indices: list[int]) -> Fraction | None:
    """The earliest time (seconds) of the first packets of streams ``indices``,
    as Matroska's muxer sees it: read until each has given one, or up to 1 s
    (packets are interleaved by time, so nothing before 0 comes later). An
    audio stream that states its codec delay (Matroska's CodecDelay, which a
    copy keeps) may start that much before 0: the muxer stores its times
    from there."""
    seen, earliest = set(), None
    for p in demux_until_error(src, *(src.streams[i] for i in indices)):
        times = [t for t in (p.pts, p.dts) if t is not None]
        if not times:
            continue
        ptb = Fraction(p.time_base.numerator, p.time_base.denominator)
        cc = p.stream.codec_context
        if p.stream.type == "audio" and cc is not None and cc.delay and cc.sample_rate:
            # in the stream's ticks, rounded half away from 0 as the muxer rounds it
            times = [t + math.floor(Fraction(cc.delay, cc.sample_rate) / ptb + Fraction(1, 2))
                     for t in times]
        t = min(times) * ptb
        earliest = t if earliest is None else min(earliest, t)
        seen.add(p.stream_index)
        if len(seen) == len(indices) or t >= 1:
            break
    return earliest


def join_segments(segment_paths, source, info: VideoInfo, out_path, keep_metadata=False,
                  frame_pts: list[int] | None = None, left_out: list[dict] | None = None,
                  total_shift: int | None = None) -> Path:
    """Concatenate the encoded segments' video packets (stream copy), mux the
    source's streams that :func:`plan_streams` keeps by stream copy, keep
    the display matrix, strip container metadata and chapters unless
    ``keep_metadata``.

    ``frame_pts``: the frames the output must hold (default: every frame of
    the source; less the frames of a damaged source that do not decode). A
    segment whose frames all failed to decode has no video stream and is
    passed over.

    A copied packet that the output refuses as damaged (an AAC frame whose ADTS
    header no longer parses: MP4 and Matroska rewrite that header) is left
    out, and described in ``left_out`` (stream, time, reason) when given; the
    run failed on it at its very end, naming our temporary file.

    Packets of the two sources are merged by time as they are read, so memory
    does not grow with the video's length. Each video packet's duration is set
    to the gap to the next frame (last: to the source's end), so the output
    lasts exactly as long as the source. A source that starts before 0 is
    moved to start at 0, and in Matroska so are copied streams that start
    before 0 (:func:`output_shift`; ``total_shift`` when the caller has it
    already, which spares a second read of the source's first packets)."""
    out_path = Path(out_path)
    segment_paths = [Path(p) for p in segment_paths]
    if not segment_paths:
        raise ValueError("no segments to join")
    segment_paths = [p for p in segment_paths if _has_video(p)]
    expected = info.n_frames if frame_pts is None else len(frame_pts)
    if not segment_paths:
        raise VideoError(f"joined 0 frames but the source has {expected}: {out_path}")
    tb = info.time_base
    with open_input(source) as src, open_input(segment_paths[0]) as first, open_output(
        out_path, keep_metadata, info.time_base
    ) as dst:
        tmpl = video_stream(first, segment_paths[0])
        ovs = dst.add_stream_from_template(tmpl)
        ovs.time_base = tb
        # the segments' H.264 states its time base as its rate (x264 writes
        # 1/tb, "1k fps"), which a Matroska muxer would store as every frame's
        # duration: tell the muxer the source's rate instead
        ovs.codec_context.framerate = info.nominal_rate()
        info.show_as_source(ovs)
        # default, forced, ...: a player picks the video track as in the source
        ovs.disposition = src.streams[info.stream_index].disposition
        plan = plan_streams(src, info, keep_metadata)
        copies = _add_copies(src, dst, plan, keep_metadata, out_path.suffix, source)
        tags = _stream_tags(src.streams[info.stream_index].metadata, keep_metadata)
        # the MP4/MOV muxer turns this tag into a timecode track, which needs the
        # stream's frame rate, and a copied stream's cannot be set from here: the
        # file was refused after all the work (README, "Known limitations")
        tags.pop("timecode", None)
        ovs.metadata.update(tags)
        shift = start_shift(info)  # the segments were encoded with it
        total = (output_shift(source, info, out_path.suffix, keep_metadata)
                 if total_shift is None else total_shift)
        if keep_metadata:
            dst.metadata.update(src.metadata)
            dst.set_chapters(_shifted_chapters(src.chapters(), total * tb))
        count = [0]
        video = _video_packets(segment_paths, info, ovs, count, shift, total - shift)
        others = _other_packets(src, copies, total * tb)
        sources = {o.index: i for i, o in copies.items()}
        for t, packet in heapq.merge(video, others, key=lambda x: x[0]):
            try:
                dst.mux(packet)
            except (av.error.InvalidDataError, av.error.ArgumentError) as e:
                index = sources.get(packet.stream.index)
                if index is None:  # our own video packets are never left out
                    raise
                if left_out is not None:
                    left_out.append({"index": index, "type": src.streams[index].type,
                                     "time_s": round(float(t), 6),
                                     "reason": e.strerror or one_line(e)})
    if count[0] != expected:
        raise VideoError(f"joined {count[0]} frames but the source has {expected}: {out_path}")
    return out_path


def _shifted_chapters(chapters: list[dict], shift: Fraction) -> list[dict]:
    """The source's chapters moved as its frames are (:func:`start_shift`)."""
    out = []
    for ch in chapters:
        ticks = round(shift / ch["time_base"])
        out.append({**ch, "start": ch["start"] + ticks, "end": ch["end"] + ticks})
    return out


def _has_video(path: Path) -> bool:
    with open_input(path) as c:
        return bool(c.streams.video)


def _stream_tags(tags: dict, keep: bool) -> dict:
    if keep:
        return dict(tags)
    return {k: v for k, v in tags.items() if k.lower() in _NEUTRAL_STREAM_KEYS}


def _video_packets(paths, info: VideoInfo, ovs, count: list[int], shift: int = 0,
                   extra: int = 0):
    """(time, packet) of every encoded segment in order, with source pts plus
    ``shift`` (which the segments were encoded with too) plus ``extra``."""
    tb = info.time_base
    prev = None
    for path in paths:
        with open_input(path) as c:
            vs = video_stream(c, path)
            seg_tb = Fraction(vs.time_base.numerator, vs.time_base.denominator)
            for p in c.demux(vs):
                if p.size == 0:
                    continue
                pts = p.pts  # the source's pts + shift
                if seg_tb != tb:
                    pts = snap_pts(round(p.pts * seg_tb / tb) - shift, info.frame_pts) + shift
                pts += extra
                if prev is not None:
                    if pts <= prev.pts:
                        raise VideoError(f"segment {path} overlaps the previous one "
                                         f"(pts {pts - shift})")
                    prev.duration = pts - prev.pts
                    yield Fraction(prev.dts) * tb, prev
                p.stream = ovs
                p.time_base = tb
                p.pts = p.dts = pts
                prev = p
                count[0] += 1
    if prev is not None:
        end = info.end_pts + shift + extra if info.end_pts is not None else prev.pts + 1
        prev.duration = max(1, end - prev.pts)
        yield Fraction(prev.dts) * tb, prev


def _other_packets(src, copies: dict, shift_s: Fraction = Fraction(0)):
    """(time, packet) of the copied streams, moved by ``shift_s`` seconds."""
    if not copies:
        return
    streams = [src.streams[i] for i in copies]
    for p in demux_until_error(src, *streams):
        if p.pts is None and p.dts is None:
            continue  # a flush marker, or a damaged packet no container can place in time
        if p.size == 2 and bytes(p) == b"\x00\x00" and src.streams[p.stream_index].codec_context.name == "mov_text":
            continue  # an empty gap cue: the MP4 muxer writes these itself, keeping one avoids doubling
        ptb = Fraction(p.time_base.numerator, p.time_base.denominator)
        if shift_s:
            ticks = round(shift_s / ptb)
            if p.pts is not None:
                p.pts += ticks
            if p.dts is not None:
                p.dts += ticks
        ts = p.dts if p.dts is not None else p.pts
        t = Fraction(ts or 0) * ptb
        p.stream = copies[p.stream_index]
        yield t, p
