"""The user's files: output checked before any work, written atomically, input untouched.

The detector here records whether it was ever called: a refusal "before
any work" means it never was. Stream plans are checked against what the
output file really holds.
"""

from __future__ import annotations

import hashlib
import json
import os
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from models.detections import Detections
from pipeline.plan import prepare_local
from pipeline.process import run_local
from pipeline.settings import Settings
from pipeline.video import VideoError, probe
from pipeline.video.output import atomic_output, check_output_path, same_file
from tests import corpus
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


def test_avi_and_unknown_outputs_are_refused_before_the_input_is_read(tmp_path):
    not_a_video = tmp_path / "in.txt"
    not_a_video.write_text("hello")
    for name, message in (("out.avi", "AVI cannot keep per-frame timestamps"),
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


def two_video_streams(path: Path) -> Path:
    """An MKV with two video streams (second: a different picture) and audio."""
    tb = Fraction(1, 1000)
    with av.open(str(path), "w") as c:
        streams = []
        for _ in range(2):
            vs = c.add_stream("libx264", rate=25)
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
    assert "only the first video stream is anonymized" in manifest.dropped_streams[0]["reason"]
    report = run_local(src, tmp_path / "out.mkv", SETTINGS, stack=Recorder(), manifest=manifest)
    assert report["dropped_streams"] == manifest.dropped_streams
    with av.open(str(tmp_path / "out.mkv")) as c:
        assert [s.type for s in c.streams] == ["video"]


def test_subtitles_the_output_cannot_hold_are_refused_before_work(tmp_path):
    src = make_video(tmp_path / "subs.mp4", n_frames=10, subtitles=True)
    stack = Recorder()
    with pytest.raises(VideoError, match=r"cannot copy subtitle stream 1 \(mov_text\)"):
        run_local(src, tmp_path / "out.mkv", SETTINGS, stack=stack)
    assert stack.calls == 0 and not (tmp_path / "out.mkv").exists()


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
