"""What `--detect-every N` costs in coverage, measured on real clips.

Detecting every Nth frame saves (N-1)/N of the detector work; the frames
between get the boxes temporal filling interpolates or holds. Whether that
leaves anything readable is a question of the clips, so this measures it:

1. run the detection stack (defaults, or the settings given) on every frame
   of each clip and keep the raw detections per frame (cached under
   ``bench/.cache/detect_every`` by clip and settings);
2. for N in 2, 3 and every phase (frames f with f % N == phase detected),
   drop the other frames' detections and fill exactly as the pipeline does
   (``pipeline.temporal.fill_segment``);
3. for every box the detector found in the every-frame run, measure how much
   of it lies under the regions the sampled run would blur (boxes dilated by
   ``mask_scale``). A box less than 95 % covered counts as left unblurred;
   one less than 5 % covered as missed outright.

The every-frame run blurs every one of its own boxes, so every such box is
a new unblurred object. The worst phase is reported.

    python bench/detect_every.py [--frames 400] [clips...]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data" / "videos"
CACHE = ROOT / "bench" / ".cache" / "detect_every"
sys.path.insert(0, str(ROOT))

CACHE_FORMAT = "detection-rows/1"  # part of the cache key: older caches are not read
COVERED = 0.95  # below: left (partly) unblurred
MISSED = 0.05  # below: not blurred at all


def detected_in_batches(clip: Path, max_frames: int, size: int,
                        detect: Callable[[list[np.ndarray]], list]
                        ) -> tuple[dict, tuple[int, int], float]:
    """The first ``max_frames`` frames of ``clip`` handed to ``detect`` ``size`` at
    a time; per frame index its faces and plates, the frame size (w, h), and
    seconds of ``detect`` per frame."""
    from models.detections import FACE, PLATE
    from pipeline import video

    frames: dict = {}
    batch: list[np.ndarray] = []
    shape = (0, 0)
    spent = 0.0

    def flush():
        nonlocal spent
        t = time.perf_counter()
        found = detect(batch)
        spent += time.perf_counter() - t
        for d in found:
            frames[len(frames)] = d.with_class(FACE, PLATE)
        batch.clear()

    for i, (_, rgb) in enumerate(video.iter_frames(clip)):
        if i >= max_frames:
            break
        shape = (rgb.shape[1], rgb.shape[0])
        batch.append(rgb)
        if len(batch) == size:
            flush()
    if batch:
        flush()
    return frames, shape, spent / max(1, len(frames))


def raw_detections(clip: Path, settings, max_frames: int) -> tuple[dict, tuple[int, int], float]:
    """Per frame index: the stack's faces and plates (no filling); the frame size;
    seconds of detection per frame."""
    from models.detections import Detections
    from pipeline.records import detection_rows

    # every frame is detected whole here, whatever --reference-every says
    whole = {k: v for k, v in settings.to_dict().items() if k != "reference_every"}
    key = hashlib.sha256(json.dumps([CACHE_FORMAT, clip.name, max_frames, whole],
                                    sort_keys=True).encode()).hexdigest()[:16]
    cached = CACHE / f"{clip.stem}-{key}.json"
    if cached.is_file():
        data = json.loads(cached.read_text())
        frames = {int(k): Detections.from_dicts(v) for k, v in data["frames"].items()}
        return frames, tuple(data["size"]), data["detect_s_per_frame"]
    from pipeline.detect import DetectionStack

    stack = DetectionStack.from_settings(settings)
    frames, size, per_frame = detected_in_batches(
        clip, max_frames, settings.batch_size, lambda b: stack.detect(b, vehicles=False))
    CACHE.mkdir(parents=True, exist_ok=True)
    # the rows of detections.json: float32 values that read back exactly, so a
    # cached run measures the very same boxes as a fresh one
    rows = {str(k): detection_rows(k, v) for k, v in frames.items()}
    cached.write_text(json.dumps({"size": size, "detect_s_per_frame": per_frame,
                                  "frames": rows}))
    return frames, size, per_frame


def blurred_mask(d, size: tuple[int, int], scale: float) -> np.ndarray:
    w, h = size
    mask = np.zeros((h, w), bool)
    for x1, y1, x2, y2 in d.dilated(scale).clipped(w, h).xyxy:
        mask[int(np.floor(y1)):int(np.ceil(y2)), int(np.floor(x1)):int(np.ceil(x2))] = True
    return mask


def coverages(raw: dict, blur: dict, size, scale: float) -> list[tuple[int, int, float]]:
    """(frame, box number, covered share) of every box of ``raw`` under the
    regions ``blur`` would blur (its boxes dilated by ``scale``)."""
    out = []
    w, h = size
    for f, d in raw.items():
        if len(d) == 0:
            continue
        mask = blurred_mask(blur[f], size, scale)
        for k, (x1, y1, x2, y2) in enumerate(d.clipped(w, h).xyxy):
            xa, ya = int(np.floor(x1)), int(np.floor(y1))
            xb, yb = max(xa + 1, int(np.ceil(x2))), max(ya + 1, int(np.ceil(y2)))
            out.append((f, k, float(mask[ya:yb, xa:xb].mean())))
    return out


def left_unblurred(raw: dict, sampled_final: dict, size, scale: float) -> tuple[int, int, int]:
    """Boxes of ``raw`` less than COVERED under the sampled run's blur, frames
    holding one, and boxes less than MISSED under it."""
    short = [(f, c) for f, _, c in coverages(raw, sampled_final, size, scale) if c < COVERED]
    return len(short), len({f for f, _ in short}), sum(c < MISSED for _, c in short)


def measure(clip: Path, settings, max_frames: int, strides=(2, 3)) -> list[dict]:
    from models.detections import FACE, PLATE, Detections
    from pipeline.temporal import fill_segment

    raw, size, per_frame = raw_detections(clip, settings, max_frames)
    order = sorted(raw)
    counts = {label: sum(int((d.class_id == c).sum()) for d in raw.values())
              for label, c in (("faces", FACE), ("plates", PLATE))}
    rows = []
    for n in strides:
        if n - 1 > settings.fill_frames:
            continue
        for phase in range(n):
            sampled = {f: (d if f % n == phase else Detections.empty()) for f, d in raw.items()}
            final = fill_segment(sampled, order, settings.fill_frames)
            for label, c in (("faces", FACE), ("plates", PLATE)):
                only = {f: d.with_class(c) for f, d in raw.items()}
                boxes, frames, missed = left_unblurred(only, final, size, settings.mask_scale)
                row = {"clip": clip.name, "frames": len(raw), "label": label,
                       "boxes": counts[label], "every": n, "phase": phase,
                       "unblurred_boxes": boxes, "unblurred_frames": frames,
                       "missed_boxes": missed,
                       "detect_ms_per_frame": round(per_frame * 1000, 1)}
                rows.append(row)
    return rows


def worst_rows(rows: list[dict]) -> list[dict]:
    """Per clip, label and N: the phase that leaves the most boxes unblurred."""
    out: dict[tuple, dict] = {}
    for r in rows:
        k = (r["clip"], r["label"], r["every"])
        if k not in out or r["unblurred_boxes"] > out[k]["unblurred_boxes"]:
            out[k] = r
    return list(out.values())


def markdown(header: list[str], rows: list[list]) -> str:
    """A markdown table of ``rows`` under ``header``."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def clip_parser(doc: str) -> argparse.ArgumentParser:
    """Arguments of the benchmarks over the shared clips: clips (default: all
    of ``DATA``) and ``--frames``; :func:`clips_of` reads the clips."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("clips", nargs="*", type=Path)
    ap.add_argument("--frames", type=int, default=400, help="first N frames of each clip")
    ap.add_argument("--json", type=Path, help="also write the rows here")
    return ap


def clips_of(args: argparse.Namespace) -> list[Path]:
    return args.clips or sorted(p for p in DATA.iterdir() if p.suffix in (".mp4", ".avi"))


def report_clips(args: argparse.Namespace, measure_clip: Callable[[Path], list[dict]],
                 table: Callable[[list[dict]], str]) -> None:
    """Measure every clip of ``args`` (the time each took on stderr), print the
    table of all rows and, with ``--json``, write them."""
    rows = []
    for clip in clips_of(args):
        t = time.perf_counter()
        rows += measure_clip(clip)
        print(f"{clip.name}: {time.perf_counter() - t:.0f} s", file=sys.stderr, flush=True)
    print(table(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


def table(rows: list[dict]) -> str:
    return markdown(["clip", "frames", "label", "boxes (every frame)", "N",
                     "boxes < 95 % covered (worst phase)", "frames with one",
                     "boxes not covered (< 5 %)"],
                    [[r["clip"], r["frames"], r["label"], r["boxes"], r["every"],
                      r["unblurred_boxes"], r["unblurred_frames"], r["missed_boxes"]]
                     for r in worst_rows(rows)])


def main() -> None:
    from pipeline.settings import Settings

    args = clip_parser(__doc__).parse_args()
    settings = Settings()
    report_clips(args, lambda clip: measure(clip, settings, args.frames), table)


if __name__ == "__main__":
    main()
