"""Encode: H.264 (libx264) in the source's time base, and output containers.

No B-frames, so dts == pts and segments encoded apart join by packet copy.
MP4 keeps any rational time base exactly (timescale = its denominator).
Odd sizes: H.264 4:2:0 and 4:2:2 need even widths (and 4:2:0 even heights),
so an odd-sized video is encoded as yuv444p at its exact size rather than
being padded or cropped.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from .probe import VideoError, VideoInfo, local_name, start_shift

OUTPUT_SUFFIXES = {".mp4": "mp4", ".m4v": "mp4", ".mov": "mov", ".mkv": "matroska"}


def check_output_suffix(output: Path) -> str:
    """The output container is chosen by suffix; refuse the ones we cannot write."""
    suffix = output.suffix.lower()
    if suffix not in OUTPUT_SUFFIXES:
        hint = {".avi": " (AVI cannot keep per-frame timestamps)",
                ".webm": " (WebM holds no H.264, which the output is encoded in; .mkv is "
                         "WebM's own container, Matroska)"}.get(suffix, "")
        shown = suffix or f"{output.name!r} (no suffix)"
        raise VideoError(f"cannot write {output}: unsupported output container {shown}{hint}; "
                         f"use .mp4, .mkv or .mov")
    return suffix


def open_output(path: Path, keep_tags: bool = False, time_base: Fraction | None = None):
    """An output container for ``path`` (format by suffix) that writes no
    encoder name, creation time or random ids."""
    fmt = OUTPUT_SUFFIXES[check_output_suffix(path)]
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise VideoError(f"cannot create folder {path.parent}: {e.strerror}") from None
    # bitexact: no muxer-written encoder name, creation time or random ids
    options = {"fflags": "+bitexact"}
    if keep_tags and fmt in ("mp4", "mov"):
        options["movflags"] = "+use_metadata_tags"  # keep every key, not only the classic atoms
    if time_base is not None and fmt in ("mp4", "mov"):
        # edit lists (a stream starting after 0) are written in the movie
        # timescale; the default 1/1000 would shift a segment's pts by rounding
        options["movie_timescale"] = str(max(1000, Fraction(time_base).denominator))
    return av.open(local_name(path), "w", format=fmt, container_options=options)


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

    def __init__(self, path, info: VideoInfo, crf=18, preset="medium", pix_fmt=None,
                 threads: int = 0):
        self.path = Path(path)
        self.info = info
        self.pix_fmt = pix_fmt or choose_pix_fmt(info)
        self._last_pts: int | None = None
        self._shift = start_shift(info)  # a source starting before 0 is written from 0
        self.frames = 0
        self._c = open_output(self.path, time_base=info.time_base)
        tb = info.time_base
        s = self._c.add_stream("libx264", rate=info.nominal_rate())
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
        cc.thread_count = threads  # 0: x264 picks (1.5x the cores)
        cc.options = {"crf": str(crf), "preset": preset, "x264-params": "bframes=0"}
        if info.sample_aspect_ratio:  # anamorphic pixels keep their shape
            cc.sample_aspect_ratio = Fraction(info.sample_aspect_ratio)
        info.show_as_source(s)
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
        frame.pts = pts + self._shift
        frame.time_base = self.info.time_base
        for packet in self._stream.encode(frame):
            self._c.mux(packet)
        self._last_pts = pts
        self.frames += 1

    def close(self) -> None:
        if self._c is None:
            return
        try:
            if not self.frames:
                # no frame (a segment whose frames all failed to decode): still
                # write a file, without a video stream, so the segment has an output
                self._c.start_encoding()
            for packet in self._stream.encode(None):
                self._c.mux(packet)
        finally:
            self._c.close()
            self._c = None

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
