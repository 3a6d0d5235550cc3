"""`anonymize render`: a run's detections.json, edited, rendered with no detector.

The reference run is the real pipeline with a stack that "detects" boxes
scripted per frame index, on a textured video where a blurred region is
unmistakable. The edits remove one box, add one and add an exclusion zone;
the render must change exactly those places (compared with the run's output
and the input, pixel by pixel) and nothing else, and keep every frame and
timestamp of the input. Bad files are refused with one line, before work.
"""

# ruff: noqa: F811 -- the fixtures imported from tests.servers are test parameters
from __future__ import annotations

import json
import os
from fractions import Fraction

import av
import jsonschema
import numpy as np
import pytest

from anonymize.cli import main
from models.detections import FACE, PLATE, Detections
from pipeline import video
from pipeline.blur import region_mask
from pipeline.process import run_local
from pipeline.render import SCHEMA_PATH, read_detections
from pipeline.settings import Settings
from pipeline.zones import ZoneSet, polygon_mask
from tests.servers import Worker, redis_server, s3_server, servers_dir  # noqa: F401

W, H, N, FILL, SCALE = 160, 96, 40, 2, 1.3
A = [20.0, 20.0, 44.0, 44.0]  # a face on every frame
B = [100.0, 60.0, 130.0, 72.0]  # a plate seen on frame 20 only (held 18-22)
C = [110.0, 10.0, 140.0, 40.0]  # a face the detector missed, added on frame 30 (held 28-32)
ZONE = [24, 24, 36, 36]  # inside A: never blurred on frames 5-9
TB = Fraction(1, 12800)


def texture(i: int) -> np.ndarray:
    rng = np.random.default_rng(7)
    blocks = rng.integers(0, 256, (H // 4, W // 4, 3), dtype=np.uint8)
    img = np.repeat(np.repeat(blocks, 4, axis=0), 4, axis=1)
    return np.roll(img, i % 3, axis=1)  # frames differ a little


def write_texture(path):
    with av.open(str(path), "w") as c:
        vs = c.add_stream("libx264", rate=25)
        vs.width, vs.height, vs.pix_fmt = W, H, "yuv444p"
        vs.time_base = vs.codec_context.time_base = TB
        vs.codec_context.options = {"crf": "4", "preset": "ultrafast",
                                    "x264-params": "keyint=8:min-keyint=8:scenecut=0:bframes=0"}
        for i in range(N):
            f = av.VideoFrame.from_ndarray(texture(i), format="rgb24").reformat(format="yuv444p")
            f.pts, f.time_base = 300 + i * 512, TB
            for p in vs.encode(f):
                c.mux(p)
        for p in vs.encode(None):
            c.mux(p)
    return path


class IndexedStack:
    """Boxes scripted per frame index (A everywhere, B on frame 20)."""

    model_names = {"faces": "scripted"}

    def detect_at(self, indices, frames):
        out = []
        for i in indices:
            d = [Detections([A], [0.9], [FACE])]
            if i == 20:
                d.append(Detections([B], [0.8], [PLATE]))
            out.append(Detections.merge(d))
        return out


def decode(path):
    return [rgb.astype(np.int32) for _, rgb in video.iter_frames(path)]


def regions_of(*boxes, label=FACE):
    return region_mask(Detections(list(boxes), [1.0] * len(boxes), [label] * len(boxes)),
                       W, H, SCALE)


@pytest.fixture(scope="module")
def ran(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("render")
    src = write_texture(tmp / "street.mp4")
    settings = Settings(fill_frames=FILL, segment_frames=12, shape="box", mask_scale=SCALE,
                        crf=4, preset="ultrafast", batch_size=4)
    run_local(src, tmp / "run" / "out.mp4", settings, stack=IndexedStack())
    return src, tmp


@pytest.fixture(scope="module")
def edited(ran):
    src, tmp = ran
    doc = json.loads((tmp / "run" / "detections.json").read_text())
    frame20 = doc["frames"][20]["detections"]
    b_id = next(r["id"] for r in frame20 if r["label"] == "plate")
    doc["remove"] = [b_id]
    doc["frames"][30]["detections"].append({"label": "face", "xyxy": C})
    doc["zones"] = [{"kind": "exclude", "box": ZONE, "frames": [5, 9], "note": "logo"}]
    path = tmp / "edited.json"
    path.write_text(json.dumps(doc, indent=1))
    out = tmp / "render" / "out.mp4"
    assert main(["render", str(src), "--detections", str(path), "-o", str(out), "--quiet"]) == 0
    return src, tmp / "run" / "out.mp4", out, path


def test_the_run_writes_a_file_the_schema_accepts(ran):
    _, tmp = ran
    doc = json.loads((tmp / "run" / "detections.json").read_text())
    jsonschema.validate(doc, json.loads(SCHEMA_PATH.read_text()))
    assert (doc["width"], doc["height"]) == (W, H)
    assert doc["settings"]["fill_frames"] == FILL
    assert doc["frames"][20]["detections"][1]["id"] == "20:1"


def test_render_keeps_every_frame_and_timestamp_of_the_input(edited):
    src, _, out, _ = edited
    a, b = video.probe(src), video.probe(out)
    assert b.n_frames == a.n_frames == N
    assert [p * b.time_base for p in b.frame_pts] == [p * a.time_base for p in a.frame_pts]
    report = json.loads((out.parent / "report.json").read_text())
    assert report["frames_match"] and report["render"]["removed"] == 1
    assert report["render"]["added"] == 1 and report["models"] == {
        "detections": "edited.json (no detector)"}


def test_render_changes_exactly_the_edited_places(edited):
    src, run_out, out, _ = edited
    inp, run, ren = decode(src), decode(run_out), decode(out)
    a, b, c = regions_of(A), regions_of(B, label=PLATE), regions_of(C)
    zone = np.zeros((H, W), bool)
    zone[ZONE[1]:ZONE[3], ZONE[0]:ZONE[2]] = True

    def mean(x, y, m):
        return float(np.abs(x - y)[m].mean())

    for i in range(N):
        edited_here = np.zeros((H, W), bool)
        if 18 <= i <= 22:  # the removed plate (and the frames filling held it on)
            assert mean(ren[i], inp[i], b) < 3, i
            assert mean(run[i], inp[i], b) > 20, i
            edited_here |= b
        if 28 <= i <= 32:  # the added face, held like a detected one
            assert mean(ren[i], inp[i], c) > 20, i
            assert mean(run[i], inp[i], c) < 3, i
            edited_here |= c
        if 5 <= i <= 9:  # the exclusion zone is cut out of A's region, only there
            assert mean(ren[i], inp[i], zone) < 3, i
            assert mean(run[i], inp[i], zone) > 20, i
            assert mean(ren[i], run[i], a & ~zone) < 3, i
            edited_here |= zone
        else:
            assert mean(ren[i], inp[i], a) > 20, i  # A stays blurred
        # everywhere else the render equals the run, but for encoding noise
        grown = np.zeros_like(edited_here)
        ys, xs = np.nonzero(edited_here)
        if len(ys):
            grown[max(0, ys.min() - 3):ys.max() + 4, max(0, xs.min() - 3):xs.max() + 4] = True
        assert mean(ren[i], run[i], ~grown) < 1.5, i


def test_render_records_the_final_boxes_and_zones(edited):
    _, _, out, _ = edited
    doc = json.loads((out.parent / "detections.json").read_text())
    frames = {e["frame_idx"]: e["detections"] for e in doc["frames"]}
    assert not [r for r in frames[20] if r["label"] == "plate"]
    assert [r["xyxy"] for r in frames[30] if not r["filled"] and r["xyxy"] == C] == [C]
    assert sum(r["filled"] for r in frames[28]) == 1  # C held backwards by filling
    assert doc["zones"][0]["kind"] == "exclude"


def test_unedited_detections_render_the_runs_boxes(ran, tmp_path):
    src, tmp = ran
    out = tmp_path / "again.mp4"
    assert main(["render", str(src), "--detections", str(tmp / "run" / "detections.json"),
                 "-o", str(out), "--quiet"]) == 0
    first = json.loads((tmp / "run" / "detections.json").read_text())["frames"]
    again = json.loads((tmp_path / "detections.json").read_text())["frames"]
    assert again == first
    diff = [np.abs(x - y).mean() for x, y in zip(decode(tmp / "run" / "out.mp4"), decode(out),
                                                 strict=True)]
    assert max(diff) < 0.5


def test_render_refuses_to_overwrite_the_file_it_reads(ran, capsys):
    src, tmp = ran
    code = main(["render", str(src), "--detections", str(tmp / "run" / "detections.json"),
                 "-o", str(tmp / "run" / "again.mp4"), "--quiet"])
    assert code == 2 and "overwrite" in capsys.readouterr().err


def test_detections_of_another_clip_of_the_same_camera_are_warned_of(ran, tmp_path, capsys,
                                                                    monkeypatch):
    """Two clips of one camera have the same frame size, rate and timestamps, so the
    checks against the video pass: the boxes of street.mp4 were drawn on the other
    clip's frames, exit 0 and not a word. The file names its video; a render of
    another name says so (a renamed copy is fine, so it is a warning)."""
    src, tmp = ran
    other = tmp_path / "garage.mp4"
    write_texture(other)
    det = tmp / "run" / "detections.json"
    assert main(["render", str(other), "--detections", str(det), "-o",
                 str(tmp_path / "o" / "out.mp4"), "--quiet"]) == 0
    captured = capsys.readouterr()
    assert captured.err == (f"anonymize: warning: {det} holds the detections of street.mp4, "
                            f"not of garage.mp4: if that is another video, its boxes do not "
                            f"cover this one's faces and plates\n")
    assert main(["render", str(src), "--detections", str(det), "-o",
                 str(tmp_path / "p" / "out.mp4"), "--quiet"]) == 0
    assert capsys.readouterr().err == ""
    monkeypatch.setenv("ANONYMIZE_BROKER_URL", "redis://127.0.0.1:9/0")  # nobody there
    assert main(["submit", str(other), "--detections", str(det)]) == 2  # checked before
    assert captured.err in capsys.readouterr().err


def test_detections_of_a_shorter_clip_of_the_same_camera_are_refused(ran, tmp_path, capsys):
    """The first 16 frames of the clip, also named street.mp4 (cameras number their
    files alike): same size and timestamps, every frame listed lies in the longer
    video, so its boxes were taken and frames 16-39 rendered with none, exit 0."""
    src, tmp = ran
    short = tmp_path / "card2" / "street.mp4"
    short.parent.mkdir()
    with av.open(str(src)) as inp, av.open(str(short), "w") as out:  # two whole GOPs
        stream = out.add_stream_from_template(inp.streams.video[0])
        for k, packet in enumerate(p for p in inp.demux(video=0) if p.dts is not None):
            if k < 16:
                packet.stream = stream
                out.mux(packet)
    run_local(short, tmp_path / "run" / "out.mp4", Settings(fill_frames=FILL, crf=4,
                                                            preset="ultrafast"),
              stack=IndexedStack())
    det = tmp_path / "run" / "detections.json"
    assert json.loads(det.read_text())["frame_count"] == 16
    assert json.loads((tmp / "run" / "detections.json").read_text())["frame_count"] == N
    out = tmp_path / "render" / "out.mp4"
    assert main(["render", str(src), "--detections", str(det), "-o", str(out), "--quiet"]) == 2
    assert capsys.readouterr().err == (f"anonymize: error: {det}: frame_count: 16 but the "
                                       f"video has {N} frames (detections of another video?)\n")
    assert not out.exists()


# ------------------------------------------------------------- bad files


def _broken(doc: dict, how: str) -> dict:
    doc = json.loads(json.dumps(doc))
    rows = doc["frames"][3]["detections"]
    if how == "label":
        rows[0]["label"] = "car"
    elif how == "outside":
        rows[0]["xyxy"] = [200, 10, 230, 40]
    elif how == "empty":
        rows[0]["xyxy"] = [30, 10, 20, 40]
    elif how == "beyond":
        doc["frames"].append({"frame_idx": N + 5, "detections": []})
    elif how == "field":
        rows[0]["colour"] = "red"
    elif how == "remove":
        doc["remove"] = ["99:9"]
    elif how == "pts":
        doc["frames"][3]["pts"] += 1
    elif how == "pts-copied":  # frame 3's entry copied to add a box on frame 4
        doc["frames"][4] = {**json.loads(json.dumps(doc["frames"][3])), "frame_idx": 4}
        for row in doc["frames"][4]["detections"]:
            row.pop("id")
    elif how == "zone":
        doc["zones"] = [{"kind": "exclude", "box": [0, 0, 5, 5], "polygon": [[0, 0], [1, 1],
                                                                             [0, 1]]}]
    elif how == "size":
        doc["width"] = 640
    elif how in ("nan", "infinity"):  # Python writes them as NaN / Infinity, JSON has neither
        rows[0]["xyxy"][2] = float(how)
    elif how == "far":  # passed as "past the edge" and overflowed when drawn: nothing blurred
        rows[0]["xyxy"][2] = 1e300
    elif how == "huge-int":  # a 400-digit integer: OverflowError traceback
        rows[0]["xyxy"][2] = 10 ** 400
    elif how == "huge-int-zone":  # as 1e400: infinity, which the records wrote as Infinity
        doc["zones"] = [{"kind": "force", "box": [1, 1, 9, 9], "time_s": [0, 10 ** 400]}]
    elif how == "zones-only":  # a zones file given as --detections: rendered with no blur
        doc = {"zones": doc.get("zones", [])}
    elif how == "setting-name":  # a misspelt setting was ignored
        doc["settings"]["mask_scael"] = 1.6
    elif how == "setting-value":
        doc["settings"]["mask_scale"] = "big"
    return doc


@pytest.mark.parametrize("how, expected", [
    ("label", "frame 3, detections[0].label: 'car' is not one of"),
    ("outside", "frame 3, detections[0].xyxy: box [200, 10, 230, 40] lies outside the 160x96"),
    ("empty", "frame 3, detections[0].xyxy: [30, 10, 20, 40] is empty"),
    ("beyond", f"frame {N + 5}: beyond the video, which has {N} frames"),
    ("field", "frame 3, detections[0]: Additional properties are not allowed ('colour'"),
    ("remove", "remove[0]: no box has id '99:9'"),
    ("pts", "frame 3, pts:"),
    ("pts-copied", "frame 4, pts: 1830 but that frame of the video has 2342 (1830 is frame 3's: "
                   "an entry copied from frame 3? give this frame's pts or leave pts out)"),
    ("zone", "zones[0]: a zone needs exactly one of box or polygon"),
    ("size", "width: 640 but the video is 160x96"),
    ("nan", "not valid JSON (NaN is not a JSON number)"),
    ("infinity", "not valid JSON (Infinity is not a JSON number)"),
    ("far", "has a corner 1e+06 pixels or more off the 160x96 frame"),
    ("huge-int", "frame 3, detections[0].xyxy: [20, 20, inf, 44] has a corner 1e+06 pixels"),
    ("huge-int-zone", "zones[0].time_s: [0, inf] holds a number too large for a time"),
    ("zones-only", "no 'frames': not the detections of a run"),
    ("setting-name", "settings.mask_scael: not a setting a run records"),
    ("setting-value", "settings.mask_scale: 'big' is not"),
])
def test_a_bad_detections_file_is_one_line_before_any_work(ran, tmp_path, capsys, how, expected):
    src, tmp = ran
    doc = json.loads((tmp / "run" / "detections.json").read_text())
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(_broken(doc, how)))
    out = tmp_path / "out.mp4"
    assert main(["render", str(src), "--detections", str(bad), "-o", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"anonymize: error: {bad}: "), err
    assert expected in err, err
    assert not out.exists() and not (tmp_path / "report.json").exists()


def test_submit_refuses_bad_detections_before_reaching_a_server(ran, tmp_path, capsys,
                                                                 monkeypatch):
    src, tmp = ran
    monkeypatch.setenv("ANONYMIZE_BROKER_URL", "redis://127.0.0.1:9/0")  # nobody there
    doc = json.loads((tmp / "run" / "detections.json").read_text())
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(_broken(doc, "beyond")))
    assert main(["submit", str(src), "--detections", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "beyond the video" in err
    assert main(["submit", str(src), str(src), "--detections", str(bad)]) == 2
    assert "one INPUT" in capsys.readouterr().err


def test_whole_numbers_written_with_a_point_are_read_as_whole_numbers(ran, tmp_path):
    """JSON Schema's integers include 5.0: such a frame index passed the schema
    and then failed as a list index, with a traceback."""
    src, tmp = ran
    doc = json.loads((tmp / "run" / "detections.json").read_text())
    for entry in doc["frames"]:
        entry["frame_idx"] = float(entry["frame_idx"])
        entry["pts"] = float(entry["pts"])
    edited = tmp_path / "floats.json"
    edited.write_text(json.dumps(doc))
    assert main(["render", str(src), "--detections", str(edited), "-o",
                 str(tmp_path / "o.mp4"), "--quiet"]) == 0
    again = json.loads((tmp_path / "detections.json").read_text())["frames"]
    assert again == json.loads((tmp / "run" / "detections.json").read_text())["frames"]


def test_not_json_is_one_line(ran, tmp_path, capsys):
    src, _ = ran
    bad = tmp_path / "bad.json"
    bad.write_text('{"frames": [}')
    assert main(["render", str(src), "--detections", str(bad), "-o",
                 str(tmp_path / "o.mp4")]) == 2
    assert "not valid JSON (line 1" in capsys.readouterr().err


def test_a_key_given_twice_is_refused_with_its_line(ran, tmp_path, capsys):
    """A JSON reader keeps the last of two equal keys: zones added at the top of a
    file that ends with the run's own "zones" were dropped, and the video rendered
    without them, exit 0."""
    src, tmp = ran
    doc = json.loads((tmp / "run" / "detections.json").read_text())
    doc["zones"] = [{"kind": "exclude", "box": [0, 0, 8, 8]}]  # as a run with --zones writes
    added = '{"zones": [{"kind": "force", "box": [60, 30, 100, 60]}],\n'
    edited = tmp_path / "edited.json"
    edited.write_text(added + json.dumps(doc, indent=1)[1:])
    out = tmp_path / "out.mp4"
    assert main(["render", str(src), "--detections", str(edited), "-o", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err == (f"anonymize: error: {edited}: line 1, column 1: 'zones' is given twice in "
                   f"one object (only the last would be read)\n"), err
    assert not out.exists()
    row = '{"label": "face", "xyxy": [1, 2, 30, 40],\n "xyxy": [1, 2, 30, 41]}'
    edited.write_text(json.dumps(doc, indent=1).replace('"detections": [', '"detections": [\n'
                                                        + row + ",", 1))
    assert main(["render", str(src), "--detections", str(edited), "-o", str(out), "--quiet"]) == 2
    first = row.split("\n")[0]
    line = 1 + edited.read_text().splitlines().index(first)
    assert f"{edited}: line {line}, column 1: 'xyxy' is given twice" in capsys.readouterr().err


def test_a_byte_order_mark_is_read_past(ran, tmp_path):
    """Notepad and PowerShell can save UTF-8 with a byte order mark, which RFC 8259
    lets a reader ignore: an edited file saved so was refused as "not valid JSON",
    and a --zones file too."""
    src, tmp = ran
    det = tmp / "run" / "detections.json"
    edited = tmp_path / "edited.json"
    edited.write_bytes(b"\xef\xbb\xbf" + det.read_bytes())
    zones = tmp_path / "zones.json"
    zones.write_bytes("\ufeff{\"zones\": [{\"kind\": \"force\", \"box\": [1, 1, 9, 9]}]}"
                      .encode())
    out = tmp_path / "o" / "out.mp4"
    assert main(["render", str(src), "--detections", str(edited), "--zones", str(zones), "-o",
                 str(out), "--quiet"]) == 0
    again = json.loads((out.parent / "detections.json").read_text())
    assert again["frames"] == json.loads(det.read_text())["frames"]
    assert again["zones"] == [{"kind": "force", "box": [1, 1, 9, 9]}]
    for name in ("detections.json", "report.json"):  # and `review` of such a folder
        path = out.parent / name
        path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    assert main(["review", str(out.parent)]) == 0


def test_a_video_given_as_the_detections_is_refused_from_its_first_bytes(ran, tmp_path):
    """`--detections street.mp4` (arguments mixed up) read the whole video into memory
    before it was found not to be text: a recording of some gigabytes failed with a
    MemoryError traceback, or took the machine's memory. Here a 3 GB video (sparse:
    its header, then nothing) is read under a 1 GB address-space limit."""
    import subprocess
    import sys

    src, _ = ran
    big = tmp_path / "long.mp4"
    with open(big, "wb") as f:
        f.write(src.read_bytes())
        f.truncate(3 << 30)
    code = ("import resource, sys; from pipeline.render import load_document; "
            "resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30)); "
            "load_document(sys.argv[1])")
    done = subprocess.run([sys.executable, "-c", code, str(big)], capture_output=True,
                          text=True, timeout=120, env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert "DetectionsFileError" in done.stderr, done.stderr[-500:]
    assert done.stderr.strip().endswith(f"{big}: not a JSON text file (binary data: a video "
                                        f"given as the detections file?)")
    utf16 = tmp_path / "utf16.json"  # as PowerShell 5 redirects text
    utf16.write_bytes(json.dumps({"zones": []}).encode("utf-16"))
    from pipeline.render import DetectionsFileError, load_document

    with pytest.raises(DetectionsFileError, match=r"utf16.json: UTF-16 text, not UTF-8: save "
                                                  r"it as UTF-8$"):
        load_document(utf16)


# ------------------------------------------------------------------ zones


@pytest.mark.parametrize("flag", ["--detect-every", "--reference-every", "--device",
                                  "--lp-thresh"])
def test_render_has_no_flags_for_the_detectors_it_does_not_run(flag, capsys):
    """--detect-every and --reference-every were offered and did nothing (every frame's
    boxes come from the file), and `--detect-every 3` was refused for --fill-frames 1."""
    with pytest.raises(SystemExit):
        main(["render", "--help"])
    assert flag not in capsys.readouterr().out
    with pytest.raises(SystemExit) as err:
        main(["render", "in.mp4", "--detections", "d.json", "-o", "o.mp4", flag, "2"])
    assert err.value.code == 2
    assert f"unrecognized arguments: {flag} 2" in capsys.readouterr().err


def test_polygon_mask_takes_pixels_whose_centres_are_inside():
    m = polygon_mask(np.array([[0, 0], [8, 0], [0, 8]]), 0, 0, 8, 8)
    ys, xs = np.mgrid[0:8, 0:8]
    assert np.array_equal(m, (xs + 0.5) + (ys + 0.5) < 8)
    square = polygon_mask(np.array([[2, 2], [6, 2], [6, 5], [2, 5]]), 0, 0, 8, 8)
    assert square.sum() == 12 and square[2:5, 2:6].all()


def test_polygon_mask_of_a_traced_polygon_is_quick_and_the_same():
    """Every edge was tested against every row of the zone's box: a zone traced with
    2000 points took 8 s to rasterise on a 1080p frame, again for every segment."""
    import time

    def every_row(polygon, x0, y0, w, h):  # the rule, row by row for every edge
        xs = np.arange(x0, x0 + w) + 0.5
        ys = (np.arange(y0, y0 + h) + 0.5)[:, None]
        inside = np.zeros((h, w), bool)
        for (xi, yi), (xj, yj) in zip(polygon, np.roll(polygon, -1, axis=0), strict=True):
            if yi != yj:
                inside ^= ((yi > ys) != (yj > ys)) & (xs < xi + (ys - yi) * (xj - xi) / (yj - yi))
        return inside

    rng = np.random.default_rng(3)
    for k in range(40):  # self-crossing, fractional, reaching out of the window
        poly = rng.uniform(-20, 80, (3 + k % 9, 2))
        if k % 4 == 0:
            poly = np.round(poly)  # corners on pixel edges and centres' neighbours
        if k % 5 == 0:
            poly[:, 1] = np.round(poly[:, 1]) + 0.5  # vertices on rows' centre lines
        assert np.array_equal(polygon_mask(poly, 3, 5, 60, 50), every_row(poly, 3, 5, 60, 50)), k
    t = np.linspace(0, 2 * np.pi, 2000, endpoint=False)
    traced = np.stack([960 + 500 * np.cos(t), 540 + 500 * np.sin(t)], axis=1)
    start = time.perf_counter()
    mask = polygon_mask(traced, 0, 0, 1920, 1080)
    assert time.perf_counter() - start < 1.5
    assert abs(mask.sum() - np.pi * 500 ** 2) < 2000


def test_forced_regions_win_over_exclusions_and_follow_their_time_range():
    rng = np.random.default_rng(1)
    frame = rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)
    zones = ZoneSet.from_dicts([
        {"kind": "force", "box": [10, 10, 30, 30], "time_s": [1.0, 2.0]},
        {"kind": "exclude", "polygon": [[20, 0], [60, 0], [60, 40], [20, 40]]},
    ], 60, 40, Fraction(1, 10))
    blurred = np.zeros_like(frame)  # "everything was blurred" stand-in
    out = zones.apply(blurred.copy(), frame, 0, 15)  # t = 1.5 s: both apply
    assert np.array_equal(out[:, 30:], frame[:, 30:])  # excluded, not forced: original
    assert not np.array_equal(out[10:30, 20:30], frame[10:30, 20:30])  # forced wins
    assert np.array_equal(out[:10, :20], blurred[:10, :20])  # neither: untouched
    later = zones.apply(blurred.copy(), frame, 0, 25)  # t = 2.5 s: only the exclusion
    assert np.array_equal(later[10:30, 20:30], frame[10:30, 20:30])


def test_run_with_zones_blurs_a_forced_region_on_its_frames_only(tmp_path):
    src = write_texture(tmp_path / "in.mp4")
    zones = tmp_path / "zones.json"
    zones.write_text(json.dumps({"zones": [{"kind": "force", "box": [60, 30, 100, 60],
                                            "frames": [10, 19], "note": "overlay"}]}))

    class Nothing:
        model_names: dict = {}

        def detect(self, frames):
            return [Detections.empty() for _ in frames]

    from pipeline.render import read_zones

    info = video.probe(src)
    run_local(src, tmp_path / "out.mp4", Settings(fill_frames=FILL, preset="ultrafast", crf=4),
              stack=Nothing(), zones=read_zones(zones, info))
    inp, out = decode(src), decode(tmp_path / "out.mp4")
    for i in range(N):
        diff = np.abs(inp[i] - out[i])[30:60, 60:100].mean()
        assert (diff > 20) == (10 <= i <= 19), i
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["zones"][0]["note"] == "overlay"


def test_zones_file_with_frames_is_refused(tmp_path):
    from pipeline.render import DetectionsFileError, read_zones

    path = tmp_path / "z.json"
    path.write_text(json.dumps({"frames": [{"frame_idx": 0, "detections": []}]}))
    with pytest.raises(DetectionsFileError, match="zones only"):
        read_zones(path)


@pytest.mark.parametrize("time_s,refused", [
    ([12.0, 18.5], True), ([-5, -1], True), ([0.505, 0.54], True),  # between two frames
    ([0.0, 0.0], True), ([0.02, 0.03], False), ([1.5, 99], False), ([-5, 0.03], False)])
def test_zone_times_that_hold_no_frame_are_refused(tmp_path, time_s, refused):
    """Like frames beyond the video: a force zone for 12-18.5 s of a 2-s clip (or in
    minutes instead of seconds) was taken and blurred nothing, exit 0."""
    from types import SimpleNamespace

    from pipeline.render import DetectionsFileError, read_zones

    info = SimpleNamespace(width=W, height=H, n_frames=N, time_base=TB,
                           frame_pts=[300 + i * 512 for i in range(N)])  # 0.0234 s + i x 0.04 s
    path = tmp_path / "z.json"
    path.write_text(json.dumps({"zones": [{"kind": "force", "box": [1, 1, 9, 9],
                                           "time_s": time_s}]}))
    if refused:
        with pytest.raises(DetectionsFileError, match=r"z.json: zones\[0\].time_s: no frame of "
                                                      r"the video is shown from .* \(its frames "
                                                      r"are at 0.0234375 to 1.58344 s\)$"):
            read_zones(path, info)
    else:
        assert read_zones(path, info)[0]["time_s"] == time_s


@pytest.mark.parametrize("zone", [
    {"polygon": [[10, 10], [10, 50], [10, 80]]},  # drawn along a line
    {"polygon": [[10, 10], [10, 10], [10, 10]]},  # one point three times
    {"box": [10.1, 10.1, 10.4, 10.4]},  # inside one pixel, not over its centre
    {"box": [159.6, 0, 170, 10]},  # reaches less than half a pixel into the frame
])
def test_a_zone_that_covers_no_pixel_is_refused(ran, tmp_path, capsys, zone):
    """A forced region that holds no pixel's centre blurred nothing and the render
    said nothing, exit 0 (an empty box and one outside the frame were refused)."""
    src, tmp = ran
    doc = json.loads((tmp / "run" / "detections.json").read_text())
    doc["zones"] = [{"kind": "force", **zone}]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(doc))
    out = tmp_path / "out.mp4"
    assert main(["render", str(src), "--detections", str(bad), "-o", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    shape = "box" if "box" in zone else "polygon"
    assert err == (f"anonymize: error: {bad}: zones[0].{shape}: covers no pixel of the {W}x{H} "
                   f"frame (a pixel is in a zone when its centre is inside)\n"), err
    assert not out.exists()
    zones = tmp_path / "zones.json"
    zones.write_text(json.dumps({"zones": doc["zones"]}))
    from pipeline.render import DetectionsFileError, read_zones

    with pytest.raises(DetectionsFileError, match="covers no pixel"):
        read_zones(zones, video.probe(src))


def test_checking_zones_imports_no_torch(ran, tmp_path):
    """`submit --zones` checks the zones against the video on the client, which needs
    no torch; the check that a zone covers a pixel imported it with the blur."""
    import subprocess
    import sys

    src, _ = ran
    zones = tmp_path / "zones.json"
    zones.write_text(json.dumps({"zones": [{"kind": "force", "box": [1, 1, 9, 9]}]}))
    code = ("import sys; from anonymize.cli import main; "
            "assert main(['submit', sys.argv[1], '--zones', sys.argv[2]]) == 2; "
            "assert 'torch' not in sys.modules")
    done = subprocess.run([sys.executable, "-c", code, str(src), str(zones)], text=True,
                          capture_output=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": os.getcwd(),
                               "ANONYMIZE_BROKER_URL": "redis://127.0.0.1:9/0"})  # nobody there
    assert done.returncode == 0, done.stderr[-800:]
    assert "cannot reach the broker" in done.stderr


def test_a_zone_time_written_1e400_is_refused(ran, tmp_path):
    """1e400 is read as infinity: the zone was taken (every frame from 0 on), and the
    records wrote its time as Infinity, which no JSON reader takes back (render,
    review)."""
    from pipeline.render import DetectionsFileError, read_zones

    src, _ = ran
    path = tmp_path / "z.json"
    path.write_text('{"zones": [{"kind": "force", "box": [1, 1, 9, 9], "time_s": [0, 1e400]}]}')
    with pytest.raises(DetectionsFileError, match=r"z.json: zones\[0\].time_s: \[0, inf\] "
                                                  r"holds a number too large for a time$"):
        read_zones(path, video.probe(src))


def test_a_missing_zones_file_or_a_folder_is_named_for_what_it_is(tmp_path):
    """--zones nosuch.json said "detections file not found"; a folder given as either
    file was "not found"."""
    from pipeline.render import DetectionsFileError, read_document, read_zones

    with pytest.raises(DetectionsFileError, match="^zones file not found: .*nosuch.json$"):
        read_zones(tmp_path / "nosuch.json")
    with pytest.raises(DetectionsFileError, match=f"^zones file {tmp_path} is a folder, not "
                                                  f"a file$"):
        read_zones(tmp_path)
    with pytest.raises(DetectionsFileError, match=f"^detections file {tmp_path} is a folder"):
        read_document(tmp_path)


def test_read_detections_ignores_filled_and_disabled_boxes(ran):
    src, tmp = ran
    doc = json.loads((tmp / "run" / "detections.json").read_text())
    doc["frames"][0]["detections"][0]["disabled"] = True
    path = tmp / "disabled.json"
    path.write_text(json.dumps(doc))
    edits = read_detections(path, video.probe(src))
    assert 0 not in edits.frames and edits.counts["disabled"] == 1
    assert edits.counts["filled_ignored"] == sum(
        r["filled"] for e in doc["frames"] for r in e["detections"])


# ------------------------------------------------------------------ distributed


def test_submit_detections_renders_on_the_cpu_queue_like_render(edited, tmp_path):
    """The job steps with a re-render's edits: split enqueues `render` (cpu queue) per
    segment, which runs no model; the result equals `anonymize render`'s."""
    from tasks import keys, steps
    from tasks.config import CPU_QUEUE, RENDER, ROUTES
    from tests.test_jobs import Harness

    src, _, out, edits_path = edited
    assert ROUTES[RENDER]["queue"] == CPU_QUEUE
    doc = json.loads(edits_path.read_text())
    settings = Settings(fill_frames=FILL, segment_frames=12, shape="box", mask_scale=SCALE,
                        crf=4, preset="ultrafast")
    h = Harness(tmp_path, src, settings, job="render-1")  # workers cache per job id
    h.storage.put_json(doc, keys.edits_key(h.job))
    h.state.jobs[h.job].update(edits="detections", detections_file="edited.json")
    n = steps.run_split(h.ctx, h.job)
    assert h.take_sent() == [(RENDER, (h.job, i)) for i in range(n)]
    for i in range(n):
        assert steps.run_process(h.ctx, h.job, i) is True  # no stack given: none loaded
    report = steps.run_reassemble(h.ctx, h.job)
    assert report["frames_match"] and report["render"]["removed"] == 1
    got = h.storage.get_json(f"jobs/{h.job}/detections.json")
    want = json.loads((out.parent / "detections.json").read_text())
    assert got["frames"] == want["frames"] and got["zones"] == want["zones"]
    assert "report_html" in h.state.get(h.job)["files"]
    page = h.storage.get_bytes(f"jobs/{h.job}/report.html").decode()
    assert "<figure class='thumb'" in page


def test_a_bad_detections_file_fails_the_split_with_one_line(ran, tmp_path):
    from tasks import keys, steps
    from tests.test_jobs import Harness

    src, tmp = ran
    doc = _broken(json.loads((tmp / "run" / "detections.json").read_text()), "beyond")
    h = Harness(tmp_path, src, Settings(fill_frames=FILL, preset="ultrafast"), job="render-2")
    h.storage.put_json(doc, keys.edits_key(h.job))
    h.state.jobs[h.job].update(edits="detections", detections_file="edited.json")
    with pytest.raises(ValueError, match=f"edited.json: frame {N + 5}: beyond the video"):
        steps.run_split(h.ctx, h.job)
    assert h.take_sent() == []


@pytest.mark.integration
@pytest.mark.slow
def test_submit_detections_is_served_by_a_cpu_only_worker(edited, redis_server, s3_server,
                                                          servers_dir, tmp_path):
    """Real Redis, S3 and one worker that serves only the cpu queue and has no model:
    `submit --detections` still finishes, and equals `anonymize render`."""
    src, _, out, edits_path = edited
    env = {**s3_server.client_env(), "ANONYMIZE_BROKER_URL": redis_server.url,
           "ANONYMIZE_STORAGE_URL": s3_server.storage_url("render"),
           "ANONYMIZE_WORKER_DEVICE": "cpu"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    worker = Worker(servers_dir / "cpu-render", env, queues="cpu", name="cpu-only")
    worker.start()
    try:
        from tasks.client import Client

        client = Client()
        settings = Settings(fill_frames=FILL, segment_frames=12, shape="box", mask_scale=SCALE,
                            crf=4, preset="ultrafast")
        job = client.submit(str(src), settings, output="out.mp4",
                            detections=json.loads(edits_path.read_text()),
                            detections_file=str(edits_path))
        info = client.wait(job, timeout=240)
        assert info["status"] == "done", f"{info.get('error')} / {worker.tail(3000)}"
        got = client.download(job, tmp_path / "out.mp4")
        assert {"output", "detections_json", "report_html", "report"} <= set(got)
        mine = json.loads((tmp_path / "detections.json").read_text())
        want = json.loads((out.parent / "detections.json").read_text())
        assert mine["frames"] == want["frames"] and mine["zones"] == want["zones"]
        assert "<figure class='thumb'" in (tmp_path / "report.html").read_text()
    finally:
        worker.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
