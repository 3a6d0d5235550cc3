"""`anonymize render` against `anonymize run` on the same clip, in one go.

Render reads the boxes of a run's detections.json instead of running the
detectors; everything else (decoding, temporal filling, blurring, encoding,
joining) is the same pipeline. This runs both as a user would, one after the
other on the same machine, and prints their frames per second (frames /
wall time inside the command, model loading included) and the ratio. On a
shared machine both suffer the same load; the line says how loaded it was.

    python bench/render_speed.py [--video CLIP] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_VIDEO = ROOT.parent / "shared" / "data" / "videos" / "intel_car-detection.mp4"


def anonymize(*args: str) -> tuple[dict, float]:
    """Run one ``anonymize`` command; its JSON summary and the process's wall time."""
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "anonymize", *args, "--quiet"], cwd=ROOT,
                          capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        sys.exit(f"anonymize {args[0]} failed ({done.returncode}): {done.stderr.strip()[-500:]}")
    return json.loads(done.stdout), wall


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--video", default=str(DEFAULT_VIDEO), help="clip to anonymize")
    p.add_argument("--out", help="folder for the outputs (default: a temporary folder)")
    args = p.parse_args()
    out = Path(args.out or tempfile.mkdtemp(prefix="render-speed-"))
    video = Path(args.video)
    load0 = os.getloadavg()[0]
    run, run_wall = anonymize("run", str(video), "-o", str(out / "run" / f"{video.stem}.mp4"))
    render, render_wall = anonymize("render", str(video), "--detections",
                                    str(out / "run" / "detections.json"),
                                    "-o", str(out / "render" / f"{video.stem}.mp4"))
    load1 = os.getloadavg()[0]
    same = run["filled_boxes"] == render["filled_boxes"] and run["frames"] == render["frames"]
    ratio = render["fps"] / run["fps"] if run["fps"] else float("inf")
    print(json.dumps({"video": video.name, "frames": run["frames"],
                      "run": {"fps": run["fps"], "wall_s": run["wall_s"],
                              "process_s": round(run_wall, 1)},
                      "render": {"fps": render["fps"], "wall_s": render["wall_s"],
                                 "process_s": round(render_wall, 1)},
                      "same_boxes": same, "out": str(out)}, indent=2))
    print(f"render {render['fps']} fps vs run {run['fps']} fps on {video.name} "
          f"({ratio:.1f}x); {os.cpu_count()} cores, load average {load0:.1f} before, "
          f"{load1:.1f} after")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
