"""Decode: frames of a source or segment file as RGB arrays, in source pts.

At most a small reorder window of frames is held, so memory does not grow
with the video. Damage does not stop decoding: like a player, the decoder
skips a packet it rejects and goes on, and a :class:`DecodeLog` records
what happened so that the frames affected can be counted and reported.
"""

from __future__ import annotations

import bisect
import heapq
import json
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from fractions import Fraction

import av
import av.video.reformatter
import numpy as np

from models.errors import one_line

from .h264 import FrameNumCheck
from .probe import (
    REORDER_FRAMES,
    VideoError,
    VideoInfo,
    demux_until_error,
    open_input,
    video_stream,
)

#: container metadata key of a segment file's description (see segments.split_segment)
SEGMENT_TAG = "ANONYMIZE_SEGMENT"
_TAG_PIECE = 900
# messages kept per log (the report shows a few, the count says the rest)
_MAX_MESSAGES = 5


@dataclass
class DecodeLog:
    """What one decoding pass met, in source pts.

    ``packets``: every packet's pts in decode order and whether decoding can
    restart there (a keyframe): damage spreads along this order until the
    next keyframe. ``suspect``: frames decoded from damaged data (the decoder
    flagged them concealed, an H.264 reference before them is missing, or the
    segment file says so). ``shown``: the frames handed out. ``messages``:
    what the decoder or demuxer said, first few. ``rescaled``: frames decoded
    at another size than the stream's (a stream that changes size midway:
    joined broadcasts, video-call recordings), scaled to it; ``sizes``: those
    other sizes (width, height)."""

    packets: list[tuple[int, bool]] = field(default_factory=list)
    suspect: set[int] = field(default_factory=set)
    shown: set[int] = field(default_factory=set)
    messages: list[str] = field(default_factory=list)
    errors: int = 0
    rescaled: set[int] = field(default_factory=set)
    sizes: set[tuple[int, int]] = field(default_factory=set)

    def note(self, message: str) -> None:
        self.errors += 1
        if len(self.messages) < _MAX_MESSAGES and message not in self.messages:
            self.messages.append(message)

    def rgb(self, pts: int, frame, width: int | None, height: int | None) -> np.ndarray:
        """``frame`` as RGB at the stream's size, noting it when it had another."""
        if width and height and (frame.width, frame.height) != (width, height):
            self.rescaled.add(pts)
            self.sizes.add((frame.width, frame.height))
        return to_rgb(frame, width, height)

    def concealed(self, missing: set[int]) -> set[int]:
        """Frames decoded from damaged data: the suspects, and every frame after
        a suspect or a ``missing`` frame in decode order up to the next keyframe
        (they are predicted from it). ``missing`` frames themselves are not
        included: they were never decoded."""
        bad = self.suspect | missing
        out, tainted = set(), False
        for pts, key in self.packets:
            if key and pts not in bad:
                tainted = False
            if pts in bad:
                tainted = True
            if tainted:
                out.add(pts)
        return (out | self.suspect) - missing


class FrameTimes:
    """Container timestamps -> source pts.

    A segment file may store times in another time base (Matroska: 1 ms) and
    shifted by ``offset`` (no container is asked to store negative times). A
    time that is not within one tick of a known frame is not a frame of the
    video (a packet hidden by an edit list, say) and maps to None."""

    def __init__(self, tb: Fraction, tb_src: Fraction, offset: int, known: list[int] | None):
        self.scale = Fraction(tb) / Fraction(tb_src)  # one container tick, in source units
        self.offset = offset
        self.known = known

    def raw(self, label: int) -> int:
        return round(label * self.scale) - self.offset

    def frame(self, label: int) -> int | None:
        x = label * self.scale - self.offset
        if self.known is None:
            return round(x)
        i = bisect.bisect_left(self.known, x)
        if self.scale <= 1:  # the container keeps the source's times exactly
            return self.known[i] if i < len(self.known) and self.known[i] == x else None
        near = [k for k in self.known[max(0, i - 1) : i + 1] if abs(k - x) <= self.scale]
        return min(near, key=lambda k: abs(k - x)) if near else None


def iter_frames(path, info: VideoInfo | None = None, threads: int = 0,
                log: DecodeLog | None = None, name=None) -> Iterator[tuple[int, np.ndarray]]:
    """Yield ``(pts, H×W×3 uint8 RGB)`` in presentation order, pts in the
    source time base, for a source file or a ``split_segment`` file.

    Streams: at most a small reorder window of frames is held. Decoders hand
    out frames in display order, but some containers (AVI) attach shuffled
    labels; the labels are therefore re-sorted over a window and the k-th
    frame out gets the k-th smallest label. Only frames the video shows are
    yielded (the segment tag's or ``info``'s frame list): packets hidden by an
    edit list are decoded, as references, but not shown; frames of a segment
    file outside its context range (open-GOP leading pictures, the trailing
    keyframe) are skipped. ``log`` collects damage; messages name ``name``
    (the user's file) rather than a segment file."""
    tag = segment_tag(path)
    known: list[int] | None = None
    tb_src: Fraction | None = None
    offset = 0
    lo = hi = None
    if tag is not None:
        known = tag["frame_pts"]
        tb_src = Fraction(tag["time_base"])
        offset = tag.get("pts_offset", 0)
        lo, hi = known[0], known[-1]
        if log is not None:
            log.suspect.update(tag.get("concealed", []))
            log.rescaled.update(tag.get("rescaled", []))
            log.sizes.update(tuple(size) for size in tag.get("sizes", []))
    elif info is not None:
        known = info.frame_pts
        tb_src = info.time_base
    name = name or path
    with open_input(path) as c:
        vs = video_stream(c, path)
        vs.codec_context.thread_type = "AUTO"
        vs.codec_context.thread_count = threads  # 0: FFmpeg picks
        tb = Fraction(vs.time_base.numerator, vs.time_base.denominator)
        times = FrameTimes(tb, tb_src or tb, offset, known)
        width = info.width if info else None
        height = info.height if info else None
        for pts, frame in decode_frames(_demux(c, vs, log), vs.codec_context, times, log, name):
            if lo is not None and not (lo <= pts <= hi):
                continue
            if log is None:
                yield pts, to_rgb(frame, width, height)
                continue
            log.shown.add(pts)
            yield pts, log.rgb(pts, frame, width, height)


def _demux(c, vs, log: DecodeLog | None) -> Iterator[av.Packet]:
    """The stream's packets with data; a demuxer error ends the file, as it
    ends playback, and is noted in ``log``."""

    def note(e: Exception) -> None:
        if log is not None:
            log.note(f"{c.format.name}: {_reason(e)}")

    return (p for p in demux_until_error(c, vs, on_error=note) if p.size)


def decode_frames(packets: Iterable[av.Packet], codec, times: FrameTimes, log: DecodeLog | None,
                  name) -> Iterator[tuple[int, av.VideoFrame]]:
    """``(source pts, frame)`` of the frames the video shows, in display order.

    A packet the decoder rejects is skipped (the frames it held are missing
    from the output; the caller counts them against the frame list), and a
    frame the decoder had to conceal is marked suspect in ``log``. A frame at
    the time of one already given (damaged timing: the probe counts these)
    is not given again."""
    check = FrameNumCheck(codec.extradata) if codec.name == "h264" else None
    window: deque = deque()
    labels: list[int] = []
    given: set[int] = set()

    def decode(packet) -> list:
        try:
            return codec.decode(packet)
        except av.FFmpegError as e:
            if log is not None:
                log.note(f"{codec.name}: a packet was rejected ({_reason(e)})")
            return []

    def ready(flush: bool) -> Iterator[tuple[int, av.VideoFrame]]:
        while window and (flush or len(window) > REORDER_FRAMES):
            frame, label = window.popleft(), heapq.heappop(labels)
            pts = times.frame(label)
            if pts is not None and pts not in given:
                given.add(pts)
                yield pts, frame

    for packet in packets:
        if log is not None and packet.pts is not None:
            src_pts = times.raw(packet.pts)
            log.packets.append((src_pts, packet.is_keyframe))
            if check is not None and check.packet(memoryview(packet)):
                log.suspect.add(src_pts)
                log.note(f"{codec.name}: a reference picture is missing (frame number gap)")
        for frame in _decoded(decode(packet), name):
            heapq.heappush(labels, frame.pts)
            window.append(frame)
            if log is not None and frame.is_corrupt:
                log.suspect.add(times.raw(frame.pts))
                log.note(f"{codec.name}: a frame was concealed (decode errors)")
        yield from ready(flush=False)
    for frame in _decoded(decode(None), name):
        heapq.heappush(labels, frame.pts)
        window.append(frame)
        if log is not None and frame.is_corrupt:
            log.suspect.add(times.raw(frame.pts))
    yield from ready(flush=True)


def _reason(e: Exception) -> str:
    """FFmpeg's reason without errno and function names."""
    return (getattr(e, "strerror", None) or one_line(e)).strip()


def _decoded(frames: list, name) -> list:
    for f in frames:
        if f.pts is None:
            raise VideoError(f"frames without timestamps in {name}")
    return frames


#: YUV -> RGB with exact rounding over fully interpolated chroma: swscale's fast
#: path truncates, which moved every frame of the output about 0.8 grey levels
#: off the source's brightness outside the blurred regions (the encoder's RGB -> YUV
#: rounds correctly either way); about 2 ms more per 768x432 frame
EXACT_RGB = (av.video.reformatter.Interpolation.BILINEAR
             | av.video.reformatter.Interpolation.ACCURATE_RND
             | av.video.reformatter.Interpolation.FULL_CHR_H_INT)


def to_rgb(frame, width=None, height=None) -> np.ndarray:
    kw = {"format": "rgb24", "src_color_range": frame.color_range, "interpolation": EXACT_RGB}
    if width and height and (frame.width, frame.height) != (width, height):
        kw.update(width=width, height=height)
    return frame.to_ndarray(**kw)


def source_times(info: VideoInfo, known: list[int] | None = None) -> FrameTimes:
    """Timestamp mapping for decoding the source itself (its own time base)."""
    known = known if known is not None else info.frame_pts
    return FrameTimes(info.time_base, info.time_base, 0, known)


def set_segment_tag(container, tag: dict) -> None:
    """Store a segment file's description in ``container``'s metadata, in
    pieces: NUT's demuxer reads back at most 1023 bytes of one value, and a
    segment's frame list is longer (``ANONYMIZE_SEGMENT``, ``..._1``, ...)."""
    text = json.dumps(tag, separators=(",", ":"))
    for k in range(0, max(1, len(text)), _TAG_PIECE):
        key = SEGMENT_TAG if k == 0 else f"{SEGMENT_TAG}_{k // _TAG_PIECE}"
        container.metadata[key] = text[k : k + _TAG_PIECE]


def segment_tag(path) -> dict | None:
    """The ``split_segment`` description stored in a segment file, if any."""
    with open_input(path) as c:
        meta = {k.upper(): v for k, v in c.metadata.items()}
    if SEGMENT_TAG not in meta:
        return None
    pieces, k = [meta[SEGMENT_TAG]], 1
    while f"{SEGMENT_TAG}_{k}" in meta:
        pieces.append(meta[f"{SEGMENT_TAG}_{k}"])
        k += 1
    return json.loads("".join(pieces))
