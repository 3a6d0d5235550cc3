"""GOP-aligned segments: the unit of work of a job (a distributed "frame batch").

``plan_segments`` cuts at keyframes; ``split_segment`` writes the packets of
one segment plus its context frames into a segment file whose tag
(``ANONYMIZE_SEGMENT``, see :func:`.decode.segment_tag`) records the exact
source pts of every frame it shows, so a worker decodes exactly the frames
it owns and their context, whatever container the file is.

Segment files (the same choice for the same source on every machine, so the
distributed split task and ``anonymize run`` cut alike):

* **stream copy** into the first container of ``_COPY_FORMATS`` whose header
  takes the source stream (tried in memory): NUT first, which stores any
  time base exactly and carries most codecs FFmpeg has (GIF, PNG, raw
  video, which Matroska refuses), then Matroska (ProRes, which NUT refuses;
  it stores milliseconds, which the tag corrects). Timestamps are shifted
  by ``pts_offset`` (in the tag) when the first packet has a negative time,
  since neither container stores negative times faithfully. MOV/MP4 are
  not used: their edit lists would hide or retime packets on reading.
* **decoded** when no container takes a copy (APNG, QuickTime RLE), the
  source has palette frames (a palette can sit in a header or on a stream's
  first packet only, so a copy cut mid-stream would lose it), a muxer
  refuses a packet, or the copy's first picture does not decode to the
  source's (raw video: NUT has no tag for every pixel layout AVI can hold):
  the segment's frames are decoded and stored losslessly (FFV1, 8-bit RGB,
  every frame a keyframe, in NUT) with their source pts, exactly the RGB
  frames decoding the source gives.
"""

from __future__ import annotations

import bisect
import contextlib
import io
import itertools
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from .decode import (
    DecodeLog,
    FrameTimes,
    decode_frames,
    segment_tag,
    set_segment_tag,
    source_times,
    to_rgb,
)
from .probe import VideoError, VideoInfo, demux_until_error, local_name, open_input

# containers tried for a stream copy, in order
_COPY_FORMATS = ("nut", "matroska")
# how decoded segments are stored: lossless, exact for the RGB frames decoding gives
_LOSSLESS_CODEC, _LOSSLESS_PIX_FMT = "ffv1", "bgr0"


@dataclass
class Segment:
    """Frames [start, stop) are this segment's output; [ctx_start, ctx_stop)
    can be decoded from its segment file (context for temporal filling)."""

    index: int
    start: int
    stop: int
    ctx_start: int
    ctx_stop: int

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Segment:
        return cls(**d)


def plan_segments(info: VideoInfo, target_frames: int, context: int) -> list[Segment]:
    """Cut at keyframes into segments of about ``target_frames`` frames; each
    segment file reaches at least ``context`` frames beyond its owned range on
    both sides (whole GOPs), where the video allows."""
    if target_frames < 1 or context < 0:
        raise ValueError("target_frames must be >= 1 and context >= 0")
    n = info.n_frames
    keys = sorted(set(info.keyframe_indices) | {0})
    cuts = [0]
    for k in keys[1:]:
        if k - cuts[-1] >= target_frames:
            cuts.append(k)
    # a short tail joins the previous segment rather than standing alone
    if len(cuts) > 1 and n - cuts[-1] < target_frames // 2:
        cuts.pop()
    bounds = cuts + [n]
    segs = []
    for i, (a, b) in enumerate(zip(bounds[:-1], bounds[1:], strict=True)):
        lo = max(0, a - context)
        cs = keys[bisect.bisect_right(keys, lo) - 1]
        hi = b + context
        j = bisect.bisect_left(keys, hi)
        ce = keys[j] if j < len(keys) else n
        segs.append(Segment(i, a, b, cs, ce))
    return segs


def split_segment(source, info: VideoInfo, segment: Segment, out_path) -> Path:
    """Write the packets that decode to frames [ctx_start, ctx_stop) into
    ``out_path`` (stream copy, or decoded where a copy cannot be made; the
    suffix does not matter, the file describes itself); pts are the source's.

    Packets run in decode order from the keyframe at ctx_start (from the
    stream's first packet for the first segment: an edit list may hide the
    keyframe it starts from) up to the keyframe at ctx_stop, plus any packets
    right after that keyframe which present earlier (open-GOP leading
    pictures); frames outside the range are dropped again by ``iter_frames``.
    Audio is not copied: ``join_segments`` takes it from the source."""
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tag = {
        "index": segment.index,
        "time_base": str(info.time_base),
        "ctx_start": segment.ctx_start,
        "ctx_stop": segment.ctx_stop,
        "frame_pts": info.frame_pts[segment.ctx_start : segment.ctx_stop],
    }
    with open_input(source) as src:
        fmt = copy_container(src.streams[info.stream_index], info)
    if fmt is not None:
        try:
            _write_copy(_packets(source, info, segment), fmt, info, out_path, dict(tag))
            if _first_pictures_agree(out_path, source, info, segment):
                return out_path
        except (av.FFmpegError, _Uncopyable):
            pass  # a muxer refused a packet, or would have aborted the process
        out_path.unlink(missing_ok=True)
    _write_decoded(_packets(source, info, segment), info, out_path, dict(tag), source)
    return out_path


def copy_container(stream, info: VideoInfo) -> str | None:
    """The first of ``_COPY_FORMATS`` that takes a stream copy of ``stream``
    (its header written in memory), or None when the segment must be decoded."""
    if info.pix_fmt == "pal8":
        return None
    for fmt in _COPY_FORMATS:
        try:
            with av.open(io.BytesIO(), "w", format=fmt) as dst:
                o = dst.add_stream_from_template(stream)
                o.time_base = stream.time_base
                dst.start_encoding()
            return fmt
        except (ValueError, av.FFmpegError):
            continue
    return None


def _open_segment(path: Path, fmt: str):
    # bitexact: no muxer-written encoder name or random ids
    return av.open(local_name(path), "w", format=fmt, container_options={"fflags": "+bitexact"})


#: packets looked ahead for the first decode timestamp (a B-frame stream's
#: delay is a few packets; a stream with none at all is left to the muxer)
_DTS_LOOKAHEAD = 64


def _with_dts(packets: Iterator[av.Packet]) -> Iterator[av.Packet]:
    """``packets`` with the decode timestamps the demuxer left unset before its
    first one filled in, a packet duration apart, ending before that one.

    Why: Matroska stores no dts. For a stream with B-frames FFmpeg can guess
    them only from the packet after its reorder delay on, so the first
    packets of an MKV come without one; muxed as they are, NUT shifts the
    whole segment by the guess it makes itself (two frames for x264's
    defaults), the frames' times no longer match the tag, and the first
    frames were lost as if undecodable. With every dts known the shift is
    ``pts_offset``'s, which the tag records. A stream shorter than its
    reorder delay has no dts at all: all of them are filled, ending before
    its first shown time."""
    head: list[av.Packet] = []
    whole = True  # the look-ahead read the whole stream
    for p in packets:
        head.append(p)
        if p.dts is not None or len(head) > _DTS_LOOKAHEAD:
            whole = False
            break
    unset, dts = [], None
    if head and head[-1].dts is not None:
        unset, dts = head[:-1], head[-1].dts
    elif head and whole:  # a stream shorter than its reorder delay: no dts at all
        unset, dts = head, min(p.pts for p in head) + 1
    if unset:
        step = max(1, head[-1].duration or 0)  # any step > 0 keeps decode order
        for p in reversed(unset):
            dts = p.dts = min(p.pts, dts - step)  # increasing, and never after its pts
    yield from head
    yield from packets


class _Uncopyable(Exception):
    """A packet the segment's muxer must not be given: the segment is decoded instead."""


def _write_copy(packets: Iterator[av.Packet], fmt: str, info: VideoInfo, out_path: Path,
                tag: dict) -> None:
    """The stream copy. NUT's index needs keyframes in increasing time, and
    FFmpeg checks it with an assertion when the file is closed, which aborts
    the process (no exception, the work folder left behind): damaged
    timestamps (an MP4 whose timing table was overwritten) put a keyframe
    before an earlier one, so such a copy is given up before that packet."""
    first = next(packets)
    with _open_segment(out_path, fmt) as dst:
        # the stream template is read before the dts look-ahead, which may read a
        # short file to its end: the source container then closes, and its
        # stream with it (reading it then crashed the process)
        ovs = dst.add_stream_from_template(first.stream)
        ovs.time_base = first.stream.time_base
        info.show_as_source(ovs)
        packets = _with_dts(itertools.chain([first], packets))
        first = next(packets)
        start = min(t for t in (first.pts, first.dts) if t is not None)
        offset = max(0, -start)  # dts only grow in decode order, and pts >= dts
        tag.update(pts_offset=offset, container=fmt)
        set_segment_tag(dst, tag)
        last_key = -1  # NUT's index: each keyframe's time above the last one's, from -1
        for p in itertools.chain([first], packets):
            if offset:
                p.pts += offset
                if p.dts is not None:
                    p.dts += offset
            if fmt == "nut" and p.is_keyframe:
                if p.pts <= last_key:
                    raise _Uncopyable(f"keyframe at pts {p.pts} after one at {last_key}")
                last_key = p.pts
            p.stream = ovs
            dst.mux(p)


def _first_pictures_agree(copy: Path, source, info: VideoInfo, segment: Segment) -> bool:
    """Whether the copy's first shown picture decodes to the same pixels as the
    source's: a container can drop what a codec needs to read its packets
    (raw video's pixel layout), and then only the pictures tell."""
    known = info.frame_pts[segment.ctx_start : segment.ctx_stop]
    packets = _packets(source, info, segment)
    first = next(packets)
    want = _first_picture(itertools.chain([first], packets), first.stream.codec_context,
                          source_times(info, known), info)
    packets.close()
    tag = segment_tag(copy) or {}
    with open_input(copy) as c:
        vs = c.streams.video[0]
        tb = Fraction(vs.time_base.numerator, vs.time_base.denominator)
        times = FrameTimes(tb, info.time_base, tag.get("pts_offset", 0), known)
        got = _first_picture(_readable(c, vs), vs.codec_context, times, info)
    return (want is None) == (got is None) and (want is None or np.array_equal(want, got))


def _first_picture(packets, codec, times: FrameTimes, info: VideoInfo):
    """The first decoded frame the video shows (not one hidden by an edit list)."""
    for p in itertools.chain(packets, [None]):
        try:
            frames = codec.decode(p)
        except av.FFmpegError:
            continue
        for f in frames:
            if f.pts is not None and times.frame(f.pts) is not None:
                return to_rgb(f, info.width, info.height)
    return None


def _write_decoded(packets: Iterator[av.Packet], info: VideoInfo, out_path: Path, tag: dict,
                   source) -> None:
    """Decode the segment's frames and store them losslessly; damage met on
    the way travels in the tag (``concealed``), as do frames of another size
    than the stream's (``rescaled``); missing frames are simply not there
    (the segment job counts them)."""
    first = next(packets)
    codec = first.stream.codec_context
    codec.thread_type = "AUTO"
    known = tag["frame_pts"]
    offset = max(0, -known[0])
    tag.update(pts_offset=offset, container="nut", decoded=_LOSSLESS_CODEC)
    log = DecodeLog()
    tmp = out_path.with_name(out_path.name + ".frames")
    try:
        with _open_segment(tmp, "nut") as dst:
            s = dst.add_stream(_LOSSLESS_CODEC)
            s.width, s.height, s.pix_fmt = info.width, info.height, _LOSSLESS_PIX_FMT
            s.time_base = s.codec_context.time_base = info.time_base
            s.codec_context.gop_size = 1  # every frame a keyframe: damage does not spread
            times = source_times(info, known)
            for pts, frame in decode_frames(itertools.chain([first], packets), codec, times, log,
                                            source):
                if not known[0] <= pts <= known[-1]:
                    continue
                log.shown.add(pts)
                rgb = av.VideoFrame.from_ndarray(log.rgb(pts, frame, info.width, info.height),
                                                 "rgb24")
                out = rgb.reformat(format=_LOSSLESS_PIX_FMT)
                out.pts, out.time_base = pts + offset, info.time_base
                for p in s.encode(out):
                    dst.mux(p)
            for p in s.encode(None):
                dst.mux(p)
        missing = set(known) - log.shown
        tag["concealed"] = sorted(log.concealed(missing) & set(known))
        if log.rescaled:
            tag.update(rescaled=sorted(log.rescaled), sizes=sorted(log.sizes))
        with open_input(tmp) as src, _open_segment(out_path, "nut") as dst:
            vs = src.streams.video[0]
            ovs = dst.add_stream_from_template(vs)
            ovs.time_base = vs.time_base
            set_segment_tag(dst, tag)
            for p in src.demux(vs):
                if p.size:
                    p.stream = ovs
                    dst.mux(p)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def _packets(source, info: VideoInfo, segment: Segment) -> Iterator[av.Packet]:
    """The source packets of a segment, in decode order (see :func:`split_segment`).
    Seeks to the start keyframe; if the seek misses it, reads from the start."""
    first_pts = info.frame_pts[segment.ctx_start]
    stop_pts = info.frame_pts[segment.ctx_stop] if segment.ctx_stop < info.n_frames else None
    from_start = segment.ctx_start == 0
    for seek in (False,) if from_start else (True, False):
        with open_input(source) as src:
            vs = src.streams[info.stream_index]
            if seek and first_pts > 0:
                try:
                    src.seek(first_pts, backward=True, any_frame=False, stream=vs)
                except av.FFmpegError:
                    continue
            started = False
            for p in _run(_readable(src, vs), first_pts, stop_pts, from_start, seek):
                started = True
                yield p
            if started:
                return
    raise VideoError(f"keyframe at pts {first_pts} not found in {source}")


def _readable(src, vs) -> Iterator[av.Packet]:
    """The stream's packets with data; a demuxer error ends the file."""
    return (p for p in demux_until_error(src, vs) if p.size and p.pts is not None)


def _run(packets, first_pts, stop_pts, from_start: bool, seek: bool) -> Iterator[av.Packet]:
    """Packets from the keyframe ``first_pts`` (or the first packet) to the
    keyframe ``stop_pts`` (exclusive, decode order). The stop keyframe and what
    follows it are kept only while following packets present before it
    (leading pictures of an open GOP need it as reference). Nothing if the
    start is never found."""
    started = False
    held = None  # the stop keyframe, waiting to see whether leading pictures follow
    for p in packets:
        if not started:
            if not (from_start or (p.is_keyframe and p.pts == first_pts)):
                if p.pts > first_pts and p.is_keyframe and seek:
                    return
                continue
            started = True
        if stop_pts is not None:
            if held is None and p.is_keyframe and p.pts == stop_pts:
                held = p
                continue
            if held is not None:
                if p.pts >= stop_pts:
                    break
                if held is not True:
                    yield held
                    held = True
        yield p
