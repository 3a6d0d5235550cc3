"""Raw elementary streams (``.h264``, ``.hevc``: no container, and any other
stream whose packets carry no time) put in one.

Such a file holds frames in decoding order and no times, so it cannot be
cut into segments or its timing kept. FFmpeg reads it at the stream's own
frame rate (the timing an H.264/HEVC encoder writes into the stream) or at
25 fps; :func:`contain` does the same and writes a Matroska copy, packets
copied byte for byte, each with the time of its frame in display order
(learnt by decoding once with every packet tagged by its position). The
pipeline then reads that copy like any other source. Camera modules (a
Raspberry Pi's, some dashcams) write such files, and the user then needs
no ffmpeg of their own.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from fractions import Fraction
from pathlib import Path

import av

from models.errors import one_line

from .probe import DEMUX_ERRORS, VideoError, local_name, open_input, video_stream

#: what FFmpeg assumes when the stream states no rate (its raw demuxers' default)
DEFAULT_RATE = Fraction(25)
_SANE_RATES = (Fraction(1, 10), Fraction(1000))  # a stated rate outside this is not believed


def without_timestamps(path) -> bool:
    """Whether the first video packets of ``path`` carry no time at all (False
    for what is not a readable video: probing it says why)."""
    try:
        with open_input(path) as c:
            return _untimed(c, video_stream(c, path))
    except VideoError:
        return False


def _untimed(c, vs) -> bool:
    seen = 0
    try:
        for p in c.demux(vs):
            if p.size == 0:
                continue
            if p.pts is not None or p.dts is not None:
                return False
            seen += 1
            if seen >= 3:
                break
    except DEMUX_ERRORS:
        pass
    return seen > 0


def stream_rate(vs) -> tuple[Fraction, bool]:
    """Frames per second the stream states (its VUI timing), or
    :data:`DEFAULT_RATE`; and whether the stream stated it."""
    rate = vs.codec_context.framerate or vs.guessed_rate
    if rate and _SANE_RATES[0] <= Fraction(rate) <= _SANE_RATES[1]:
        return Fraction(rate), True
    return DEFAULT_RATE, False


def _display_ranks(path) -> dict[int, int]:
    """Packet position (decoding order) -> frame position (display order), for
    the packets that give a frame."""
    shown: list[int] = []
    with open_input(path) as c:
        vs = video_stream(c, path)
        n = 0
        try:
            for p in c.demux(vs):
                if p.size:
                    p.pts, n = n, n + 1
                try:
                    shown += [f.pts for f in vs.decode(p if p.size else None)
                              if f.pts is not None]
                except av.FFmpegError:
                    continue  # a packet that does not decode gives no frame
        except DEMUX_ERRORS:
            pass
    return {tag: rank for rank, tag in enumerate(shown)}


def contain(path, dest: Path) -> tuple[Path, str]:
    """Write ``path``'s video stream into the Matroska file ``dest`` with a time
    for every frame; returns ``dest`` and a one-line note for the user (the rate
    used, packets left out)."""
    ranks = _display_ranks(path)
    if not ranks:
        raise VideoError(f"no frame of {path} decodes")
    # decoding runs ahead of display by at most this many packets: times start at 0
    # and no packet is decoded after it is shown
    delay = max(0, max(i - r for i, r in ranks.items()))
    dropped = 0
    with open_input(path) as c:
        vs = video_stream(c, path)
        rate, stated = stream_rate(vs)
        try:
            with av.open(local_name(dest), "w", format="matroska") as out:
                ost = out.add_stream_from_template(vs)
                ost.time_base = 1 / rate
                n = 0
                try:
                    for p in c.demux(vs):
                        if not p.size:
                            continue
                        i, n = n, n + 1
                        if i not in ranks:
                            dropped += 1
                            continue
                        p.stream = ost
                        p.time_base = 1 / rate
                        p.pts, p.dts, p.duration = ranks[i], i - delay, 1
                        out.mux(p)
                except DEMUX_ERRORS:
                    pass
        except (av.FFmpegError, ValueError) as e:  # a codec Matroska cannot hold
            raise VideoError(f"cannot read the raw {vs.codec_context.name} stream {path} "
                             f"(no timestamps, and it could not be given them: "
                             f"{one_line(e)})") from None
    how = "as it states" if stated else "FFmpeg's default: the stream states no plausible rate"
    note = (f"{Path(path).name} is a raw {vs.codec_context.name} stream with no timestamps: "
            f"read at {float(rate):.3f} fps ({how})")
    if dropped:
        note += f"; {dropped} packet(s) that decode to no frame left out"
    return dest, note


@contextmanager
def readable(source, workdir=None) -> Iterator[tuple[Path, str | None]]:
    """``source`` itself when its packets carry times; else a contained copy in a
    temporary folder (removed on exit) and the note for the user."""
    source = Path(source)
    if not without_timestamps(source):
        yield source, None
        return
    tmp = Path(tempfile.mkdtemp(prefix="anonymize-contain-", dir=workdir))
    try:
        yield contain(source, tmp / f"{source.stem}.mkv")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
