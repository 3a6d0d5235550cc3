"""Decode: frames of a source or segment file as RGB arrays, in source pts.

At most a small reorder window of frames is held, so memory does not grow
with the video.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Iterator
from fractions import Fraction

import numpy as np

from .probe import VideoError, VideoInfo, decode_packet, has_pts, open_input, snap_pts, video_stream
from .segments import segment_tag

# labels are re-sorted over this many decoded frames (see iter_frames)
_REORDER_WINDOW = 16


def iter_frames(path, info: VideoInfo | None = None, threads: int = 0
                ) -> Iterator[tuple[int, np.ndarray]]:
    """Yield ``(pts, H×W×3 uint8 RGB)`` in presentation order, pts in the
    source time base, for a source file or a ``split_segment`` file.

    Streams: at most a small reorder window of frames is held. Decoders hand
    out frames in display order, but some containers (AVI) attach shuffled
    labels; the labels are therefore re-sorted over a window and the k-th
    frame out gets the k-th smallest label. Times are snapped to the known
    frame pts (segment tag or ``info``) because segment containers may round
    (Matroska: 1 ms). Frames of a segment file outside its context range
    (open-GOP leading pictures, the trailing keyframe) are skipped."""
    tag = segment_tag(path)
    known: list[int] | None = None
    tb_src: Fraction | None = None
    lo = hi = None
    if tag is not None:
        known = tag["frame_pts"]
        tb_src = Fraction(tag["time_base"])
        lo, hi = known[0], known[-1]
    elif info is not None:
        known = info.frame_pts
        tb_src = info.time_base
    with open_input(path) as c:
        vs = video_stream(c, path)
        vs.codec_context.thread_type = "AUTO"
        vs.codec_context.thread_count = threads  # 0: FFmpeg picks
        tb = Fraction(vs.time_base.numerator, vs.time_base.denominator)
        tb_src = tb_src or tb
        width = info.width if info else None
        height = info.height if info else None

        def out(frame, label):
            if tb == tb_src:
                pts = label
                if known and not has_pts(known, pts):
                    return None  # not a frame of the video (e.g. before an edit list start)
            else:
                pts = round(label * tb / tb_src)
                if known:
                    pts = snap_pts(pts, known)
            if lo is not None and not (lo <= pts <= hi):
                return None
            return pts, _to_rgb(frame, width, height)

        window: deque = deque()
        labels: list[int] = []
        for packet in c.demux(vs):
            for frame in decode_packet(vs, packet, path):
                if frame.pts is None:
                    raise VideoError(f"frames without timestamps in {path}")
                heapq.heappush(labels, frame.pts)
                window.append(frame)
                if len(window) > _REORDER_WINDOW:
                    item = out(window.popleft(), heapq.heappop(labels))
                    if item is not None:
                        yield item
        while window:
            item = out(window.popleft(), heapq.heappop(labels))
            if item is not None:
                yield item


def _to_rgb(frame, width=None, height=None) -> np.ndarray:
    kw = {"format": "rgb24", "src_color_range": frame.color_range}
    if width and height and (frame.width, frame.height) != (width, height):
        kw.update(width=width, height=height)
    return frame.to_ndarray(**kw)
