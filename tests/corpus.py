"""A corpus of unusual and damaged inputs for ``anonymize run``, each with
the outcome a user should get.

Users hand over whatever their cameras, phones and editors wrote: odd
sizes, variable frame rate, 10-bit and 4:4:4, GIFs, raw and palette video,
files cut by an editor (edit lists), files damaged in transfer, and the odd
wrong path. The product promises two things for all of them:

* **ok**: exit 0 and a video that plays exactly like the input: the frames
  a player shows (what PyAV decodes from the input's first/default video
  stream) with the same presentation times, as exact fractions of a
  second. Damaged streams decode what can be decoded: a frame that does
  not decode is left out (a player cannot show it either, and keeps the
  previous picture up until the next frame, which is how the output plays),
  a frame decoded from damaged data is kept and anonymized; both are
  counted in ``report.json`` (``damaged_frames``) and one warning line
  naming the input goes to stderr. Streams that are not anonymized (a
  second video stream, cover art) are left out, with a warning and a
  ``dropped_streams`` entry in ``report.json``.
* **refused**: exit 2 and one line ``anonymize: error: ...`` naming the
  user's file, the input untouched, nothing left behind; for mistakes that
  can be seen without decoding (wrong paths, output container, output
  naming the input) the refusal comes before any work.

Every case is made from scratch in its own folder in well under a second
(tiny frames, a few frames each), with PyAV, or with the ``ffmpeg`` binary
of the ``imageio-ffmpeg`` package where a real tool's behaviour is the
point (``-ss`` stream-copy cuts, cover art). ``tests/test_corpus.py`` runs
the command line on each; ``build(root)`` makes them all at once for
trying the command by hand.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from tests.videos import LOCATION, make_audio_only, make_image, make_video, synthetic_frame

OK = "ok"
REFUSED = "refused"

W, H = 64, 48  # frame size of most cases: the detectors still run, but fast


@dataclass(frozen=True)
class Job:
    """One invocation: ``anonymize run INPUT -o OUTPUT``."""

    input: Path
    output: Path


@dataclass(frozen=True)
class Case:
    """An input, how to make it, and what the user must get.

    ``names`` says whose name a refusal must carry (``input``, ``output`` or
    ``output-parent``): the user has to see which of their paths is wrong,
    never a temporary file of ours. ``keeps`` lists further promises an ok
    case checks (see ``tests/test_corpus.py``): ``rotation``, ``streams``
    (audio/subtitle packets byte for byte), ``drops-video`` (further video
    streams and cover art left out, warned about and reported),
    ``no-location`` (GPS stripped), ``leading-skipped`` (a stream cut inside a GOP: only
    the frames before its first keyframe counted), ``rescaled`` (frames of another size
    scaled to the first, warned about and reported). ``slow``: 16 frames or more, over 5 s of
    CPU time per run where the others take 2-4 s."""

    name: str
    make: Callable[[Path], Job]
    expect: str
    before_work: bool = False
    damaged: bool = False
    names: str = "input"
    keeps: tuple[str, ...] = ()
    slow: bool = False
    note: str = ""


# ------------------------------------------------------------------- writing


def ffmpeg(*args: str) -> None:
    """Run the ffmpeg binary shipped by imageio-ffmpeg (a test dependency)."""
    import imageio_ffmpeg

    cmd = [imageio_ffmpeg.get_ffmpeg_exe(), "-nostdin", "-hide_banner", "-loglevel", "error", "-y", *args]
    subprocess.run(cmd, check=True, capture_output=True)


def write_video(
    path: Path,
    *,
    codec: str = "libx264",
    pix_fmt: str = "yuv420p",
    n_frames: int = 12,
    width: int = W,
    height: int = H,
    fps: int = 25,
    time_base: Fraction | None = None,
    pts: list[int] | None = None,
    fmt: str | None = None,
    container_options: dict | None = None,
    codec_options: dict | None = None,
    gop: int = 4,
    bframes: int = 0,
) -> Path:
    """Encode ``synthetic_frame``s with any PyAV encoder into any container.

    ``tests.videos.make_video`` covers H.264 with audio, subtitles and
    metadata; this covers the other codecs and pixel formats. Frames are
    stamped with ``pts`` in ``time_base`` (default: 1/fps steps). The short
    default GOP lets ``--segment-frames 8`` cut most cases into several
    segments, so splitting and joining meet every codec and container."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tb = Fraction(time_base) if time_base is not None else Fraction(1, fps)
    if pts is None:
        step = round(1 / (fps * tb))
        pts = [i * step for i in range(n_frames)]
    with av.open(str(path), "w", format=fmt, container_options=container_options or {}) as c:
        vs = c.add_stream(codec, rate=fps)
        vs.width, vs.height, vs.pix_fmt = width, height, pix_fmt
        vs.codec_context.time_base = tb
        vs.codec_context.gop_size = gop
        vs.codec_context.max_b_frames = bframes
        options = dict(codec_options or {})
        if codec == "libx264":
            options.setdefault("preset", "ultrafast" if not bframes else "veryfast")
            options.setdefault("x264-params", f"keyint={gop}:min-keyint={gop}:scenecut=0:bframes={bframes}")
        vs.codec_context.options = options
        for i, p in enumerate(pts):
            rgb = synthetic_frame(i, width, height)
            if pix_fmt == "pal8":
                frame = av.VideoFrame.from_ndarray((_palette_indices(rgb), PALETTE), format="pal8")
            else:
                frame = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format=pix_fmt)
            frame.pts, frame.time_base = p, tb
            for packet in vs.encode(frame):
                c.mux(packet)
        for packet in vs.encode(None):
            c.mux(packet)
    return path


def _rgb332() -> np.ndarray:
    """A 256-colour palette (3 bits red, 3 green, 2 blue) as ARGB rows."""
    i = np.arange(256)
    r, g, b = (i >> 5) * 255 // 7, ((i >> 2) & 7) * 255 // 7, (i & 3) * 255 // 3
    return np.stack([np.full(256, 255), r, g, b], axis=1).astype(np.uint8)


# swscale cannot convert to pal8 itself, so palette frames are quantized here
PALETTE = _rgb332()


def _palette_indices(rgb: np.ndarray) -> np.ndarray:
    r, g, b = (rgb[..., k].astype(np.uint16) for k in range(3))
    return (((r * 7 + 127) // 255) << 5 | ((g * 7 + 127) // 255) << 2 | (b * 3 + 127) // 255).astype(np.uint8)


def _video_packets(path: Path) -> list[tuple[int, int, bool]]:
    """(file offset, size, keyframe) of the first video stream's packets, in
    file order: where to cut or scribble to damage a known frame."""
    with av.open(str(path)) as c:
        vs = c.streams.video[0]
        return [(p.pos, p.size, p.is_keyframe) for p in c.demux(vs) if p.size]


def _remux_without(src: Path, dst: Path, drop: int) -> Path:
    """Copy every packet of ``src`` into ``dst`` except video packet number
    ``drop`` (decode order): a packet lost in transfer, timestamps intact."""
    with av.open(str(src)) as i, av.open(str(dst), "w") as o:
        vs = i.streams.video[0]
        ovs = o.add_stream_from_template(vs)
        for n, p in enumerate(x for x in i.demux(vs) if x.size):
            if n == drop:
                continue
            p.stream = ovs
            o.mux(p)
    return dst


def _mdat_span(path: Path) -> tuple[int, int]:
    """(start, end) of the top-level ``mdat`` box of an MP4 file."""
    data = path.read_bytes()
    pos = 0
    while pos + 8 <= len(data):
        size = int.from_bytes(data[pos : pos + 4], "big")
        kind = data[pos + 4 : pos + 8]
        header = 8
        if size == 1:
            size, header = int.from_bytes(data[pos + 8 : pos + 16], "big"), 16
        elif size == 0:
            size = len(data) - pos
        if kind == b"mdat":
            return pos + header, pos + size
        pos += size
    raise ValueError(f"no mdat box in {path}")


def _truncate(path: Path, length: int) -> None:
    with open(path, "r+b") as f:
        f.truncate(length)


def _standard(d: Path, name: str, out_suffix: str = ".mp4") -> tuple[Path, Path]:
    """Input ``d/in/name`` and output ``d/out/<stem><out_suffix>`` (the output
    folder exists: most cases are about the input)."""
    (d / "in").mkdir(parents=True, exist_ok=True)
    (d / "out").mkdir(parents=True, exist_ok=True)
    src = d / "in" / name
    return src, d / "out" / (src.stem + out_suffix)


def _simple(name: str, out_suffix: str = ".mp4", **kw) -> Callable[[Path], Job]:
    """A maker writing one ``write_video`` file."""

    def make(d: Path) -> Job:
        src, out = _standard(d, name, out_suffix)
        write_video(src, **kw)
        return Job(src, out)

    return make


def _made(name: str, out_suffix: str = ".mp4", **kw) -> Callable[[Path], Job]:
    """A maker writing one ``tests.videos.make_video`` file (H.264 with
    audio, subtitles, rotation or metadata)."""

    def make(d: Path) -> Job:
        src, out = _standard(d, name, out_suffix)
        make_video(src, **kw)
        return Job(src, out)

    return make


# --------------------------------------------------------------------- makers


def _vfr(d: Path) -> Job:
    src, out = _standard(d, "vfr.mp4")
    rng = random.Random(7)
    pts = [0]
    for _ in range(15):
        pts.append(pts[-1] + rng.choice([256, 512, 700, 1500, 3000]))
    make_video(src, pts=pts, time_base=Fraction(1, 12800))
    return Job(src, out)


def _non_ascii(d: Path) -> Job:
    folder = d / "vidéos"
    folder.mkdir(parents=True)
    src = folder / "straße_東京_é.mp4"
    make_video(src, n_frames=8)
    return Job(src, d / "anonymisé" / "straße_東京_é.mp4")


def _spaces(d: Path) -> Job:
    folder = d / "my videos"
    folder.mkdir(parents=True)
    src = folder / "clip one.mp4"
    make_video(src, n_frames=8)
    return Job(src, d / "out dir" / "clip one.mp4")


def _new_output_folder(d: Path) -> Job:
    src, _ = _standard(d, "clip.mp4")
    make_video(src, n_frames=8)
    return Job(src, d / "not" / "yet" / "there" / "clip.mp4")


def _zero_bytes(d: Path) -> Job:
    src, out = _standard(d, "empty.mp4")
    src.write_bytes(b"")
    return Job(src, out)


def _text(d: Path) -> Job:
    src, out = _standard(d, "notes.mp4")
    src.write_text("shopping list\n- milk\n- a camera that writes proper files\n")
    return Job(src, out)


def _still(suffix: str) -> Callable[[Path], Job]:
    def make(d: Path) -> Job:
        src, out = _standard(d, f"still{suffix}")
        make_image(src, W, H)
        return Job(src, out)

    return make


def _audio_only(d: Path) -> Job:
    src, out = _standard(d, "sound.wav")
    make_audio_only(src)
    return Job(src, out)


def _truncated_mp4(d: Path) -> Job:
    """Index (moov) at the front, media data cut in the middle: the index
    promises frames that are not there (a download or copy that stopped)."""
    src, out = _standard(d, "cut.mp4")
    write_video(src, n_frames=16, container_options={"movflags": "+faststart"})
    start, end = _mdat_span(src)
    _truncate(src, (start + end) // 2)
    return Job(src, out)


def _truncated_mp4_without_index(d: Path) -> Job:
    """Index written last (the default) and the file cut in the middle of
    the media data: no index survives, nothing says where a frame is."""
    src, out = _standard(d, "cut.mp4")
    write_video(src, n_frames=16)
    start, end = _mdat_span(src)
    _truncate(src, (start + end) // 2)
    return Job(src, out)


def _truncated_mkv(d: Path) -> Job:
    """Matroska cut in the middle of a frame's block: the frames before it
    are whole, the last one is torn."""
    src, out = _standard(d, "cut.mkv", ".mkv")
    write_video(src, n_frames=16, fmt="matroska")
    pos, size, _ = _video_packets(src)[10]
    _truncate(src, pos + size // 2)
    return Job(src, out)


def _directory(d: Path) -> Job:
    src, out = _standard(d, "folder.mp4")
    src.mkdir()
    return Job(src, out)


def _missing(d: Path) -> Job:
    src, out = _standard(d, "missing.mp4")
    return Job(src, out)


def _output_is_input(d: Path) -> Job:
    src, _ = _standard(d, "clip.mp4")
    make_video(src, n_frames=8)
    return Job(src, src)


def _output_hard_link(d: Path) -> Job:
    src, out = _standard(d, "clip.mp4")
    make_video(src, n_frames=8)
    os.link(src, out)
    return Job(src, out)


def _output_symlink(d: Path) -> Job:
    src, out = _standard(d, "clip.mp4")
    make_video(src, n_frames=8)
    out.symlink_to(os.path.relpath(src, out.parent))
    return Job(src, out)


def _output_parent_is_file(d: Path) -> Job:
    src, _ = _standard(d, "clip.mp4")
    make_video(src, n_frames=8)
    blocker = d / "notafolder"
    blocker.write_text("a file where the output folder should be\n")
    return Job(src, blocker / "clip.mp4")


def _output_suffix(suffix: str) -> Callable[[Path], Job]:
    def make(d: Path) -> Job:
        src, out = _standard(d, "clip.mp4", suffix)
        make_video(src, n_frames=8)
        return Job(src, out)

    return make


def _gif(d: Path) -> Job:
    src, out = _standard(d, "anim.gif")
    # GIF delays are centiseconds; unequal ones make it variable frame rate
    pts = [0, 4, 8, 20, 24, 28, 60, 64, 68, 72]
    write_video(src, codec="gif", pix_fmt="rgb8", fmt="gif", time_base=Fraction(1, 100), pts=pts)
    return Job(src, out)


def _apng(d: Path) -> Job:
    src, out = _standard(d, "anim.png")
    write_video(src, codec="apng", pix_fmt="rgb24", fmt="apng", n_frames=8, fps=10)
    return Job(src, out)


def _edit_list_cut(d: Path) -> Job:
    """``ffmpeg -ss 0.2 -i IN -c copy OUT`` on a 20-frame GOP with B-frames:
    the copy must start at the keyframe (frame 0), so the MP4 muxer writes
    an edit list that hides frames 0-4 and the keyframe gets a negative
    pts. Players start with frame 5, shown at 0 s."""
    src, out = _standard(d, "cut.mp4")
    whole = d / "whole.mp4"
    make_video(whole, n_frames=20, gop=20, bframes=2)
    ffmpeg("-ss", "0.2", "-i", str(whole), "-c", "copy", str(src))
    whole.unlink()
    return Job(src, out)


def _lost_packet(d: Path) -> Job:
    """A P-frame packet lost in transfer (remuxed without it): the frames
    after it reference a picture the decoder never saw."""
    src, out = _standard(d, "lost.mp4")
    whole = d / "whole.mp4"
    write_video(whole, n_frames=16, gop=16)
    _remux_without(whole, src, drop=10)
    whole.unlink()
    return Job(src, out)


def _garbage_packet(d: Path) -> Job:
    """Random bytes written over the slice data of frame 10 (the length
    prefix and NAL header stay, so the container is intact)."""
    src, out = _standard(d, "garbage.mp4")
    write_video(src, n_frames=16, gop=16)
    pos, size, key = _video_packets(src)[10]
    assert not key and size > 12
    noise = np.random.default_rng(3).integers(0, 256, size - 6, dtype=np.uint8).tobytes()
    with open(src, "r+b") as f:
        f.seek(pos + 6)
        f.write(noise)
    return Job(src, out)


def _two_video_streams(d: Path) -> Job:
    """A main camera (64×48) and a second, smaller view (32×24) in one MP4."""
    src, out = _standard(d, "two.mp4")
    tb = Fraction(1, 12800)
    with av.open(str(src), "w") as c:
        streams = []
        for w, h in ((W, H), (32, 24)):
            s = c.add_stream("libx264", rate=25)
            s.width, s.height, s.pix_fmt = w, h, "yuv420p"
            s.codec_context.time_base = tb
            s.codec_context.options = {"preset": "ultrafast", "x264-params": "keyint=12:bframes=0"}
            streams.append(s)
        for i in range(12):
            for s in streams:
                f = av.VideoFrame.from_ndarray(synthetic_frame(i, s.width, s.height), format="rgb24")
                f = f.reformat(format="yuv420p")
                f.pts, f.time_base = i * 512, tb
                for p in s.encode(f):
                    c.mux(p)
        for s in streams:
            for p in s.encode(None):
                c.mux(p)
    return Job(src, out)


def _cover_art(d: Path) -> Job:
    """An MP4 with a cover picture (a PNG attached-picture stream)."""
    src, out = _standard(d, "covered.mp4")
    plain, cover = d / "plain.mp4", d / "cover.png"
    make_video(plain, n_frames=10, audio=True)
    make_image(cover, 32, 24)
    ffmpeg("-i", str(plain), "-i", str(cover), "-map", "0", "-map", "1", "-c", "copy",
           "-disposition:v:1", "attached_pic", str(src))
    plain.unlink()
    cover.unlink()
    return Job(src, out)


def _size_change(d: Path) -> Job:
    """Two MPEG-TS recordings of different sizes joined byte for byte (as
    ``cat`` or a recorder that restarts its encoder makes them): 10 frames of
    64×48, then 10 of 96×72, on one clock."""
    src, out = _standard(d, "joined.ts")
    tb = Fraction(1, 90000)
    first = write_video(d / "first.ts", fmt="mpegts", time_base=tb, n_frames=10,
                        pts=[3600 * i for i in range(10)])
    second = write_video(d / "second.ts", fmt="mpegts", time_base=tb, width=96, height=72,
                         pts=[3600 * i for i in range(10, 20)])
    src.write_bytes(first.read_bytes() + second.read_bytes())
    first.unlink()
    second.unlink()
    return Job(src, out)


def _ts_cut_mid_gop(d: Path) -> Job:
    """An MPEG-TS recording whose first bytes are gone, cut at a 188-byte packet
    boundary inside a GOP (a stream picked up midway, a capture started late):
    the frames before the first keyframe cannot be decoded."""
    src, out = _standard(d, "late_start.ts")
    whole = write_video(d / "whole.ts", fmt="mpegts", time_base=Fraction(1, 90000),
                        n_frames=30, gop=10, pts=[3600 * i for i in range(30)])
    data = whole.read_bytes()
    packets = len(data) // 188
    src.write_bytes(data[(packets * 45 // 100) * 188:])
    whole.unlink()
    return Job(src, out)


def _wrong_extension(d: Path) -> Job:
    src, out = _standard(d, "really_mkv.mp4")
    write_video(src, fmt="matroska", n_frames=10)
    return Job(src, out)


_VP9 = {"deadline": "realtime", "cpu-used": "8", "lag-in-frames": "0"}

CASES: list[Case] = [
    # ---- unusual but valid video: must work
    Case("odd-size-h264-444", _simple("odd.mp4", width=65, height=49, pix_fmt="yuv444p"), OK),
    Case("odd-size-vp9-420", _simple("odd.webm", ".mkv", codec="libvpx-vp9", width=65, height=49,
                                      codec_options=_VP9), OK,
         note="4:2:0 at an odd size is legal for VP9; libx264 cannot encode it"),
    Case("vfr", _vfr, OK, slow=True),
    Case("rotation-90", _made("rotated.mp4", n_frames=8, rotation=90), OK, keeps=("rotation",)),
    Case("h264-10bit", _simple("tenbit.mp4", pix_fmt="yuv420p10le"), OK),
    Case("h264-444", _simple("full.mp4", pix_fmt="yuv444p"), OK),
    Case("vp9-webm", _simple("clip.webm", ".mkv", codec="libvpx-vp9", codec_options=_VP9), OK),
    Case("vp9-mkv", _simple("clip.mkv", ".mkv", codec="libvpx-vp9", codec_options=_VP9), OK),
    Case("mjpeg-avi", _simple("camera.avi", codec="mjpeg", pix_fmt="yuvj420p"), OK),
    Case("h264-bframes", _made("bframes.mp4", n_frames=20, gop=10, bframes=2), OK, slow=True),
    Case("start-offset", _made("late.mp4", pts=[12800 + 512 * i for i in range(10)],
                               time_base=Fraction(1, 12800)), OK,
         note="first frame shown at 1 s (an MP4 edit list with an empty edit)"),
    Case("audio-subtitles-mkv", _made("talk.mkv", ".mkv", n_frames=30, audio=True, subtitles=True), OK,
         keeps=("streams",), slow=True),
    Case("gps-mov", _made("phone.mov", ".mov", n_frames=8, audio=True,
                          metadata={"location": LOCATION,
                                    "com.apple.quicktime.location.ISO6709": LOCATION}), OK,
         keeps=("no-location", "streams")),
    Case("one-frame", _made("one.mp4", n_frames=1), OK),
    Case("two-frames", _made("two.mp4", n_frames=2), OK),
    Case("non-ascii-name", _non_ascii, OK),
    Case("spaces-in-path", _spaces, OK),
    Case("output-new-folder", _new_output_folder, OK, note="a missing output folder is created"),
    Case("gif", _gif, OK),
    Case("apng", _apng, OK),
    Case("rawvideo-nut", _simple("raw.nut", codec="rawvideo", pix_fmt="yuv420p", fmt="nut"), OK),
    Case("rawvideo-avi", _simple("raw.avi", codec="rawvideo", pix_fmt="bgr24"), OK),
    Case("palette-png-mov", _simple("pal.mov", ".mov", codec="png", pix_fmt="pal8", n_frames=8), OK,
         note="8-bit palette frames (PNG in QuickTime)"),
    Case("qtrle-mov", _simple("anim.mov", ".mov", codec="qtrle", pix_fmt="rgb24", n_frames=8), OK),
    Case("hevc", _simple("clip.mp4", codec="libx265",
                         codec_options={"x265-params": "log-level=none:keyint=4:min-keyint=4:scenecut=0"}), OK),
    Case("prores-mov", _simple("master.mov", ".mov", codec="prores_ks", pix_fmt="yuv422p10le",
                               n_frames=8), OK),
    Case("mpeg4-avi-bframes", _simple("divx.avi", codec="mpeg4", bframes=2, n_frames=16), OK,
         slow=True),
    Case("mpegts", _simple("broadcast.ts", fmt="mpegts", time_base=Fraction(1, 90000),
                           pts=[126000 + 3600 * i for i in range(12)]), OK,
         note="a broadcast-style clock: 1/90000 s, first frame at 1.4 s"),
    Case("mpegts-to-mkv", _simple("broadcast.ts", ".mkv", fmt="mpegts",
                                  time_base=Fraction(1, 90000),
                                  pts=[126902 + 3600 * i for i in range(12)]), OK,
         note="90 kHz times off the millisecond (1.41002 s on): Matroska keeps each "
              "frame at the nearest millisecond"),
    Case("fragmented-mp4", _simple("frag.mp4", container_options={
        "movflags": "frag_keyframe+empty_moov+default_base_moof"}, n_frames=16), OK, slow=True),
    Case("wrong-extension", _wrong_extension, OK, note="Matroska content named .mp4"),
    Case("size-change-ts", _size_change, OK, keeps=("rescaled",),
         note="one output stream has one size: the later frames are scaled to the first "
              "size before detection, with a warning and a report entry"),
    Case("edit-list-cut", _edit_list_cut, OK,
         note="the output holds the frames a player shows (from 0.2 s), at their times"),
    Case("two-video-streams", _two_video_streams, OK, keeps=("drops-video",),
         note="only the video stream a player shows is anonymized; the second could show faces, so "
              "it is left out of the output, with a warning and a report entry"),
    Case("cover-art", _cover_art, OK, keeps=("streams", "drops-video"),
         note="the cover picture is not anonymized, so it is left out (warning, report "
              "entry); the audio is copied"),
    # ---- damaged: decode what can be decoded, count and warn; frames that do not
    # decode are left out, frames decoded from damaged data are kept
    Case("truncated-mp4", _truncated_mp4, OK, damaged=True,
         note="the last packet is torn (left out) and the index lists 9 frames past the end"),
    Case("truncated-mkv", _truncated_mkv, OK, damaged=True,
         note="the torn block cannot be read; every frame before it is whole"),
    Case("lost-packet", _lost_packet, OK, damaged=True,
         note="the frames after the lost reference are decoded from a stand-in: kept, counted"),
    Case("garbage-packet", _garbage_packet, OK, damaged=True,
         note="frame 10 does not decode (left out); 11-15 are predicted from it (kept, counted)"),
    Case("ts-cut-mid-gop", _ts_cut_mid_gop, OK, damaged=True, keeps=("leading-skipped",),
         note="the frames before the first keyframe do not decode: left out and counted, "
              "nothing called unreadable (the file is whole from there on)"),
    # ---- not a video, or nothing decodes: refused, naming the input
    Case("truncated-mp4-no-index", _truncated_mp4_without_index, REFUSED,
         note="the index was to be written last; without it no frame can be found"),
    Case("zero-bytes", _zero_bytes, REFUSED, before_work=True),
    Case("text-file", _text, REFUSED, before_work=True),
    Case("still-png", _still(".png"), REFUSED, before_work=True,
         note="a still image is for `anonymize images`; the message may say so"),
    Case("still-jpg", _still(".jpg"), REFUSED, before_work=True),
    Case("audio-only", _audio_only, REFUSED, before_work=True),
    Case("directory-input", _directory, REFUSED, before_work=True),
    Case("missing-input", _missing, REFUSED, before_work=True),
    # ---- output paths that cannot work: refused before any work
    Case("output-is-input", _output_is_input, REFUSED, before_work=True),
    Case("output-hard-link", _output_hard_link, REFUSED, before_work=True, names="output"),
    Case("output-symlink", _output_symlink, REFUSED, before_work=True, names="output"),
    Case("output-parent-is-file", _output_parent_is_file, REFUSED, before_work=True,
         names="output-parent"),
    Case("output-avi", _output_suffix(".avi"), REFUSED, before_work=True, names="output"),
    Case("output-unknown-suffix", _output_suffix(".xyz"), REFUSED, before_work=True, names="output"),
]

BY_NAME = {c.name: c for c in CASES}
assert len(BY_NAME) == len(CASES), "case names must be unique"


def build(root: Path, cases: list[Case] | None = None) -> dict[str, Job]:
    """Make every case (or ``cases``) in ``root/<name>/``; for trying by hand."""
    jobs = {}
    for case in cases or CASES:
        folder = Path(root) / case.name
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
        jobs[case.name] = case.make(folder)
    return jobs
