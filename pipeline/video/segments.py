"""GOP-aligned segments: the unit of work of a job (a distributed "frame batch").

``plan_segments`` cuts at keyframes; ``split_segment`` copies (no decode) the
packets of one segment plus its context frames into a segment file whose
tag (``ANONYMIZE_SEGMENT``) records the exact source pts of every frame in
it, so a worker decodes exactly the frames it owns and their context.
Matroska (``.mkv``) is the recommended suffix because it carries any source
codec; it stores milliseconds, which the tag corrects.
"""

from __future__ import annotations

import bisect
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import av

from .encode import open_output
from .probe import VideoError, VideoInfo, open_input

SEGMENT_TAG = "ANONYMIZE_SEGMENT"


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
    """Copy (no decode) the video packets that decode to frames
    [ctx_start, ctx_stop) into ``out_path``; pts are the source's.

    Packets run in decode order from the keyframe at ctx_start up to the
    keyframe at ctx_stop, plus any packets right after that keyframe which
    present earlier (open-GOP leading pictures); the extra keyframe is then
    dropped again by ``iter_frames``. Audio is not copied: ``join_segments``
    takes it from the source."""
    out_path = Path(out_path)
    first_pts = info.frame_pts[segment.ctx_start]
    stop_pts = info.frame_pts[segment.ctx_stop] if segment.ctx_stop < info.n_frames else None
    tag = {
        "index": segment.index,
        "time_base": str(info.time_base),
        "ctx_start": segment.ctx_start,
        "ctx_stop": segment.ctx_stop,
        "frame_pts": info.frame_pts[segment.ctx_start : segment.ctx_stop],
    }
    # keep_tags: an MP4 segment file must store the custom segment tag too
    with open_input(source) as src, open_output(out_path, True, info.time_base) as dst:
        vs = src.streams[info.stream_index]
        ovs = dst.add_stream_from_template(vs)
        if info.rotation:
            ovs.set_display_rotation(info.rotation)
        dst.metadata[SEGMENT_TAG] = json.dumps(tag, separators=(",", ":"))
        if not _copy_run(src, vs, ovs, dst, first_pts, stop_pts, seek=True):
            if not _copy_run(src, vs, ovs, dst, first_pts, stop_pts, seek=False):
                raise VideoError(f"keyframe at pts {first_pts} not found in {source}")
    return out_path


def _copy_run(src, vs, ovs, dst, first_pts, stop_pts, seek) -> bool:
    """Mux packets from the keyframe ``first_pts`` to the keyframe
    ``stop_pts`` (exclusive, decode order). The stop keyframe and what follows
    it are kept only while following packets present before it (leading
    pictures of an open GOP need it as reference). False if never started."""
    if seek and first_pts > 0:
        try:
            src.seek(first_pts, backward=True, any_frame=False, stream=vs)
        except av.FFmpegError:
            return False
    elif not seek:
        src.seek(0)
    started = False
    held = None  # the stop keyframe, waiting to see whether leading pictures follow
    for p in src.demux(vs):
        if p.size == 0 or p.pts is None:
            continue
        if not started:
            if not (p.is_keyframe and p.pts == first_pts):
                if p.pts > first_pts and p.is_keyframe and seek:
                    return False
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
                    held.stream = ovs
                    dst.mux(held)
                    held = True
        p.stream = ovs
        dst.mux(p)
    return started


def segment_tag(path) -> dict | None:
    """The ``split_segment`` description stored in a segment file, if any."""
    with open_input(path) as c:
        raw = c.metadata.get(SEGMENT_TAG) or c.metadata.get(SEGMENT_TAG.lower())
    return json.loads(raw) if raw else None
