"""Raw elementary streams (no container, no timestamps) are read like FFmpeg
reads them: at the rate the stream states, every frame in display order."""

from __future__ import annotations

import json
import os
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from pipeline import video
from pipeline.video.contain import contain, readable, without_timestamps
from tests.corpus import Job
from tests.videos import make_video


def raw_h264(tmp_path: Path, n_frames: int = 20, bframes: int = 2, fps: int = 30,
             stated: bool = True) -> tuple[Path, Path]:
    """An H.264 stream with B-frames (decoding order differs from display
    order) written without a container, and the Matroska file it came from.
    x264 states the encoder's time base as the stream's timing: 1/fps, or
    (``stated`` False) 1/(fps·512), a rate no camera has."""
    mkv = make_video(tmp_path / "v.mkv", n_frames=n_frames, gop=8, bframes=bframes, fps=fps,
                     time_base=Fraction(1, fps) if stated else None)
    raw = tmp_path / "v.h264"
    with av.open(str(mkv)) as src, av.open(str(raw), "w", format="h264") as dst:
        out = dst.add_stream_from_template(src.streams.video[0])
        for p in src.demux(src.streams.video[0]):
            if p.size:
                p.stream = out
                dst.mux(p)
    return raw, mkv


def pixels(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]


def test_a_contained_stream_shows_every_frame_in_order_at_the_stated_rate(tmp_path):
    raw, mkv = raw_h264(tmp_path, fps=25)
    assert without_timestamps(raw) and not without_timestamps(mkv)
    dest, note = contain(raw, tmp_path / "c.mkv")
    info = video.probe(dest)
    assert info.n_frames == 20
    times = [p * info.time_base for p in info.frame_pts]
    assert times == [Fraction(i, 25) for i in range(20)]
    assert info.end_pts * info.time_base == Fraction(20, 25)
    # the packets are copied: the frames are the very frames of the source, in display order
    got, want = pixels(dest), pixels(mkv)
    assert len(got) == len(want) == 20
    assert all(np.array_equal(a, b) for a, b in zip(got, want, strict=True))
    assert "v.h264" in note and "25.000 fps (as it states)" in note and "\n" not in note


def test_a_stream_stating_no_believable_rate_is_read_at_25_fps(tmp_path):
    raw, _ = raw_h264(tmp_path, n_frames=6, fps=30, stated=False)
    dest, note = contain(raw, tmp_path / "c.mkv")
    info = video.probe(dest)
    assert [p * info.time_base for p in info.frame_pts] == [Fraction(i, 25) for i in range(6)]
    assert "25.000 fps (FFmpeg's default" in note


def test_readable_leaves_a_timed_file_alone_and_removes_its_copy(tmp_path):
    raw, mkv = raw_h264(tmp_path, n_frames=6, bframes=0)
    with readable(mkv) as (path, note):
        assert path == mkv and note is None
    with readable(raw, tmp_path) as (path, note):
        assert path != raw and video.probe(path).n_frames == 6 and note
        copy = path
    assert not copy.exists()
    missing = tmp_path / "nothing.h264"  # not a video: probing it says why, later
    assert not without_timestamps(missing)


def test_probe_alone_still_refuses_a_stream_without_times(tmp_path):
    raw, _ = raw_h264(tmp_path, n_frames=6)
    with pytest.raises(video.VideoError) as err:
        video.probe(raw)
    assert "no container" in str(err.value) and "\n" not in str(err.value)


def test_a_worker_reads_an_uploaded_raw_stream_as_run_does(tmp_path):
    """The split and reassemble steps fetch the source through one function."""
    from tasks.steps import Context, _fetch_source
    from tasks.storage import open_storage

    raw, _ = raw_h264(tmp_path, n_frames=10)
    work = tmp_path / "work"
    work.mkdir()
    ctx = Context(storage=open_storage(f"file://{tmp_path / 'store'}"), state=None,
                  enqueue=None)
    local = _fetch_source(ctx, {"source_url": f"file://{raw}", "source_name": "v.h264"}, work)
    info = video.probe(local)
    assert info.n_frames == 10 and info.frame_pts == sorted(info.frame_pts)


def test_submit_checks_a_raw_stream_as_the_split_task_reads_it(tmp_path):
    from anonymize.commands.submit import _check_input
    from pipeline.settings import Settings

    raw, _ = raw_h264(tmp_path, n_frames=6)
    _check_input(str(raw), str(tmp_path / "out.mp4"), Settings())  # no error
    same = tmp_path / "same.mp4"
    os.link(raw, same)
    with pytest.raises(video.VideoError, match="same.mp4"):  # checked against the user's file
        _check_input(str(raw), str(same), Settings())


@pytest.mark.slow
def test_anonymize_run_takes_a_raw_stream(tmp_path):
    """The command line, as a user runs it: one warning naming the file and the
    rate, every frame out at its time, the records name the user's file."""
    from tests.test_corpus import run_cli

    raw, _ = raw_h264(tmp_path, n_frames=16, fps=30)
    out = tmp_path / "out" / "v.mp4"
    r = run_cli(Job(raw, out), tmp_path)
    assert r.returncode == 0, r.summary()
    warnings = [s for s in r.stderr.splitlines() if s.startswith("anonymize: warning:")]
    assert len(warnings) == 1 and "v.h264" in warnings[0] and "30.000 fps" in warnings[0]
    info = video.probe(out)
    times = [p * info.time_base for p in info.frame_pts]
    # held in Matroska's milliseconds on the way, as FFmpeg's own copy would be
    assert len(times) == 16
    assert all(abs(t - Fraction(i, 30)) <= Fraction(1, 2000) for i, t in enumerate(times))
    report = json.loads((out.parent / "report.json").read_text())
    assert report["frames_match"] and report["source"] == "v.h264"
    assert not list(Path(tmp_path / "tmp").iterdir()), "a temporary copy was left behind"
