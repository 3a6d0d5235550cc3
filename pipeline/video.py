"""Video I/O: probe, GOP-aligned split, decode, H.264 encode, join by stream copy.

The product must hand back a video that plays exactly like the original, so
every function here works in the source's own timestamps: a frame is named by
its presentation timestamp (``pts``) in the source video stream's time base,
and its *index* is its position in ``VideoInfo.frame_pts``. Audio, subtitle
and data streams are never decoded: their packets are copied byte for byte.

Distributed workers and ``anonymize run`` use the same calls::

    info = probe(src)
    for seg in plan_segments(info, target_frames=250, context=5):
        split_segment(src, info, seg, "seg.mkv")       # stream copy, no decode
        with VideoWriter("enc.mp4", info) as w:        # H.264, no B-frames
            for pts, rgb in iter_frames("seg.mkv", info):
                if seg.start <= info.index_of(pts) < seg.stop:
                    w.write(blur(rgb), pts)
    join_segments(["enc0.mp4", ...], src, info, "out.mp4")

Containers:

* Segment files (``split_segment``): Matroska (``.mkv``) is the recommended
  suffix because it carries any source codec. Matroska stores timestamps in
  milliseconds, so the exact source pts of every frame in the file travel in
  a tag (``ANONYMIZE_SEGMENT``) and ``iter_frames`` snaps decoded times back
  to them. ``.mp4``/``.mov`` also work for codecs MP4 accepts.
* Encoded segments (``VideoWriter``): ``.mp4``. MP4 keeps any rational time
  base exactly (timescale = its denominator), and H.264 without B-frames has
  dts == pts, so segments encoded apart join by plain packet copy.
* Output (``join_segments``): chosen by suffix, ``.mp4``/``.m4v``/``.mov`` keep
  the source time base exactly; ``.mkv`` stores milliseconds (frame times
  agree to within 0.5 ms). ``.avi`` is refused with a message suggesting
  ``.mp4``/``.mkv``: AVI has no per-frame timestamps, so variable frame rate
  and the source's exact timing cannot be kept.

Odd sizes: H.264 4:2:0 and 4:2:2 need even widths (and 4:2:0 even heights),
so an odd-sized video is encoded as yuv444p at its exact size (High 4:4:4
profile) rather than being padded or cropped.

AVI sources (e.g. MPEG-4 ASP with packed B-frames, "drop" packets) carry no
trustworthy per-frame pts in their packets, so ``probe`` decodes them once
(no colour conversion) to learn which frames exist; decoders also attach
shuffled pts to such frames, which ``iter_frames`` repairs by handing out
the sorted timestamps in output order (frames leave a decoder in display
order).
"""

from __future__ import annotations

import bisect
import heapq
import json
import os
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

SEGMENT_TAG = "ANONYMIZE_SEGMENT"
OUTPUT_SUFFIXES = {".mp4": "mp4", ".m4v": "mp4", ".mov": "mov", ".mkv": "matroska"}
# containers whose packet pts cannot be trusted without decoding
_DECODE_PROBE_FORMATS = {"avi"}
# demuxers that "play" text files (ANSI art and friends)
_TEXT_FORMATS = {"tty", "bin", "xbin", "adf", "idf"}
# metadata keys that identify nobody and are kept even when stripping
_NEUTRAL_STREAM_KEYS = {"language"}
# labels are re-sorted over this many decoded frames (see iter_frames)
_REORDER_WINDOW = 16


class VideoError(Exception):
    """A file that cannot be used as a video: missing, not a video, no video
    stream, undecodable codec. The message is one line, fit for a user."""


# --------------------------------------------------------------------------- probe


@dataclass
class VideoInfo:
    """What the pipeline needs to know about a source video, JSON-serialisable
    so it can travel in a distributed job's manifest."""

    path: str
    format_name: str
    width: int
    height: int
    codec: str
    pix_fmt: str
    time_base: Fraction
    avg_fps: float
    frame_pts: list[int]
    keyframe_pts: list[int]
    duration_s: float
    rotation: int
    stream_index: int
    other_streams: list[dict] = field(default_factory=list)
    end_pts: int | None = None  # pts where the last frame stops being shown
    color_range: int = 0
    colorspace: int = 2  # AVCOL_SPC_UNSPECIFIED
    color_primaries: int = 2
    color_trc: int = 2

    def __post_init__(self) -> None:
        self.time_base = Fraction(self.time_base)
        if self.end_pts is None and self.frame_pts:
            self.end_pts = self.frame_pts[-1] + _typical_step(self.frame_pts)

    @property
    def n_frames(self) -> int:
        return len(self.frame_pts)

    @property
    def keyframe_indices(self) -> list[int]:
        return [self.index_of(p) for p in self.keyframe_pts]

    def index_of(self, pts: int) -> int:
        """Frame index of an exact source pts (KeyError if no frame has it)."""
        i = bisect.bisect_left(self.frame_pts, pts)
        if i == len(self.frame_pts) or self.frame_pts[i] != pts:
            raise KeyError(f"no frame with pts {pts}")
        return i

    def to_dict(self) -> dict:
        d = asdict(self)
        d["time_base"] = str(self.time_base)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> VideoInfo:
        return cls(**d)


def _typical_step(pts: list[int]) -> int:
    if len(pts) < 2:
        return 1
    diffs = sorted(b - a for a, b in zip(pts[-50:-1], pts[-49:], strict=False))
    return max(1, diffs[len(diffs) // 2])


def _open(path) -> av.container.InputContainer:
    p = Path(path)
    if not p.exists():
        raise VideoError(f"no such file: {p}")
    if p.is_dir():
        raise VideoError(f"not a video file (a directory): {p}")
    try:
        return av.open(str(p))
    except av.FFmpegError as e:
        raise VideoError(f"not a video: {p} ({_one_line(e)})") from None


def _one_line(e: Exception) -> str:
    return " ".join(str(e).split())


def _video_stream(container, path) -> av.video.stream.VideoStream:
    fmt = container.format.name
    if fmt in _TEXT_FORMATS:
        raise VideoError(f"not a video: {path} looks like text ({fmt})")
    if fmt in ("image2", "webp_pipe") or fmt.endswith("_pipe"):
        raise VideoError(f"not a video: {path} is a still image ({fmt})")
    for s in container.streams.video:
        if not s.disposition & av.stream.Disposition.attached_pic:
            return s
    raise VideoError(f"no video stream in {path}")


def probe(path) -> VideoInfo:
    """Read every video packet's timing (no decode for MP4/MOV/MKV/...) plus
    the first frame (to check the codec decodes and read its rotation)."""
    with _open(path) as c:
        vs = _video_stream(c, path)
        cc = vs.codec_context
        if cc is None or cc.name is None:
            raise VideoError(f"unsupported video codec in {path}")
        tb = vs.time_base
        if tb is None:
            raise VideoError(f"video stream without time base in {path}")
        first, rotation = _first_frame(c, vs, path)
        others = [
            {"index": s.index, "type": s.type, "codec": s.codec_context.name if s.codec_context else None}
            for s in c.streams
            if s.index != vs.index
        ]
        info = VideoInfo(
            path=str(path),
            format_name=c.format.name,
            width=cc.width or first.width,
            height=cc.height or first.height,
            codec=cc.name,
            pix_fmt=first.format.name,
            time_base=Fraction(tb.numerator, tb.denominator),
            avg_fps=0.0,
            frame_pts=[],
            keyframe_pts=[],
            duration_s=0.0,
            rotation=rotation,
            stream_index=vs.index,
            other_streams=others,
            color_range=int(first.color_range),
            colorspace=int(first.colorspace),
            color_primaries=int(first.color_primaries),
            color_trc=int(first.color_trc),
        )
    frames, keys, end = _scan_packets(path, info.stream_index)
    if info.format_name in _DECODE_PROBE_FORMATS or frames is None:
        frames, keys, end = _scan_decoded(path, info.stream_index)
    if not frames:
        raise VideoError(f"video stream of {path} has no frames")
    info.frame_pts = frames
    info.keyframe_pts = keys
    info.end_pts = end
    span = (end - frames[0]) * info.time_base
    info.duration_s = float(span)
    info.avg_fps = float(len(frames) / span) if span > 0 else 0.0
    return info


def _first_frame(c, vs, path):
    try:
        for frame in c.decode(vs):
            return frame, int(round(frame.rotation)) % 360
    except av.FFmpegError as e:
        raise VideoError(f"cannot decode video of {path} ({_one_line(e)})") from None
    raise VideoError(f"video stream of {path} has no decodable frames")


def _scan_packets(path, index):
    """Frame and keyframe pts from demuxing only; None when packets lack pts."""
    pts, keys, end = [], [], None
    with av.open(str(path)) as c:
        vs = c.streams[index]
        for p in c.demux(vs):
            if p.size == 0 or p.is_discard:
                continue  # discard: outside the edit list, never shown
            if p.pts is None:
                return None, None, None
            pts.append(p.pts)
            if p.is_keyframe:
                keys.append(p.pts)
            stop = p.pts + (p.duration or 0)
            end = stop if end is None else max(end, stop)
    pts.sort()
    if len(set(pts)) != len(pts):
        return None, None, None
    keys = sorted(set(keys) & set(pts))
    if pts and (end is None or end <= pts[-1]):
        end = pts[-1] + _typical_step(pts)
    return pts, keys, end


def _scan_decoded(path, index):
    """Frame pts by decoding (no pixel conversion): for containers whose
    packets do not say which frames exist (AVI drop/N-VOP packets)."""
    labels, key_labels = [], []
    with av.open(str(path)) as c:
        vs = c.streams[index]
        vs.codec_context.thread_type = "AUTO"
        for p in c.demux(vs):
            if p.is_keyframe and p.pts is not None and p.size > 1:
                key_labels.append(p.pts)
            for f in _decode(vs, p, path):
                if f.pts is None:
                    raise VideoError(f"frames without timestamps in {path}")
                labels.append(f.pts)
    pts = sorted(labels)
    if len(set(pts)) != len(pts):
        raise VideoError(f"duplicate frame timestamps in {path}")
    keys = sorted(set(key_labels) & set(pts))
    if not keys or keys[0] != pts[0]:
        keys = sorted(set(keys) | {pts[0]})
    return pts, keys, pts[-1] + _typical_step(pts)


def _decode(stream, packet, path):
    try:
        return stream.decode(packet)
    except av.FFmpegError as e:
        raise VideoError(f"cannot decode video of {path} ({_one_line(e)})") from None


# ------------------------------------------------------------------------- segments


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
    with _open(source) as src, _open_output(out_path, True, info.time_base) as dst:
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


def _open_output(path: Path, keep_tags: bool = False, time_base: Fraction | None = None):
    suffix = path.suffix.lower()
    fmt = OUTPUT_SUFFIXES.get(suffix)
    if fmt is None:
        hint = " (AVI cannot keep per-frame timestamps)" if suffix == ".avi" else ""
        raise VideoError(f"unsupported output container {suffix or path.name!r}{hint}: use .mp4 or .mkv")
    path.parent.mkdir(parents=True, exist_ok=True)
    # bitexact: no muxer-written encoder name, creation time or random ids
    options = {"fflags": "+bitexact"}
    if keep_tags and fmt in ("mp4", "mov"):
        options["movflags"] = "+use_metadata_tags"  # keep every key, not only the classic atoms
    if time_base is not None and fmt in ("mp4", "mov"):
        # edit lists (a stream starting after 0) are written in the movie
        # timescale; the default 1/1000 would shift a segment's pts by rounding
        options["movie_timescale"] = str(max(1000, Fraction(time_base).denominator))
    return av.open(str(path), "w", format=fmt, container_options=options)


# --------------------------------------------------------------------------- decode


def segment_tag(path) -> dict | None:
    """The ``split_segment`` description stored in a segment file, if any."""
    with _open(path) as c:
        raw = c.metadata.get(SEGMENT_TAG) or c.metadata.get(SEGMENT_TAG.lower())
    return json.loads(raw) if raw else None


def iter_frames(path, info: VideoInfo | None = None) -> Iterator[tuple[int, np.ndarray]]:
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
    with _open(path) as c:
        vs = _video_stream(c, path)
        vs.codec_context.thread_type = "AUTO"
        tb = Fraction(vs.time_base.numerator, vs.time_base.denominator)
        tb_src = tb_src or tb
        width = info.width if info else None
        height = info.height if info else None

        def out(frame, label):
            if tb == tb_src:
                pts = label
                if known and not _contains(known, pts):
                    return None  # not a frame of the video (e.g. before an edit list start)
            else:
                pts = round(label * tb / tb_src)
                if known:
                    pts = _snap(pts, known)
            if lo is not None and not (lo <= pts <= hi):
                return None
            return pts, _to_rgb(frame, width, height)

        window: deque = deque()
        labels: list[int] = []
        for packet in c.demux(vs):
            for frame in _decode(vs, packet, path):
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


# --------------------------------------------------------------------------- encode

_X264_FORMATS = {
    "yuv420p", "yuv422p", "yuv444p", "nv12", "nv16", "nv21", "gray",
    "yuv420p10le", "yuv422p10le", "yuv444p10le", "gray10le",
}
_FULL_RANGE = {"yuvj420p": "yuv420p", "yuvj422p": "yuv422p", "yuvj444p": "yuv444p"}


def choose_pix_fmt(info: VideoInfo) -> str:
    """The source's pixel format where libx264 takes it at this size, else
    the closest that keeps the exact size (yuv444p for odd sizes)."""
    fmt = _FULL_RANGE.get(info.pix_fmt, info.pix_fmt)
    if fmt not in _X264_FORMATS:
        fmt = "yuv420p10le" if "10" in fmt else "yuv420p"
    odd_w, odd_h = info.width % 2, info.height % 2
    if fmt.startswith(("yuv420", "nv12", "nv21")) and (odd_w or odd_h):
        fmt = "yuv444p10le" if "10" in fmt else "yuv444p"
    if fmt.startswith(("yuv422", "nv16", "nv20")) and odd_w:
        fmt = "yuv444p10le" if "10" in fmt else "yuv444p"
    return fmt


class VideoWriter:
    """H.264 (libx264) writer in the source's time base, frames stamped with
    source pts. No B-frames, so dts == pts: segments encoded apart join by
    packet copy. Use ``.mp4`` (exact timestamps for any time base)."""

    def __init__(self, path, info: VideoInfo, crf=18, preset="medium", pix_fmt=None):
        self.path = Path(path)
        self.info = info
        self.pix_fmt = pix_fmt or choose_pix_fmt(info)
        self._last_pts: int | None = None
        self.frames = 0
        self._c = _open_output(self.path, time_base=info.time_base)
        tb = info.time_base
        rate = Fraction(info.avg_fps).limit_denominator(1001) if info.avg_fps else None
        s = self._c.add_stream("libx264", rate=rate)
        s.width, s.height = info.width, info.height
        s.pix_fmt = self.pix_fmt
        s.time_base = tb
        cc = s.codec_context
        cc.time_base = tb
        cc.max_b_frames = 0
        cc.color_range = 2 if info.pix_fmt in _FULL_RANGE else info.color_range
        cc.colorspace = info.colorspace
        cc.color_primaries = info.color_primaries
        cc.color_trc = info.color_trc
        cc.thread_type = "AUTO"
        cc.options = {"crf": str(crf), "preset": preset, "x264-params": "bframes=0"}
        if info.rotation:
            s.set_display_rotation(info.rotation)
        self._stream = s
        self._range = cc.color_range
        self._space = info.colorspace if info.colorspace not in (2, 0) else None

    def write(self, rgb: np.ndarray, pts: int) -> None:
        if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
            raise ValueError("frame must be H×W×3 uint8 RGB")
        if rgb.shape[:2] != (self.info.height, self.info.width):
            raise ValueError(f"frame is {rgb.shape[1]}x{rgb.shape[0]}, video is {self.info.width}x{self.info.height}")
        if self._last_pts is not None and pts <= self._last_pts:
            raise ValueError(f"pts must increase ({pts} after {self._last_pts})")
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
        kw = {"format": self.pix_fmt, "dst_color_range": self._range}
        if self._space is not None:
            kw["dst_colorspace"] = self._space
        frame = frame.reformat(**kw)
        frame.pts = pts
        frame.time_base = self.info.time_base
        for packet in self._stream.encode(frame):
            self._c.mux(packet)
        self._last_pts = pts
        self.frames += 1

    def close(self) -> None:
        if self._c is None:
            return
        try:
            for packet in self._stream.encode(None):
                self._c.mux(packet)
        finally:
            self._c.close()
            self._c = None

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ----------------------------------------------------------------------------- join


def join_segments(segment_paths, source, info: VideoInfo, out_path, keep_metadata=False) -> Path:
    """Concatenate the encoded segments' video packets (stream copy), mux all
    audio/subtitle/data streams of the source by stream copy, keep rotation,
    strip container metadata unless ``keep_metadata``.

    Packets of the two sources are merged by time as they are read, so memory
    does not grow with the video's length. Each video packet's duration is set
    to the gap to the next frame (last: to the source's end), so the output
    lasts exactly as long as the source."""
    out_path = Path(out_path)
    segment_paths = [Path(p) for p in segment_paths]
    if not segment_paths:
        raise ValueError("no segments to join")
    tb = info.time_base
    with _open(source) as src, _open(segment_paths[0]) as first, _open_output(
        out_path, keep_metadata, info.time_base
    ) as dst:
        tmpl = _video_stream(first, segment_paths[0])
        ovs = dst.add_stream_from_template(tmpl)
        ovs.time_base = tb
        if info.rotation:
            ovs.set_display_rotation(info.rotation)
        copies = {}
        for s in src.streams:
            if s.index == info.stream_index or s.type not in ("audio", "subtitle", "data"):
                continue
            try:
                o = dst.add_stream_from_template(s)
            except (ValueError, av.FFmpegError) as e:
                raise VideoError(
                    f"cannot copy {s.type} stream {s.index} ({s.codec_context.name if s.codec_context else '?'}) "
                    f"into {out_path.suffix}: {_one_line(e)}; use the source's container ({Path(source).suffix})"
                ) from None
            o.time_base = s.time_base
            o.disposition = s.disposition
            o.metadata.update(_stream_tags(s.metadata, keep_metadata))
            copies[s.index] = o
        ovs.metadata.update(_stream_tags(src.streams[info.stream_index].metadata, keep_metadata))
        if keep_metadata:
            dst.metadata.update(src.metadata)
        count = [0]
        video = _video_packets(segment_paths, info, ovs, count)
        others = _other_packets(src, copies)
        for _, packet in heapq.merge(video, others, key=lambda x: x[0]):
            dst.mux(packet)
    if count[0] != info.n_frames:
        raise VideoError(f"joined {count[0]} frames but the source has {info.n_frames}: {out_path}")
    return out_path


def _stream_tags(tags: dict, keep: bool) -> dict:
    if keep:
        return dict(tags)
    return {k: v for k, v in tags.items() if k.lower() in _NEUTRAL_STREAM_KEYS}


def _video_packets(paths, info: VideoInfo, ovs, count: list[int]):
    """(time, packet) of every encoded segment in order, with source pts."""
    tb = info.time_base
    prev = None
    for path in paths:
        with _open(path) as c:
            vs = _video_stream(c, path)
            seg_tb = Fraction(vs.time_base.numerator, vs.time_base.denominator)
            for p in c.demux(vs):
                if p.size == 0:
                    continue
                pts = _snap(round(p.pts * seg_tb / tb), info.frame_pts) if seg_tb != tb else p.pts
                if prev is not None:
                    if pts <= prev.pts:
                        raise VideoError(f"segment {path} overlaps the previous one (pts {pts})")
                    prev.duration = pts - prev.pts
                    yield Fraction(prev.dts) * tb, prev
                p.stream = ovs
                p.time_base = tb
                p.pts = p.dts = pts
                prev = p
                count[0] += 1
    if prev is not None:
        prev.duration = max(1, (info.end_pts or prev.pts + 1) - prev.pts)
        yield Fraction(prev.dts) * tb, prev


def _contains(known: list[int], pts: int) -> bool:
    i = bisect.bisect_left(known, pts)
    return i < len(known) and known[i] == pts


def _snap(pts: int, known: list[int]) -> int:
    i = bisect.bisect_left(known, pts)
    cands = known[max(0, i - 1) : i + 1]
    return min(cands, key=lambda k: abs(k - pts)) if cands else pts


def _other_packets(src, copies: dict):
    if not copies:
        return
    streams = [src.streams[i] for i in copies]
    for p in src.demux(*streams):
        if p.size == 0 and p.pts is None and p.dts is None:
            continue
        if p.size == 2 and bytes(p) == b"\x00\x00" and src.streams[p.stream_index].codec_context.name == "mov_text":
            continue  # an empty gap cue: the MP4 muxer writes these itself, keeping one avoids doubling
        ts = p.dts if p.dts is not None else p.pts
        t = Fraction(ts or 0) * Fraction(p.time_base.numerator, p.time_base.denominator)
        p.stream = copies[p.stream_index]
        yield t, p


# ------------------------------------------------------------------------ transcode


def transcode(source, out_path, crf=18, preset="medium") -> dict:
    """Decode and re-encode the whole file with ``VideoWriter`` and mux the
    source's other streams: the baseline the anonymizer is measured against."""
    out_path = Path(out_path)
    info = probe(source)
    tmp = out_path.with_name(f".{out_path.stem}.video.mp4")
    t0 = time.perf_counter()
    try:
        with VideoWriter(tmp, info, crf=crf, preset=preset) as w:
            for pts, rgb in iter_frames(source, info):
                w.write(rgb, pts)
        join_segments([tmp], source, info, out_path)
    finally:
        if tmp.exists():
            os.unlink(tmp)
    seconds = time.perf_counter() - t0
    return {
        "path": str(out_path),
        "frames": w.frames,
        "seconds": round(seconds, 3),
        "fps": round(w.frames / seconds, 2) if seconds > 0 else None,
        "width": info.width,
        "height": info.height,
        "crf": crf,
        "preset": preset,
    }
