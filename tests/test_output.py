"""The user's files: output checked before any work, written atomically, input untouched.

The detector here records whether it was ever called: a refusal "before
any work" means it never was. Stream plans are checked against what the
output file really holds.
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from models.detections import Detections
from pipeline.plan import prepare_local
from pipeline.process import run_local
from pipeline.settings import Settings
from pipeline.video import VideoError, iter_frames, probe
from pipeline.video.output import atomic_output, check_output_path, same_file
from tests import corpus
from tests.conftest import small_files
from tests.videos import make_video

SETTINGS = Settings(plates="off", fill_frames=1, segment_frames=10)


class Recorder:
    """A stand-in detection stack that finds nothing and counts its calls."""

    model_names = {"faces": "recorder"}

    def __init__(self, fail_after: int | None = None, exc: type[BaseException] = RuntimeError):
        self.calls = 0
        self.fail_after = fail_after
        self.exc = exc

    def detect(self, frames):
        self.calls += 1
        if self.fail_after is not None and self.calls > self.fail_after:
            raise self.exc("stopped on purpose")
        return [Detections.empty() for _ in frames]


def digest(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.fixture
def src(tmp_path):
    return make_video(tmp_path / "in.mp4", n_frames=30, gop=10)


def refused(src, out, message, tmp_path, detections_dir=None):
    before = digest(src)
    stack = Recorder()
    with pytest.raises(VideoError) as err:
        run_local(src, out, SETTINGS, detections_dir, stack=stack)
    assert message in str(err.value) and "\n" not in str(err.value)
    assert stack.calls == 0, "refused only after detection started"
    assert digest(src) == before
    leftovers = [p for p in tmp_path.rglob("*") if ".partial-" in p.name]
    assert leftovers == []
    return str(err.value)


def test_hard_link_of_the_input_is_refused(src, tmp_path):
    link = tmp_path / "link.mp4"
    os.link(src, link)
    msg = refused(src, link, "is the input file", tmp_path)
    assert str(src) in msg


def test_symlink_to_the_input_is_refused(src, tmp_path):
    link = tmp_path / "sym.mp4"
    link.symlink_to(src)
    refused(src, link, "is the input file", tmp_path)


def test_same_path_spelled_differently_is_refused(src, tmp_path):
    refused(src, tmp_path / "." / "in.mp4", "is the input file", tmp_path)


def test_output_under_a_regular_file_is_refused(src, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    refused(src, blocker / "out.mp4", "is not a folder", tmp_path)


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux /proc")
def test_output_in_a_folder_where_no_file_can_be_made_is_refused(src, tmp_path):
    """Permission bits pass for root where no file can be made (/proc, a
    read-only mount): the run used to fail only when joining, at its end."""
    refused(src, Path("/proc/anonymized.mp4"), "output folder /proc is not writable", tmp_path)


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux /proc")
@pytest.mark.parametrize("command", ["images", "faces", "eval"])
def test_image_commands_refuse_an_unwritable_output_folder_first(command, data_dir, capsys):
    from anonymize.cli import main

    images = data_dir / "faces_dlib_examples"
    argv = {"images": ["images", "--img-dir", str(images / "images"), "--out-dir"],
            "faces": ["faces", "--frames-dir", str(images / "images"), "--save-dir"],
            "eval": ["eval", "--dataset", str(images), "--mode", "faces", "--out-dir"]}[command]
    assert main([*argv, "/proc/anonymized", "--quiet"] if command != "eval"
                else [*argv, "/proc/anonymized"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "/proc/anonymized is not writable" in err[0]


@pytest.mark.parametrize("parts", [("a" * 300 + ".mp4",), ("new", "d" * 300, "out.mp4")])
def test_an_output_name_longer_than_the_file_system_takes_is_refused(src, tmp_path, parts):
    """It failed with a traceback only when the finished video was renamed into
    place (or its folder made), after all the work, leaving the records behind."""
    out = tmp_path.joinpath(*parts)
    line = refused(src, out, "bytes long, more than the 255", tmp_path)
    assert "choose a shorter name" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.mp4"]
    line = refused(src, tmp_path / "out.mp4", "bytes long", tmp_path, tmp_path / ("r" * 300))
    assert line.startswith("detections folder")


def test_avi_and_unknown_outputs_are_refused_before_the_input_is_read(tmp_path):
    not_a_video = tmp_path / "in.txt"
    not_a_video.write_text("hello")
    for name, message in (("out.avi", "AVI cannot keep per-frame timestamps"),
                          ("out.webm", "WebM holds no H.264"),
                          ("out.xyz", "unsupported output container .xyz"),
                          ("out", "(no suffix)")):
        with pytest.raises(VideoError, match=message.replace("(", r"\(").replace(")", r"\)")):
            check_output_path(not_a_video, tmp_path / name)


def test_output_folder_is_refused(src, tmp_path):
    refused(src, tmp_path, "is a folder", tmp_path)


def test_detections_dir_under_a_file_is_refused(src, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    refused(src, tmp_path / "out.mp4", "detections folder", tmp_path, blocker / "records")


@pytest.mark.parametrize("records", ["out.mkv", "out.mkv/records"])
def test_detections_dir_that_is_the_output_is_refused(src, tmp_path, records):
    """`-o out.mkv --detections-dir out.mkv` ran the whole video, wrote the records
    into a new folder out.mkv, then failed to put the output there ("Is a directory",
    naming the hidden temporary file)."""
    out = tmp_path / "out.mkv"
    message = refused(src, out, "detections folder", tmp_path, tmp_path / records)
    assert str(out) in message
    assert not out.exists()


@pytest.mark.parametrize("name", ["detections.json", "faces.pkl", "report.html"])
@pytest.mark.parametrize("own_folder", [False, True])
def test_a_folder_where_a_record_goes_is_refused_before_any_work(src, tmp_path, name,
                                                                 own_folder):
    """A folder named as one of the records (beside the output, or in
    --detections-dir) was found only when the records were renamed into place,
    after the whole video, in a line naming our hidden temporary file."""
    records = tmp_path / "records" if own_folder else tmp_path
    (records / name).mkdir(parents=True)
    message = refused(src, tmp_path / "out.mp4", "is a folder, where the run writes its",
                      tmp_path, records if own_folder else None)
    assert str(records / name) in message
    assert not (tmp_path / "out.mp4").exists()


def test_failure_midway_leaves_no_output_and_keeps_an_older_one(src, tmp_path):
    out = tmp_path / "out.mp4"
    out.write_bytes(b"an older result the user still has")
    before = digest(src)
    for exc in (RuntimeError, KeyboardInterrupt):
        stack = Recorder(fail_after=1, exc=exc)
        with pytest.raises(exc):
            run_local(src, out, SETTINGS, stack=stack)
        assert stack.calls == 2
        assert out.read_bytes() == b"an older result the user still has"
        assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    assert digest(src) == before


def test_success_replaces_the_output_in_one_step(src, tmp_path):
    out = tmp_path / "out.mp4"
    report = run_local(src, out, SETTINGS, stack=Recorder())
    assert report["frames_match"] and report["output"] == str(out)
    with av.open(str(out)) as c:
        assert sum(1 for _ in c.decode(video=0)) == 30
    assert [p.name for p in tmp_path.iterdir() if ".partial-" in p.name] == []


def test_atomic_output_removes_the_partial_file_on_error(tmp_path):
    target = tmp_path / "x.mp4"
    with pytest.raises(ValueError), atomic_output(target) as tmp:
        tmp.write_bytes(b"half")
        raise ValueError("boom")
    assert not target.exists() and list(tmp_path.iterdir()) == []


def test_a_name_near_the_file_system_limit_is_written_atomically(tmp_path):
    """80 CJK characters are 240 bytes, a legal name; the hidden temporary name
    beside it must fit the 255-byte limit too."""
    target = tmp_path / ("写真" * 40 + ".mp4")
    with atomic_output(target) as tmp:
        assert len(os.fsencode(tmp.name)) <= 255
        assert tmp.name.startswith(".") and tmp.suffix == ".mp4"
        tmp.write_bytes(b"whole")
    assert target.read_bytes() == b"whole" and list(tmp_path.iterdir()) == [target]


def test_same_file_by_identity(tmp_path):
    a = tmp_path / "a"
    a.write_text("x")
    os.link(a, tmp_path / "b")
    (tmp_path / "c").symlink_to(a)
    (tmp_path / "d").write_text("x")
    assert same_file(a, tmp_path / "b") and same_file(a, tmp_path / "c")
    assert not same_file(a, tmp_path / "d") and not same_file(a, tmp_path / "missing")


def two_video_streams(path: Path, default: int | None = None) -> Path:
    """An MKV with two video streams (second: a different picture) and audio;
    ``default``: the stream marked as the one to show (none by default)."""
    tb = Fraction(1, 1000)
    with av.open(str(path), "w") as c:
        streams = []
        for k in range(2):
            vs = c.add_stream("libx264", rate=25)
            vs.disposition = av.stream.Disposition.default if k == default else 0
            vs.width, vs.height, vs.pix_fmt = 64, 48, "yuv420p"
            vs.time_base = vs.codec_context.time_base = tb
            vs.codec_context.options = {"x264-params": "keyint=10:bframes=0"}
            streams.append(vs)
        for i in range(20):
            for k, vs in enumerate(streams):
                img = np.full((48, 64, 3), 40 + 100 * k + 3 * i, np.uint8)
                f = av.VideoFrame.from_ndarray(img, format="rgb24")
                f.pts, f.time_base = i * 40, tb
                for p in vs.encode(f):
                    c.mux(p)
        for vs in streams:
            for p in vs.encode(None):
                c.mux(p)
    return path


def test_second_video_stream_is_left_out_and_reported(tmp_path):
    src = two_video_streams(tmp_path / "two.mkv")
    manifest = prepare_local(src, tmp_path / "out.mkv", SETTINGS)
    assert [(d["index"], d["type"]) for d in manifest.dropped_streams] == [(1, "video")]
    assert "the video stream a player shows" in manifest.dropped_streams[0]["reason"]
    report = run_local(src, tmp_path / "out.mkv", SETTINGS, stack=Recorder(), manifest=manifest)
    assert report["dropped_streams"] == manifest.dropped_streams
    with av.open(str(tmp_path / "out.mkv")) as c:
        assert [s.type for s in c.streams] == ["video"]


def test_the_video_stream_marked_default_is_the_one_anonymized(tmp_path):
    """A player shows the video stream marked default; the first was the one
    anonymized and the shown one left out, so the output showed the other
    camera. The default one is kept (anonymized) and the first left out."""
    src = two_video_streams(tmp_path / "two.mkv", default=1)
    with av.open(str(src)) as c:
        assert [bool(s.disposition & av.stream.Disposition.default) for s in c.streams] == [
            False, True]
    manifest = prepare_local(src, tmp_path / "out.mkv", SETTINGS)
    assert manifest.info.stream_index == 1
    assert [(d["index"], d["type"]) for d in manifest.dropped_streams] == [(0, "video")]
    assert "the video stream a player shows" in manifest.dropped_streams[0]["reason"]
    report = run_local(src, tmp_path / "out.mkv", SETTINGS, stack=Recorder(), manifest=manifest)
    assert report["frames_match"]
    with av.open(str(tmp_path / "out.mkv")) as c:
        assert [s.type for s in c.streams] == ["video"]
        levels = [float(np.median(f.to_ndarray(format="rgb24"))) for f in c.decode(video=0)]
    assert levels == pytest.approx([140 + 3 * i for i in range(20)], abs=3)  # the second picture


def test_an_audio_track_cut_from_the_index_is_left_out_and_reported(tmp_path):
    """An MP4 cut inside its index (written last) just before the audio
    track's sample description: the video is whole, the audio track has no
    codec and no packets. The run was refused with "cannot copy audio stream
    1 (?) ... use the source's container (.mp4)", the very container asked
    for."""
    whole = make_video(tmp_path / "whole.mp4", n_frames=10, audio=True)
    data = whole.read_bytes()
    src = tmp_path / "cut.mp4"
    src.write_bytes(data[: data.rindex(b"stsd") - 4])
    with av.open(str(src)) as c:
        assert [s.type for s in c.streams] == ["video", "audio"]
        assert c.streams.audio[0].codec_context is None
    out = tmp_path / "out.mp4"
    report = run_local(src, out, SETTINGS, tmp_path / "det", stack=Recorder())
    assert report["frames_match"] is True and report["frames"] == 10
    assert [(d["index"], d["type"], d["codec"]) for d in report["dropped_streams"]] == [
        (1, "audio", None)]
    assert "cut-short" in report["dropped_streams"][0]["reason"]
    with av.open(str(out)) as c:
        assert [s.type for s in c.streams] == ["video"]


def test_subtitles_the_output_cannot_hold_are_refused_before_work(tmp_path):
    src = make_video(tmp_path / "subs.mp4", n_frames=10, subtitles=True)
    stack = Recorder()
    with pytest.raises(VideoError, match=r"cannot copy subtitle stream 1 \(mov_text\)"):
        run_local(src, tmp_path / "out.mkv", SETTINGS, stack=stack)
    assert stack.calls == 0 and not (tmp_path / "out.mkv").exists()


def _with_sound(path: Path, video: str, sound: str, rate: int, samples: np.ndarray,
                frames: int = 5) -> Path:
    """A small video with mono sound: ``frames`` frames of ``video``, and
    ``samples`` (int16) encoded as ``sound`` at ``rate`` Hz."""
    with av.open(str(path), "w") as c:
        vs = c.add_stream(video, rate=25)
        vs.width, vs.height, vs.pix_fmt = 64, 48, "yuv420p"
        aus = c.add_stream(sound, rate=rate)
        aus.layout = "mono"
        for i in range(frames):
            f = av.VideoFrame.from_ndarray(np.full((48, 64, 3), 20 * i, np.uint8), format="rgb24")
            f.pts = i
            for p in vs.encode(f.reformat(format="yuv420p")):
                c.mux(p)
        a = av.AudioFrame.from_ndarray(samples[None, :], format="s16", layout="mono")
        a.sample_rate, a.pts = rate, 0
        fmt = aus.codec_context.format.name
        for frame in av.AudioResampler(format=fmt, layout="mono", rate=rate).resample(a) + [None]:
            for p in aus.encode(frame):
                c.mux(p)
        for p in vs.encode(None):
            c.mux(p)
    return path


@pytest.mark.parametrize("codec,hint", [
    ("pcm_mulaw", "; write .mov instead"),
    ("adpcm_ima_wav", "; no container anonymize writes (.mp4, .mov, .mkv) can hold it: "
                      "convert that stream first"),
])
def test_sound_the_output_cannot_hold_is_refused_naming_what_would_work(tmp_path, codec, hint):
    """The refusal said "use the source's container (.avi)": a container
    anonymize refuses to write. It names the containers that do take the
    stream, or says that none does."""
    from pipeline.video.join import check_output_streams

    # a CCTV-style AVI: MPEG-4 video, 8 kHz sound
    tone = (np.sin(np.arange(8000) / 5) * 3000).astype(np.int16)
    src = _with_sound(tmp_path / "cctv.avi", "mpeg4", codec, 8000, tone)
    info = probe(src)
    with pytest.raises(VideoError) as err:
        check_output_streams(src, info, ".mp4")
    msg = str(err.value)
    assert msg.startswith(f"cannot copy audio stream 1 ({codec}) of {src} into .mp4: ")
    assert hint in msg and ".avi" not in msg.replace(str(src), "") and "\n" not in msg


def test_a_muxer_refusal_is_said_in_ffmpegs_words(tmp_path):
    """Opus into .mov: the muxer's header refuses it; the line said "Invalid
    argument: '<none>' returned 22"."""
    from pipeline.video.join import check_output_streams

    src = _with_sound(tmp_path / "talk.mkv", "libx264", "libopus", 48000,
                      np.zeros(960, np.int16), frames=3)
    with pytest.raises(VideoError) as err:
        check_output_streams(src, probe(src), ".mov")
    assert str(err.value) == (f"cannot copy audio stream 1 (opus) of {src} into .mov: its muxer "
                              f"refused it (Invalid argument); write .mp4 or .mkv instead")


def player_times(path: Path) -> list[Fraction]:
    """Times of the frames PyAV decodes, skipping packets the decoder rejects."""
    times = []
    with av.open(str(path)) as c:
        vs = c.streams.video[0]
        for packet in c.demux(vs):
            try:
                times += [f.pts * Fraction(f.time_base) for f in vs.decode(packet)]
            except av.FFmpegError:
                continue
    return sorted(times)


def test_damaged_input_gives_every_frame_that_decodes_and_counts_the_rest(tmp_path):
    """Frame 10 of 16 is garbage: it is left out (the output holds the 15
    others at their times), the 5 frames predicted from it are kept and
    counted, and the report says so; the records hold the 15 frames."""
    job = corpus.BY_NAME["garbage-packet"].make(tmp_path / "case")
    out = tmp_path / "out.mp4"
    report = run_local(job.input, out, SETTINGS, tmp_path / "det", stack=Recorder())
    assert player_times(out) == player_times(job.input)
    assert report["frames"] == 15 and report["frames_match"] is True
    assert report["input"]["frames"] == 16
    assert report["damaged_frames"] == 6
    assert [f["index"] for f in report["damage"]["skipped"]["frames"]] == [10]
    assert report["damage"]["concealed"]["count"] == 5
    assert 10 * 512 not in probe(out).frame_pts
    detections = json.loads((tmp_path / "det" / "detections.json").read_text())
    assert [f["frame_idx"] for f in detections["frames"]] == [i for i in range(16) if i != 10]


def _ts_with_a_damaged_adts_header(path: Path) -> Path:
    """An MPEG-TS (H.264 + AAC in ADTS frames) whose sixth audio frame lost its
    ADTS sync word: the demuxer still delivers the packet, but MP4 and
    Matroska, which strip that header, cannot parse it."""
    make_video(path, n_frames=20, audio=True, time_base=Fraction(1, 90000))
    with av.open(str(path)) as c:
        where = [p.pos for p in c.demux(c.streams.audio[0]) if p.size][5]
    data = bytearray(path.read_bytes())
    at = data.index(b"\xff\xf1", where)
    data[at : at + 2] = b"\x00\x00"
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize("suffix", [".mp4", ".mkv"])
def test_an_audio_packet_the_output_cannot_take_is_left_out_and_reported(tmp_path, suffix):
    """The whole run failed at its end, after every frame was detected, with
    "Invalid data found when processing input: '.out.partial-….mp4'" (our
    temporary name). The damaged packet is left out, as a player skips it;
    the report counts it and a warning line names the input."""
    from pipeline.video.damage import input_warnings

    src = _ts_with_a_damaged_adts_header(tmp_path / "cam.ts")
    with av.open(str(src)) as c:
        audio_in = sum(1 for p in c.demux(c.streams.audio[0]) if p.size)
    out = tmp_path / f"out{suffix}"
    report = run_local(src, out, SETTINGS, tmp_path / "det", stack=Recorder())
    assert report["frames_match"] is True and report["frames"] == 20
    assert report["left_out_packets"] == 1
    assert [(d["index"], d["type"]) for d in report["left_out"]] == [(1, "audio")]
    with av.open(str(out)) as c:
        assert sum(1 for p in c.demux(c.streams.audio[0]) if p.size) == audio_in - 1
    lines = input_warnings(src, report)
    assert len(lines) == 1 and str(src) in lines[0] and ".partial-" not in lines[0]
    clean = make_video(tmp_path / "clean.ts", n_frames=5, audio=True,
                       time_base=Fraction(1, 90000))
    report = run_local(clean, tmp_path / f"clean{suffix}", SETTINGS, tmp_path / "det2",
                       stack=Recorder())
    assert report["left_out_packets"] == 0 and input_warnings(clean, report) == []


@pytest.mark.parametrize("suffix", [".mp4", ".mkv", ".ts"])
def test_a_frame_stamped_with_the_time_of_another_is_left_out_and_counted(tmp_path, suffix):
    """Damaged timing gave frames 3 and 8 the times of the frames before them
    (frame 8 a keyframe). The whole video was refused ("duplicate frame
    timestamps"), against "only a file of which no frame decodes is refused";
    a player shows one picture at a time: the first is kept, the repeat left
    out and counted as damage, every other frame at its time."""
    from pipeline.video.damage import input_warnings
    from tests.videos import frame_number, make_restamped

    times = [0, 40, 80, 80, 160, 200, 240, 280, 280, 360, 400, 440, 480, 520, 560, 600]
    src = make_restamped(tmp_path / f"cam{suffix}", times, gop=4)
    info = probe(src)
    assert [(p - info.frame_pts[0]) * info.time_base for p in info.frame_pts] == [
        Fraction(t, 1000) for t in sorted(set(times))]  # an MPEG-TS starts at 1 s
    out = tmp_path / "out.mp4"
    report = run_local(src, out, SETTINGS, tmp_path / "det", stack=Recorder())
    assert report["frames_match"] is True and report["frames"] == 14
    assert report["damaged_frames"] == 2 and report["damage"]["duplicates"]["count"] == 2
    lines = input_warnings(src, report)
    assert len(lines) == 1 and "2 had the time of another frame and are left out" in lines[0]
    got = [frame_number(rgb) for _, rgb in iter_frames(out, probe(out))]
    assert got == [i % 13 for i in range(16) if i not in (3, 8)]


def test_a_damaged_first_keyframe_starts_the_output_where_decoding_can(tmp_path):
    """The first keyframe is garbage: what decodes before the next keyframe is
    what a player shows; the output shows the same, at the same times."""
    src = corpus.write_video(tmp_path / "in.mp4", n_frames=12, gop=4)
    pos, size, key = corpus._video_packets(src)[0]
    assert key
    data = bytearray(src.read_bytes())
    data[pos + 6 : pos + size] = np.random.default_rng(2).integers(
        0, 256, size - 6, dtype=np.uint8).tobytes()
    src.write_bytes(bytes(data))
    out = tmp_path / "out.mp4"
    report = run_local(src, out, SETTINGS, tmp_path / "det", stack=Recorder())
    want = player_times(src)
    assert 0 < len(want) < 12
    assert player_times(out) == want
    assert report["frames"] == len(want) and report["frames_match"] is True
    assert report["damaged_frames"] >= 12 - len(want)


def test_an_output_whose_frames_do_not_match_is_said_on_stderr(src, tmp_path):
    """``anonymize run`` exits with status 1 when report.json says
    frames_match false; stderr said nothing about why (the .mkv output of an
    MP4 with AAC sound did so). One warning line now names both files."""
    from pipeline.video.damage import input_warnings

    report = run_local(src, tmp_path / "out.mp4", SETTINGS, tmp_path / "det", stack=Recorder())
    assert report["frames_match"] is True and input_warnings(src, report) == []
    report["frames_match"] = False
    lines = input_warnings(src, report)
    assert len(lines) == 1 and str(src) in lines[0] and str(tmp_path / "out.mp4") in lines[0]
    assert "frames_match is false" in lines[0] and "\n" not in lines[0]


@pytest.mark.parametrize("limit_kib,where", [(1, "work"), (10, "output")])
def test_a_write_the_storage_refuses_is_one_line_and_leaves_nothing(tmp_path, limit_kib, where):
    """A full disk, a quota or a file too large for its file system (FAT32's
    4 GiB, here a real file size limit, ``ulimit -f``) ended the run with
    FFmpeg's traceback naming our temporary file. It is one line naming the
    folder (the work folder under TMPDIR, which holds the source's segment
    copies, or the output's), exit status 2, and nothing is left behind."""
    src = make_video(tmp_path / "in.mp4", n_frames=60, gop=10)  # 16 KB, output ~24 KB
    zones = tmp_path / "zones.json"  # a forced blur: no detector to load
    zones.write_text(json.dumps({"zones": [{"kind": "force", "box": [0, 0, 8, 8]}]}))
    work, out = tmp_path / "tmp", tmp_path / "out" / "o.mp4"
    work.mkdir()

    def limit() -> None:  # Python ignores SIGXFSZ: a write past the limit fails with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_kib * 1024, limit_kib * 1024))

    root = Path(__file__).resolve().parent.parent
    done = subprocess.run(
        [sys.executable, "-m", "anonymize", "run", str(src), "-o", str(out), "--no-faces",
         "--no-plates", "--zones", str(zones), "--quiet", "--preset", "ultrafast",
         "--segment-frames", "10"],
        env=dict(os.environ, TMPDIR=str(work), PYTHONPATH=str(root)), cwd=root,
        capture_output=True, text=True, timeout=300, preexec_fn=limit)
    lines = done.stderr.splitlines()
    assert done.returncode == 2 and len(lines) == 1, done.stderr[-600:]
    named = f"File too large in {work}" if where == "work" else f"{out}: File too large"
    assert lines[0].startswith(f"anonymize: error: {named}"), lines[0]
    assert ("TMPDIR" in lines[0]) == (where == "work"), lines[0]
    assert "anonymize-" not in lines[0] and ".partial-" not in lines[0]
    assert list(work.iterdir()) == []
    assert not out.exists()
    assert not out.parent.exists() or not any(".partial-" in p.name for p in out.parent.iterdir())


def test_a_report_that_does_not_fit_leaves_no_earlier_report_beside_the_new_video(tmp_path):
    """report.json and report.html are written after the video and its records
    are in place; when the disk filled up just then, the earlier run's report
    stayed beside the new video, describing another one. Now a report not
    written leaves no report under its name (the command still fails, in one
    line). A file size limit (``ulimit -f``) under report.html's size stands in
    for a disk that fills up at that moment."""
    src = make_video(tmp_path / "in.mp4", n_frames=12)
    zones = tmp_path / "zones.json"  # a forced blur: no detector to load
    zones.write_text(json.dumps({"zones": [{"kind": "force", "box": [0, 0, 8, 8]}]}))
    out = tmp_path / "out" / "o.mp4"
    root = Path(__file__).resolve().parent.parent

    def run(*extra, limit=None):
        return subprocess.run(
            [sys.executable, "-m", "anonymize", "run", str(src), "-o", str(out), "--no-faces",
             "--no-plates", "--zones", str(zones), "--quiet", "--preset", "ultrafast", *extra],
            env=dict(os.environ, PYTHONPATH=str(root)), cwd=root, capture_output=True,
            text=True, timeout=300, preexec_fn=small_files(limit) if limit else None)

    assert run().returncode == 0
    sizes = {p.name: p.stat().st_size for p in out.parent.iterdir()}
    limit = max(size for name, size in sizes.items() if name != "report.html") + 64
    assert sizes["report.html"] > limit, sizes  # the page is the largest file here
    earlier = (out.parent / "report.html").read_bytes()
    done = run("--crf", "30", limit=limit)
    assert done.returncode == 2, done.stderr
    (line,) = done.stderr.splitlines()
    assert line.startswith(f"anonymize: error: {out.parent / 'report.html'}: File too large")
    assert json.loads((out.parent / "report.json").read_text())["settings"]["crf"] == 30
    assert not (out.parent / "report.html").exists() or (
        (out.parent / "report.html").read_bytes() != earlier)


def test_a_record_the_storage_refuses_is_named(tmp_path):
    """report.json, the pickles and report.html may go to another folder
    (--detections-dir) than the output; a write refused there named no file
    at all ("No space left on device"), so the user could not tell which
    folder was full."""
    from anonymize.cli import _storage_error
    from pipeline.video.output import write_atomic

    records = tmp_path / "records"
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (1024, hard))  # writes past it fail with EFBIG
    try:
        with pytest.raises(OSError) as err:
            write_atomic(records / "report.json", b"{}" * 2048)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert Path(err.value.filename) == records / "report.json"
    line = _storage_error(err.value)
    assert line.startswith(f"{records / 'report.json'}: File too large: "), line
    assert list(records.iterdir()) == []


def test_relative_names_ffmpeg_would_take_for_a_protocol_are_read_and_written(
        tmp_path, monkeypatch):
    """FFmpeg reads a name such as ``20240101T12:30:00.mp4`` (a camera's time
    stamp) as a URL of the protocol "20240101T12": the input was refused
    ("not a video ... Protocol not found") and an output ``cam1:2.mp4`` ended
    the run with a traceback at the very end (an ``http:...`` name would even
    have been fetched from the network). Given as relative names, both are
    the files they name."""
    monkeypatch.chdir(tmp_path)
    make_video(tmp_path / "20240101T12:30:00.mp4", n_frames=12)
    out = Path("cam1:2.mp4")
    report = run_local(Path("20240101T12:30:00.mp4"), out, SETTINGS, stack=Recorder())
    assert report["frames_match"] and report["frames"] == 12
    with av.open(str(tmp_path / out)) as c:
        assert sum(1 for _ in c.decode(video=0)) == 12
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix == ".mp4") == [
        "20240101T12:30:00.mp4", "cam1:2.mp4"]


def test_audio_starting_before_the_first_frame_moves_a_matroska_output_as_reported(tmp_path):
    """An MP4's AAC starts 1024 samples before 0 (the priming its edit list
    hides). Matroska cannot hold that: its muxer moved every stream by 64 ms
    by itself, so report.json said frames_match false and start_shift_s 0,
    and the run ended with status 1 and nothing said. The run now moves the
    streams itself, by the amount it reports; sync and every gap are kept,
    and an MP4 output keeps the source's times."""
    src = make_video(tmp_path / "phone.mp4", n_frames=12, audio=True)
    with av.open(str(src)) as c:
        audio_src = [(bytes(p), p.pts * p.time_base) for p in c.demux(c.streams.audio[0]) if p.size]
    assert audio_src[0][1] == Fraction(-1024, 16000)
    info = probe(src)
    for suffix, shift in ((".mkv", Fraction(-1024, 16000)), (".mp4", 0)):
        out = tmp_path / f"out{suffix}"
        report = run_local(src, out, SETTINGS, tmp_path / suffix[1:], stack=Recorder())
        assert report["frames_match"] is True, suffix
        moved = Fraction(report["start_shift_s"])
        assert moved >= -shift and moved - -shift < info.time_base, suffix
        got = probe(out)
        times = [p * got.time_base for p in got.frame_pts]
        want = [p * info.time_base + moved for p in info.frame_pts]
        assert max(abs(a - b) for a, b in zip(times, want, strict=True)) <= got.time_base / 2
        with av.open(str(out)) as c:
            audio = [(bytes(p), p.pts * p.time_base) for p in c.demux(c.streams.audio[0]) if p.size]
        assert [a for a, _ in audio] == [a for a, _ in audio_src]
        assert max(abs(t - (u + moved)) for (_, t), (_, u) in zip(audio, audio_src, strict=True)
                   ) <= Fraction(1, 1000)


def test_a_90khz_source_written_to_matroska_matches_at_the_millisecond(tmp_path):
    """Matroska stores milliseconds: an MPEG-TS-style clock (1/90000 s, frames
    at 10.02 ms + 40 ms steps) lands on the nearest millisecond, and that is
    the same frame at the same time, not a mismatch (exit status 0)."""
    src = corpus.write_video(tmp_path / "in.ts", fmt="mpegts", time_base=Fraction(1, 90000),
                             pts=[126902 + 3600 * i for i in range(12)])
    assert probe(src).frame_pts[0] == 126902  # 1.41002 s: not on a millisecond
    out = tmp_path / "out.mkv"
    report = run_local(src, out, SETTINGS, tmp_path / "rec", stack=Recorder())
    got = probe(out)
    assert got.time_base == Fraction(1, 1000)
    assert [p * got.time_base for p in got.frame_pts][:2] == [Fraction(1410, 1000),
                                                              Fraction(1450, 1000)]
    assert report["frames_match"] is True


def test_a_frame_a_tick_off_at_the_output_resolution_does_not_match():
    from pipeline.finalize import same_frame_times
    from pipeline.video import VideoInfo

    out = VideoInfo(path="o.mkv", format_name="matroska", width=2, height=2, codec="h264",
                    pix_fmt="yuv420p", time_base=Fraction(1, 1000), avg_fps=25.0,
                    frame_pts=[10, 50, 90], keyframe_pts=[10], duration_s=0.12, rotation=0,
                    stream_index=0)
    shown = [902, 902 + 3600, 902 + 7200]  # 10.02, 50.02, 90.02 ms
    assert same_frame_times(shown, Fraction(1, 90000), out)
    out.frame_pts = [10, 51, 90]  # 0.98 ms off: more than half a millisecond
    assert not same_frame_times(shown, Fraction(1, 90000), out)
    out.frame_pts = [10, 50]
    assert not same_frame_times(shown, Fraction(1, 90000), out)


class _Interrupt:
    """Ctrl-C arriving while a records file is being written (pickled)."""

    def __reduce__(self):
        raise KeyboardInterrupt


def test_image_and_eval_records_interrupted_midway_keep_the_older_ones(tmp_path, monkeypatch):
    """detections.pkl, faces.pkl, the eval pickle and metrics.json were opened
    (emptied) and then written: an interrupt or a full disk midway left an
    empty or half file under the real name, where the previous run's had been."""
    from pipeline.datasets import ImageRecord
    from pipeline.evaluate import evaluate_dataset
    from pipeline.images import write_face_pickle, write_image_detections

    found = {"a.jpg": Detections(np.array([[1, 2, 30, 40]], np.float32),
                                 np.array([0.9], np.float32), np.array([0]))}
    import cv2

    (tmp_path / "img").mkdir()
    cv2.imwrite(str(tmp_path / "img" / "a.png"), np.zeros((40, 40, 3), np.uint8))
    records = [ImageRecord(tmp_path / "img" / "a.png", name="a.png")]
    out = tmp_path / "out"

    def write_all():
        write_image_detections(out, found)
        write_face_pickle(out, found, tmp_path / "img")
        evaluate_dataset(records, lambda images: [found["a.jpg"] for _ in images], out,
                         "faces", progress=False)

    write_all()
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert set(before) == {"detections.pkl", "faces.pkl", "faces_mdict_list.pkl", "metrics.json"}
    monkeypatch.setattr(Detections, "to_imageai", lambda self: [_Interrupt()])
    monkeypatch.setattr("pipeline.images.face_pickle", lambda *a: {"x": _Interrupt()})
    for write in (lambda: write_image_detections(out, found),
                  lambda: write_face_pickle(out, found, tmp_path / "img"),
                  lambda: evaluate_dataset(records, lambda images: [found["a.jpg"]], out,
                                           "faces", progress=False)):
        with pytest.raises(KeyboardInterrupt):
            write()
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # nothing half, nothing new
