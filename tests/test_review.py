"""Review flags, report.json entries and report.html, the page looked at in a real browser.

The run is the real pipeline on the scene of test_run.py (a patch the
scripted detector misses on marked frames: a short gap that filling closes
and a long one it cannot), so the flags point at known frames.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from anonymize.cli import main
from models.detections import FACE, PLATE, Detections
from pipeline.process import run_local
from pipeline.review import write_image_page
from pipeline.review_flags import MAX_THUMBNAILS, find_flags, pick_frames
from pipeline.settings import Settings
from tests.browser import Browser
from tests.test_run import FILL, N, ScriptedStack, write_scene
from tests.videos import make_video


def box(x, y, s=20, label=FACE, conf=0.9, filled=False):
    return Detections([[x, y, x + s, y + s]], [conf], [label], [filled])


def test_an_object_lost_mid_picture_is_flagged_where_no_fill_covers_it():
    fill = 2
    frames = {f: box(100, 100) if f <= 10 else Detections.empty() for f in range(30)}
    for f in (11, 12):  # filling holds the last sighting for `fill` frames
        frames[f] = box(100, 100, filled=True)
    flags, n = find_flags(frames, {"fill_frames": fill}, 320, 240)
    assert n == 1
    vanish = [f for f in flags if f.kind == "vanish"]
    assert [f.frame for f in vanish] == [13] and "frame 10" in vanish[0].reason
    assert flags[0].kind == "vanish"  # the most urgent first
    assert {f.kind for f in flags} >= {"first", "last"}


def test_an_object_leaving_at_the_edge_is_not_a_vanish():
    frames = {f: box(0, 100) if f <= 10 else Detections.empty() for f in range(30)}
    flags, _ = find_flags(frames, {"fill_frames": 2}, 320, 240)
    assert not [f for f in flags if f.kind == "vanish"]


def test_long_interpolated_gaps_and_weak_finds_are_flagged():
    frames = {f: box(100 + f, 100, label=PLATE, conf=0.8) for f in range(20)}
    for f in (6, 7, 8, 9):
        frames[f] = box(100 + f, 100, label=PLATE, filled=True)
    frames[15] = box(115, 100, label=PLATE, conf=0.12)
    flags, n = find_flags(frames, {"fill_frames": 5, "lp_thresh": 0.1}, 320, 240)
    assert n == 1
    gap = [f for f in flags if f.kind == "gap"]
    assert [f.frame for f in gap] == [7] and "frames 6-9" in gap[0].reason
    assert gap[0].boxes[0]["filled"]
    weak = [f for f in flags if f.kind == "weak"]
    assert [f.frame for f in weak] == [15] and "--lp-thresh 0.1" in weak[0].reason


def test_the_contact_sheet_is_bounded_and_takes_the_most_urgent():
    frames = {}
    for f in range(400):  # 200 one-frame objects, each first and last seen
        frames[f] = box(10 + (f % 10) * 25, 100) if f % 2 == 0 else Detections.empty()
    flags, _ = find_flags(frames, {"fill_frames": 0}, 320, 240)
    picked = pick_frames(flags)
    assert len(picked) == MAX_THUMBNAILS
    assert [f for f, _ in picked] == sorted(f for f, _ in picked)


# ------------------------------------------------------------------ a real run


@pytest.fixture(scope="module")
def reviewed(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("review")
    src = write_scene(tmp / "scene.mp4")
    settings = Settings(fill_frames=FILL, segment_frames=10, shape="box", batch_size=4,
                        crf=10, preset="ultrafast")
    report = run_local(src, tmp / "out" / "scene.mp4", settings, stack=ScriptedStack())
    return tmp / "out", report


def test_report_json_lists_the_flags_with_frame_time_reason_boxes(reviewed):
    folder, report = reviewed
    saved = json.loads((folder / "report.json").read_text())
    assert saved["review"] == report["review"]
    assert saved["review_summary"]["flags"] >= len(saved["review"]) > 0
    kinds = {e["kind"] for e in saved["review"]}
    assert {"first", "last", "vanish", "appear"} <= kinds
    for e in saved["review"]:
        assert set(e) >= {"frame", "time_s", "kind", "reason", "boxes"}
        assert 0 <= e["frame"] < N and e["reason"]
        assert e["time_s"] == pytest.approx(e["frame"] * 512 / 12800)
    # the 9-frame gap (30-38): filling holds 3 frames at each end, the middle is open
    vanish = [e for e in saved["review"] if e["kind"] == "vanish"]
    assert [e["frame"] for e in vanish] == [33]
    assert saved["files"]["report_html"].endswith("report.html")


def test_report_html_is_self_contained(reviewed):
    folder, _ = reviewed
    page = (folder / "report.html").read_text()
    assert "<script" not in page
    for ref in ("http://", "https://", "src='/", 'src="/'):
        assert ref not in page.replace("http://www.w3.org/2000/svg", "")
    assert "id='timeline'" in page and "class='thumb'" in page


def test_report_html_in_a_real_browser(reviewed):
    """Loads without a console error, shows the timeline and thumbnails that decode."""
    folder, _ = reviewed
    with Browser() as b:
        b.open(folder / "report.html")
        assert b.errors() == []
        width = b.evaluate("document.querySelector('#timeline').getBoundingClientRect().width")
        assert width > 300
        bars = b.evaluate("document.querySelectorAll('#timeline rect.det-face').length")
        assert bars > 10
        shown = b.evaluate("[...document.querySelectorAll('figure.thumb img')]"
                           ".filter(i => i.complete && i.naturalWidth > 0).length")
        assert shown >= 1
        outlined = b.evaluate("document.querySelectorAll('figure.thumb rect.region').length")
        assert outlined >= 1
        assert b.screenshot(width=1000, height=800)[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_browser_check_sees_console_errors(tmp_path):
    page = tmp_path / "bad.html"
    page.write_text("<!DOCTYPE html><html><body><script>console.error('boom');"
                    "undefinedFunction();</script></body></html>")
    with Browser() as b:
        b.open(page)
        errors = b.errors()
    assert any("boom" in e for e in errors) and len(errors) >= 2


def test_thumbnails_show_only_anonymized_pixels(reviewed, tmp_path):
    """A thumbnail is a frame of the output video: inside a blurred region its pixels
    are as smooth as the output's, not the detector's sharp checkerboard."""
    import base64

    import cv2

    folder, report = reviewed
    page = (folder / "report.html").read_text()
    first = page.split("data:image/jpeg;base64,")[1].split("'")[0]
    img = cv2.imdecode(np.frombuffer(base64.b64decode(first), np.uint8), cv2.IMREAD_COLOR)
    frame = int(page.split("<figure class='thumb' id='f")[1].split("'")[0])
    dets = json.loads((folder / "detections.json").read_text())["frames"][frame]["detections"]
    assert dets, "a flagged frame of this scene has a blurred region"
    x1, y1, x2, y2 = dets[0]["xyxy"]
    scale = img.shape[1] / report["input"]["width"]
    crop = img[int(y1 * scale) + 2:int(y2 * scale) - 2, int(x1 * scale) + 2:int(x2 * scale) - 2]
    grey = crop.astype(int).mean(axis=2)
    assert np.abs(np.diff(grey, axis=1)).max() < 60  # no checkerboard edges left


def test_thumbnails_of_a_rotated_video_are_upright_with_their_boxes(tmp_path):
    """A phone's portrait clip (frames stored sideways, a display rotation): the
    contact sheet shows it as a player does, boxes on the blurred regions."""
    import base64
    import re

    import av
    import cv2

    scene = write_scene(tmp_path / "scene.mp4")
    src = tmp_path / "portrait.mp4"
    with av.open(str(scene)) as a, av.open(str(src), "w") as b:
        out = b.add_stream_from_template(a.streams.video[0])
        out.set_display_rotation(90)
        for packet in a.demux(a.streams.video[0]):
            if packet.size:
                packet.stream = out
                b.mux(packet)
    settings = Settings(fill_frames=FILL, segment_frames=10, shape="box", batch_size=4,
                        crf=10, preset="ultrafast")
    report = run_local(src, tmp_path / "out" / "portrait.mp4", settings, stack=ScriptedStack())
    assert report["input"]["rotation"] == 90
    page = (tmp_path / "out" / "report.html").read_text(encoding="utf-8")
    first = page.split("data:image/jpeg;base64,")[1].split("'")[0]
    img = cv2.imdecode(np.frombuffer(base64.b64decode(first), np.uint8), cv2.IMREAD_COLOR)
    w, h = report["input"]["width"], report["input"]["height"]
    assert img.shape[0] > img.shape[1] and w > h  # stored landscape, shown portrait
    frame = int(page.split("<figure class='thumb' id='f")[1].split("'")[0])
    svg = page.split(f"id='f{frame}'")[1].split("</svg>")[0]
    assert f"viewBox='0 0 {h} {w}'" in svg
    a_, b_, c_, d_, e_, f_ = (float(v) for v in re.search(r"matrix\(([^)]*)\)", svg)[1].split())
    dets = json.loads((tmp_path / "out" / "detections.json").read_text(encoding="utf-8"))
    x1, y1, x2, y2 = dets["frames"][frame]["detections"][0]["xyxy"]
    corners = [(a_ * x + c_ * y + e_, b_ * x + d_ * y + f_) for x in (x1, x2) for y in (y1, y2)]
    xs, ys = [p[0] for p in corners], [p[1] for p in corners]
    shown = Detections([[min(xs), min(ys), max(xs), max(ys)]], [1.0], [FACE])
    assert shown.unrotated(1, w, h).xyxy[0].tolist() == pytest.approx([x1, y1, x2, y2], abs=1e-3)
    scale = img.shape[1] / h
    crop = img[int(min(ys) * scale) + 2:int(max(ys) * scale) - 2,
               int(min(xs) * scale) + 2:int(max(xs) * scale) - 2]
    assert crop.size
    grey = crop.astype(int).mean(axis=2)
    assert np.abs(np.diff(grey, axis=1)).max() < 60  # the box sits on the blurred region


def test_review_rebuilds_the_page_from_the_records(reviewed, tmp_path, capsys):
    folder, _ = reviewed
    copy = tmp_path / "records"
    shutil.copytree(folder, copy)
    (copy / "report.html").unlink()
    assert main(["review", str(copy)]) == 0
    page = (copy / "report.html").read_text()
    assert page.count("<figure class='thumb'") >= 1
    assert capsys.readouterr().out.strip().endswith("report.html")


def test_review_of_a_folder_without_records_is_one_line_error(tmp_path, capsys):
    assert main(["review", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("anonymize: error: ") and err.count("\n") == 1


def test_review_of_an_images_output_or_no_folder_says_what_it_is(tmp_path, capsys):
    """The output of `anonymize images` (blurred images, detections.pkl, report.html) was
    "detections.json not found: DIR must hold a run's records", as was a folder that
    does not exist."""
    import cv2

    photos = tmp_path / "photos"
    photos.mkdir()
    cv2.imwrite(str(photos / "a.jpg"), np.random.default_rng(0).integers(0, 255, (60, 80, 3),
                                                                          np.uint8))
    out = tmp_path / "out"
    assert main(["images", "--img-dir", str(photos), "--out-dir", str(out), "--no-plates"]) == 0
    assert (out / "report.html").is_file()
    capsys.readouterr()
    assert main(["review", str(out)]) == 2
    assert capsys.readouterr().err == (f"anonymize: error: {out} is the output of `anonymize "
                                       f"images`, whose page is written by `anonymize images` "
                                       f"itself (run it again to rebuild it); review rebuilds "
                                       f"the page of a video\n")
    assert main(["review", str(tmp_path / "nosuch")]) == 2
    assert capsys.readouterr().err == f"anonymize: error: folder not found: {tmp_path}/nosuch\n"


def test_image_folder_page(tmp_path):
    import cv2

    rng = np.random.default_rng(0)
    out = tmp_path / "out"
    out.mkdir()
    found = {}
    for i in range(3):
        cv2.imwrite(str(out / f"img{i}.png"), rng.integers(0, 255, (60, 80, 3), np.uint8))
        found[f"img{i}.png"] = box(10, 10, conf=0.55 if i == 1 else 0.9)
    page = write_image_page(out, found, {"source": "in", "output": str(out),
                                         "settings": {"face_thresh": 0.5, "mask_scale": 1.3}})
    text = page.read_text()
    assert "img1.png" in text and "weak" in text and text.count("<figure class='thumb'") == 3


def test_review_of_a_damaged_detections_file_names_it_in_one_line(reviewed, tmp_path, capsys):
    """An edited detections.json missing a frame's boxes gave a KeyError traceback."""
    folder, _ = reviewed
    copy = tmp_path / "records"
    shutil.copytree(folder, copy)
    (copy / "detections.json").write_text('{"frames": [{"frame_idx": 0}]}')
    assert main(["review", str(copy)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith(f"anonymize: error: {copy / 'detections.json'}: frame 0: ")


def test_review_refuses_a_video_that_is_not_the_runs_output(reviewed, tmp_path, capsys):
    """--video of another clip (or no video at all) was taken: its frames became the
    contact sheet under this run's boxes, exit 0."""
    folder, _ = reviewed
    other = make_video(tmp_path / "other.mp4", n_frames=4, width=64, height=48)
    assert main(["review", str(folder), "--video", str(other)]) == 2
    doc = json.loads((folder / "detections.json").read_text())
    assert capsys.readouterr().err.splitlines() == [
        f"anonymize: error: {other} is 64x48, but the detections are of a "
        f"{doc['width']}x{doc['height']} video: not this run's output"]
    notes = tmp_path / "notes.mp4"
    notes.write_text("not a video")
    assert main(["review", str(folder), "--video", str(notes)]) == 2
    assert capsys.readouterr().err.startswith(f"anonymize: error: not a video: {notes}")
    copy = tmp_path / "copy"  # the only video in the folder, when report.json names none
    shutil.copytree(folder, copy)
    report = json.loads((copy / "report.json").read_text())
    (copy / Path(report["output"]).name).unlink()
    (copy / "report.json").write_text(json.dumps({**report, "output": None}))
    shutil.copy(other, copy / "other.mp4")
    assert main(["review", str(copy)]) == 2
    assert capsys.readouterr().err.strip().endswith("not this run's output; give the output "
                                                    "with --video")


def test_review_finds_the_video_beside_the_records_of_a_several_job_download(reviewed,
                                                                            tmp_path):
    """`submit A B --wait -o DIR` downloads DIR/a.anonymized.mp4 with its records in
    DIR/a.anonymized/, and report.json names the s3:// output: review of that records
    folder could not tell which video was the output."""
    from anonymize.commands.review import find_video

    folder, _ = reviewed
    records = tmp_path / "a.anonymized"
    shutil.copytree(folder, records)
    report = json.loads((records / "report.json").read_text())
    (records / Path(report["output"]).name).rename(tmp_path / "a.anonymized.mp4")
    report["output"] = "s3://bucket/jobs/j/output.mp4"
    assert find_video(records, report, None) == (tmp_path / "a.anonymized.mp4").absolute()
    (records / "report.json").write_text(json.dumps(report))
    assert main(["review", str(records)]) == 0
    assert "<figure class='thumb'" in (records / "report.html").read_text()


def test_review_takes_the_video_in_the_folder_before_the_recorded_path(reviewed, tmp_path):
    """report.json records the output as the run was told it (here absolute; often
    relative to where it ran): a copy of the records was shown the original
    run's video instead of its own."""
    from anonymize.commands.review import find_video

    folder, _ = reviewed
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    report = json.loads((copy / "report.json").read_text())
    recorded = Path(report["output"])
    assert recorded.is_file() and not recorded.is_relative_to(copy)
    assert find_video(copy, report, None) == copy / recorded.name



def test_review_of_a_time_base_over_zero_is_one_line(reviewed, tmp_path, capsys):
    """A time base 1/0 passed the schema and failed the page with ZeroDivisionError."""
    folder, _ = reviewed
    copy = tmp_path / "records"
    shutil.copytree(folder, copy)
    doc = json.loads((copy / "detections.json").read_text())
    doc["time_base"] = "1/0"
    (copy / "detections.json").write_text(json.dumps(doc))
    assert main(["review", str(copy)]) == 2
    assert capsys.readouterr().err == (f"anonymize: error: {copy / 'detections.json'}: "
                                       f"time_base: '1/0' is not a fraction like 1/12800 "
                                       f"(denominator above 0)\n")



def test_review_reads_a_hand_edited_detections_file_as_render_does(reviewed, tmp_path):
    """README: an added box needs no confidence, and a box is removed by `disabled` or
    `remove`. Review of such a file failed with KeyError: 'confidence'."""
    from pipeline.review import frames_of

    folder, _ = reviewed
    copy = tmp_path / "records"
    shutil.copytree(folder, copy)
    doc = json.loads((copy / "detections.json").read_text())
    first, second = doc["frames"][0], doc["frames"][1]
    first["detections"].append({"label": "plate", "xyxy": [1, 1, 30, 9]})
    first["detections"][0]["disabled"] = True
    doc["remove"] = [second["detections"][0]["id"]]
    (copy / "detections.json").write_text(json.dumps(doc, indent=1))
    frames, _ = frames_of(doc)
    added = frames[first["frame_idx"]]
    assert added.xyxy.tolist()[-1] == [1, 1, 30, 9] and added.confidence[-1] == 1.0
    assert len(added) == len(first["detections"]) - 1
    assert len(frames[second["frame_idx"]]) == len(second["detections"]) - 1
    assert main(["review", str(copy)]) == 0


@pytest.mark.parametrize("text, expected", [
    ("[]", "not a run's report (a JSON object), but []"),
    ('{"output": "out.mp4", "input": "scene.mp4"}', 'input: "scene.mp4" is not a JSON object'),
    ('{"settings": {"fill_frames": "two"}}', 'settings.fill_frames: "two" is not a whole number'),
    ('{"input": {"rotation": 90.5}}', "input.rotation: 90.5 is not a whole number"),
    ('{"start_shift_s": "0.02"}', 'start_shift_s: "0.02" is not a JSON number'),
    ('{"start_shift_s": Infinity}', "start_shift_s: Infinity is not a JSON number"),
    ('{"output": "out.mp4",\n "input": {', "not valid JSON (line 2, column 12: Expecting "
                                            "property name enclosed in double quotes)"),
    (b'{"output": "caf\xe9.mp4"}', "not a JSON text file"),
])
def test_review_of_a_damaged_report_names_it_in_one_line(reviewed, tmp_path, capsys, text,
                                                        expected):
    """report.json that is not an object, or whose fields have other types, failed
    with an AttributeError traceback or a line naming neither file nor field."""
    folder, _ = reviewed
    copy = tmp_path / "records"
    shutil.copytree(folder, copy)
    (copy / "report.html").unlink()
    path = copy / "report.json"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    assert main(["review", str(copy)]) == 2
    assert capsys.readouterr().err == f"anonymize: error: {path}: {expected}\n"
    assert not (copy / "report.html").exists()


def test_review_refuses_the_runs_source_for_thumbnails(reviewed, tmp_path, capsys):
    """The run's source has the output's frame size, and here its name: records copied
    beside the source (the output left behind), or --video given the source, made a
    contact sheet of unblurred frames, exit 0."""
    folder, report = reviewed
    source = folder.parent / "scene.mp4"
    assert report["output_bytes"] == (folder / "scene.mp4").stat().st_size
    copy = tmp_path / "records"
    shutil.copytree(folder, copy)
    (copy / "report.html").unlink()
    shutil.copy(source, copy / "scene.mp4")  # the source where the output was
    size = source.stat().st_size
    assert main(["review", str(copy)]) == 2
    assert capsys.readouterr().err == (
        f"anonymize: error: {copy / 'scene.mp4'} has {size} bytes, but the run's output had "
        f"{report['output_bytes']}: not this run's output (its source?); give the output "
        f"with --video\n")
    assert main(["review", str(folder), "--video", str(source)]) == 2
    assert "not this run's output (its source?)\n" in capsys.readouterr().err
    assert not (copy / "report.html").exists()
    assert main(["review", str(copy), "--video", str(folder / "scene.mp4")]) == 0
