"""Against peers: `anonymize run` vs `deface` vs a plain decode+encode, same clips, one run.

A user who already has ``deface`` (faces only, CenterFace on ONNX Runtime)
will compare it with us on their own video, so this benchmark runs both on
the same clips on the same machine in one go, each tool as its own
subprocess, and reports what such a user would see:

* wall time, fps and fps relative to deface and to a plain decode+encode
  (``bench/transcode.py``: our decoder and encoder with nothing in between);
* peak memory of the whole process tree (deface hands frames to ffmpeg
  subprocesses, so the main process alone would flatter it);
* the same runs while another process keeps one core busy ("loaded"): a
  user's machine is rarely idle, and tools degrade differently;
* whether memory stays flat with video length (100 vs 1000 frames).

deface (pinned) is installed by the benchmark into its own throwaway venv
under bench/.cache/peers/, reused between runs and reinstalled when missing
or broken. Clips that the benchmark makes (the 1920×1080 upscale, cuts,
the looped long cut) are cached there too.

    python bench/peers.py [--frames N]
                          [--runs plain,deface,faces,defaults,changes,faces-changes]
                          [--clips intel,1080p] [--no-loaded] [--no-memory] [--out FILE]

``bench/run.py --only peers`` runs it as the "peers" section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VIDEOS = ROOT.parent / "shared" / "data" / "videos"
CACHE = ROOT / "bench" / ".cache" / "peers"
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

DEFACE_VERSION = "1.5.0"
# deface's own requirements leave out ONNX Runtime and then fall back to OpenCV's
# DNN module; its README asks for onnx + onnxruntime for CPU speed, as a user
# who compares speed would have it. Its default backend ("auto") then picks it.
DEFACE_PACKAGES = (f"deface=={DEFACE_VERSION}", "onnx", "onnxruntime")
DEFACE_VENV = CACHE / f"deface-{DEFACE_VERSION}"
SOURCE = VIDEOS / "intel_car-detection.mp4"
SAMPLE_S = 0.05  # /proc sampling period for the process tree's RSS
RUNS = ("plain", "deface", "faces", "defaults", "changes", "faces-changes")
#: --reference-every of the "changes" and "faces-changes" runs (README, "Looking only where
#: the picture changed")
CHANGES_EVERY = 8
CLIPS = ("intel", "1080p")
MEMORY_FRAMES = (100, 1000)
MIB = 1024 * 1024

# ============================================================================ clips


@dataclass
class Clip:
    """A benchmark input: the file, what it is (for the table), its size."""

    key: str
    path: Path
    label: str
    frames: int
    width: int
    height: int


def make_clip(src: Path, dst: Path, frames: int | None = None,
              size: tuple[int, int] | None = None) -> Path:
    """Re-encode the first ``frames`` frames of ``src`` (looping it when it is
    shorter, for long cuts), scaled to ``size``, as H.264 crf 18 with the
    source's keyframe spacing, at the source's frame rate, no audio.

    Cached: an existing ``dst`` with the expected frame count is reused. The
    file is written under a temporary name first so an interrupted run never
    leaves a truncated clip that a later run would take as done."""
    import av

    from pipeline import video

    info = video.probe(src)
    want = frames or info.n_frames
    if dst.exists():
        try:
            if video.probe(dst).n_frames == want:
                return dst
        except video.VideoError:
            pass
    dst.parent.mkdir(parents=True, exist_ok=True)
    keys = info.keyframe_indices
    gop = keys[1] - keys[0] if len(keys) > 1 else 250
    width, height = size or (info.width, info.height)
    tmp = dst.with_name(f".{dst.name}.part.mp4")
    with av.open(str(src)) as inp:
        rate = inp.streams.video[0].average_rate or Fraction(25)
    with av.open(str(tmp), "w", container_options={"fflags": "+bitexact"}) as out:
        s = out.add_stream("libx264", rate=rate)
        s.width, s.height, s.pix_fmt = width, height, "yuv420p"
        s.codec_context.gop_size = gop
        s.codec_context.options = {"crf": "18", "preset": "fast"}
        s.codec_context.thread_type = "AUTO"
        n = 0
        while n < want:
            for _, rgb in video.iter_frames(src, info):
                frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
                if (width, height) != (info.width, info.height):
                    frame = frame.reformat(width=width, height=height, interpolation="BICUBIC")
                frame = frame.reformat(format="yuv420p")
                frame.pts, frame.time_base = n, 1 / Fraction(rate)
                out.mux(s.encode(frame))
                n += 1
                if n == want:
                    break
        out.mux(s.encode(None))
    tmp.replace(dst)
    return dst


def bench_clips(keys: list[str], frames: int | None) -> list[Clip]:
    """The clips to benchmark: the shared intel clip as it is (or its first
    ``frames`` frames) and a 1920×1080 upscale of it."""
    from pipeline import video

    info = video.probe(SOURCE)
    cut = f", first {frames} frames" if frames else ""
    out = []
    for key in keys:
        if key == "intel":
            path = make_clip(SOURCE, CACHE / "clips" / f"{SOURCE.stem}-{frames}f.mp4",
                             frames) if frames else SOURCE
            label = f"{SOURCE.name}{cut} (re-encoded by the benchmark, crf 18)" if frames \
                else SOURCE.name
        elif key == "1080p":
            n = f"{frames}f" if frames else "all"
            path = make_clip(SOURCE, CACHE / "clips" / f"{SOURCE.stem}-1920x1080-{n}.mp4",
                             frames, (1920, 1080))
            label = (f"{SOURCE.name} ({info.width}×{info.height}{cut}) upscaled to 1920×1080 "
                     "(bicubic, libx264 crf 18, made by the benchmark)")
        else:
            raise ValueError(f"unknown clip {key!r} (choose from {', '.join(CLIPS)})")
        i = video.probe(path)
        out.append(Clip(key, path, label, i.n_frames, i.width, i.height))
    return out


# ============================================================================ deface


def _deface_health() -> str | None:
    """None when the cached venv runs the pinned deface, else what is wrong."""
    exe = DEFACE_VENV / "bin" / "deface"
    if not exe.exists():
        return "not installed"
    probe = ("import importlib.metadata as m, onnx, onnxruntime, cv2, imageio_ffmpeg; "
             "print(m.version('deface'))")
    try:
        r = subprocess.run([str(DEFACE_VENV / "bin" / "python"), "-c", probe], env=_clean_env(),
                           capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"broken ({e})"
    if r.returncode != 0:
        return f"broken ({_last_line(r.stderr)})"
    if r.stdout.strip() != DEFACE_VERSION:
        return f"wrong version {r.stdout.strip()}"
    return None


def ensure_deface(log=print) -> Path:
    """The deface executable of the benchmark's own venv, (re)installing
    ``DEFACE_PACKAGES`` with pip when the venv is missing or broken.
    A separate venv keeps deface's numpy/opencv/onnxruntime pins away from ours."""
    problem = _deface_health()
    if problem is None:
        return DEFACE_VENV / "bin" / "deface"
    log(f"peers: deface {DEFACE_VERSION} {problem}; installing into {_rel(DEFACE_VENV)}")
    shutil.rmtree(DEFACE_VENV, ignore_errors=True)
    DEFACE_VENV.parent.mkdir(parents=True, exist_ok=True)
    base = getattr(sys, "_base_executable", None) or sys.executable
    env = _clean_env()
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    t = time.perf_counter()
    for cmd in ([base, "-m", "venv", str(DEFACE_VENV)],
                [str(DEFACE_VENV / "bin" / "python"), "-m", "pip", "install", "-q",
                 *DEFACE_PACKAGES]):
        r = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if r.returncode != 0:
            shutil.rmtree(DEFACE_VENV, ignore_errors=True)
            raise RuntimeError(f"cannot install deface: {shlex.join(cmd)}: {_last_line(r.stderr)}")
    problem = _deface_health()
    if problem is not None:
        shutil.rmtree(DEFACE_VENV, ignore_errors=True)
        raise RuntimeError(f"deface {DEFACE_VERSION} installed but {problem}")
    log(f"peers: deface installed in {time.perf_counter() - t:.0f} s")
    return DEFACE_VENV / "bin" / "deface"


def deface_facts() -> str:
    """deface, onnxruntime (+ providers) and imageio-ffmpeg's ffmpeg versions."""
    code = ("import importlib.metadata as m, onnxruntime as o, imageio_ffmpeg as f; "
            "print(m.version('deface'), o.__version__, ','.join(o.get_available_providers()), "
            "f.get_ffmpeg_version())")
    r = subprocess.run([str(DEFACE_VENV / "bin" / "python"), "-c", code], env=_clean_env(),
                       capture_output=True, text=True)
    if r.returncode != 0:
        return "deface: not available"
    d, ort, prov, ff = r.stdout.split()
    return f"deface {d}, onnxruntime {ort} ({prov}), ffmpeg {ff} (imageio-ffmpeg)"


# ============================================================================ measuring


@dataclass
class Measure:
    """One subprocess run: wall time, memory, CPU time, exit status."""

    wall_s: float
    tree_peak: int  # bytes: peak of the summed RSS of the process and its descendants
    main_maxrss: int  # bytes: the main process's ru_maxrss from os.wait4
    cpu_s: float  # user + system of the process and its reaped descendants (wait4)
    returncode: int
    error: str = ""
    stdout: str = ""


def _children(pid: int) -> list[int]:
    """Direct children of every thread of ``pid`` (a torch or onnxruntime
    process starts subprocesses from any of its threads)."""
    kids: list[int] = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                kids += [int(x) for x in f.read().split()]
    except OSError:
        pass  # gone, or a thread ended between listdir and open
    return kids


def _rss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, IndexError, ValueError):
        return 0


def tree_rss(pid: int) -> int:
    """Summed RSS of ``pid`` and all its descendants, in bytes. Shared pages
    (libraries mapped by several processes of the tree) count once per process."""
    total, todo, seen = 0, [pid], set()
    while todo:
        p = todo.pop()
        if p in seen:
            continue
        seen.add(p)
        total += _rss(p)
        todo += _children(p)
    return total


# Forks the tool, reaps it with os.wait4 and writes wall time and rusage to the
# file named first. On Linux a child's ru_maxrss starts at the peak RSS of the
# process it was spawned from (vfork/exec hands the parent's high-water mark
# over), so a tool started by the benchmark process (hundreds of MiB after
# making clips, more under bench/run.py) would report at least that much. This
# launcher (python -I -S, a few MiB) is what the tool is forked from instead.
_LAUNCHER = """
import json, os, sys, time
t = time.perf_counter()
pid = os.fork()
if pid == 0:
    try:
        os.execvp(sys.argv[2], sys.argv[2:])
    except OSError as e:
        print(f"cannot run {sys.argv[2]}: {e}", file=sys.stderr, flush=True)
    os._exit(127)
_, status, ru = os.wait4(pid, 0)
code = os.waitstatus_to_exitcode(status)
with open(sys.argv[1], "w") as f:
    json.dump({"wall_s": time.perf_counter() - t, "maxrss_kib": ru.ru_maxrss,
               "cpu_s": ru.ru_utime + ru.ru_stime, "returncode": code}, f)
sys.exit(code if code >= 0 else 128 - code)
"""


def measure(cmd: list[str], cwd: Path, env: dict, log_path: Path) -> Measure:
    """Run ``cmd`` through the launcher; sample the RSS of the tool's process
    tree (the launcher left out) every SAMPLE_S while it runs."""
    peak = [0]
    done = threading.Event()
    result = log_path.with_suffix(".rusage.json")
    result.unlink(missing_ok=True)
    launcher = [sys.executable, "-I", "-S", "-c", _LAUNCHER, str(result), *cmd]
    with open(log_path, "w") as err, tempfile.TemporaryFile("w+") as out:
        t0 = time.perf_counter()
        proc = subprocess.Popen(launcher, cwd=cwd, env=env, stdout=out, stderr=err,
                                stdin=subprocess.DEVNULL)

        def sample() -> None:
            while not done.is_set():
                rss = sum(tree_rss(child) for child in _children(proc.pid))
                peak[0] = max(peak[0], rss)
                done.wait(SAMPLE_S)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        proc.wait()
        wall = time.perf_counter() - t0
        done.set()
        sampler.join()
        out.seek(0)
        stdout = out.read()
    try:
        r = json.loads(result.read_text())
    except (OSError, ValueError):
        r = {"wall_s": wall, "maxrss_kib": 0, "cpu_s": 0.0, "returncode": proc.returncode}
    code = r["returncode"]
    error = "" if code == 0 else _last_line(log_path.read_text(errors="replace"))
    return Measure(r["wall_s"], peak[0], r["maxrss_kib"] * 1024, r["cpu_s"], code, error, stdout)


#: a busy loop that ends when its parent does: a benchmark killed mid-run must not
#: leave a core spinning under every later measurement
BUSY_LOOP = ("import os\nparent = os.getppid()\n"
             "while os.getppid() == parent:\n    pass\n")


class Burner:
    """A Python busy loop in its own process: keeps one core busy for the
    duration of a ``with`` block (the "loaded" rows)."""

    def __enter__(self) -> Burner:
        self.proc = subprocess.Popen([sys.executable, "-c", BUSY_LOOP])
        time.sleep(0.2)  # spinning before the measured run starts
        return self

    def __exit__(self, *exc) -> None:
        self.proc.kill()
        self.proc.wait()


# ============================================================================ runs

RUN_TITLES = {
    "plain": "plain decode+encode",
    "deface": f"deface {DEFACE_VERSION} (faces)",
    "faces": "anonymize --no-plates (faces)",
    "defaults": "anonymize (faces + plates)",
    "changes": f"anonymize --reference-every {CHANGES_EVERY} (faces + plates)",
    "faces-changes": f"anonymize --no-plates --reference-every {CHANGES_EVERY} (faces)",
}


def command(run: str, src: Path, out: Path, deface: Path | None) -> list[str]:
    """The command line of one run; our tools run with this interpreter from
    the repository root so the checkout's code is what is measured."""
    py = sys.executable
    if run == "plain":
        return [py, "bench/transcode.py", str(src), str(out)]
    if run == "deface":
        if deface is None:
            raise RuntimeError("deface is not installed")
        return [str(deface), str(src), "-o", str(out)]
    if run == "faces":
        return [py, "-m", "anonymize", "run", str(src), "-o", str(out), "--no-plates"]
    if run == "defaults":
        return [py, "-m", "anonymize", "run", str(src), "-o", str(out)]
    if run == "changes":
        return [py, "-m", "anonymize", "run", str(src), "-o", str(out),
                "--reference-every", str(CHANGES_EVERY)]
    if run == "faces-changes":
        return [py, "-m", "anonymize", "run", str(src), "-o", str(out), "--no-plates",
                "--reference-every", str(CHANGES_EVERY)]
    raise ValueError(f"unknown run {run!r} (choose from {', '.join(RUNS)})")


@dataclass
class Row:
    """One measured run of one tool on one clip."""

    run: str
    loaded: bool
    frames: int
    m: Measure | None
    frames_out: int | None = None
    detections: dict = field(default_factory=dict)
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.m is not None and self.m.returncode == 0 and not self.error

    @property
    def fps(self) -> float | None:
        return self.frames / self.m.wall_s if self.ok else None


def run_one(run: str, clip: Clip, deface: Path | None, work: Path, loaded: bool) -> Row:
    """Run one tool on one clip in a fresh output folder, optionally under load."""
    from pipeline import video

    out_dir = Path(tempfile.mkdtemp(prefix=f"{run}-", dir=work))
    out = out_dir / f"{clip.key}.mp4"
    env = _clean_env() if run == "deface" else dict(os.environ, PYTHONPATH=str(ROOT))
    try:
        cmd = command(run, clip.path, out, deface)
    except RuntimeError as e:
        return Row(run, loaded, clip.frames, None, error=str(e))
    if loaded:
        with Burner():
            m = measure(cmd, ROOT, env, work / f"{run}-{clip.key}.log")
    else:
        m = measure(cmd, ROOT, env, work / f"{run}-{clip.key}.log")
    row = Row(run, loaded, clip.frames, m, error=m.error)
    if m.returncode == 0:
        try:
            row.frames_out = video.probe(out).n_frames
        except video.VideoError as e:
            row.error = f"output unreadable: {e}"
        if run in ("faces", "defaults", "changes", "faces-changes"):
            try:
                row.detections = json.loads(m.stdout)["detections"]
            except (ValueError, KeyError):
                pass
    elif not row.error:
        row.error = f"exit status {m.returncode}"
    shutil.rmtree(out_dir, ignore_errors=True)
    return row


# ============================================================================ tables


def _mib(n: int | None) -> str:
    return "–" if not n else f"{n / MIB:.0f}"


def _ratio(a: float | None, b: float | None, fmt: str = "{:.2f}×") -> str:
    return fmt.format(a / b) if a and b else "–"


def clip_table(clip: Clip, rows: list[Row]) -> str:
    """Quiet and loaded rows of one clip, ratios within the same load state."""
    head = ("| run | load | wall s | fps | fps ÷ deface | fps ÷ plain | peak RSS tree MiB "
            "| ru_maxrss MiB | CPU s | frames out | detections |")
    lines = [head, "|" + "---|" * 11]
    for row in rows:
        same = {r.run: r for r in rows if r.loaded == row.loaded}
        load = "loaded" if row.loaded else "quiet"
        name = RUN_TITLES[row.run]
        if not row.ok:
            lines.append(f"| {name} | {load} | failed: {row.error} |" + " |" * 8)
            continue
        d = row.detections
        shown = ("face",) if row.run in ("faces", "faces-changes") else ("face", "plate")
        dets = ", ".join(f"{k} {v}" for k, v in d.items() if k in shown) or "–"
        deface, plain = same.get("deface"), same.get("plain")
        lines.append(
            f"| {name} | {load} | {row.m.wall_s:.1f} | {row.fps:.2f} "
            f"| {_ratio(row.fps, deface.fps if deface else None)} "
            f"| {_ratio(row.fps, plain.fps if plain else None)} | {_mib(row.m.tree_peak)} "
            f"| {_mib(row.m.main_maxrss)} | {row.m.cpu_s:.1f} "
            f"| {row.frames_out}/{row.frames} | {dets} |")
    return "\n".join(lines)


def slowdown_table(rows: list[Row]) -> str:
    """Loaded wall ÷ quiet wall per tool, and ours relative to deface's."""
    quiet = {r.run: r for r in rows if not r.loaded and r.ok}
    loaded = {r.run: r for r in rows if r.loaded and r.ok}
    both = [k for k in RUNS if k in quiet and k in loaded]
    if not both:
        return ""

    def slow(k: str) -> float:
        return loaded[k].m.wall_s / quiet[k].m.wall_s

    lines = ["| run | quiet wall s | loaded wall s | slowdown | slowdown ÷ deface's |",
             "|---|---|---|---|---|"]
    for k in both:
        rel = _ratio(slow(k), slow("deface") if "deface" in both else None)
        lines.append(f"| {RUN_TITLES[k]} | {quiet[k].m.wall_s:.1f} | {loaded[k].m.wall_s:.1f} "
                     f"| {slow(k):.2f}× | {rel} |")
    return "\n".join(lines)


def memory_table(results: dict[str, dict[int, Row]], cuts: tuple[int, int]) -> str:
    """Peak tree RSS per tool on the short and the long cut."""
    short, long = cuts
    lines = [f"| run | {short} frames MiB | {long} frames MiB | {long} ÷ {short} "
             f"| ÷ deface at {short} | ÷ deface at {long} |", "|---|---|---|---|---|---|"]
    d = results.get("deface", {})

    def peak(r: Row | None) -> int | None:
        return r.m.tree_peak if r is not None and r.ok else None

    for run, by_cut in results.items():
        a, b = peak(by_cut.get(short)), peak(by_cut.get(long))
        fails = [r.error for r in by_cut.values() if not r.ok]
        note = f" (failed: {fails[0]})" if fails else ""
        lines.append(f"| {RUN_TITLES[run]}{note} | {_mib(a)} | {_mib(b)} | {_ratio(b, a)} "
                     f"| {_ratio(a, peak(d.get(short)))} | {_ratio(b, peak(d.get(long)))} |")
    return "\n".join(lines)


# ============================================================================ facts


def machine_facts(load_start: tuple[float, float, float]) -> list[str]:
    """What the figures depend on: CPUs this process may use, load at start,
    CPU model, memory, and the runtimes' versions."""
    import av

    model = next((ln.split(":", 1)[1].strip() for ln in _read("/proc/cpuinfo").splitlines()
                  if ln.startswith("model name")), platform.machine())
    mem = next((int(ln.split()[1]) * 1024 for ln in _read("/proc/meminfo").splitlines()
                if ln.startswith("MemTotal:")), 0)
    r = subprocess.run([sys.executable, "-c", "import torch; print(torch.__version__, "
                        "torch.get_num_threads(), torch.cuda.is_available())"],
                       capture_output=True, text=True)
    torch_v, threads, cuda = r.stdout.split() if r.returncode == 0 else ("?", "?", "?")
    load = " ".join(f"{x:.2f}" for x in load_start)
    return [
        f"CPUs available to the benchmark: {len(os.sched_getaffinity(0))} "
        f"(of {os.cpu_count()}), {model}, {mem / 2**30:.0f} GiB RAM",
        f"load average at start (1/5/15 min): {load}"
        + (" (**not idle**: other work shared the CPUs, timings are not comparable with a "
           "quiet machine's)" if load_start[0] > 0.5 * len(os.sched_getaffinity(0)) else ""),
        f"anonymize: torch {torch_v} ({threads} threads, CUDA "
        f"{'available' if cuda == 'True' else 'not available'}), PyAV {av.__version__} "
        f"(libavcodec {_libavcodec()}), Python {platform.python_version()}",
        deface_facts(),
    ]


def _libavcodec() -> str:
    import av

    v = av.library_versions.get("libavcodec")
    return ".".join(map(str, v)) if v else "?"


# ============================================================================ driver


@dataclass
class Options:
    frames: int | None = None
    runs: tuple[str, ...] = RUNS
    clips: tuple[str, ...] = CLIPS
    loaded: bool = True
    memory: bool = True
    memory_frames: tuple[int, int] | None = None


def benchmark(opts: Options, log=print) -> str:
    """Run everything asked for and return the markdown section."""
    load_start = os.getloadavg()
    t_start = time.perf_counter()
    deface = None
    deface_problem = ""
    if "deface" in opts.runs:
        try:
            deface = ensure_deface(log)
        except RuntimeError as e:
            deface_problem = str(e)
            log(f"peers: {e}")
    facts = machine_facts(load_start)
    clips = bench_clips(list(opts.clips), opts.frames)
    parts: list[str] = []
    with tempfile.TemporaryDirectory(prefix="bench-peers-") as tmp:
        work = Path(tmp)
        for clip in clips:
            rows = []
            for loaded in (False, True) if opts.loaded else (False,):
                for run in opts.runs:
                    row = run_one(run, clip, deface, work, loaded)
                    rows.append(row)
                    log(f"peers: {clip.key} {run} {'loaded' if loaded else 'quiet'}: "
                        + (f"{row.m.wall_s:.1f} s, {_mib(row.m.tree_peak)} MiB"
                           if row.ok else f"failed: {row.error}"))
            part = (f"### {clip.label}\n\n{clip.width}×{clip.height}, {clip.frames} frames "
                    f"(`{_rel(clip.path)}`).\n\n" + clip_table(clip, rows))
            if opts.loaded:
                table = slowdown_table(rows)
                if table:
                    part += "\n\nSlowdown under load (loaded wall ÷ quiet wall):\n\n" + table
            parts.append(part)
        if opts.memory:
            parts.append(_memory_section(opts, deface, work, log))
    took = time.perf_counter() - t_start
    facts.append("load average at end (1/5/15 min): "
                 + " ".join(f"{x:.2f}" for x in os.getloadavg()) + f"; benchmark took {took:.0f} s")
    return _render(opts, facts, parts, deface_problem)


def _memory_section(opts: Options, deface: Path | None, work: Path, log) -> str:
    cuts = opts.memory_frames or ((opts.frames, 5 * opts.frames) if opts.frames
                                  else MEMORY_FRAMES)
    runs = [r for r in ("defaults", "deface") if r in opts.runs or r == "defaults"]
    results: dict[str, dict[int, Row]] = {r: {} for r in runs}
    for n in cuts:
        path = make_clip(SOURCE, CACHE / "clips" / f"{SOURCE.stem}-loop-{n}f.mp4", n)
        clip = Clip(f"mem{n}", path, "", n, 0, 0)
        for run in runs:
            row = run_one(run, clip, deface, work, loaded=False)
            results[run][n] = row
            log(f"peers: memory {n} frames {run}: "
                + (f"{_mib(row.m.tree_peak)} MiB" if row.ok else f"failed: {row.error}"))
    return (f"### Memory with video length\n\nPeak RSS of the process tree on cuts of "
            f"{cuts[0]} and {cuts[1]} frames made by the benchmark from {SOURCE.name} "
            "(768×432, crf 18; the clip is looped where a cut is longer than it), without the "
            "busy loop.\n\n" + memory_table(results, cuts))


def _render(opts: Options, facts: list[str], parts: list[str], deface_problem: str) -> str:
    argv = ["python", "bench/peers.py"]
    if opts.frames:
        argv += ["--frames", str(opts.frames)]
    if tuple(opts.runs) != RUNS:
        argv += ["--runs", ",".join(opts.runs)]
    if tuple(opts.clips) != CLIPS:
        argv += ["--clips", ",".join(opts.clips)]
    argv += [] if opts.loaded else ["--no-loaded"]
    argv += [] if opts.memory else ["--no-memory"]
    if opts.memory_frames:
        argv += ["--memory-frames", ",".join(map(str, opts.memory_frames))]
    exe = DEFACE_VENV / "bin" / "deface"
    cmds = "\n".join(f"- {RUN_TITLES[r]}: `{_show(command(r, Path('IN'), Path('OUT'), exe))}`"
                     for r in RUNS if r in opts.runs or r == "defaults")
    install = shlex.join(["pip", "install", *DEFACE_PACKAGES])
    intro = (
        f"`{shlex.join(argv)}`, from the repository root. Each tool runs as its own "
        "subprocess on the same clip, one after the other, once each, with its default "
        f"settings; `python` is `{_rel(Path(sys.executable))}` and our runs use this "
        f"checkout's code. deface runs from its own venv (`{_rel(DEFACE_VENV)}`: "
        f"`python -m venv` + `{install}`; without onnxruntime deface falls back to OpenCV's "
        "DNN module).\n\n"
        "Commands (IN = the clip, OUT = a fresh temporary file):\n\n" + cmds + "\n\n"
        "Machine:\n\n" + "\n".join(f"- {f}" for f in facts) + "\n\n"
        "Columns: fps = frames ÷ wall time (fork to exit, model loading included); "
        "fps ÷ deface and fps ÷ plain compare with deface's and plain's rows in the same load "
        "state. **peak RSS tree** (the memory figure used everywhere below) = the peak of the "
        "summed RSS of the tool's process and all its descendants, sampled from /proc every "
        f"{SAMPLE_S * 1000:.0f} ms (deface's ffmpeg reader and writer processes included; "
        "pages shared between processes count once per process). ru_maxrss = os.wait4's "
        "figure for the main process (on Linux the largest single process among it and its "
        "reaped children, not a sum). CPU s = user + system time from os.wait4 (reaped "
        "children included). Each tool is forked by a small launcher that takes these "
        "figures, because a child's ru_maxrss starts at the peak RSS of the process that "
        "spawned it. Loaded rows: a Python busy loop keeps one core busy from just before "
        "each run until it exits. Detections: boxes `anonymize run` found (before temporal "
        "filling). deface drops the audio track and encodes with imageio-ffmpeg's libx264 "
        "defaults; plain and ours copy the audio and encode at crf "
        f"{_settings().crf}, preset {_settings().preset}, no B-frames.")
    if deface_problem:
        intro += f"\n\ndeface rows are missing: {deface_problem}"
    return "\n\n".join([intro] + parts)


def _settings():
    from pipeline.settings import Settings

    return Settings()


def _show(cmd: list[str]) -> str:
    return shlex.join(_rel(Path(c)) if c.startswith("/") else c for c in cmd).replace(
        shlex.quote(_rel(Path(sys.executable))), "python")


def _rel(p: Path) -> str:
    try:
        return str(p.relative_to(ROOT))
    except ValueError:
        return str(p)


def _clean_env() -> dict:
    """The environment without our venv and source tree on Python's path."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    venv_bin = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if p != venv_bin)
    return env


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.replace("\r", "\n").splitlines() if ln.strip()]
    return lines[-1][:200] if lines else ""


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def _csv(choices: tuple[str, ...]):
    def parse(s: str) -> tuple[str, ...]:
        items = tuple(x.strip() for x in s.split(",") if x.strip())
        bad = [x for x in items if x not in choices]
        if bad or not items:
            raise argparse.ArgumentTypeError(f"choose from {','.join(choices)}")
        return items
    return parse


def parse_args(argv: list[str] | None = None) -> tuple[Options, Path | None]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, help="cut every clip to its first N frames (quick check)")
    ap.add_argument("--runs", type=_csv(RUNS), default=RUNS, help=f"default {','.join(RUNS)}")
    ap.add_argument("--clips", type=_csv(CLIPS), default=CLIPS, help=f"default {','.join(CLIPS)}")
    ap.add_argument("--no-loaded", dest="loaded", action="store_false",
                    help="skip the runs with one core kept busy")
    ap.add_argument("--no-memory", dest="memory", action="store_false",
                    help="skip the memory-with-length runs")
    ap.add_argument("--memory-frames", type=lambda s: tuple(int(x) for x in s.split(",")),
                    help="short,long cut for the memory runs (default 100,1000; "
                         "with --frames N: N,5N)")
    ap.add_argument("--out", type=Path, help="also write the markdown here")
    a = ap.parse_args(argv)
    if a.frames is not None and a.frames < 1:
        ap.error("--frames must be >= 1")
    if a.memory_frames is not None and len(a.memory_frames) != 2:
        ap.error("--memory-frames takes two numbers: SHORT,LONG")
    return Options(a.frames, a.runs, a.clips, a.loaded, a.memory, a.memory_frames), a.out


def main(argv: list[str] | None = None) -> int:
    opts, out = parse_args(argv)
    text = "## Against peers\n\n" + benchmark(opts, log=lambda s: print(s, file=sys.stderr,
                                                                        flush=True))
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
