"""Plain decode + encode of a video with the pipeline's own encoder settings.

The floor every anonymizer run is measured against: the same decode
(``iter_frames``), the same libx264 writer (``VideoWriter``, crf/preset
defaults taken from ``Settings``) and the same mux of the source's other
streams (``join_segments``), with no detection and no blurring in between.
It lives in bench/ because only the benchmarks need it; it uses nothing but
the public ``pipeline.video`` API.

    python bench/transcode.py IN OUT [--crf 18] [--preset medium]

Prints a JSON line with frames, seconds and fps. Benchmarks run it as a
subprocess so that its wall time and memory are measured like any other tool's.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from pipeline.settings import Settings  # noqa: E402
from pipeline.video import VideoWriter, iter_frames, join_segments, probe  # noqa: E402

_DEFAULTS = Settings()


def transcode(source, out_path, crf: int = _DEFAULTS.crf, preset: str = _DEFAULTS.preset) -> dict:
    """Decode and re-encode the whole file, then mux the source's audio and
    subtitle streams by stream copy, exactly as ``anonymize run`` finishes."""
    out_path = Path(out_path)
    info = probe(source)
    tmp = out_path.with_name(f".{out_path.stem}.video.mp4")
    t0 = time.perf_counter()
    try:
        with VideoWriter(tmp, info, crf=crf, preset=preset) as w:
            for pts, rgb in iter_frames(source, info):
                w.write(rgb, pts)
        join_segments([tmp], source, info, out_path)
    finally:
        if tmp.exists():
            os.unlink(tmp)
    seconds = time.perf_counter() - t0
    return {
        "path": str(out_path),
        "frames": w.frames,
        "seconds": round(seconds, 3),
        "fps": round(w.frames / seconds, 2) if seconds > 0 else None,
        "width": info.width,
        "height": info.height,
        "crf": crf,
        "preset": preset,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("input", type=Path)
    ap.add_argument("output", type=Path)
    ap.add_argument("--crf", type=int, default=_DEFAULTS.crf)
    ap.add_argument("--preset", default=_DEFAULTS.preset)
    args = ap.parse_args(argv)
    print(json.dumps(transcode(args.input, args.output, args.crf, args.preset)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
