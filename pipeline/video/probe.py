"""Probe: what the pipeline needs to know about a source video, read once.

Frames are named by their presentation timestamp (``pts``) in the source
video stream's time base; a frame's *index* is its position in
``VideoInfo.frame_pts``, which lists the frames a player shows: packets an
edit list hides (an MP4 cut by stream copy starts at the keyframe before
the cut, with negative times) are decoded as references but are not frames
of the video. ``keyframe_pts`` lists the shown frames where decoding can
start: the shown keyframes, and the first shown frame (decoding from the
stream's first packet reaches it even when its keyframe is hidden).
Containers whose packets carry trustworthy pts (MP4, MOV, MKV, ...) are
probed by demuxing only; AVI and packets without pts are decoded once (no
colour conversion) to learn which frames exist.

A damaged file is probed as far as it can be read; what the demuxer could
not read is recorded in ``VideoInfo.damage`` (see :mod:`.damage`).
"""

from __future__ import annotations

import bisect
import contextlib
import math
import os
import stat
import struct
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path

import av
import av.logging
import av.sidedata.sidedata

from models.errors import one_line

# containers whose packet pts cannot be trusted without decoding
_DECODE_PROBE_FORMATS = {"avi"}
# codecs whose packets are all flagged keyframes although a frame may be drawn
# over the previous one (APNG blending, sub-rectangles): decoding can only
# start at the first frame
_NO_KEYFRAMES = {"apng"}
# demuxers that "play" text files (ANSI art and friends)
_TEXT_FORMATS = {"tty", "bin", "xbin", "adf", "idf"}


#: what reading a damaged file can raise while demuxing: FFmpeg's errors, and
#: PyAV's IndexError for a packet of a stream that appeared mid-file (damage in
#: an MPEG-TS can read as a new PID). Either ends the readable part of the file.
DEMUX_ERRORS = (av.FFmpegError, IndexError)


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
    #: counter-clockwise degrees that turn the stored picture upright, up to a
    #: mirror (detection needs upright faces, not unmirrored ones)
    rotation: int
    stream_index: int
    other_streams: list[dict] = field(default_factory=list)
    end_pts: int | None = None  # pts where the last frame stops being shown
    color_range: int = 0
    colorspace: int = 2  # AVCOL_SPC_UNSPECIFIED
    color_primaries: int = 2
    color_trc: int = 2
    #: pixel shape, "num/den" (anamorphic video: PAL 16:9 is 720x576 at 64/45);
    #: "" for square or unknown pixels
    sample_aspect_ratio: str = ""
    #: what the demuxer could not read: ``unreadable`` frames when it reported an
    #: error (the frames the index promises beyond the packets read, at least
    #: 1), ``rejected`` packets (AVI probe decode), FFmpeg's ``messages``
    damage: dict = field(default_factory=dict)
    #: the source's display matrix (FFmpeg's 9 integers), copied to the output as
    #: it is: a rotation angle alone cannot say that a picture is shown mirrored
    display_matrix: list[int] | None = None

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

    def show_as_source(self, stream) -> None:
        """Give an output video stream the source's display matrix (rotation and
        mirroring), before its first frame is written."""
        if self.display_matrix:
            stream.set_display_matrix(self.display_matrix)
        elif self.rotation:
            stream.set_display_rotation(self.rotation)

    def nominal_rate(self) -> Fraction | None:
        """The frame rate a player is told (frames over the shown duration, as
        a fraction of 1001ths at most: 30000/1001 stays exact); None for a
        single frame."""
        return Fraction(self.avg_fps).limit_denominator(1001) if self.avg_fps else None


def start_shift(info: VideoInfo) -> int:
    """Ticks added to every timestamp written (segment encodes and the output)
    so that the source's first frame is not before 0 (0 for nearly every
    source).

    Why: an MP4 cannot show a frame at a negative time; its muxer writes an
    edit list that hides those frames, so a player never shows them. Sources
    do start below 0: an MPEG-TS whose 33-bit clock wrapped during the
    recording is read with the frames before the wrap at negative times (a
    TS four seconds before its wrap lost 47 of 120 frames that way). All
    streams move by the same amount, so sync and every gap are kept; the
    amount is such that the audio and subtitles, which may start earlier than
    the video (a second, in a broadcast capture), are not before 0 either,
    where the MP4 muxer hid them in turn."""
    if not info.frame_pts or info.frame_pts[0] >= 0:
        return 0
    earliest = info.frame_pts[0] * info.time_base
    for o in info.other_streams:
        if o.get("type") in ("audio", "subtitle") and o.get("start") is not None and o.get("time_base"):
            earliest = min(earliest, o["start"] * Fraction(o["time_base"]))
    return math.ceil(-earliest / info.time_base)


def _typical_step(pts: list[int], single: int = 1) -> int:
    """The median step between the last 50 frames (at least one tick);
    ``single`` for a video of one frame."""
    tail = pts[-50:]
    if len(tail) < 2:
        return single
    diffs = sorted(b - a for a, b in zip(tail, tail[1:], strict=False))
    return max(1, diffs[len(diffs) // 2])


def _stated_step(stream) -> int:
    """How long a video of a single frame whose packet says nothing (FLV, ASF)
    lasts, in the stream's ticks: one frame at the rate the stream states, else
    the stream's stated duration, else one tick (a 1-frame FLV lasted 1 ms and
    was said to be "1000 fps")."""
    tb = stream.time_base
    if stream.average_rate and stream.average_rate > 0 and tb:
        step = 1 / (Fraction(stream.average_rate) * Fraction(tb.numerator, tb.denominator))
        return max(1, round(step))
    return stream.duration if stream.duration and stream.duration > 0 else 1


def _special_kind(path: Path) -> str:
    """What a path that exists but is neither a file nor a folder is."""
    mode = path.stat().st_mode
    for test, kind in ((stat.S_ISFIFO, "a pipe"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return kind
    return "not a regular file"


def local_name(path) -> str:
    """``path`` as FFmpeg must be given it to open a local file. FFmpeg takes
    the part of a name before a colon for a protocol ("20240101T12:30:00.mp4",
    a camera's time stamp, is a URL of the protocol "20240101T12": "Protocol
    not found"; "http:clip.mp4" would be fetched), so a relative name is given
    from "./" on."""
    name = os.fspath(path)
    return name if os.path.isabs(name) else os.path.join(".", name)


def open_input(path) -> av.container.InputContainer:
    p = Path(path)
    if not p.exists():
        raise VideoError(f"no such file: {p}")
    if p.is_dir():
        raise VideoError(f"not a video file (a directory): {p}")
    if not p.is_file():
        # a named pipe with no writer blocked the open for ever, deaf to SIGTERM, and
        # a pipe with one can be read only once, where a run reads its input several times
        raise VideoError(f"not a video file ({_special_kind(p)}): {p}; the input is read "
                         f"several times: save the video to a file first")
    try:
        # damaged tags must not stop the pictures from being read
        return av.open(local_name(p), metadata_errors="replace")
    except av.FFmpegError as e:
        raise VideoError(f"not a video: {p} ({one_line(e)})") from None


def video_stream(container, path) -> av.video.stream.VideoStream:
    fmt = container.format.name
    if fmt in _TEXT_FORMATS:
        raise VideoError(f"not a video: {path} looks like text ({fmt})")
    if fmt in ("image2", "webp_pipe") or fmt.endswith("_pipe"):
        raise VideoError(f"not a video: {path} is a still image ({fmt})")
    # the stream a player shows: the first marked default, else the first; never
    # a cover picture (anonymizing the first showed another camera than the source)
    videos = [s for s in container.streams.video
              if not s.disposition & av.stream.Disposition.attached_pic]
    if not videos:
        raise VideoError(f"no video stream in {path}")
    shown = [s for s in videos if s.disposition & av.stream.Disposition.default]
    return (shown or videos)[0]


def probe(path) -> VideoInfo:
    """Read every video packet's timing (no decode for MP4/MOV/MKV/...) plus
    the first decodable frame (to check the codec decodes and read its rotation)."""
    with open_input(path) as c:
        vs = video_stream(c, path)
        cc = vs.codec_context
        if cc is None or cc.name is None:
            raise VideoError(f"unsupported video codec in {path}")
        tb = vs.time_base
        if tb is None:
            raise VideoError(f"video stream without time base in {path}")
        first = _first_frame(c, vs, path)
        rotation, matrix = orientation(first)
        others = [
            {"index": s.index, "type": s.type, "codec": s.codec_context.name if s.codec_context else None,
             # where the stream starts (start_shift), in its own ticks
             "start": s.start_time, "time_base": str(s.time_base) if s.time_base else None}
            for s in c.streams
            if s.index != vs.index
        ]
        promised = vs.frames or 0
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
            display_matrix=matrix,
            stream_index=vs.index,
            other_streams=others,
            color_range=int(first.color_range),
            colorspace=int(first.colorspace),
            color_primaries=int(first.color_primaries),
            color_trc=int(first.color_trc),
            sample_aspect_ratio=_pixel_shape(vs),
        )
    damage: dict = {}
    duplicates = 0  # frames at the time of another: seen only by decoding
    with _ffmpeg_errors() as errors:
        frames, keys, end, read = _scan_packets(path, info.stream_index)
    if any(not line.startswith(f"{info.codec}:") for line in errors):
        # the demuxer stopped on damage: the index's surplus, or at least one frame.
        # The decoder's complaints while the container was opened (a stream cut
        # before its first keyframe: "non-existing PPS") stop nothing.
        damage["unreadable"] = max(1, promised - read)
    if info.format_name in _DECODE_PROBE_FORMATS or frames is None:
        frames, keys, end, rejected, duplicates = _scan_decoded(path, info.stream_index)
        if rejected:
            damage["rejected"] = rejected
    if duplicates:
        damage["duplicates"] = duplicates
    if errors:
        damage["messages"] = errors[:5]
    if not frames:
        raise VideoError(f"video stream of {path} has no frames")
    if info.codec in _NO_KEYFRAMES:
        keys = []
    if keys[:1] != frames[:1]:
        keys = [frames[0]] + keys  # decoding from the stream's start reaches the first frame
    info.frame_pts = frames
    info.keyframe_pts = keys
    info.end_pts = end
    info.damage = damage
    span = (end - frames[0]) * info.time_base
    info.duration_s = float(span)
    info.avg_fps = float(len(frames) / span) if span > 0 else 0.0
    return info


def _pixel_shape(vs) -> str:
    """The stream's sample aspect ratio as "num/den" ("" when square or unset):
    the container's where it has one, as FFmpeg's players take it, else the
    codec's."""
    for sar in (vs.sample_aspect_ratio, vs.codec_context.sample_aspect_ratio):
        if sar and sar.numerator > 0 and sar.denominator > 0:
            return "" if sar == 1 else f"{sar.numerator}/{sar.denominator}"
    return ""


@contextlib.contextmanager
def _ffmpeg_errors() -> Iterator[list[str]]:
    """FFmpeg's error messages (the demuxer's "File ended prematurely",
    "partial file") while the calling thread works in the block, one line
    each, in the list yielded (filled when the block ends).

    PyAV keeps FFmpeg silent unless a log level is set: the level is set for
    the block only and the messages are captured for this thread, so none
    reaches stderr."""
    level = av.logging.get_level()
    messages: list[str] = []
    av.logging.set_level(av.logging.ERROR)
    try:
        with av.logging.Capture(local=True) as logs:
            yield messages
    finally:
        av.logging.set_level(level)
    for lib_level, name, message in logs:
        text = " ".join(message.split())
        line = f"{name}: {text}" if name else text
        if lib_level <= av.logging.ERROR and text and line not in messages:
            messages.append(line)


def _first_frame(c, vs, path):
    """The first frame that decodes; packets the decoder rejects are skipped,
    as a player skips them."""
    last_error = None
    for packet in demux_until_error(c, vs):
        try:
            for frame in vs.decode(packet):
                return frame
        except av.FFmpegError as e:
            last_error = e
    why = f" ({one_line(last_error)})" if last_error is not None else ""
    raise VideoError(f"video stream of {path} has no decodable frames{why}")


def orientation(frame: av.VideoFrame) -> tuple[int, list[int] | None]:
    """The frame's rotation (:attr:`VideoInfo.rotation`) and display matrix (None
    without one). A mirrored matrix (negative determinant: a selfie camera's, or
    one written with a flip) is read as a horizontal flip after a rotation, and
    only the rotation turns the picture for detection: read as an angle alone, a
    plain mirror came out as 180°, and the output was shown upside down."""
    data = frame.side_data.get(av.sidedata.sidedata.Type.DISPLAYMATRIX)
    if data is None:
        return 0, None
    matrix = list(struct.unpack("<9i", bytes(data)))
    a, b, c, d = matrix[0], matrix[1], matrix[3], matrix[4]
    if a * d - b * c < 0:
        a, c = -a, -c  # undo the flip (FFmpeg's av_display_matrix_flip negates column 0)
    return int(round(math.degrees(math.atan2(c, a)))) % 360, matrix


def demux_until_error(container, *streams, on_error: Callable[[Exception], None] | None = None
                      ) -> Iterator[av.Packet]:
    """The streams' packets, ending where the demuxer fails (``on_error`` is
    told why): what follows a damaged or cut-off part of a file cannot be
    read, as in a player."""
    packets = container.demux(*streams)
    while True:
        try:
            yield next(packets)
        except StopIteration:
            return
        except DEMUX_ERRORS as e:
            if on_error is not None:
                on_error(e)
            return


#: frames a decoder may hand out of the order of their times (B-frames): the
#: decoded pictures' times are sorted over a window of this many frames
REORDER_FRAMES = 16


def _check_clock(path, key_back: int, pts: list[int], step: int, time_base) -> None:
    """Refuse a video whose clock starts again lower part-way: a keyframe stamped
    more than :data:`REORDER_FRAMES` frames before a frame ahead of it in the file
    (recordings joined end to end, the second's clock restarted). Such frames
    cannot keep their times in one output, and sorting the times of decoded
    pictures over the window gave the pictures each other's times; 20 + 20
    frames stopped with an FFmpeg error naming a temporary file. FFmpeg's own
    remux re-times such a jump, so the line says how."""
    if key_back <= REORDER_FRAMES * step:
        return
    secs = float(key_back * Fraction(time_base.numerator, time_base.denominator))
    name = Path(path).name
    raise VideoError(
        f"{path}: its timestamps go back by {secs:.1f} s at a keyframe part-way (recordings "
        f"joined end to end, the clock of the second started again?): its frames cannot "
        f"keep their times in one video; remux it so that its times run on, e.g. "
        f"ffmpeg -i {name} -c copy fixed.mkv, and anonymize that file")


def _scan_packets(path, index):
    """Frame and keyframe pts from demuxing only (None when packets lack pts or
    share one: decoding tells), and how many packets could be read. A demuxer
    error ends the scan (the rest of the file cannot be read)."""
    pts, keys, end, read = [], [], None, 0
    missing_pts = False
    # decode-order durations (MP4's): with frames reordered, the packet with the
    # latest pts + duration need not be the one shown last, and a long gap in
    # decode order pushed the end past it (3 frames 30 min apart, with B-frames:
    # the last held 30 min); the durations still add up to the span shown
    total, all_timed, reordered, latest = 0, True, False, None
    keys_in_order, key_back = True, 0
    with open_input(path) as c:
        single = _stated_step(c.streams[index])
        time_base = c.streams[index].time_base
        for p in demux_until_error(c, c.streams[index]):
            if p.size == 0 and p.pts is None:
                continue  # the end-of-stream marker
            read += 1
            if p.size == 0 or p.is_discard:
                continue  # discard: outside the edit list, never shown
            if p.pts is None:
                missing_pts = True
                continue
            pts.append(p.pts)
            if p.is_keyframe:
                keys.append(p.pts)
                keys_in_order = keys_in_order and (latest is None or p.pts > latest)
                if latest is not None:
                    key_back = max(key_back, latest - p.pts)
            stop = p.pts + (p.duration or 0)
            end = stop if end is None else max(end, stop)
            total += p.duration or 0
            all_timed = all_timed and bool(p.duration)
            reordered = reordered or (latest is not None and p.pts < latest)
            latest = p.pts if latest is None else max(latest, p.pts)
    if missing_pts or len(set(pts)) != len(pts):
        return None, None, None, read
    pts.sort()
    _check_clock(path, key_back, pts, _typical_step(pts, single), time_base)
    # a keyframe stamped before a packet ahead of it in the file (recordings joined
    # byte for byte whose clock started again lower, a damaged timing table):
    # segments are cut at keyframes in time order but read in file order, from one
    # keyframe to the next, and there missed frames (left out as "could not be
    # decoded") or their start ("keyframe not found"); no cut but the first frame
    # (``probe`` adds it): one segment, read from the file's start, holds them all
    keys = sorted(set(keys) & set(pts)) if keys_in_order else []
    if reordered and all_timed and pts and pts[-1] < pts[0] + total < end:
        end = pts[0] + total
    if pts and (end is None or end <= pts[-1]):
        end = pts[-1] + _typical_step(pts, single)
    return pts, keys, end, read


def _unique(pts: list[int]) -> tuple[list[int], int]:
    """The distinct times, sorted, and how many frames repeat one. Two frames
    at one time (a damaged timing table) cannot both be shown: a player shows
    one picture at a time, and frames are told apart by their times
    throughout, so the first decoded at that time is kept and the other is
    damage (the whole video was refused: "duplicate frame timestamps")."""
    distinct = sorted(set(pts))
    return distinct, len(pts) - len(distinct)


def _scan_decoded(path, index):
    """Frame pts by decoding (no pixel conversion): for containers whose
    packets do not say which frames exist (AVI drop/N-VOP packets). Packets
    the decoder rejects are skipped and counted."""
    labels, key_labels, rejected = [], [], 0
    with open_input(path) as c:
        vs = c.streams[index]
        single = _stated_step(vs)
        vs.codec_context.thread_type = "AUTO"
        latest, keys_in_order, key_back = None, True, 0  # as in _scan_packets
        for p in demux_until_error(c, vs):
            if p.is_keyframe and p.pts is not None and p.size > 1:
                key_labels.append(p.pts)
                keys_in_order = keys_in_order and (latest is None or p.pts > latest)
                if latest is not None:
                    key_back = max(key_back, latest - p.pts)
            if p.pts is not None:
                latest = p.pts if latest is None else max(latest, p.pts)
            try:
                frames = vs.decode(p)
            except av.FFmpegError:
                rejected += 1
                continue
            for f in frames:
                if f.pts is None:  # a raw elementary stream (.h264, .hevc, .m4v)
                    raise VideoError(  # the commands contain it first (.contain)
                        f"frames without timestamps in {path} ({c.format.name} stream with no "
                        f"container)")
                labels.append(f.pts)
    pts, duplicates = _unique(labels)
    if not pts:
        return pts, [], None, rejected, 0
    _check_clock(path, key_back, pts, _typical_step(pts, single), vs.time_base)
    keys = sorted(set(key_labels) & set(pts)) if keys_in_order else []
    if not keys or keys[0] != pts[0]:
        keys = sorted(set(keys) | {pts[0]})
    return pts, keys, pts[-1] + _typical_step(pts, single), rejected, duplicates


def snap_pts(pts: int, known: list[int]) -> int:
    i = bisect.bisect_left(known, pts)
    cands = known[max(0, i - 1) : i + 1]
    return min(cands, key=lambda k: abs(k - pts)) if cands else pts
