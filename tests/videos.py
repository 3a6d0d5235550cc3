"""Small synthetic test videos written with PyAV in milliseconds.

Every frame shows a different picture (a moving square on a gradient whose
brightness follows the frame number), so a test can tell frames apart after
a lossy round trip with ``frame_number(rgb)``.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np

LOCATION = "+48.8584+002.2945+035.000/"  # ISO 6709, a public landmark


def synthetic_frame(i: int, width: int, height: int) -> np.ndarray:
    """Frame ``i``: red level 24 + 16·(i mod 13) with a square moving across."""
    img = np.empty((height, width, 3), np.uint8)
    img[..., 0] = 24 + 16 * (i % 13)
    img[..., 1] = np.linspace(0, 255, width, dtype=np.uint8)[None, :]
    img[..., 2] = np.linspace(255, 0, height, dtype=np.uint8)[:, None]
    s = max(2, min(width, height) // 4)
    x = (i * 3) % max(1, width - s)
    y = (i * 2) % max(1, height - s)
    img[y : y + s, x : x + s] = 255
    return img


def frame_number(rgb: np.ndarray) -> int:
    """Recover ``i mod 13`` from the red channel outside the square (the
    levels are 16 apart, so several lossy generations still read right)."""
    red = float(np.median(rgb[..., 0]))
    return int(round((red - 24) / 16)) % 13


def make_video(
    path,
    *,
    n_frames: int = 30,
    width: int = 64,
    height: int = 48,
    fps: int = 25,
    time_base: Fraction | None = None,
    pts: list[int] | None = None,
    gop: int = 10,
    bframes: int = 0,
    codec: str = "libx264",
    pix_fmt: str | None = None,
    audio: bool = False,
    subtitles: bool = False,
    rotation: int = 0,
    hflip: bool = False,
    sar: Fraction | None = None,
    metadata: dict | None = None,
    chapters: list[tuple[float, float, str]] | None = None,
    timecode: str | None = None,
) -> Path:
    """Write a test video; returns its path.

    ``pts`` (in ``time_base``, default 1/(fps·512)) gives variable frame
    rate; ``audio`` adds a 16 kHz AAC sine; ``subtitles`` a text stream
    (mov_text in MP4, SubRip in Matroska); ``rotation`` / ``hflip`` the
    display matrix (counter-clockwise degrees, then a mirror); ``sar`` the pixels' aspect ratio
    (anamorphic video); ``metadata`` goes into the
    container (MP4 with ``use_metadata_tags`` so any key survives);
    ``chapters`` (start s, end s, title) the container's chapters; ``timecode``
    a start timecode (MP4/MOV: a timecode track).
    """
    path = Path(path)
    tb = Fraction(time_base) if time_base is not None else Fraction(1, fps * 512)
    if pts is None:
        step = round(1 / (fps * tb))
        pts = [i * step for i in range(n_frames)]
    n_frames = len(pts)
    if pix_fmt is None:
        pix_fmt = "yuv444p" if (width % 2 or height % 2) else "yuv420p"
    options = {}
    if path.suffix in (".mp4", ".mov") and metadata:
        options["movflags"] = "+use_metadata_tags"
    with av.open(str(path), "w", container_options=options) as c:
        vs = c.add_stream(codec, rate=fps)
        vs.width, vs.height, vs.pix_fmt = width, height, pix_fmt
        vs.time_base = tb
        vs.codec_context.time_base = tb
        vs.codec_context.gop_size = gop
        if codec == "libx264":
            vs.codec_context.max_b_frames = bframes
            vs.codec_context.options = {
                "preset": "ultrafast" if not bframes else "veryfast",
                "x264-params": f"keyint={gop}:min-keyint={gop}:scenecut=0:bframes={bframes}",
            }
        if sar is not None:
            vs.codec_context.sample_aspect_ratio = sar
        if rotation or hflip:
            vs.set_display_rotation(rotation, hflip=hflip)
        if timecode:
            vs.metadata["timecode"] = timecode
        if chapters:
            c.set_chapters([{"id": i + 1, "start": round(a * 1000), "end": round(b * 1000),
                             "time_base": Fraction(1, 1000), "metadata": {"title": t}}
                            for i, (a, b, t) in enumerate(chapters)])
        streams = [vs]
        if audio:
            aus = c.add_stream("aac", rate=16000)
            aus.layout = "mono"
            streams.append(aus)
        sub = None
        if subtitles:
            sub = c.add_mux_stream("mov_text" if path.suffix in (".mp4", ".mov") else "subrip")
            sub.time_base = Fraction(1, 1000)
        if metadata:
            c.metadata.update(metadata)
        for i, p in enumerate(pts):
            frame = av.VideoFrame.from_ndarray(synthetic_frame(i, width, height), format="rgb24")
            frame = frame.reformat(format=pix_fmt)
            frame.pts, frame.time_base = p, tb
            for packet in vs.encode(frame):
                c.mux(packet)
        for packet in vs.encode(None):
            c.mux(packet)
        if audio:
            seconds = float((pts[-1] - pts[0]) * tb) + 0.2
            _write_audio(c, aus, seconds)
        if sub is not None:
            _write_subtitles(c, sub, path.suffix in (".mp4", ".mov"), float(pts[-1] * tb))
    return path


def _write_audio(c, stream, seconds: float) -> None:
    rate, chunk = 16000, 1024
    total = int(seconds * rate)
    t = np.arange(total, dtype=np.float32) / rate
    wave = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    for start in range(0, total, chunk):
        part = wave[start : start + chunk]
        frame = av.AudioFrame.from_ndarray(part[None, :], format="fltp", layout="mono")
        frame.sample_rate = rate
        frame.pts = start
        frame.time_base = Fraction(1, rate)
        for packet in stream.encode(frame):
            c.mux(packet)
    for packet in stream.encode(None):
        c.mux(packet)


def _write_subtitles(c, stream, mov_text: bool, seconds: float) -> None:
    n = max(1, int(seconds))
    for k in range(n):
        text = f"street {k}".encode()
        payload = len(text).to_bytes(2, "big") + text if mov_text else text
        packet = av.Packet(payload)
        packet.pts = packet.dts = k * 1000
        packet.duration = 800
        packet.time_base = Fraction(1, 1000)
        packet.stream = stream
        c.mux(packet)


def make_audio_only(path, seconds: float = 0.5) -> Path:
    """A WAV file with sound and no video."""
    path = Path(path)
    with av.open(str(path), "w") as c:
        s = c.add_stream("pcm_s16le", rate=8000)
        s.layout = "mono"
        samples = (np.sin(np.arange(int(8000 * seconds)) / 5) * 3000).astype(np.int16)
        frame = av.AudioFrame.from_ndarray(samples[None, :], format="s16", layout="mono")
        frame.sample_rate = 8000
        frame.pts = 0
        for packet in s.encode(frame):
            c.mux(packet)
        for packet in s.encode(None):
            c.mux(packet)
    return path


def make_image(path, width: int = 32, height: int = 24) -> Path:
    """A still image (PNG or JPEG by suffix)."""
    path = Path(path)
    frame = av.VideoFrame.from_ndarray(synthetic_frame(0, width, height), format="rgb24")
    codec = "png" if path.suffix == ".png" else "mjpeg"
    with av.open(str(path), "w", format="image2") as c:
        s = c.add_stream(codec)
        s.width, s.height = width, height
        s.pix_fmt = "rgb24" if codec == "png" else "yuvj420p"
        f = frame.reformat(format=s.pix_fmt)
        f.pts = 0
        for packet in s.encode(f):
            c.mux(packet)
        for packet in s.encode(None):
            c.mux(packet)
    return path


def make_gop_video(src: Path, dst: Path, frames: int, gop: int) -> Path:
    """Re-encode the first ``frames`` frames of ``src`` with a fixed keyframe interval."""
    with av.open(str(src)) as inp, av.open(str(dst), "w") as out:
        ivs = inp.streams.video[0]
        ovs = out.add_stream("libx264", rate=ivs.average_rate)
        ovs.width, ovs.height, ovs.pix_fmt = ivs.width, ivs.height, "yuv420p"
        ovs.options = {"g": str(gop), "keyint_min": str(gop), "sc_threshold": "0",
                       "preset": "ultrafast", "crf": "20", "bf": "0"}
        for i, frame in enumerate(inp.decode(ivs)):
            if i >= frames:
                break
            for packet in ovs.encode(frame):
                out.mux(packet)
        for packet in ovs.encode():
            out.mux(packet)
    return dst


def make_restamped(path, times: list[int], gop: int = 2, width: int = 64,
                   height: int = 48) -> Path:
    """H.264 frames ``i`` (``synthetic_frame``) whose packets are stamped with
    ``times`` (ms) as damaged timing would stamp them, out of order or
    repeated, their decode times still increasing; a keyframe every ``gop``
    packets, no B-frames (decoding does not depend on the stamps)."""
    path = Path(path)
    tb = Fraction(1, 1000)
    with av.open(str(path), "w") as c:
        vs = c.add_stream("libx264", rate=25)
        vs.width, vs.height, vs.pix_fmt = width, height, "yuv420p"
        vs.time_base = vs.codec_context.time_base = tb
        vs.codec_context.options = {
            "preset": "ultrafast",
            "x264-params": f"keyint={gop}:min-keyint={gop}:scenecut=0:bframes=0"}
        packets = []
        for i in range(len(times)):
            frame = av.VideoFrame.from_ndarray(synthetic_frame(i, width, height), format="rgb24")
            frame = frame.reformat(format="yuv420p")
            frame.pts, frame.time_base = i * 40, tb
            packets += vs.encode(frame)
        packets += vs.encode(None)
        low = min(times)
        for i, (packet, t) in enumerate(zip(packets, times, strict=True)):
            packet.pts, packet.dts = t, low - 1000 + i * 40
            c.mux(packet)
    return path
