"""Evaluation: matching, coverage recall, dataset loading, the research pickle, the CLI.

Metric tests use hand-made boxes and a fake detection stack; only the test
marked ``models`` runs real detectors.
"""

from __future__ import annotations

import json
import math
import pickle
import struct
import subprocess
import sys
import types
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest

from models.detections import FACE, PLATE, TRUCK, Detections
from pipeline.datasets import (
    GTBox,
    ImageRecord,
    iter_samples,
    load_annotations,
    load_yolo_dir,
    read_image,
)
from pipeline.evaluate import (
    LabelCounts,
    blur_mask,
    covered_fraction,
    evaluate_dataset,
    evaluate_image,
    format_table,
    group_of_label,
    match_greedy,
    match_image,
    to_mdict,
)

ROOT = Path(__file__).resolve().parent.parent


def dets(*rows) -> Detections:
    """``dets((x1, y1, x2, y2, score, class_id), ...)``"""
    if not rows:
        return Detections.empty()
    arr = np.array(rows, dtype=np.float64)
    return Detections(arr[:, :4], arr[:, 4], arr[:, 5].astype(int))


def plates(*boxes) -> list[GTBox]:
    return [GTBox("plate", list(b)) for b in boxes]


# -- coverage ----------------------------------------------------------------------

def test_box_fully_covered_by_an_identical_detection():
    ev = evaluate_image(dets((10, 10, 30, 20, 0.9, PLATE)), plates((10, 10, 30, 20)),
                        50, 50, ["plate"], mask_scale=1.0)
    assert ev.coverage == [1.0]
    c = ev.counts["plate"]
    assert (c.gt, c.detections, c.tp, c.covered) == (1, 1, 1, 1)


@pytest.mark.parametrize("x2, covered", [(89, False), (91, True), (90, True)])
def test_coverage_needs_ninety_percent_of_the_area(x2, covered):
    gt = plates((0, 0, 100, 10))
    ev = evaluate_image(dets((0, 0, x2, 10, 0.9, PLATE)), gt, 40, 200, ["plate"], mask_scale=1.0)
    assert ev.coverage[0] == pytest.approx(x2 / 100)
    assert ev.counts["plate"].covered == int(covered)


def test_mask_scale_grows_the_blurred_region():
    gt = plates((15, 15, 35, 35))
    d = dets((20, 20, 30, 30, 0.9, PLATE))
    assert evaluate_image(d, gt, 50, 50, ["plate"], mask_scale=1.0).counts["plate"].covered == 0
    assert evaluate_image(d, gt, 50, 50, ["plate"], mask_scale=2.0).counts["plate"].covered == 1


def test_union_of_two_detections_covers_a_box_neither_matches():
    gt = plates((10, 10, 110, 20))
    d = dets((10, 0, 60, 30, 0.9, PLATE), (55, 0, 110, 30, 0.8, PLATE))
    ev = evaluate_image(d, gt, 40, 200, ["plate"], mask_scale=1.0)
    c = ev.counts["plate"]
    assert c.tp == 0 and c.covered == 1
    assert ev.matches == [(0, None), (1, None), (None, 0)]


def test_plate_coverage_ignores_vehicle_boxes_and_car_uses_every_vehicle_class():
    gt = [GTBox("plate", [40, 40, 60, 50]), GTBox("car", [0, 0, 100, 80])]
    d = dets((0, 0, 100, 80, 0.9, TRUCK))
    ev = evaluate_image(d, gt, 100, 120, ["plate", "car"], mask_scale=1.0)
    assert ev.counts["plate"].covered == 0  # inside the truck box, but trucks are not blurred
    assert ev.counts["car"].tp == 1 and ev.counts["car"].covered == 1
    assert ev.matches == [(0, 1), (None, 0)]


def test_blurred_region_is_clipped_and_rounded_outwards():
    mask = blur_mask(dets((-10, -10, 10, 10, 1.0, FACE)), 20, 30, mask_scale=1.0)
    assert mask.sum() == 100 and mask[:10, :10].all()
    # a pixel the box touches at all is rewritten by the blur step
    mask = blur_mask(dets((2.5, 3.2, 5.1, 4.0, 1.0, PLATE)), 20, 30, mask_scale=1.0)
    assert mask.sum() == 4 and mask[3, 2:6].all()


def test_ellipse_shape_leaves_face_box_corners_unblurred():
    gt = [GTBox("face", [30, 30, 70, 70])]
    d = dets((30, 30, 70, 70, 0.9, FACE))
    tight = evaluate_image(d, gt, 100, 100, ["face"], mask_scale=1.0, shape="ellipse")
    assert tight.coverage[0] == pytest.approx(math.pi / 4, abs=0.02)
    assert tight.counts["face"].covered == 0
    # grown by 1.5 the inscribed ellipse holds the whole original box ((1/1.5)^2 * 2 < 1)
    grown = evaluate_image(d, gt, 100, 100, ["face"], mask_scale=1.5, shape="ellipse")
    assert grown.coverage[0] == 1.0


def test_plates_stay_rectangles_whatever_the_shape():
    mask = blur_mask(dets((10, 10, 30, 20, 0.9, PLATE)), 40, 40, 1.0, shape="ellipse")
    assert mask.sum() == 200 and mask[10:20, 10:30].all()


@pytest.mark.parametrize("shape", ["box", "ellipse"])
def test_blur_mask_is_what_the_blur_step_rewrites(shape):
    """Coverage must measure the pixels pipeline/blur.py really anonymizes: the
    pixels that a solid fill turns black on a white frame."""
    from pipeline.blur import anonymize_frame

    rng = np.random.default_rng(0)
    xy = rng.uniform(-20, 110, size=(12, 2))
    wh = rng.uniform(1, 40, size=(12, 2))
    d = Detections(np.concatenate([xy, xy + wh], 1), rng.uniform(0.1, 1, 12),
                   rng.choice([FACE, PLATE], 12))
    for scale in (1.0, 1.3):
        white = np.full((90, 120, 3), 255, np.uint8)
        rewritten = (anonymize_frame(white, d, "solid", shape, scale) == 0).all(axis=2)
        assert rewritten.any()
        assert np.array_equal(blur_mask(d, 90, 120, scale, shape), rewritten)


def test_fractional_ground_truth_is_weighed_by_pixel_share():
    mask = np.zeros((4, 20), bool)
    mask[:, :5] = True
    # 9.5 px wide box: half of pixel 0 plus pixels 1..4 are blurred = 4.5 px
    assert covered_fraction(mask, [0.5, 0, 10, 1]) == pytest.approx(4.5 / 9.5)


def test_min_width_breakdown_counts_only_wide_boxes():
    gt = [GTBox("face", [0, 0, 10, 10]), GTBox("face", [50, 50, 70, 70])]
    d = dets((50, 50, 70, 70, 0.9, FACE))
    c = evaluate_image(d, gt, 100, 100, ["face"], mask_scale=1.0, min_width=16).counts["face"]
    assert (c.gt, c.covered, c.gt_min_width, c.covered_min_width) == (2, 1, 1, 1)
    s = c.summary()
    assert s["coverage_recall"] == 0.5 and s["coverage_recall_min_width"] == 1.0


# -- matching -----------------------------------------------------------------------

def test_duplicates_are_false_positives_and_the_higher_score_wins():
    gt = plates((10, 10, 50, 30))
    # the lower-scored detection is listed first and fits better: greedy goes by score
    d = dets((10, 10, 50, 30, 0.5, PLATE), (12, 10, 52, 30, 0.9, PLATE))
    ev = evaluate_image(d, gt, 100, 100, ["plate"], mask_scale=1.0)
    assert ev.matches == [(0, None), (1, 0)]
    s = ev.counts["plate"].summary()
    assert (s["tp"], s["fp"], s["fn"], s["precision"], s["recall"]) == (1, 1, 0, 0.5, 1.0)


def test_match_is_one_to_one_and_takes_best_free_ground_truth():
    gt = np.array([[0, 0, 10, 10], [8, 0, 18, 10]], float)
    det = np.array([[1, 0, 11, 10], [7, 0, 17, 10]], float)
    assert match_greedy(det, np.array([0.9, 0.8]), gt) == [0, 1]
    # below IoU 0.5 nothing matches
    assert match_greedy(np.array([[0, 0, 10, 4]], float), np.array([1.0]), gt) == [None]


def test_matches_are_those_of_the_boxes_the_pickle_stores():
    """A box 4.6 px wide over a 10 px one has IoU 0.46 as detected but 0.5 as
    stored in the pickle (whole pixels): the pickle's matches and the IoU
    metrics follow the stored box, so a reader recomputing them from the
    pickle agrees."""
    gt = [GTBox("plate", [0, 0, 10, 10])]
    found = dets((0, 0, 4.6, 10, 0.9, PLATE))
    ev = evaluate_image(found, gt, 20, 20, ["plate"])
    stored = to_mdict("x.png", found, gt, ev.matches)["det"][0]["box_points"]
    assert stored == [0, 0, 5, 10]
    assert ev.matches == [(0, 0)] and ev.counts["plate"].tp == 1
    assert ev.coverage == [pytest.approx(0.5)]  # coverage: the region blurred, 5 px wide


def test_no_detections():
    gt = plates((0, 0, 10, 10), (20, 20, 30, 30))
    ev = evaluate_image(Detections.empty(), gt, 50, 50, ["plate"])
    assert ev.matches == [(None, 0), (None, 1)]
    s = ev.counts["plate"].summary()
    assert s["detections"] == 0 and s["precision"] is None
    assert s["recall"] == 0.0 and s["coverage_recall"] == 0.0


def test_no_ground_truth():
    ev = evaluate_image(dets((0, 0, 10, 10, 0.9, PLATE)), [], 50, 50, ["plate"])
    assert ev.matches == [(0, None)] and ev.coverage == []
    s = ev.counts["plate"].summary()
    assert s["precision"] == 0.0 and s["fp"] == 1
    assert s["recall"] is None and s["coverage_recall"] is None


def test_labels_only_match_their_own_group():
    gt = [GTBox("face", [0, 0, 10, 10])]
    assert match_image(dets((0, 0, 10, 10, 0.9, PLATE)), gt) == [(0, None), (None, 0)]
    gt = [GTBox("license_plate", [0, 0, 10, 10])]
    assert match_image(dets((0, 0, 10, 10, 0.9, PLATE)), gt) == [(0, 0)]


@pytest.mark.parametrize("name", ["License Plate", "licence-plate", "number_plate", "LP",
                                  "Plate", " license  plate "])
def test_plate_label_spellings_of_common_exports_are_plates(name):
    assert group_of_label(name) == "plate"


@pytest.mark.parametrize("name, group", [
    ("Vehicle registration plate", "plate"), ("Human face", "face"),  # Open Images
    ("Land vehicle", "car"), ("Van", "car"), ("Taxi", "car"), ("Ambulance", "car"),
    ("registration_plate", "plate"), ("car_plate", "plate"), ("license-plates", "plate"),
    ("with_mask", "face"), ("without_mask", "face"), ("mask_weared_incorrect", "face"),
    ("Faces", "face"), ("plates", "plate"), ("cars", "car"), ("buses", "car"),
])
def test_labels_of_other_common_exports_are_evaluated(name, group):
    """Open Images' own class names (the street-photo set's source) and the
    face-mask sets' labels (a masked face is a face) were unrecognised: their
    boxes were counted as not evaluated, and plate recall came out of none."""
    assert group_of_label(name) == group


def test_labels_no_detector_finds_are_counted_not_evaluated(tmp_path):
    records = [ImageRecord(tmp_path / "a.png", [GTBox("person", [0, 0, 4, 4]),
                                                GTBox("Face", [1, 1, 5, 5]),
                                                GTBox("person", [2, 2, 6, 6])])]
    cv2.imwrite(str(tmp_path / "a.png"), np.zeros((8, 8, 3), np.uint8))
    metrics = evaluate_dataset(records, lambda imgs: [Detections.empty() for _ in imgs],
                               tmp_path / "out", "faces")
    assert metrics["unrecognised_labels"] == {"person": 2}
    assert metrics["labels"]["face"]["gt"] == 1


def test_counts_add_up_over_images():
    total = LabelCounts()
    total += LabelCounts(gt=2, detections=3, tp=1, covered=2)
    total += LabelCounts(gt=1, detections=0, tp=0, covered=0)
    s = total.summary()
    assert (s["gt"], s["detections"], s["precision"], s["recall"]) == (3, 3, 0.3333, 0.3333)
    assert s["coverage_recall"] == 0.6667
    assert total.summary(annotated=False)["precision"] is None


# -- datasets ----------------------------------------------------------------------

def write_image(path: Path, width: int, height: int) -> np.ndarray:
    rgb = np.zeros((height, width, 3), np.uint8)
    rgb[:, : width // 2] = (255, 0, 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), rgb[:, :, ::-1])
    return rgb


def test_yolo_txt_loading_maps_class_ids(tmp_path):
    img, anno = tmp_path / "img", tmp_path / "anno"
    write_image(img / "a.png", 200, 100)
    write_image(img / "b.png", 50, 50)  # no .txt: an image without objects
    (img / "._a.png").write_bytes(b"\x00\x05\x16\x07")  # macOS metadata, not an image
    (img / "holiday.jpg").mkdir()  # a folder, not an image
    anno.mkdir()
    (anno / "a.txt").write_text("15 0.5 0.5 0.2 0.4\n2 0.1 0.1 0.1 0.1\n0 0.25 0.25 0.1 0.2\n\n")
    records = load_yolo_dir(anno, img, {15: "plate", 0: "face"})
    samples = list(iter_samples(records))
    assert [s.name for s in samples] == ["a.png", "b.png"]
    a = samples[0]
    assert [b.label for b in a.gt] == ["plate", "face"]
    assert a.gt[0].xyxy == pytest.approx([80, 30, 120, 70])
    assert a.gt[1].xyxy == pytest.approx([40, 15, 60, 35])
    assert samples[1].gt == []
    with pytest.raises(ValueError):
        load_yolo_dir(anno, img, {})
    (anno / "b.txt").write_text("15 0.5 0.5 wide 0.4\n")
    with pytest.raises(ValueError, match=r"b\.txt: YOLO row 1 needs 'class cx cy w h'"):
        load_yolo_dir(anno, img, {15: "plate"})


def test_yolo_polygon_rows_are_read_as_the_box_around_them(tmp_path):
    """A segmentation export (Roboflow's or Ultralytics' 'YOLO segment' format)
    has rows 'class x1 y1 x2 y2 x3 y3 ...': its first four numbers were read as
    cx cy w h, a box of no relation to the object. Rows of more than six
    numbers are polygons, read as the box around their points, as Ultralytics
    reads them; a sixth number (a confidence) is still ignored."""
    img, anno = tmp_path / "img", tmp_path / "anno"
    write_image(img / "a.png", 200, 100)
    anno.mkdir()
    (anno / "a.txt").write_text("15 0.4 0.3 0.6 0.3 0.6 0.7 0.4 0.7\n"
                                "15 0.5 0.5 0.2 0.4 0.9\n")
    (sample,) = iter_samples(load_yolo_dir(anno, img, {15: "plate"}))
    assert [b.xyxy for b in sample.gt] == [pytest.approx([80, 30, 120, 70])] * 2
    (anno / "a.txt").write_text("15 0.4 0.3 0.6 0.3 0.6\n15 0.4 0.3 0.6 0.3 0.6 0.7 3\n")
    with pytest.raises(ValueError, match=r"a\.txt: YOLO row 2 .*polygon"):
        load_yolo_dir(anno, img, {15: "plate"})


def test_annotations_json_loading_and_clipping(tmp_path):
    write_image(tmp_path / "images" / "x.png", 60, 40)
    (tmp_path / "annotations.json").write_text(json.dumps({"images": [
        {"file": "images/x.png", "width": 60, "height": 40,
         "boxes": [{"label": "plate", "xyxy": [50, 30, 70, 45]},
                   {"label": "face", "xyxy": [70, 0, 80, 10]}]}]}))
    (sample,) = iter_samples(load_annotations(tmp_path))
    assert sample.name == "images/x.png" and sample.image.shape == (40, 60, 3)
    assert sample.image[0, 0].tolist() == [255, 0, 0]  # RGB, not BGR
    assert [(b.label, b.xyxy) for b in sample.gt] == [("plate", [50, 30, 60, 40])]


def exif_orientation_segment(orientation: int) -> bytes:
    """APP1 Exif segment holding only the Orientation tag (little-endian TIFF)."""
    ifd = struct.pack("<H", 1) + struct.pack("<HHIHH", 0x0112, 3, 1, orientation, 0)
    tiff = b"II*\x00" + struct.pack("<I", 8) + ifd + struct.pack("<I", 0)
    payload = b"Exif\x00\x00" + tiff
    return b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload


def test_exif_rotated_jpeg_is_read_as_stored(tmp_path):
    rgb = np.zeros((20, 40, 3), np.uint8)
    rgb[:, :20] = (255, 0, 0)
    ok, jpg = cv2.imencode(".jpg", rgb[:, :, ::-1])
    assert ok
    data = jpg.tobytes()
    path = tmp_path / "rotated.jpg"
    path.write_bytes(data[:2] + exif_orientation_segment(6) + data[2:])
    # the tag is really there: a plain decode turns the image upright
    assert cv2.imread(str(path)).shape == (40, 20, 3)
    image = read_image(path)
    assert image.shape == (20, 40, 3)
    assert image[10, 5, 0] > 200 and image[10, 35, 0] < 50


def tiff_with_orientation(rgb: np.ndarray, orientation: int) -> bytes:
    """An uncompressed RGB TIFF of ``rgb`` whose own Orientation tag (274) is
    ``orientation`` (OpenCV writes none)."""
    h, w, _ = rgb.shape
    pixels = rgb.tobytes()
    tags = [(256, 3, w), (257, 3, h), (258, 3, None), (259, 3, 1), (262, 3, 2), (273, 4, None),
            (274, 3, orientation), (277, 3, 3), (278, 3, h), (279, 4, len(pixels))]
    bits_at = 8 + 2 + 12 * len(tags) + 4
    data_at = bits_at + 6
    ifd = struct.pack("<H", len(tags))
    for tag, kind, value in tags:
        value = {258: bits_at, 273: data_at}.get(tag, value)
        count = 3 if tag == 258 else 1
        ifd += (struct.pack("<HHIHH", tag, kind, count, value, 0) if kind == 3 and tag != 258
                else struct.pack("<HHII", tag, kind, count, value))
    return (b"II*\x00" + struct.pack("<I", 8) + ifd + struct.pack("<I", 0)
            + struct.pack("<HHH", 8, 8, 8) + pixels)


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_a_tiff_with_an_orientation_is_read_as_stored(tmp_path, orientation):
    """OpenCV turns a TIFF by its own Orientation tag whatever the flags say
    (IMREAD_IGNORE_ORIENTATION is for EXIF): eval compared boxes given in the
    stored pixels with a turned picture, and warned of a size mismatch that
    was none. The stored pixels are read, as for a JPEG; upright on request."""
    from pipeline.images import orient

    rgb = np.zeros((20, 40, 3), np.uint8)
    rgb[:, :10] = (255, 0, 0)
    rgb[:5, :, 1] = 255
    path = tmp_path / "scan.tif"
    path.write_bytes(tiff_with_orientation(rgb, orientation))
    turned = cv2.imdecode(np.fromfile(path, np.uint8), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    assert np.array_equal(turned[:, :, ::-1], orient(rgb, orientation))  # as OpenCV reads it
    assert np.array_equal(read_image(path), rgb)
    assert np.array_equal(read_image(path, upright=True), orient(rgb, orientation))
    write_annotations(tmp_path, [{"file": "scan.tif", "width": 40, "height": 20, "boxes": []}])
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no 'annotated as 40x20 but decodes as 20x40'
        (sample,) = iter_samples(load_annotations(tmp_path))
    assert np.array_equal(sample.image, rgb)


def test_exif_rotated_jpeg_is_read_upright_when_asked_or_annotated_so(tmp_path):
    rgb = np.zeros((20, 40, 3), np.uint8)
    rgb[:, :20] = (255, 0, 0)
    data = cv2.imencode(".jpg", rgb[:, :, ::-1])[1].tobytes()
    (tmp_path / "images").mkdir()
    path = tmp_path / "images" / "rotated.jpg"
    path.write_bytes(data[:2] + exif_orientation_segment(6) + data[2:])
    assert read_image(path, upright=True).shape == (40, 20, 3)
    # a dataset annotated as a viewer shows the photo (20 wide, 40 high) is
    # evaluated on those pixels; one annotated as stored, on the stored ones
    for width, height in ((20, 40), (40, 20)):
        doc = {"images": [{"file": "images/rotated.jpg", "width": width, "height": height,
                           "boxes": [{"label": "face", "xyxy": [1, 1, 5, 5]}]}]}
        (tmp_path / "annotations.json").write_text(json.dumps(doc), encoding="utf-8")
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no "annotated as ... but decodes as" warning
            (sample,) = iter_samples(load_annotations(tmp_path))
        assert sample.image.shape == (height, width, 3)


def test_undecodable_image_is_a_user_error(tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    with pytest.raises(ValueError, match="cannot decode"):
        read_image(bad)


def write_annotations(root: Path, images: list) -> None:
    (root / "annotations.json").write_text(json.dumps({"images": images}), encoding="utf-8")


GOOD = {"file": "images/x.png", "boxes": [{"label": "face", "xyxy": [1, 1, 5, 5]}]}


@pytest.mark.parametrize("entry, message", [
    ({"boxes": []}, r"images\[1\] has no 'file' path"),
    ("images/y.png", r"images\[1\] is not an object"),
    ({"file": "images/x.png", "boxes": [{"label": "face", "xy": [1, 1, 5, 5]}]},
     r"images\[1\] \(images/x.png\): boxes\[0\] needs 'label' and 'xyxy'"),
    ({"file": "images/x.png", "boxes": [{"label": "face", "xyxy": [1, 1, 5]}]},
     r"boxes\[0\]: 'xyxy' must be 4 numbers"),
    ({"file": "images/x.png", "boxes": [{"label": "face", "xyxy": [1, 1, "a", 5]}]},
     r"boxes\[0\]: 'xyxy' must be 4 numbers"),
    ({"file": "images/x.png", "boxes": [{"label": "face", "xyxy": "1234"}]},
     r"images\[1\] \(images/x.png\): boxes\[0\]: 'xyxy' must be 4 numbers"),
    ({"file": "images/x.png", "boxes": [{"label": None, "xyxy": [1, 1, 5, 5]}]},
     r"images\[1\] \(images/x.png\): boxes\[0\] needs 'label' as text"),
    ({"file": "images/x.png", "boxes": [{"label": 15, "xyxy": [1, 1, 5, 5]}]},
     r"boxes\[0\] needs 'label' as text"),
    ({"file": "images/x.png", "boxes": {"label": "face"}}, r"'boxes' is not a list"),
    ({"file": "images/x.png", "width": "wide"}, r"'width' must be a positive whole number"),
    ({"file": "images/x.png", "height": 0}, r"'height' must be a positive whole number"),
])
def test_malformed_annotation_is_an_error_naming_the_entry(tmp_path, entry, message):
    """Never a KeyError traceback, never a box silently dropped (a 3-number box
    used to be read as a box and clipped away)."""
    write_image(tmp_path / "images" / "x.png", 20, 20)
    write_annotations(tmp_path, [GOOD, entry])
    with pytest.raises(ValueError, match=message) as err:
        load_annotations(tmp_path)
    assert "\n" not in str(err.value) and "annotations.json" in str(err.value)


def test_listed_images_that_are_missing_are_refused_before_any_decoding(tmp_path):
    write_image(tmp_path / "images" / "x.png", 20, 20)
    write_annotations(tmp_path, [GOOD, {"file": "images/gone.png"}, {"file": "images/lost.png"}])
    with pytest.raises(FileNotFoundError, match="2 of the 3 images listed") as err:
        load_annotations(tmp_path)
    assert str(tmp_path / "images" / "gone.png") in str(err.value)


def test_a_file_path_written_with_backslashes_is_read(tmp_path):
    """annotations.json written on Windows names 'images\\x.png': on Linux and
    macOS that is one file name with a backslash in it, so every image was
    'not found'. Where no such file is there, the backslashes are read as the
    folder separators they were; the pickle keeps the name as listed."""
    write_image(tmp_path / "images" / "x.png", 20, 20)
    write_annotations(tmp_path, [{"file": "images\\x.png", "boxes": []}])
    (record,) = load_annotations(tmp_path)
    assert record.path == tmp_path / "images" / "x.png" and record.name == "images\\x.png"


def test_box_with_swapped_corners_is_kept_in_order(tmp_path):
    write_image(tmp_path / "images" / "x.png", 20, 20)
    write_annotations(tmp_path, [{"file": "images/x.png", "width": 20.0, "height": 20,
                                  "boxes": [{"label": "face", "xyxy": [9, 8, 2, 3]}]}])
    (rec,) = load_annotations(tmp_path)
    assert rec.width == 20 and rec.boxes[0].xyxy == [2, 3, 9, 8]
    (sample,) = iter_samples([rec])
    assert sample.gt[0].xyxy == [2, 3, 9, 8]

@pytest.mark.parametrize("row", [
    "15 320 240 64 32",       # pixel coordinates: the box lay off the image, dropped
    "15 0.5 0.5 -0.2 0.1",    # negative width: corners swapped, dropped
    "15 0.5 0.5 0 0.1",       # no width
    "15 -0.3 0.5 0.2 0.1",    # centre left of the image
])
def test_yolo_row_that_is_not_normalised_is_an_error_naming_the_row(tmp_path, row):
    """Such a row's box was clipped away (or to a sliver) without a word, so a
    set annotated in pixels evaluated as one with no plates."""
    img, anno = tmp_path / "img", tmp_path / "anno"
    write_image(img / "a.png", 64, 48)
    anno.mkdir()
    (anno / "a.txt").write_text(f"15 0.5 0.5 0.2 0.4\n\n{row} extra\n7 320 240 64 32\n")
    with pytest.raises(ValueError, match=r"a\.txt: YOLO row 3 is not a box normalised") as err:
        load_yolo_dir(anno, img, {15: "plate"})
    assert "\n" not in str(err.value)
    # a class no label is mapped to is not read; a box past the edge is clipped
    (anno / "a.txt").write_text("15 0.98 0.5 0.1 1.0\n7 320 240 64 32\n")
    (sample,) = iter_samples(load_yolo_dir(anno, img, {15: "plate"}))
    assert sample.gt[0].xyxy == pytest.approx([59.52, 0, 64, 48])


def test_a_png_cut_short_is_named_so_and_libpng_prints_nothing(tmp_path, capfd):
    """A PNG cut short (an interrupted copy) is not decoded, as before, but
    libpng added its own 'libpng error: PNG input buffer is incomplete' line on
    stderr beside the one warning line; a whole PNG, an APNG and a JPEG are read."""
    write_image(tmp_path / "whole.png", 40, 30)
    data = (tmp_path / "whole.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[:len(data) // 2])
    (tmp_path / "no-end.png").write_bytes(data[:-12])  # all but the IEND chunk
    for name in ("cut.png", "no-end.png"):
        with pytest.raises(ValueError, match=r"cannot decode image: .* \(a PNG cut short"):
            read_image(tmp_path / name)
    assert read_image(tmp_path / "whole.png").shape == (30, 40, 3)
    assert "libpng" not in capfd.readouterr().err


def test_a_jpeg_cut_short_is_named_so(tmp_path):
    """OpenCV decodes no JPEG that ends early (a copy from a phone cut short),
    where a viewer shows its top part: it is left out, as before, but the
    warning said only 'cannot decode image', which reads like a file that is
    not an image at all."""
    write_image(tmp_path / "whole.jpg", 40, 30)
    data = (tmp_path / "whole.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[:len(data) * 9 // 10])
    with pytest.raises(ValueError, match=r"cannot decode image: .*cut\.jpg \(a JPEG cut short: "
                                         r"its end is missing\)$"):
        read_image(tmp_path / "cut.jpg")
    (tmp_path / "text.jpg").write_bytes(b"not a picture")
    with pytest.raises(ValueError, match=r"cannot decode image: .*text\.jpg$"):
        read_image(tmp_path / "text.jpg")
    (tmp_path / "empty.jpg").write_bytes(b"")  # a copy that never began
    with pytest.raises(ValueError, match=r"cannot decode image: .*empty\.jpg \(an empty file\)$"):
        read_image(tmp_path / "empty.jpg")


def test_an_image_over_opencvs_pixel_limit_is_undecodable_not_a_traceback(tmp_path):
    """A PNG whose header claims 40000x30000 pixels (a gigapixel panorama, or a
    'decompression bomb' of a megabyte) made OpenCV raise its size assertion,
    which stopped the whole folder (images, faces, eval) with a traceback."""
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    header = struct.pack(">IIBBBBB", 40000, 30000, 8, 0, 0, 0, 0)
    (tmp_path / "huge.png").write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
                                        + chunk(b"IDAT", zlib.compress(b"\0" * 40001))
                                        + chunk(b"IEND", b""))
    with pytest.raises(ValueError, match=r"cannot decode image: .*huge\.png \(more than "
                                         r"\d+ megapixels, the most decoded here") as err:
        read_image(tmp_path / "huge.png")
    assert "\n" not in str(err.value)


def test_two_images_sharing_one_yolo_annotation_file_are_refused(tmp_path):
    """x.jpg and x.png both took x.txt's boxes, right for one of them at most."""
    img, anno = tmp_path / "img", tmp_path / "anno"
    write_image(img / "x.png", 20, 20)
    write_image(img / "x.jpg", 20, 20)
    anno.mkdir()
    with pytest.warns(UserWarning, match="no annotation row"):
        assert len(load_yolo_dir(anno, img, {15: "plate"})) == 2  # no x.txt: no boxes, no doubt
    (anno / "x.txt").write_text("15 0.5 0.5 0.2 0.4\n")
    with pytest.raises(ValueError, match=r"x\.jpg and x\.png .* share the annotation file"):
        load_yolo_dir(anno, img, {15: "plate"})


def test_an_image_listed_twice_is_refused_naming_both_entries(tmp_path):
    """Listed twice (two exports merged), an image's boxes and detections were
    all counted twice."""
    write_image(tmp_path / "images" / "x.png", 20, 20)
    write_annotations(tmp_path, [GOOD, {"file": "images/y.png"},
                                 {"file": "images/./x.png", "boxes": []}])
    write_image(tmp_path / "images" / "y.png", 20, 20)
    with pytest.raises(ValueError, match=r"images\[2\] \(images/./x.png\) is the image "
                                         r"images\[0\] \(images/x.png\)") as err:
        load_annotations(tmp_path)
    assert "\n" not in str(err.value)


def test_annotation_files_with_a_byte_order_mark_are_read(tmp_path):
    """UTF-8 with a BOM (Notepad, PowerShell 5's utf8) was refused: annotations.json
    as 'Unexpected UTF-8 BOM', a YOLO .txt as a bad row 1."""
    write_image(tmp_path / "images" / "x.png", 20, 20)
    (tmp_path / "annotations.json").write_text(json.dumps({"images": [GOOD]}),
                                               encoding="utf-8-sig")
    (rec,) = load_annotations(tmp_path)
    assert rec.boxes[0].xyxy == [1, 1, 5, 5]
    anno = tmp_path / "anno"
    anno.mkdir()
    (anno / "x.txt").write_text("15 0.5 0.5 0.2 0.4\n", encoding="utf-8-sig")
    (rec,) = load_yolo_dir(anno, tmp_path / "images", {15: "plate"})
    assert [b.label for b in rec.boxes] == ["plate"]


def test_undecodable_image_is_left_out_reported_and_fails_the_command(tmp_path, monkeypatch,
                                                                      capsys):
    from anonymize.cli import main

    make_dataset(tmp_path / "ds")
    (tmp_path / "ds" / "images" / "cut.png").write_bytes(
        (tmp_path / "ds" / "images" / "a.png").read_bytes()[:40])
    doc = json.loads((tmp_path / "ds" / "annotations.json").read_text())
    doc["images"].insert(1, {"file": "images/cut.png",
                             "boxes": [{"label": "plate", "xyxy": [1, 1, 9, 9]}]})
    (tmp_path / "ds" / "annotations.json").write_text(json.dumps(doc))
    monkeypatch.setitem(sys.modules, "pipeline.detect", types.SimpleNamespace(DetectionStack=FakeStack))
    import models.resolve

    monkeypatch.setattr(models.resolve, "check_settings", lambda settings, fetched=True: None)
    rc = main(["eval", "--dataset", str(tmp_path / "ds"), "--out-dir", str(tmp_path / "out"),
               "--mode", "two-stage", "--batch-size", "1", "--device", "cpu"])
    assert rc == 1
    saved = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert saved["images"] == 2
    assert [u["file"] for u in saved["undecodable"]] == ["images/cut.png"]
    assert saved["labels"]["plate"]["gt"] == 1  # the left-out image's plate is not counted
    err = capsys.readouterr().err
    assert "cannot decode image" in err and "cut.png (a PNG cut short" in err
    assert "left out" in err


# -- evaluation run with a fake stack ----------------------------------------------------

def make_dataset(root: Path) -> None:
    write_image(root / "images" / "a.png", 100, 60)
    write_image(root / "images" / "b.png", 80, 80)
    (root / "annotations.json").write_text(json.dumps({"images": [
        {"file": "images/a.png", "width": 100, "height": 60,
         "boxes": [{"label": "plate", "xyxy": [10, 10, 40, 20]},
                   {"label": "car", "xyxy": [0, 0, 60, 50]}]},
        {"file": "images/b.png", "width": 80, "height": 80, "boxes": []},
    ], "source": "test", "license": "test"}))


class FakeStack:
    """Answers by image size: a plate and a truck on a.png, a stray plate on b.png."""

    calls: list[int] = []

    def __init__(self, settings=None, device=None, faces=None, plates=None):
        self.settings, self.device, self.faces, self.plates = settings, device or "cpu", faces, plates

    @classmethod
    def from_settings(cls, settings, device=None, faces=None, plates=None):
        return cls(settings, device, faces, plates)

    def detect(self, frames):
        FakeStack.calls.append(len(frames))
        out = []
        for f in frames:
            if f.shape[:2] == (60, 100):
                out.append(dets((11, 10, 41, 20, 0.87, PLATE), (0, 0, 60, 50, 0.5, TRUCK)))
            else:
                out.append(dets((5, 5, 15, 10, 0.3, PLATE)))
        return out


def test_pickle_and_metrics_format(tmp_path):
    make_dataset(tmp_path / "ds")
    out = tmp_path / "out"
    metrics = evaluate_dataset(load_annotations(tmp_path / "ds"), FakeStack().detect, out,
                               "two-stage", mask_scale=1.3, batch_size=1, progress=False,
                               draw_dir=out / "drawn", meta={"models": {"plate": "p"},
                                                             "timing": {"load_s": 1.5}})
    with open(out / "two-stage_mdict_list.pkl", "rb") as f:
        mdicts = pickle.load(f)
    assert isinstance(mdicts, list) and len(mdicts) == 2
    a, b = mdicts
    assert set(a) == {"det", "filename", "gt", "matches"}
    assert a["filename"] == "images/a.png"
    assert a["det"] == [
        {"name": "plate", "percentage_probability": pytest.approx(87.0), "box_points": [11, 10, 41, 20]},
        {"name": "truck", "percentage_probability": pytest.approx(50.0), "box_points": [0, 0, 60, 50]},
    ]
    assert a["gt"] == [{"bbox": [10, 10, 40, 20], "class": "plate"},
                       {"bbox": [0, 0, 60, 50], "class": "car"}]
    assert a["matches"] == [(0, 0), (1, 1)]
    assert b["gt"] == [] and b["matches"] == [(0, None)]

    saved = json.loads((out / "metrics.json").read_text())
    assert saved == json.loads(json.dumps(metrics))
    assert saved["images"] == 2 and saved["mode"] == "two-stage"
    assert saved["models"] == {"plate": "p"}
    assert saved["timing"]["load_s"] == 1.5 and "detect_s" in saved["timing"]
    assert saved["evaluation"]["mask_scale"] == 1.3
    plate = saved["labels"]["plate"]
    assert (plate["gt"], plate["detections"], plate["tp"]) == (1, 2, 1)
    assert (plate["precision"], plate["recall"], plate["coverage_recall"]) == (0.5, 1.0, 1.0)
    assert saved["labels"]["car"]["recall"] == 1.0
    assert sorted(p.name for p in (out / "drawn").iterdir()) == ["images__a.jpg", "images__b.jpg"]
    table = format_table(saved)
    assert "plate" in table and "car" in table


def test_drawn_images_never_replace_one_another(tmp_path):
    """images/a.jpg and images/a.png (or x/a.png and x__a.png) would both be
    drawn as images__a.jpg; each gets its own file, the first keeps the
    usual name."""
    root = tmp_path / "ds"
    names = ["images/a.png", "images/a.jpg", "images__a.png", "b.png"]
    for i, name in enumerate(names):
        write_image(root / name, 40 + 10 * i, 30)
    write_annotations(root, [{"file": name, "boxes": []} for name in names])
    out = tmp_path / "out"
    evaluate_dataset(load_annotations(root), FakeStack().detect, out, "two-stage",
                     batch_size=2, progress=False, draw_dir=out / "drawn")
    drawn = {p.name: cv2.imread(str(p)).shape[1] for p in (out / "drawn").iterdir()}
    assert drawn == {"images__a.jpg": 40, "images__a.jpg.jpg": 50, "images__a.png.jpg": 60,
                     "b.jpg": 70}


def test_label_the_dataset_never_annotates_has_no_rates(tmp_path):
    make_dataset(tmp_path / "ds")
    metrics = evaluate_dataset(load_annotations(tmp_path / "ds"), FakeStack().detect,
                               tmp_path / "out", "faces", progress=False)
    face = metrics["labels"]["face"]
    assert face["annotated"] is False and face["precision"] is None and face["gt"] == 0


def test_cli_runs_the_stack_it_is_given(tmp_path, monkeypatch, capsys):
    """The command wires flags into Settings and the stack (detection faked)."""
    from anonymize.cli import main

    make_dataset(tmp_path / "ds")
    seen = {}

    class Recording(FakeStack):
        @classmethod
        def from_settings(cls, settings, device=None, faces=None, plates=None):
            seen.update(settings=settings, faces=faces, plates=plates, device=device)
            return cls(settings, device, faces, plates)

    monkeypatch.setitem(sys.modules, "pipeline.detect",
                        types.SimpleNamespace(DetectionStack=Recording))
    import models.resolve

    # the model settings are checked before any image is read (no weights needed here)
    monkeypatch.setattr(models.resolve, "check_settings",
                        lambda settings, fetched=True: seen.update(checked=settings))
    FakeStack.calls = []
    rc = main(["eval", "--dataset", str(tmp_path / "ds"), "--out-dir", str(tmp_path / "out"),
               "--mode", "one-stage", "--lp-thresh", "0.25", "--mask-scale", "1.1",
               "--batch-size", "2", "--device", "cpu"])
    assert rc == 0
    s = seen["settings"]
    assert seen["checked"] is s
    assert (s.faces, s.plates, s.plate_mode) == (False, "one-stage", "one-stage")
    assert (s.lp_thresh, s.mask_scale, s.batch_size) == (0.25, 1.1, 2)
    assert FakeStack.calls == [2]
    saved = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert list(saved["labels"]) == ["plate"]
    assert saved["settings"]["lp_thresh"] == 0.25 and saved["evaluation"]["mask_scale"] == 1.1
    assert (tmp_path / "out" / "one-stage_mdict_list.pkl").exists()
    assert "plate" in capsys.readouterr().out


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "anonymize", "eval", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def test_one_yolo_class_id_for_two_labels_is_refused(tmp_path, capsys):
    """--plate-class-id 15 --face-class-id 15 would read every class-15 box as
    a face and lose the plates."""
    from anonymize.cli import main

    for d in ("anno", "img"):
        (tmp_path / d).mkdir()
    write_image(tmp_path / "img" / "a.png", 20, 20)
    (tmp_path / "anno" / "a.txt").write_text("15 0.5 0.5 0.2 0.1\n", encoding="utf-8")
    assert main(["eval", "--anno-dir", str(tmp_path / "anno"), "--img-dir", str(tmp_path / "img"),
                 "--plate-class-id", "15", "--face-class-id", "15", "--mode", "one-stage",
                 "--out-dir", str(tmp_path / "out"), "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["anonymize: error: class id 15 is given for both --plate-class-id and "
                   "--face-class-id; give each label its own id"]
    assert not (tmp_path / "out").exists()


def test_cli_missing_dataset_dir_is_a_one_line_error(tmp_path):
    proc = run_cli("--dataset", str(tmp_path / "nowhere"), "--out-dir", str(tmp_path / "out"))
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "dataset directory not found" in lines[0], proc.stderr
    assert not (tmp_path / "out").exists()


def test_cli_draw_into_a_drawn_that_is_a_file_is_refused_before_models_load(
        tmp_path, capsys, monkeypatch):
    """OUT/drawn a file: --draw ended in a FileExistsError traceback once the
    model had loaded."""
    from anonymize.cli import main
    from pipeline import detect

    make_dataset(tmp_path / "ds")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "drawn").write_text("x")
    monkeypatch.setattr(detect.DetectionStack, "from_settings",
                        classmethod(lambda cls, s: pytest.fail("a model was loaded")))
    assert main(["eval", "--dataset", str(tmp_path / "ds"), "--out-dir", str(tmp_path / "out"),
                 "--mode", "one-stage", "--draw"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("anonymize: error: --draw folder"), err


def test_cli_without_a_dataset_is_a_one_line_error(tmp_path):
    proc = run_cli("--out-dir", str(tmp_path / "out"))
    assert proc.returncode != 0
    assert len(proc.stderr.strip().splitlines()) == 1 and "--dataset" in proc.stderr


@pytest.mark.models
def test_cli_warns_in_one_line_of_its_own(tmp_path):
    """A warning of the project's own (an image whose size is not the annotated
    one) reaches the user as one ``anonymize: warning:`` line naming the image,
    on a line of its own beside the progress bar, not as Python's two-line form."""
    make_dataset(tmp_path / "ds")
    ann = json.loads((tmp_path / "ds" / "annotations.json").read_text())
    ann["images"][1]["width"] = 90  # b.png is 80×80
    (tmp_path / "ds" / "annotations.json").write_text(json.dumps(ann))
    proc = run_cli("--dataset", str(tmp_path / "ds"), "--out-dir", str(tmp_path / "out"),
                   "--mode", "one-stage", "--device", "cpu")
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = [part for line in proc.stderr.splitlines() for part in line.split("\r")]
    warned = [line for line in lines if "annotated as" in line]
    assert len(warned) == 1, proc.stderr
    assert warned[0].startswith("anonymize: warning: ") and "b.png" in warned[0], warned
    assert "UserWarning" not in proc.stderr and "warnings.warn" not in proc.stderr


# -- real detectors -----------------------------------------------------------------------

@pytest.mark.models
@pytest.mark.slow
def test_real_stack_covers_us_plates(tmp_path, data_dir):
    out = tmp_path / "out"
    proc = run_cli("--dataset", str(data_dir / "plates_openalpr_us"), "--out-dir", str(out),
                   "--mode", "one-stage", "--limit", "10", "--device", "cpu")
    assert proc.returncode == 0, proc.stderr[-2000:]
    metrics = json.loads((out / "metrics.json").read_text())
    plate = metrics["labels"]["plate"]
    assert metrics["images"] == 10 and plate["gt"] == 10
    # the reference runtime covers 0.98 of this set at lp_thresh 0.1
    assert plate["coverage_recall"] >= 0.8, plate
    with open(out / "one-stage_mdict_list.pkl", "rb") as f:
        assert len(pickle.load(f)) == 10


@pytest.mark.parametrize("width", ["-5", "nan"])
def test_negative_min_width_is_refused(tmp_path, capsys, width):
    """--min-width -5 ran and printed a cov(w>=-5) column, every box counted."""
    from anonymize.cli import main

    assert main(["eval", "--dataset", str(tmp_path / "ds"), "--out-dir", str(tmp_path / "out"),
                 "--min-width", width]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"anonymize: error: --min-width must be 0 or more pixels, got {width}"]
    assert not (tmp_path / "out").exists()


def test_yolo_class_ids_that_match_no_row_are_named(tmp_path):
    """--plate-class-id 3 on rows of class 15 (or -1) evaluated against no plate at all
    and reported 'gt 0' without a word."""
    from pipeline.datasets import load_yolo_dir

    for d in ("anno", "img"):
        (tmp_path / d).mkdir()
    write_image(tmp_path / "img" / "a.png", 20, 20)
    (tmp_path / "anno" / "a.txt").write_text("15 0.5 0.5 0.2 0.1\n0 0.2 0.2 0.1 0.1\n",
                                             encoding="utf-8")
    with pytest.warns(UserWarning, match=r"no annotation row in .* has class id 3 \(the plate "
                                         r"id\): no plate box is evaluated; the rows' class ids "
                                         r"are 0, 15"):
        records = load_yolo_dir(tmp_path / "anno", tmp_path / "img", {3: "plate", 0: "face"})
    assert [b.label for b in records[0].boxes] == ["face"]
    with pytest.raises(ValueError, match=r"^class id -1 \(plate\): YOLO class ids are 0 or "
                                         r"more$"):
        load_yolo_dir(tmp_path / "anno", tmp_path / "img", {-1: "plate"})


def test_yolo_annotations_without_their_image_are_named(tmp_path):
    """Boxes of a .txt whose image is not in --img-dir (another extension's
    stem, a file left behind) were not evaluated, and nothing said so; a
    .txt that is no annotation file (LabelImg's classes.txt) or that holds
    no box of a mapped class is not named."""
    from pipeline.datasets import load_yolo_dir

    for d in ("anno", "img"):
        (tmp_path / d).mkdir()
    write_image(tmp_path / "img" / "a.png", 20, 20)
    rows = "15 0.5 0.5 0.2 0.1\n"
    for stem in ("a", "b", "c"):
        (tmp_path / "anno" / f"{stem}.txt").write_text(rows, encoding="utf-8")
    (tmp_path / "anno" / "d.txt").write_text("0 0.5 0.5 0.2 0.1\n", encoding="utf-8")
    (tmp_path / "anno" / "classes.txt").write_text("plate\nface\n", encoding="utf-8")
    with pytest.warns(UserWarning) as warned:
        records = load_yolo_dir(tmp_path / "anno", tmp_path / "img", {15: "plate"})
    assert [str(w.message) for w in warned] == [
        f"2 annotation files in {tmp_path / 'anno'} have boxes but no image in "
        f"{tmp_path / 'img'} (first: b.txt); their boxes are not evaluated"]
    assert [r.name for r in records] == ["a.png"]


def test_boxes_with_no_area_in_their_image_are_counted_and_named(tmp_path, monkeypatch, capsys):
    """A box wholly outside its image (annotated on a larger original than the
    stored copy, say) or of no width was dropped from the ground truth in
    silence: recall was measured over fewer boxes than annotated, and nothing
    said so. They are listed in metrics.json and counted in one warning line;
    a box reaching past the edge is still clipped and evaluated."""
    from anonymize.cli import main

    root = tmp_path / "ds"
    write_image(root / "images" / "a.png", 100, 60)
    write_annotations(root, [{"file": "images/a.png", "boxes": [
        {"label": "plate", "xyxy": [10, 10, 40, 20]},
        {"label": "plate", "xyxy": [90, 50, 130, 70]},    # clipped to [90, 50, 100, 60]
        {"label": "plate", "xyxy": [300, 200, 340, 220]},  # outside
        {"label": "plate", "xyxy": [20, 30, 20, 40]},      # no width
    ]}])
    monkeypatch.setitem(sys.modules, "pipeline.detect",
                        types.SimpleNamespace(DetectionStack=FakeStack))
    import models.resolve

    monkeypatch.setattr(models.resolve, "check_settings", lambda settings, fetched=True: None)
    assert main(["eval", "--dataset", str(root), "--out-dir", str(tmp_path / "out"),
                 "--mode", "one-stage", "--device", "cpu"]) == 0
    saved = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert saved["labels"]["plate"]["gt"] == 2
    assert saved["boxes_without_area"] == [
        {"file": "images/a.png", "label": "plate", "xyxy": [300, 200, 340, 220]},
        {"file": "images/a.png", "label": "plate", "xyxy": [20, 30, 20, 40]}]
    warned = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert warned == ["anonymize: warning: 2 annotated boxes have no area inside their image "
                      "(outside it, or no width or height) and are not evaluated; first: "
                      "images/a.png plate [300, 200, 340, 220]"], warned
