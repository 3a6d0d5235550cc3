"""``anonymize run``: the anonymization of one video on this machine.

``plan`` -> ``video.split_segment`` per segment -> ``segment_job.process_segment``
per segment -> ``finalize.finalize``. The Celery tasks in ``tasks/`` run the
very same functions on different machines, with the segment files and
results travelling through object storage, so both paths give the same
output.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

from . import video
from .finalize import finalize
from .memory import release_free_memory
from .plan import Manifest, prepare_local
from .records import REPORT_HTML, REPORT_JSON, write_report
from .review import write_page
from .segment_job import Progress, process_segment
from .settings import Settings
from .video.output import atomic_output


def run_local(source: Path, output: Path, settings: Settings, detections_dir: Path | None = None,
              stack=None, progress: Progress | None = None, workdir: Path | None = None,
              manifest: Manifest | None = None, zones: list[dict] | None = None,
              extra_report: dict | None = None) -> dict:
    """``anonymize run``: the whole job on this machine, segment by segment. The
    output appears under its name only when complete (written beside it under a
    temporary name, then renamed). ``zones``: checked zone dicts (``pipeline/zones.py``)
    for a manifest made here. ``report.html`` is written beside ``report.json``."""
    source, output = Path(source), Path(output)
    detections_dir = Path(detections_dir) if detections_dir else output.parent
    t0 = time.perf_counter()
    if manifest is None:
        manifest = prepare_local(source, output, settings, detections_dir)
        manifest.zones = list(zones or [])
    t_load = time.perf_counter()
    if stack is None:
        from .detect import DetectionStack

        stack = DetectionStack.from_settings(settings)
    load_s = time.perf_counter() - t_load
    tmp = Path(tempfile.mkdtemp(prefix="anonymize-", dir=workdir))
    try:
        videos, results = [], []
        known: dict = {}  # frames the previous segment detected (its end and trailing context)
        for seg in manifest.segments:
            part = video.split_segment(source, manifest.info, seg, tmp / f"seg{seg.index:05d}.mkv")
            out = tmp / f"out{seg.index:05d}.mp4"
            results.append(process_segment(part, manifest, seg.index, stack, out, progress,
                                           known))
            known, results[-1].detected = results[-1].detected, {}
            release_free_memory()
            videos.append(out)
            part.unlink()
        with atomic_output(output) as partial:
            report = finalize(manifest, videos, results, source, partial, detections_dir,
                              extra_report={"models": stack.model_names,
                                            "model_load_s": round(load_s, 3),
                                            **(extra_report or {})},
                              output_name=str(output))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    wall = time.perf_counter() - t0
    report["wall_s"] = round(wall, 3)
    report["fps"] = round(manifest.info.n_frames / wall, 2) if wall > 0 else None
    # the video and its records are this run's by now: a report that cannot be
    # written (a disk filling up) must not leave an earlier run's in its place,
    # describing another video
    stale = [detections_dir / REPORT_JSON, detections_dir / REPORT_HTML]
    try:
        write_report(detections_dir, report)
        stale.pop(0)
        write_page(detections_dir, output, report)
    except BaseException:
        for path in stale:
            path.unlink(missing_ok=True)
        raise
    return report
