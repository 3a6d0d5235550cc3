"""`anonymize run` on every input of ``tests/corpus.py``, as a user runs it.

Each case runs the real command line in a subprocess (the repository's own
code, the real face detector on small frames, several segments per video)
and checks what the user gets:

* ok: exit 0; the output's main video stream shows the same frames at the
  same times (pts × time base as exact fractions; within half a tick where
  the output's time base is coarser, as Matroska's milliseconds are) as
  PyAV decodes from the input's first/default video stream (for a damaged input: the frames that
  decode); ``report.json`` says ``frames_match`` and counts those frames;
  damaged inputs add ``damaged_frames`` > 0 and one ``anonymize: warning:``
  line naming the input; clean ones report no damage and warn about
  nothing but streams left out; the input is byte-identical and only the
  output and its records are left behind.
* refused: exit 2; stderr is exactly one line ``anonymize: error: ...``
  carrying the name of the user's file at fault and no temporary file of
  ours; every file and folder of the case is as it was (input bytes, no
  output, no temporary files, no folder created).
* refused before any work: additionally, no progress bar was shown and no
  model weights were opened. The progress bar is the user's sign that work
  started, and opening the weights is the first costly step; both are seen
  directly (stderr, and an audit hook in the launcher below that records
  every file Python opens under the models folder), where a time limit
  would depend on the machine's load and a "no frame decoded" probe would
  need hooks inside FFmpeg.

Temporary files are checked everywhere, not only beside the output: each
run gets its own empty ``TMPDIR`` that must be empty again afterwards.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import pytest

from tests.corpus import CASES, OK, Case, Job
from tests.videos import LOCATION

pytestmark = pytest.mark.models

ROOT = Path(__file__).resolve().parent.parent

# The real detector on small inputs: faces only, small detector input, the
# fastest encoder preset, and short segments so that splitting and joining
# (the distributed path's machinery) are exercised on every case.
FAST = ("--no-plates", "--min-face", "48", "--preset", "ultrafast", "--device", "cpu",
        "--fill-frames", "1", "--batch-size", "4", "--segment-frames", "8")

RECORDS = {"faces.pkl", "plates.pkl", "detections.json", "report.json", "report.html"}

# `python -m anonymize`, plus an audit hook that appends every path Python
# opens below CORPUS_MODELS_DIR to CORPUS_OPEN_LOG (through a descriptor
# opened first, so that logging does not itself raise "open" events).
LAUNCHER = """
import os, runpy, sys
log = os.open(os.environ["CORPUS_OPEN_LOG"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
models = os.environ["CORPUS_MODELS_DIR"]
def hook(event, args):
    if event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
        path = os.path.abspath(os.fsdecode(args[0]))
        if path.startswith(models):
            os.write(log, path.encode("utf-8", "surrogateescape") + b"\\n")
sys.addaudithook(hook)
sys.argv[0] = "anonymize"
runpy.run_module("anonymize", run_name="__main__", alter_sys=True)
"""

# a tqdm progress bar line ("clip.mp4:  12%|█▎   | 1/8 [00:00<00:04,  1.53frame/s]")
PROGRESS = re.compile(r"\d+/\d+ \[[^\]]*(frame/s|s/frame)\]")

# a refusal must not talk about our temporary files (run_local's work folder
# and segment files)
TEMP_NAMES = re.compile(r"anonymize-[\w-]{6,}|seg\d{5}|out\d{5}")

# Cases the current code gets wrong, to be fixed next, with what goes wrong;
# strict, so a fix shows up as XPASS and the mark has to go. None at present.
XFAIL: dict[str, str] = {}


def _param(case: Case):
    marks = [pytest.mark.slow] if case.slow else []
    if case.name in XFAIL:
        marks.append(pytest.mark.xfail(strict=True, reason=XFAIL[case.name]))
    return pytest.param(case, id=case.name, marks=marks)


# ------------------------------------------------------------------ running


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str
    seconds: float
    weights_opened: list[str]

    def summary(self) -> str:
        """Exit status and the last thing said on stderr (a traceback's last
        line), progress bars left out."""
        lines = [s for s in self.stderr.replace("\r", "\n").splitlines()
                 if s.strip() and not PROGRESS.search(s)]
        return f"exit {self.returncode}: {lines[-1] if lines else '(nothing but progress on stderr)'}"


def models_dir() -> str:
    from models.registry import models_home

    return os.path.abspath(models_home())


def run_cli(job: Job, work: Path) -> Result:
    tmp = work / "tmp"
    tmp.mkdir()
    log = work / "opened.log"
    env = dict(os.environ, PYTHONPATH=str(ROOT), TMPDIR=str(tmp), CORPUS_OPEN_LOG=str(log),
               CORPUS_MODELS_DIR=models_dir(), PYTHONIOENCODING="utf-8")
    cmd = [sys.executable, "-c", LAUNCHER, "run", str(job.input), "-o", str(job.output), *FAST]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, timeout=300)
    seconds = time.perf_counter() - t0
    opened = log.read_text().splitlines() if log.exists() else []
    return Result(done.returncode, done.stdout.decode("utf-8", "replace"),
                  done.stderr.decode("utf-8", "replace"), seconds, opened)


# --------------------------------------------------------------- inspecting


def main_video_stream(container):
    """The stream a player shows: the first video stream marked default,
    else the first video stream; never a cover picture."""
    videos = [s for s in container.streams.video
              if not s.disposition & av.stream.Disposition.attached_pic]
    if not videos:
        raise AssertionError(f"no video stream in {container.name}")
    defaults = [s for s in videos if s.disposition & av.stream.Disposition.default]
    return (defaults or videos)[0]


def shown_times(path: Path) -> list[Fraction]:
    """Presentation times (pts × time base, exact) of the frames PyAV decodes
    from the main video stream, as a player shows them: packets the decoder
    rejects are skipped, a demuxer error ends the file (truncation), frames
    outside an edit list are dropped by FFmpeg itself."""
    times = []
    with av.open(str(path)) as c:
        vs = main_video_stream(c)
        packets = c.demux(vs)
        while True:
            try:
                packet = next(packets)
            except StopIteration:
                break
            except av.FFmpegError:
                break
            try:
                frames = vs.decode(packet)
            except av.FFmpegError:
                continue
            for f in frames:
                assert f.pts is not None, f"a frame without timestamp in {path}"
                times.append(f.pts * Fraction(f.time_base))
    return sorted(times)


def first_frame(path: Path):
    with av.open(str(path)) as c:
        return next(c.decode(main_video_stream(c)))


def packets_by_type(path: Path, kinds=("audio", "subtitle")) -> dict[str, list[list[bytes]]]:
    """Payloads of every stream of the given kinds, grouped by kind, in stream order."""
    out: dict[str, list[list[bytes]]] = {}
    with av.open(str(path)) as c:
        streams = [s for s in c.streams if s.type in kinds]
        for s in streams:
            out.setdefault(s.type, []).append([])
        slot = {s.index: out[s.type][[x.index for x in streams if x.type == s.type].index(s.index)]
                for s in streams}
        if streams:
            for p in c.demux(*streams):
                if p.size:
                    slot[p.stream_index].append(bytes(p))
    return out


def snapshot(root: Path) -> dict[str, str]:
    """Every file (content hash), symlink (target) and folder below ``root``."""
    state = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            p = Path(folder) / name
            rel = str(p.relative_to(root))
            if p.is_symlink():
                state[rel] = "link -> " + os.readlink(p)
            elif p.is_dir():
                state[rel] = "folder"
            else:
                state[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return state


def differences(before: dict[str, str], after: dict[str, str]) -> list[str]:
    return sorted([f"new {k}" for k in after.keys() - before.keys()]
                  + [f"gone {k}" for k in before.keys() - after.keys()]
                  + [f"changed {k}" for k in before.keys() & after.keys() if before[k] != after[k]])


def output_tick(path: Path) -> Fraction:
    """The time base of the output's main video stream: Matroska keeps
    milliseconds, so a finer source time lands on the nearest one."""
    with av.open(str(path)) as c:
        return Fraction(main_video_stream(c).time_base)


def stated_rate(path: Path) -> Fraction | None:
    """The frame rate the output's main video stream states (what a player
    or an editor shows as its fps)."""
    with av.open(str(path)) as c:
        return main_video_stream(c).average_rate


def same_times(want: list[Fraction], got: list[Fraction], tick: Fraction) -> bool:
    return len(want) == len(got) and all(abs(a - b) <= tick / 2
                                         for a, b in zip(want, got, strict=True))


def first_mismatch(want: list[Fraction], got: list[Fraction], tick: Fraction = Fraction(0)) -> str:
    for i, (a, b) in enumerate(zip(want, got, strict=False)):
        if abs(a - b) > tick / 2:
            return f"frame {i}: input shows it at {a} s, output at {b} s"
    return f"input shows {len(want)} frames, output {len(got)}"


# -------------------------------------------------------------------- checks


def check_ok(case: Case, job: Job, r: Result, reference: list[Fraction], before: dict[str, str],
             root: Path) -> None:
    assert r.returncode == 0, r.summary()
    out = job.output
    assert out.is_file(), f"no output file {out}"
    got, tick = shown_times(out), output_tick(out)
    assert same_times(reference, got, tick), first_mismatch(reference, got, tick)
    if len(reference) > 2 and reference[-1] > reference[0]:
        # the rate it states is near the rate it shows frames at (Matroska said
        # "1k fps" for every 25 fps video)
        shown = (len(reference) - 1) / (reference[-1] - reference[0])
        rate = stated_rate(out)
        assert rate and 0.5 < rate / shown < 2, f"output states {rate} fps, shows ~{float(shown):.2f}"
    report = json.loads((out.parent / "report.json").read_text())
    assert report["frames_match"] is True, "report.json: frames_match is not true"
    assert report["frames"] == len(reference), f"report.json: frames {report['frames']}"
    warnings = [s for s in r.stderr.splitlines() if s.startswith("anonymize: warning:")]
    for line in warnings:
        assert job.input.name in line, f"a warning does not name the input: {line}"
        assert not TEMP_NAMES.search(line), f"a warning names a temporary file: {line}"
    damage_lines = [s for s in warnings if "damaged" in s]
    if case.damaged:
        assert report.get("damaged_frames", 0) >= 1, "report.json counts no damaged_frames"
        assert len(damage_lines) == 1, f"not one damage warning on stderr: {warnings}"
    else:
        assert report.get("damaged_frames", 0) == 0, f"damaged_frames: {report['damaged_frames']}"
        assert not damage_lines, f"a clean input is called damaged: {damage_lines[0]}"
    others = [s for s in warnings if s not in damage_lines]
    if not {"drops-video", "rescaled"} & set(case.keeps):  # these check their own warnings
        assert not others, f"unexpected warning: {others[0]}"
    assert r.weights_opened, "no model weights were read: the detectors did not run"
    a, b = first_frame(job.input), first_frame(out)
    assert (b.width, b.height) == (a.width, a.height), "frame size changed"
    # only the output and its records are new; the input is untouched
    allowed = {out.name} | RECORDS
    new = [d for d in differences(before, snapshot(root))
           if not (d.startswith("new ") and Path(d[4:]).name in allowed | _parents(out, root))]
    assert not new, f"unexpected changes: {new}"
    for promise in case.keeps:
        KEEPS[promise](job, report, warnings)


def _parents(out: Path, root: Path) -> set[str]:
    """Names of the output's folders below the case folder (created by the run)."""
    return {p.name for p in out.relative_to(root).parents if p.name}


def check_refused(case: Case, job: Job, r: Result, before: dict[str, str], root: Path) -> None:
    assert r.returncode == 2, r.summary()
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("anonymize: error:"), (
        f"stderr is not one error line: {r.stderr[-300:]!r}")
    named = {"input": job.input, "output": job.output, "output-parent": job.output.parent}[case.names]
    assert named.name in lines[0], f"the error does not name {named.name}: {lines[0]}"
    assert not TEMP_NAMES.search(lines[0]), f"the error names a temporary file: {lines[0]}"
    changes = differences(before, snapshot(root))
    assert not changes, f"refused, but files changed: {changes}"
    if case.before_work:
        assert "\r" not in r.stderr and not PROGRESS.search(r.stderr), "a progress bar was shown"
        assert not r.weights_opened, f"model weights were read: {r.weights_opened[0]}"


def _keeps_rotation(job: Job, report: dict, warnings: list[str]) -> None:
    want, got = first_frame(job.input).rotation, first_frame(job.output).rotation
    assert got == want, f"rotation {want} became {got}"


def _keeps_streams(job: Job, report: dict, warnings: list[str]) -> None:
    assert packets_by_type(job.output) == packets_by_type(job.input), (
        "audio/subtitle packets differ from the input's")


def _drops_video(job: Job, report: dict, warnings: list[str]) -> None:
    """Every video stream but the main one (a second camera, cover art) is left
    out, and the user is told: a warning line and a report.json entry each."""
    with av.open(str(job.input)) as c:
        extra = [s.index for s in c.streams.video if s.index != main_video_stream(c).index]
    assert extra, "the input has a single video stream"
    with av.open(str(job.output)) as c:
        kinds = [s.type for s in c.streams]
    assert kinds.count("video") == 1, f"output streams: {kinds}"
    dropped = [d for d in report["dropped_streams"] if d["type"] == "video"]
    assert sorted(d["index"] for d in dropped) == extra, f"dropped_streams: {dropped}"
    for index in extra:
        assert any(f"video stream {index}" in w for w in warnings), (
            f"no warning for video stream {index}: {warnings}")


def _strips_location(job: Job, report: dict, warnings: list[str]) -> None:
    coordinates = LOCATION[:17].encode()  # "+48.8584+002.2945"
    assert coordinates in job.input.read_bytes()
    assert coordinates not in job.output.read_bytes(), "GPS location left in the output"


def _rescaled(job: Job, report: dict, warnings: list[str]) -> None:
    """Frames of another size than the first are scaled to it, every one
    counted, and the user is told: one warning line and a report.json entry."""
    with av.open(str(job.input)) as c:
        sizes = [(f.width, f.height) for f in c.decode(video=0)]
    other = sum(1 for size in sizes if size != sizes[0])
    assert other, "the input does not change size"
    with av.open(str(job.output)) as c:
        assert {(f.width, f.height) for f in c.decode(video=0)} == {sizes[0]}
    assert report["rescaled_frames"] == other, report.get("rescaled")
    assert report["rescaled"]["to"] == list(sizes[0])
    assert report["rescaled"]["sizes"] == sorted(list(s) for s in set(sizes) - {sizes[0]})
    lines = [w for w in warnings if "changes size" in w]
    assert len(lines) == 1 and f"{other} frame(s)" in lines[0], warnings


def _leading_skipped(job: Job, report: dict, warnings: list[str]) -> None:
    """A stream picked up inside a GOP: the frames before its first keyframe are
    the damage, counted exactly; nothing past them is called unreadable."""
    damage = report["damage"]
    assert damage["skipped"]["count"] >= 1, damage
    assert damage["unreadable"]["count"] == 0, damage
    assert report["damaged_frames"] == damage["skipped"]["count"], report["damaged_frames"]
    line = next(w for w in warnings if "damaged" in w)
    assert "at least" not in line, line


KEEPS = {"rotation": _keeps_rotation, "streams": _keeps_streams,
         "drops-video": _drops_video, "no-location": _strips_location, "rescaled": _rescaled,
         "leading-skipped": _leading_skipped}


# ---------------------------------------------------------------------- test


@pytest.mark.parametrize("case", [_param(c) for c in CASES])
def test_corpus_case(case: Case, tmp_path: Path) -> None:
    root = tmp_path / "case"
    root.mkdir()
    job = case.make(root)
    reference = shown_times(job.input) if case.expect == OK else []
    before = snapshot(root)
    r = run_cli(job, tmp_path)
    if case.expect == OK:
        check_ok(case, job, r, reference, before, root)
    else:
        check_refused(case, job, r, before, root)
    leftovers = sorted(p.name for p in (tmp_path / "tmp").iterdir())
    assert not leftovers, f"temporary files left behind: {leftovers}"
