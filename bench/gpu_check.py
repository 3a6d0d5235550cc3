"""`make gpu-check`: the checks that need a CUDA device, in one short run.

1. every default detector on CUDA (fp16) finds the same objects as on the
   CPU (fp32) on real images: matched boxes at IoU >= 0.7, counts within 10 %;
2. `anonymize run` on a real video with --device cuda: frame count and pts
   equal the input's;
3. latency per 1280x720 frame on the GPU (bench/run.py's latency section)
   and the video section against a plain transcode.
Exits non-zero on the first failed check. Prints markdown for docs/benchmarks.md.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data"
sys.path.insert(0, str(ROOT))


def main() -> int:
    import torch

    if not torch.cuda.is_available():
        print("gpu-check: CUDA is not available on this machine", file=sys.stderr)
        return 2
    from models.boxes import box_iou_np
    from pipeline.datasets import read_image
    from pipeline.detect import DetectionStack
    from pipeline.images import list_images
    from pipeline.process import run_local
    from pipeline.settings import Settings

    images = [read_image(p) for p in list_images(DATA / "plates_vehicles_openimages_roboflow" / "images")[:24]]
    images += [read_image(p) for p in list_images(DATA / "faces_dlib_examples" / "images")]
    cpu = DetectionStack.from_settings(Settings(device="cpu"))
    gpu = DetectionStack.from_settings(Settings(device="cuda"))
    n_cpu = n_gpu = matched = 0
    for i in range(0, len(images), 8):
        chunk = images[i:i + 8]
        for a, b in zip(cpu.detect(chunk), gpu.detect(chunk), strict=True):
            n_cpu, n_gpu = n_cpu + len(a), n_gpu + len(b)
            if len(a) and len(b):
                matched += int((box_iou_np(a.xyxy, b.xyxy).max(axis=1) >= 0.7).sum())
    print(f"cpu fp32 boxes {n_cpu}, cuda fp16 boxes {n_gpu}, matched {matched}")
    if n_cpu and (matched < 0.9 * n_cpu or abs(n_gpu - n_cpu) > 0.1 * n_cpu):
        print("gpu-check: FAILED cpu/cuda agreement", file=sys.stderr)
        return 1
    src = DATA / "videos" / "intel_car-detection.mp4"
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        rep = run_local(src, Path(tmp) / "out.mp4", Settings(device="cuda"), Path(tmp))
        print(f"run on cuda: {rep['frames']} frames in {time.perf_counter() - t:.1f} s, "
              f"frames_match={rep['frames_match']}")
        if not rep["frames_match"]:
            return 1
    import subprocess

    subprocess.run([sys.executable, str(ROOT / "bench" / "run.py"), "--device", "cuda",
                    "--only", "latency", "video"], check=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
