"""`make gpu-check`: the checks that need a CUDA device, in one short run.

1. every default detector on CUDA (fp16) finds the same objects as on the
   CPU (fp32) on real images: matched boxes at IoU >= 0.7, counts within 10 %;
2. `anonymize run` on a real video with --device cuda: frame count and pts
   equal the input's;
3. `anonymize run` on a 1920x1080 clip against a plain decode+encode of it
   (target: >= 0.8x its fps) and the GPU's peak memory;
4. latency per 1280x720 frame on the GPU (bench/run.py's latency section)
   and the video section against a plain transcode.
Exits non-zero on the first failed check. Prints markdown for docs/benchmarks.md.

    python bench/gpu_check.py [--device cuda] [--frames 300]

``--device cpu --frames 8`` runs every step on the CPU (the agreement check
then compares the CPU with itself): a smoke run of the script where no GPU is
lent, so that the one run on a GPU machine is not lost to a broken script.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data"
#: street photos of the agreement check (the first by name; the dlib faces are all used)
STREET_IMAGES = 24
sys.path.insert(0, str(ROOT))


def main() -> int:
    import argparse

    import torch

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda", help="cuda (default), cuda:N, or cpu (smoke run)")
    ap.add_argument("--frames", type=int, default=300, help="frames of the 1080p clip")
    args = ap.parse_args()
    device = args.device
    if device.startswith("cuda") and not torch.cuda.is_available():
        print("gpu-check: CUDA is not available on this machine", file=sys.stderr)
        return 2
    from models.boxes import box_iou_np
    from pipeline.datasets import read_image
    from pipeline.detect import DetectionStack
    from pipeline.images import list_images
    from pipeline.process import run_local
    from pipeline.settings import Settings

    images = [read_image(p) for p in list_images(DATA / "plates_vehicles_openimages_roboflow" / "images")[:STREET_IMAGES]]
    images += [read_image(p) for p in list_images(DATA / "faces_dlib_examples" / "images")]
    # the reference: the torch modules in fp32 (a CPU with AMX would otherwise run
    # bf16 on OpenVINO) run as they are on the CPU. The CPU's ONNX graphs are exported
    # from them, and the CPU tests hold graph and module equal (tests/test_runtime.py,
    # test_nanodet.py); running the graphs here would first export three with this
    # machine's torch, a minute of the GPU's time, and a failed export would end the
    # check before any GPU step ran
    with cpu_runtime("torch"):
        cpu = DetectionStack.from_settings(Settings(device="cpu", half=False))
    gpu = DetectionStack.from_settings(Settings(device=device))
    n_cpu = n_gpu = matched = 0
    for i in range(0, len(images), 8):
        chunk = images[i:i + 8]
        for a, b in zip(cpu.detect(chunk), gpu.detect(chunk), strict=True):
            n_cpu, n_gpu = n_cpu + len(a), n_gpu + len(b)
            if len(a) and len(b):
                matched += int((box_iou_np(a.xyxy, b.xyxy).max(axis=1) >= 0.7).sum())
    print(f"cpu fp32 boxes {n_cpu}, {device} boxes {n_gpu}, matched {matched}")
    if n_cpu and (matched < 0.9 * n_cpu or abs(n_gpu - n_cpu) > 0.1 * n_cpu):
        print("gpu-check: FAILED cpu/cuda agreement", file=sys.stderr)
        return 1
    src = DATA / "videos" / "intel_car-detection.mp4"
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        rep = run_local(src, Path(tmp) / "out.mp4", Settings(device=device), Path(tmp))
        print(f"run on {device}: {rep['frames']} frames in {time.perf_counter() - t:.1f} s, "
              f"frames_match={rep['frames_match']}")
        if not rep["frames_match"]:
            return 1
    ratio = end_to_end_1080p(args.frames, device)
    import subprocess

    subprocess.run([sys.executable, str(ROOT / "bench" / "run.py"), "--device", device,
                    "--only", "latency", "video"], check=True)
    return 0 if ratio >= 0.8 else 1


@contextlib.contextmanager
def cpu_runtime(backend: str) -> Iterator[None]:
    """Detectors built in this block run on the CPU with ``backend`` (models/runtime.py)."""
    from models.runtime import ENV

    before = os.environ.get(ENV)
    os.environ[ENV] = backend
    try:
        yield
    finally:
        if before is None:
            del os.environ[ENV]
        else:
            os.environ[ENV] = before


def end_to_end_1080p(frames: int = 300, device: str = "cuda") -> float:
    """`anonymize run` (defaults, on ``device``) on a 1920×1080 upscale of the intel clip
    against a plain decode+encode of the same file, with the GPU's peak memory.
    The throughput issue asks for >= 0.8x plain transcode there."""
    import torch

    from bench.peers import CACHE, SOURCE, make_clip
    from bench.transcode import transcode
    from pipeline.process import run_local
    from pipeline.settings import Settings

    clip = make_clip(SOURCE, CACHE / "clips" / f"{SOURCE.stem}-1920x1080-{frames}.mp4", frames,
                     (1920, 1080))
    with tempfile.TemporaryDirectory() as tmp:
        plain = transcode(clip, Path(tmp) / "plain.mp4")
        on_gpu = device.startswith("cuda")
        if on_gpu:
            torch.cuda.reset_peak_memory_stats(device)
        t = time.perf_counter()
        rep = run_local(clip, Path(tmp) / "anon.mp4", Settings(device=device), Path(tmp) / "det")
        seconds = time.perf_counter() - t
    fps = rep["frames"] / seconds
    ratio = fps / plain["fps"]
    peak = f"{torch.cuda.max_memory_allocated(device) / 2**20:.0f} MiB" if on_gpu else "-"
    print(f"| 1080p end to end ({rep['frames']} frames, {device}) | plain {plain['fps']:.1f} fps | "
          f"anonymize run {fps:.1f} fps (models loaded in {rep.get('model_load_s', 0):.1f} s "
          f"of it) | {ratio:.2f}x plain | GPU peak {peak} |")
    if ratio < 0.8:
        print(f"gpu-check: 1080p run is {ratio:.2f}x plain transcode (target 0.8x)", file=sys.stderr)
    return ratio


if __name__ == "__main__":
    sys.exit(main())
