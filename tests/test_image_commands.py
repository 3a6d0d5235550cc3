"""`anonymize faces` and `anonymize images` on a real image folder."""

import pickle

import cv2
import numpy as np
import pytest

from anonymize.cli import main
from pipeline.datasets import read_image

pytestmark = pytest.mark.models


def test_faces_writes_research_pickle_and_blurs(data_dir, tmp_path, checkpoint):
    checkpoint("retinaface-mobilenet0.25")
    frames = data_dir / "faces_dlib_examples" / "images"
    assert main(["faces", "--frames-dir", str(frames), "--save-dir", str(tmp_path),
                 "--quiet", "--device", "cpu"]) == 0
    faces = pickle.loads((tmp_path / "faces.pkl").read_bytes())
    assert len(faces) == 9 and sum(len(v["bbox"]) for v in faces.values()) >= 40
    name, entry = next(iter(faces.items()))
    assert set(entry) == {"frame_idx", "face_id", "image_path", "bbox", "confidence"}
    assert name.endswith(".jpg") and entry["image_path"] == [name] * len(entry["bbox"])
    # the first face region of that frame lost its detail
    src = read_image(name)
    out = read_image(tmp_path / name.rsplit("/", 1)[-1])
    x1, y1, x2, y2 = (int(v) for v in entry["bbox"][0])
    assert out[y1:y2, x1:x2].std() < src[y1:y2, x1:x2].std()
    assert np.array_equal(out.shape, src.shape)


def test_images_writes_imageai_detections(data_dir, tmp_path, checkpoint):
    for name in ("retinaface-mobilenet0.25", "plate-yolov8n-pyplatex"):
        checkpoint(name)
    folder = data_dir / "faces_dlib_examples" / "images"
    assert main(["images", "--img-dir", str(folder), "--out-dir", str(tmp_path), "--quiet",
                 "--plates", "one-stage", "--device", "cpu"]) == 0
    rows = pickle.loads((tmp_path / "detections.pkl").read_bytes())
    assert len(rows) == 9 and all(set(r) == {"filename", "det"} for r in rows)
    det = next(d for r in rows for d in r["det"])
    assert set(det) == {"name", "percentage_probability", "box_points"}
    assert 0 <= det["percentage_probability"] <= 100
    assert len(list(tmp_path.glob("*.jpg"))) == 9


def test_images_turns_exif_rotated_photos_upright_and_finds_their_faces(data_dir, tmp_path):
    """A phone photo stored sideways with an EXIF orientation: detection runs on
    the upright picture, which is what is written (without EXIF) and what the
    detections refer to."""
    from models.detections import Detections, label_id
    from pipeline.datasets import load_annotations
    from pipeline.evaluate import blur_mask, covered_fraction
    from tests.test_evaluate import exif_orientation_segment

    root = data_dir / "faces_dlib_examples"
    (record,) = [r for r in load_annotations(root) if r.name.endswith("2007_007763.jpg")]
    upright = read_image(record.path)
    stored = np.ascontiguousarray(np.rot90(upright, 1))  # orientation 6 turns it back
    data = cv2.imencode(".jpg", stored[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes()
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "phone.jpg").write_bytes(data[:2] + exif_orientation_segment(6) + data[2:])
    assert main(["images", "--img-dir", str(folder), "--out-dir", str(tmp_path / "out"),
                 "--quiet", "--no-plates", "--device", "cpu"]) == 0
    out = read_image(tmp_path / "out" / "phone.jpg")
    assert out.shape == upright.shape
    assert read_image(tmp_path / "out" / "phone.jpg", upright=True).shape == upright.shape
    (row,) = pickle.loads((tmp_path / "out" / "detections.pkl").read_bytes())
    found = Detections([d["box_points"] for d in row["det"]],
                       [d["percentage_probability"] / 100 for d in row["det"]],
                       [label_id(d["name"]) for d in row["det"]])
    mask = blur_mask(found, *upright.shape[:2], mask_scale=1.3)
    for gt in record.boxes:
        assert covered_fraction(mask, gt.xyxy) >= 0.9, gt.xyxy


def test_an_undecodable_file_is_left_out_with_a_warning_and_the_rest_is_done(
        data_dir, tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    good = data_dir / "faces_dlib_examples" / "images" / "2008_001009.jpg"
    (folder / "a_good.jpg").write_bytes(good.read_bytes())
    (folder / "b_broken.jpg").write_bytes(good.read_bytes()[:2000])
    (folder / "c_text.png").write_text("not an image\n", encoding="utf-8")
    out = tmp_path / "out"
    assert main(["images", "--img-dir", str(folder), "--out-dir", str(out), "--quiet",
                 "--no-plates", "--device", "cpu"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert [line.split(": ")[1] for line in err] == ["warning"] * 2
    assert "b_broken.jpg (a JPEG cut short: its end is missing); left out" in err[0]
    assert "c_text.png; left out" in err[1]
    assert sorted(p.name for p in out.iterdir()) == ["a_good.jpg", "detections.pkl",
                                                     "report.html"]
    rows = pickle.loads((out / "detections.pkl").read_bytes())
    assert [r["filename"] for r in rows] == ["a_good.jpg"] and rows[0]["det"]
    assert "b_broken.jpg" in (out / "report.html").read_text(encoding="utf-8")


def test_an_image_the_output_folder_will_not_take_is_left_out_with_a_warning(
        data_dir, tmp_path, capsys):
    """A name near the 255-byte limit is written (its temporary name is
    shortened); a folder in the way of an output gives one warning line for
    that image, never a traceback, and the others are still written."""
    photo = (data_dir / "faces_dlib_examples" / "images" / "2008_001009.jpg").read_bytes()
    folder, out = tmp_path / "in", tmp_path / "out"
    folder.mkdir()
    long_name = "写真" * 40 + ".jpg"  # 244 bytes
    for name in (long_name, "b_blocked.jpg", "c_good.jpg"):
        (folder / name).write_bytes(photo)
    (out / "b_blocked.jpg").mkdir(parents=True)
    assert main(["images", "--img-dir", str(folder), "--out-dir", str(out), "--quiet",
                 "--no-plates", "--device", "cpu"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("anonymize: warning: could not write")
    assert "b_blocked.jpg: Is a directory; left out" in err[0]
    assert (out / long_name).is_file() and (out / "c_good.jpg").is_file()
    rows = pickle.loads((out / "detections.pkl").read_bytes())
    assert sorted(r["filename"] for r in rows) == ["c_good.jpg", long_name]
    assert not [p for p in out.iterdir() if ".partial-" in p.name]


def test_grey_and_transparent_images_keep_their_channels(data_dir, tmp_path):
    src = cv2.imread(str(data_dir / "faces_dlib_examples" / "images" / "2008_001009.jpg"))
    folder = tmp_path / "in"
    folder.mkdir()
    alpha = np.tile(np.linspace(0, 255, src.shape[1], dtype=np.uint8), (src.shape[0], 1))
    cv2.imwrite(str(folder / "grey.png"), cv2.cvtColor(src, cv2.COLOR_BGR2GRAY))
    cv2.imwrite(str(folder / "cutout.png"), np.dstack([src, alpha]))
    assert main(["images", "--img-dir", str(folder), "--out-dir", str(tmp_path / "out"),
                 "--quiet", "--no-plates", "--device", "cpu"]) == 0
    grey = cv2.imread(str(tmp_path / "out" / "grey.png"), cv2.IMREAD_UNCHANGED)
    cutout = cv2.imread(str(tmp_path / "out" / "cutout.png"), cv2.IMREAD_UNCHANGED)
    assert grey.shape == src.shape[:2]
    assert cutout.shape == (*src.shape[:2], 4) and np.array_equal(cutout[:, :, 3], alpha)
    rows = {r["filename"]: r["det"] for r in
            pickle.loads((tmp_path / "out" / "detections.pkl").read_bytes())}
    assert rows["grey.png"] and rows["cutout.png"]  # faces found and blurred in both
    x1, y1, x2, y2 = rows["cutout.png"][0]["box_points"]
    assert cutout[y1:y2, x1:x2, :3].std() < src[y1:y2, x1:x2].std()


def _chunks(path) -> dict[int, bytes]:
    _, kinds, chunks = cv2.imdecodeWithMetadata(np.fromfile(path, np.uint8), cv2.IMREAD_UNCHANGED)
    return {int(k): bytes(np.asarray(c, np.uint8).ravel()) for k, c in zip(np.asarray(kinds).ravel(),
                                                                            chunks, strict=True)}


def test_images_keep_their_colour_profile_and_drop_exif(data_dir, tmp_path):
    """A photo's ICC profile says what its pixel values mean (a phone's Display
    P3): written back without it, the blurred photo is shown in duller
    colours. The profile stays where it fits the output's channels; EXIF
    (camera, time, GPS) never does."""
    with_profile = _chunks(data_dir / "plates_openalpr_us" / "images" / "car7.jpg")
    profile, exif = with_profile[cv2.IMAGE_METADATA_ICCP], with_profile[cv2.IMAGE_METADATA_EXIF]
    assert profile[16:20] == b"RGB "
    src = cv2.imread(str(data_dir / "faces_dlib_examples" / "images" / "2008_001009.jpg"))
    folder = tmp_path / "in"
    folder.mkdir()
    for name, image in (("photo.jpg", src), ("photo.png", src), ("photo.webp", src),
                        ("grey.jpg", cv2.cvtColor(src, cv2.COLOR_BGR2GRAY))):
        ok, data = cv2.imencodeWithMetadata(
            "." + name.rsplit(".", 1)[1], image,
            [cv2.IMAGE_METADATA_ICCP, cv2.IMAGE_METADATA_EXIF][:1 + name.endswith(".jpg")],
            [np.frombuffer(profile, np.uint8), np.frombuffer(exif, np.uint8)][:1 + name.endswith(".jpg")])
        assert ok
        data.tofile(str(folder / name))
    assert cv2.IMAGE_METADATA_EXIF in _chunks(folder / "photo.jpg")
    assert main(["images", "--img-dir", str(folder), "--out-dir", str(tmp_path / "out"),
                 "--quiet", "--no-plates", "--device", "cpu"]) == 0
    for name in ("photo.jpg", "photo.png", "photo.webp"):
        assert _chunks(tmp_path / "out" / name) == {cv2.IMAGE_METADATA_ICCP: profile}, name
    # an RGB profile does not describe grey pixels: left out
    assert _chunks(tmp_path / "out" / "grey.jpg") == {}


def test_a_transparent_image_with_an_exif_orientation_keeps_its_alpha_turned_along(
        data_dir, tmp_path):
    """A PNG's eXIf orientation turns its colour upright on reading; the alpha
    plane written back must turn with it (all eight orientations), not stay
    as stored or be dropped when the turn swaps width and height."""
    import struct
    import zlib

    src = cv2.imread(str(data_dir / "faces_dlib_examples" / "images" / "2008_001009.jpg"))
    h, w = src.shape[:2]
    alpha = (np.add.outer(np.arange(h), 2 * np.arange(w)) % 251).astype(np.uint8)  # no symmetry
    upright = np.dstack([src, alpha])
    stored_as = {2: lambda a: a[:, ::-1], 3: lambda a: a[::-1, ::-1], 4: lambda a: a[::-1],
                 5: lambda a: a.swapaxes(0, 1), 6: lambda a: np.rot90(a, 1),
                 7: lambda a: a[::-1, ::-1].swapaxes(0, 1), 8: lambda a: np.rot90(a, -1)}
    folder = tmp_path / "in"
    folder.mkdir()
    for o, turn in stored_as.items():
        png = cv2.imencode(".png", np.ascontiguousarray(turn(upright)))[1].tobytes()
        exif = (b"MM\x00*" + struct.pack(">IH", 8, 1) + struct.pack(">HHIHH", 0x0112, 3, 1, o, 0)
                + struct.pack(">I", 0))
        chunk = (struct.pack(">I", len(exif)) + b"eXIf" + exif
                 + struct.pack(">I", zlib.crc32(b"eXIf" + exif)))
        (folder / f"o{o}.png").write_bytes(png[:33] + chunk + png[33:])  # after IHDR
        assert cv2.imread(str(folder / f"o{o}.png")).shape == src.shape  # read upright
    assert main(["images", "--img-dir", str(folder), "--out-dir", str(tmp_path / "out"),
                 "--quiet", "--no-plates", "--device", "cpu"]) == 0
    for o in stored_as:
        out = cv2.imread(str(tmp_path / "out" / f"o{o}.png"), cv2.IMREAD_UNCHANGED)
        assert out.shape == upright.shape, o
        assert np.array_equal(out[:, :, 3], alpha), o


def test_folder_listing_leaves_out_hidden_files_and_an_output_folder_inside(tmp_path):
    from pipeline.images import list_images

    folder = tmp_path / "photos"
    for rel in ("a.jpg", "sub/b.PNG", "._a.jpg", ".thumbs/c.jpg", "blurred/a.jpg",
                "blurred/.a.partial-1234.jpg", "blurred/detections.pkl", "notes.txt"):
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_bytes(b"x")
    (folder / "folder.jpg").mkdir()
    passed_over: list = []
    names = [p.relative_to(folder).as_posix()
             for p in list_images(folder, folder / "blurred", passed_over)]
    assert names == ["a.jpg", "sub/b.PNG"]
    assert passed_over == [folder / "blurred" / "a.jpg"]
    # without an output folder inside, its files are images like the others
    assert len(list_images(folder)) == 3


@pytest.mark.parametrize("command, folder_flag, out_flag", [
    ("images", "--img-dir", "--out-dir"), ("faces", "--frames-dir", "--save-dir")])
def test_output_folder_that_is_the_image_folder_is_refused_before_work(
        data_dir, tmp_path, capsys, command, folder_flag, out_flag):
    folder = tmp_path / "in"
    folder.mkdir()
    photo = data_dir / "faces_dlib_examples" / "images" / "2008_001009.jpg"
    (folder / "a.jpg").write_bytes(photo.read_bytes())
    same = tmp_path / "in" / "." if command == "faces" else folder
    assert main([command, folder_flag, str(folder), out_flag, str(same), "--quiet",
                 "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "originals would be overwritten" in err[0]
    assert (folder / "a.jpg").read_bytes() == photo.read_bytes()
    assert sorted(p.name for p in folder.iterdir()) == ["a.jpg"]


@pytest.mark.parametrize("img_rel, out_rel, refusal", [
    ("lib/new", "lib", "holds the image folder"),
    ("photos", "photos/2024", "already holds files, but no detections.pkl or faces.pkl"),
])
def test_an_output_folder_where_outputs_could_replace_originals_is_refused(
        data_dir, tmp_path, capsys, img_rel, out_rel, refusal):
    """An output folder above the image folder, or inside it with photos of
    its own, would get blurred copies over originals (and, inside, its own
    photos would silently not be anonymized): refused before any work."""
    photos = sorted((data_dir / "faces_dlib_examples" / "images").glob("*.jpg"))
    for rel, photo in (("lib/a.jpg", photos[0]), ("lib/new/a.jpg", photos[1]),
                       ("photos/a.jpg", photos[2]), ("photos/2024/a.jpg", photos[3])):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(photo.read_bytes())
    before = {p: p.read_bytes() for p in tmp_path.rglob("*.jpg")}
    assert main(["images", "--img-dir", str(tmp_path / img_rel), "--out-dir",
                 str(tmp_path / out_rel), "--quiet", "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("anonymize: error:") and refusal in err[0]
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before


def test_an_earlier_runs_output_inside_the_image_folder_is_run_into_again_with_a_warning(
        data_dir, tmp_path, capsys):
    folder = tmp_path / "photos"
    folder.mkdir()
    photo = data_dir / "faces_dlib_examples" / "images" / "2008_001009.jpg"
    (folder / "a.jpg").write_bytes(photo.read_bytes())
    args = ["images", "--img-dir", str(folder), "--out-dir", str(folder / "blurred"), "--quiet",
            "--no-plates", "--device", "cpu"]
    assert main(args) == 0
    assert capsys.readouterr().err == ""
    assert main(args) == 0  # its own outputs are not blurred again, and it says so
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("anonymize: warning: the output folder")
    assert "holds 1 image of an earlier run; it is not" in err[0]
    rows = pickle.loads((folder / "blurred" / "detections.pkl").read_bytes())
    assert [r["filename"] for r in rows] == ["a.jpg"]


def test_an_empty_folder_is_refused_before_models_load(tmp_path, capsys):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "notes.txt").write_text("no pictures here\n", encoding="utf-8")
    assert main(["images", "--img-dir", str(tmp_path / "in"), "--out-dir", str(tmp_path / "out"),
                 "--quiet", "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("anonymize: error: no images in")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("command,flags", [("images", ("--img-dir", "--out-dir")),
                                           ("faces", ("--frames-dir", "--save-dir"))])
def test_an_image_given_as_the_folder_is_named_as_such(tmp_path, capsys, command, flags):
    """A photo given as --img-dir was reported as "image folder not found", though it
    is there."""
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(b"")
    assert main([command, flags[0], str(photo), flags[1], str(tmp_path / "out"),
                 "--quiet"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"anonymize: error: image folder {photo} is a file, not a folder: give the folder "
        f"that holds it"]


def test_other_image_formats_are_anonymized_and_nothing_is_passed_over_in_silence(
        data_dir, tmp_path, capsys):
    """JFIF, GIF and PPM files are blurred and written back in their format; a
    multi-page TIFF (only its first page would be written) and a phone HEIC
    (not readable here) are left out, each with a warning, and the command
    fails; an all-left-out folder still gets its detections file."""
    src = cv2.imread(str(data_dir / "faces_dlib_examples" / "images" / "2008_001009.jpg"))
    folder = tmp_path / "in"
    folder.mkdir()
    ok, jpeg = cv2.imencode(".jpg", src)
    (folder / "a.jfif").write_bytes(jpeg.tobytes())
    cv2.imwrite(str(folder / "b.gif"), src)
    cv2.imwrite(str(folder / "c.ppm"), src)
    assert cv2.imwritemulti(str(folder / "pages.tif"), [src, src[::-1].copy()])
    (folder / "phone.heic").write_bytes(b"\x00\x00\x00\x18ftypheic" + bytes(64))
    out = tmp_path / "out"
    assert main(["images", "--img-dir", str(folder), "--out-dir", str(out), "--quiet",
                 "--no-plates", "--device", "cpu"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith("anonymize: warning:") for line in err)
    assert "pages.tif holds 2 pictures" in err[0]
    assert "phone.heic" in err[1] and ".heic files are not read here" in err[1]
    rows = {r["filename"]: r["det"] for r in pickle.loads((out / "detections.pkl").read_bytes())}
    assert sorted(rows) == ["a.jfif", "b.gif", "c.ppm"]
    assert sorted(p.name for p in out.iterdir()) == ["a.jfif", "b.gif", "c.ppm", "detections.pkl",
                                                     "report.html"]
    assert (out / "a.jfif").read_bytes()[:3] == b"\xff\xd8\xff"  # still a JPEG
    assert (out / "b.gif").read_bytes()[:4] == b"GIF8"
    for name in rows:
        assert rows[name], name  # faces found
        back = cv2.imread(str(out / name))
        assert back.shape == src.shape
        if name.endswith(".gif"):
            continue  # a GIF's fixed palette is dithered: texture of its own everywhere
        x1, y1, x2, y2 = rows[name][0]["box_points"]
        assert back[y1:y2, x1:x2].std() < src[y1:y2, x1:x2].std(), name


def test_progress_counts_every_file_of_the_folder_left_out_ones_included(data_dir, tmp_path):
    from pipeline.detect import DetectionStack
    from pipeline.images import anonymize_folder
    from pipeline.settings import Settings

    folder = tmp_path / "in"
    folder.mkdir()
    good = (data_dir / "faces_dlib_examples" / "images" / "2008_001009.jpg").read_bytes()
    for name in ("a.jpg", "c.jpg", "e.jpg"):
        (folder / name).write_bytes(good)
    for name in ("b.jpg", "d.jpg", "f.jpg"):  # between, inside and after the batches
        (folder / name).write_bytes(good[:1000])
    settings = Settings(plates="off", device="cpu", threads=1, batch_size=2)
    steps: list[int] = []
    skipped: list = []
    found = anonymize_folder(folder, tmp_path / "out", DetectionStack.from_settings(settings),
                             settings, steps.append, skipped)
    assert sorted(found) == ["a.jpg", "c.jpg", "e.jpg"] and len(skipped) == 3
    assert sum(steps) == 6 and all(n > 0 for n in steps)


@pytest.mark.parametrize("command, folder_flag, out_flag", [
    ("images", "--img-dir", "--out-dir"), ("faces", "--frames-dir", "--save-dir")])
def test_a_file_name_that_is_not_utf8_is_anonymized_like_the_others(
        data_dir, tmp_path, command, folder_flag, out_flag):
    """b'caf\\xe9.jpg' (Latin-1, from an old camera or share) reaches Python
    with a surrogate escape; OpenCV's path functions crash the process on
    such a name, so the command runs in a process of its own here."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    photo = (data_dir / "faces_dlib_examples" / "images" / "2008_001009.jpg").read_bytes()
    folder, out = tmp_path / "in", tmp_path / "out"
    folder.mkdir()
    latin1 = os.fsencode(folder) + b"/caf\xe9.jpg"
    with open(latin1, "wb") as f:
        f.write(photo)
    (folder / "ok.jpg").write_bytes(photo)
    done = subprocess.run([sys.executable, "-m", "anonymize", command, folder_flag, str(folder),
                           out_flag, str(out), "--quiet", "--device", "cpu"],
                          cwd=Path(__file__).resolve().parent.parent, capture_output=True)
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    assert {b"caf\xe9.jpg", b"ok.jpg"} <= set(os.listdir(os.fsencode(out)))
    blurred = read_image(os.fsdecode(os.fsencode(out) + b"/caf\xe9.jpg"))
    assert blurred.shape == read_image(folder / "ok.jpg").shape
    assert not np.array_equal(blurred, read_image(folder / "ok.jpg"))  # faces blurred
    if command == "images":
        assert "caf\\xe9.jpg" in (out / "report.html").read_text(encoding="utf-8")


def test_face_pickle_numbers_frames_in_natural_order_counting_undecodable_ones(
        data_dir, tmp_path, capsys):
    """frame_idx is the frame's place in the folder: frame_10 after frame_2
    (natural order), and a frame that does not decode keeps its place, so
    the frames after it keep theirs."""
    photo = (data_dir / "faces_dlib_examples" / "images" / "2008_001009.jpg").read_bytes()
    folder = tmp_path / "frames"
    folder.mkdir()
    for n in (1, 2, 3, 10):
        (folder / f"frame_{n}.jpg").write_bytes(photo if n != 2 else photo[:100])
    out = tmp_path / "out"
    assert main(["faces", "--frames-dir", str(folder), "--save-dir", str(out), "--quiet",
                 "--device", "cpu"]) == 1
    assert "frame_2.jpg" in capsys.readouterr().err
    faces = pickle.loads((out / "faces.pkl").read_bytes())
    assert {name.rsplit("/", 1)[-1]: v["frame_idx"] for name, v in faces.items()} == {
        "frame_1.jpg": 0, "frame_3.jpg": 2, "frame_10.jpg": 3}
    assert [name.rsplit("/", 1)[-1] for name in faces] == [
        "frame_1.jpg", "frame_3.jpg", "frame_10.jpg"]


def test_linked_folders_are_searched_once_and_a_broken_link_is_reported(
        data_dir, tmp_path, capsys):
    """A sub-folder reached through a symbolic link is anonymized like the
    others (a link back to an ancestor does not loop); a link to an image
    that is gone is named in a warning line, never passed over in silence."""
    photo = (data_dir / "faces_dlib_examples" / "images" / "2008_001009.jpg").read_bytes()
    folder, events = tmp_path / "in", tmp_path / "events"
    folder.mkdir()
    events.mkdir()
    (folder / "top.jpg").write_bytes(photo)
    (events / "party.jpg").write_bytes(photo)
    (folder / "linked").symlink_to(events, target_is_directory=True)
    (events / "back").symlink_to(folder, target_is_directory=True)  # a loop
    (folder / "gone.jpg").symlink_to(tmp_path / "deleted.jpg")
    out = tmp_path / "out"
    assert main(["images", "--img-dir", str(folder), "--out-dir", str(out), "--quiet",
                 "--no-plates", "--device", "cpu"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("anonymize: warning: cannot read image:")
    assert "gone.jpg (a link to" in err[0] and "which does not exist); left out" in err[0]
    rows = pickle.loads((out / "detections.pkl").read_bytes())
    assert [r["filename"] for r in rows] == ["linked/party.jpg", "top.jpg"]
    assert (out / "linked" / "party.jpg").is_file()


def test_an_image_opencv_cannot_read_gets_one_warning_line_and_no_opencv_lines(tmp_path):
    """A float TIFF (a scientific or HDR export) is left out with the command's
    one warning line; OpenCV's own two '[ WARN:0@...] global grfmt_tiff.cpp'
    lines came with it, and a picture an encoder refuses (a 30x20 .jp2) came
    with three '[ERROR:...]' lines of OpenCV's."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    (tmp_path / "in").mkdir()
    cv2.imwrite(str(tmp_path / "in" / "ok.png"), np.zeros((8, 8, 3), np.uint8))
    assert cv2.imwrite(str(tmp_path / "in" / "float.tif"), np.zeros((8, 8, 3), np.float32))
    (tmp_path / "in" / "small.jp2").write_bytes(
        cv2.imencode(".png", np.zeros((20, 30, 3), np.uint8))[1].tobytes())
    env = {k: v for k, v in os.environ.items() if k != "OPENCV_LOG_LEVEL"}
    proc = subprocess.run([sys.executable, "-m", "anonymize", "images", "--img-dir",
                           str(tmp_path / "in"), "--out-dir", str(tmp_path / "out"), "--quiet",
                           "--plates", "off"], capture_output=True, text=True,
                          env=env, cwd=Path(__file__).resolve().parent.parent)
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 2 and all(x.startswith("anonymize: warning:") for x in lines), lines
    assert "float.tif" in lines[0] and "small.jp2" in lines[1]
    assert (tmp_path / "out" / "ok.png").is_file()


def test_an_image_its_encoder_refuses_is_left_out_with_the_real_reason(tmp_path, capsys):
    """A 30x20 .jp2 (OpenJPEG encodes nothing under 32 px a side) and a .pgm
    holding a colour PNG are left out, as before, but the warning said there was
    'no .jp2 encoder here', which there is. (The .jp2 holds PNG bytes: OpenCV
    cannot write a small JPEG 2000 to start from; it is read by content.)"""
    (tmp_path / "in").mkdir()
    small = np.full((20, 30, 3), 100, np.uint8)
    (tmp_path / "in" / "small.jp2").write_bytes(cv2.imencode(".png", small)[1].tobytes())
    (tmp_path / "in" / "colour.pgm").write_bytes(cv2.imencode(".png", small)[1].tobytes())
    cv2.imwrite(str(tmp_path / "in" / "ok.png"), small)
    assert main(["images", "--img-dir", str(tmp_path / "in"), "--out-dir", str(tmp_path / "out"),
                 "--quiet", "--plates", "off"]) == 1
    warned = [line for line in capsys.readouterr().err.splitlines()
              if line.startswith("anonymize: warning:")]
    assert len(warned) == 2 and all("encoder here" not in line for line in warned), warned
    assert "cannot encode this 30x20 3-channel picture as .jp2" in warned[1], warned
    assert "as .pgm" in warned[0], warned
    assert sorted(p.name for p in (tmp_path / "out").iterdir() if not p.name.endswith(
        (".pkl", ".html"))) == ["ok.png"]


def test_a_run_stopped_before_its_records_can_be_run_again_into_its_folder(tmp_path):
    """Ctrl-C (or a crash) after some images but before detections.pkl left an
    output folder inside the image folder that every later run refused ('already
    holds files, but no detections.pkl ...'): the run marks the folder first."""
    from models.detections import Detections
    from pipeline.images import anonymize_folder, list_images
    from pipeline.settings import Settings

    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(3):
        cv2.imwrite(str(photos / f"p{i}.jpg"), np.full((16, 16, 3), 60 * i, np.uint8))

    class StoppedAfterOneBatch:
        calls = 0

        def detect(self, images):
            self.calls += 1
            if self.calls > 1:
                raise KeyboardInterrupt
            return [Detections.empty() for _ in images]

    out = photos / "anon"
    with pytest.raises(KeyboardInterrupt):
        anonymize_folder(photos, out, StoppedAfterOneBatch(), Settings(batch_size=1))
    assert (out / "p0.jpg").is_file() and not (out / "detections.pkl").exists()
    assert [p.name for p in list_images(photos, out)] == ["p0.jpg", "p1.jpg", "p2.jpg"]
    (photos / "mine").mkdir()  # a folder of photos that is not a run's is still refused
    cv2.imwrite(str(photos / "mine" / "x.jpg"), np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(ValueError, match="already holds files"):
        list_images(photos, photos / "mine")


def test_a_sub_folder_that_cannot_be_read_is_named_and_counted(data_dir, tmp_path, monkeypatch,
                                                               capsys):
    """A sub-folder without read permission was skipped in silence: its photos
    were neither blurred nor mentioned, exit 0. Root reads every folder, so the
    refusal is the operating system's error, raised where os.walk lists it."""
    import os
    import shutil

    folder = tmp_path / "in"
    (folder / "locked").mkdir(parents=True)
    photo = data_dir / "faces_dlib_examples" / "images" / "2008_001009.jpg"
    shutil.copy(photo, folder / "open.jpg")
    shutil.copy(photo, folder / "locked" / "hidden.jpg")
    scandir = os.scandir

    def refusing(path=".", *args):
        if os.fspath(path).endswith("locked"):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return scandir(path, *args)

    monkeypatch.setattr(os, "scandir", refusing)
    out = tmp_path / "out"
    assert main(["images", "--img-dir", str(folder), "--out-dir", str(out), "--quiet",
                 "--no-plates", "--device", "cpu"]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err == [f"anonymize: warning: folder {folder / 'locked'} could not be read "
                   "(Permission denied); its images are left out"]
    assert (out / "open.jpg").is_file() and not (out / "locked").exists()
    monkeypatch.setattr(os, "scandir", lambda path=".", *a: (_ for _ in ()).throw(
        PermissionError(13, "Permission denied", os.fspath(path))))
    assert main(["images", "--img-dir", str(folder), "--out-dir", str(tmp_path / "o2"),
                 "--quiet", "--no-plates", "--device", "cpu"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"anonymize: error: cannot read the image folder {folder}: Permission denied"]


@pytest.mark.parametrize("out_rel, refusal", [
    ("events", "is the folder linked from the image folder as"),
    ("shared", "holds the folder linked from the image folder as"),
])
def test_an_output_folder_that_a_linked_sub_folder_reaches_is_refused(
        data_dir, tmp_path, capsys, out_rel, refusal):
    """Linked sub-folders are searched like the others, so their target holds
    originals too: with it (or a folder above it) as the output folder,
    in/top.jpg was blurred over the original events/top.jpg, which the run had
    just read through in/linked/top.jpg."""
    photos = sorted((data_dir / "faces_dlib_examples" / "images").glob("*.jpg"))
    folder, events = tmp_path / "in", tmp_path / "shared" / "events"
    folder.mkdir()
    events.mkdir(parents=True)
    (folder / "top.jpg").write_bytes(photos[0].read_bytes())
    (events / "top.jpg").write_bytes(photos[1].read_bytes())
    (folder / "linked").symlink_to(events, target_is_directory=True)
    before = {p: p.read_bytes() for p in tmp_path.rglob("*.jpg")}
    out = events if out_rel == "events" else tmp_path / "shared"
    assert main(["images", "--img-dir", str(folder), "--out-dir", str(out), "--quiet",
                 "--no-plates", "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("anonymize: error:") and refusal in err[0], err
    assert f"{folder / 'linked'}" in err[0]
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before


def test_an_output_folder_inside_a_linked_sub_folder_is_treated_as_inside_the_image_folder(
        tmp_path):
    """An output folder inside a linked sub-folder's target is reached by the
    listing through the link: it must be new, empty or an earlier run's, and
    its images are not listed again (a second run blurred its own outputs)."""
    from pipeline.images import list_images

    folder, events = tmp_path / "in", tmp_path / "events"
    folder.mkdir()
    (events / "anon").mkdir(parents=True)
    for p in (folder / "a.jpg", events / "b.jpg", events / "anon" / "b.jpg"):
        p.write_bytes(b"x")
    (folder / "linked").symlink_to(events, target_is_directory=True)
    with pytest.raises(ValueError, match="already holds files"):
        list_images(folder, events / "anon")
    (events / "anon" / "detections.pkl").write_bytes(b"x")  # an earlier run's output
    passed_over: list = []
    assert [p.relative_to(folder).as_posix() for p in
            list_images(folder, events / "anon", passed_over)] == ["a.jpg", "linked/b.jpg"]
    assert passed_over == [folder / "linked" / "anon" / "b.jpg"]


def test_an_image_of_more_pixels_than_a_photo_has_is_left_out_before_it_is_decoded(tmp_path):
    """A 100-byte PNG may claim 17000x17000 pixels (a decompression bomb; a real
    one of one colour is 1 MB for a gigapixel): OpenCV's own limit is 2^30
    pixels, and a 32000x32000 one took 11 GB before its detection began. Images
    over 2^28 pixels (268 megapixels, above every camera's photos) are left out
    as they are read, in one warning line that says how to allow them."""
    import os
    import struct
    import subprocess
    import sys
    import zlib
    from pathlib import Path

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data)))

    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "bomb.png").write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 17000, 17000, 8, 0, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(bytes(17001))) + chunk(b"IEND", b""))
    cv2.imwrite(str(folder / "ok.png"), np.zeros((8, 8, 3), np.uint8))
    env = {k: v for k, v in os.environ.items() if k != "OPENCV_IO_MAX_IMAGE_PIXELS"}
    args = [sys.executable, "-m", "anonymize", "images", "--img-dir", str(folder), "--quiet",
            "--plates", "off"]
    root = Path(__file__).resolve().parent.parent
    proc = subprocess.run(args + ["--out-dir", str(tmp_path / "out")], capture_output=True,
                          text=True, env=env, cwd=root)
    assert proc.returncode == 1, proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("anonymize: warning: cannot decode image:") and "bomb.png" in line
    assert "more than 268 megapixels" in line and "OPENCV_IO_MAX_IMAGE_PIXELS" in line, line
    assert (tmp_path / "out" / "ok.png").is_file()
    # the variable set says otherwise: the file is decoded (and, cut short, refused as such)
    env["OPENCV_IO_MAX_IMAGE_PIXELS"] = str(1 << 30)
    proc = subprocess.run(args + ["--out-dir", str(tmp_path / "out2")], capture_output=True,
                          text=True, env=env, cwd=root)
    assert proc.returncode == 1 and "megapixels" not in proc.stderr, proc.stderr


def test_libpng_lines_do_not_stand_beside_the_commands_own(tmp_path):
    """libpng writes its errors and warnings on the process's stderr itself: a
    damaged PNG ('libpng error: IDAT: CRC error') got that line beside
    the warning naming the file, and a PNG with a malformed eXIf chunk, which
    decodes, got 'libpng warning: eXIf: invalid' three times (it is decoded
    three times) from a run that otherwise said nothing. The error is now the
    reason in the file's warning line; the warning is not shown."""
    import os
    import struct
    import subprocess
    import sys
    from pathlib import Path

    folder = tmp_path / "in"
    folder.mkdir()
    picture = np.tile(np.arange(64, dtype=np.uint8), (48, 1))
    png = bytearray(cv2.imencode(".png", np.dstack([picture] * 3))[1].tobytes())
    png[len(png) // 2:len(png) // 2 + 64] = bytes(64)  # a block of the data zeroed
    (folder / "damaged.png").write_bytes(bytes(png))
    tiff = b"MM\x00\x2a" + struct.pack(">IHHHIHH", 8, 1, 0x0112, 3, 1, 6, 0) + bytes(4)
    ok, exif = cv2.imencodeWithMetadata(".png", np.zeros((8, 8, 3), np.uint8),
                                        [cv2.IMAGE_METADATA_EXIF],
                                        [np.frombuffer(b"Exif\x00\x00" + tiff, np.uint8)])
    (folder / "exif.png").write_bytes(exif.tobytes())
    env = {k: v for k, v in os.environ.items() if k != "OPENCV_LOG_LEVEL"}
    proc = subprocess.run([sys.executable, "-m", "anonymize", "images", "--img-dir", str(folder),
                           "--out-dir", str(tmp_path / "out"), "--quiet", "--plates", "off"],
                          capture_output=True, text=True, env=env,
                          cwd=Path(__file__).resolve().parent.parent)
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"anonymize: warning: cannot decode image: {folder / 'damaged.png'} (libpng: IDAT: "
        "CRC error); left out"], proc.stderr
    assert (tmp_path / "out" / "exif.png").is_file()


@pytest.mark.parametrize("command", ["images", "run"])
def test_a_name_with_a_line_break_gets_one_error_line(tmp_path, capsys, command):
    """An error naming a file given with a line break in its name was cut at the
    break (the line is the message's first): `--img-dir $'a\\nb'` said only
    'image folder not found: .../a'. Such a name is written escaped."""
    odd = tmp_path / "cam\nnight"
    args = (["images", "--img-dir", str(odd), "--out-dir", str(tmp_path / "out")]
            if command == "images" else ["run", f"{odd}.mp4", "-o", str(tmp_path / "o.mp4")])
    assert main([*args, "--quiet", "--plates", "off"]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("anonymize: error:") and f"{tmp_path}/cam\\nnight" in line, line


def test_a_file_name_with_a_line_break_gets_one_warning_line(tmp_path, capsys):
    """A name may hold a line break (a file saved by a script, a sync tool's
    conflict copy): the warning that names it stood on two lines, the second
    looking like a line of its own. Control characters are written escaped."""
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "bad\nname.jpg").write_bytes(b"xx")
    cv2.imwrite(str(folder / "ok.png"), np.zeros((8, 8, 3), np.uint8))
    assert main(["images", "--img-dir", str(folder), "--out-dir", str(tmp_path / "out"),
                 "--quiet", "--plates", "off"]) == 1
    assert capsys.readouterr().err.splitlines() == [
        f"anonymize: warning: cannot decode image: {folder}/bad\\nname.jpg; left out"]


def test_a_grey_image_with_transparency_stays_grey_with_its_alpha(data_dir, tmp_path):
    """A grey PNG with an alpha channel (PNG colour type 4: scanned signatures,
    logos, masks) came back as a colour RGBA PNG, twice its size on disk;
    OpenCV's PNG encoder writes no grey+alpha, so it is written here."""
    import struct
    import zlib

    src = cv2.imread(str(data_dir / "faces_dlib_examples" / "images" / "2008_001009.jpg"))
    grey = cv2.cvtColor(src, cv2.COLOR_BGR2GRAY)
    h, w = grey.shape
    alpha = np.tile(np.linspace(0, 255, w, dtype=np.uint8), (h, 1))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data)))

    rows = np.hstack([np.zeros((h, 1), np.uint8), np.dstack([grey, alpha]).reshape(h, 2 * w)])
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "ga.png").write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 4, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(rows.tobytes())) + chunk(b"IEND", b""))
    assert main(["images", "--img-dir", str(folder), "--out-dir", str(tmp_path / "out"),
                 "--quiet", "--no-plates", "--device", "cpu"]) == 0
    data = (tmp_path / "out" / "ga.png").read_bytes()
    assert data[12:16] == b"IHDR" and data[24:26] == b"\x08\x04"  # 8-bit grey + alpha
    back = cv2.imread(str(tmp_path / "out" / "ga.png"), cv2.IMREAD_UNCHANGED)
    assert back.shape == (h, w, 4) and np.array_equal(back[:, :, 3], alpha)
    assert np.array_equal(back[:, :, 0], back[:, :, 1])  # grey: its channels agree
    (row,) = pickle.loads((tmp_path / "out" / "detections.pkl").read_bytes())
    x1, y1, x2, y2 = row["det"][0]["box_points"]
    assert back[y1:y2, x1:x2, 0].std() < grey[y1:y2, x1:x2].std()  # blurred
    outside = np.ones((h, w), bool)
    for d in row["det"]:
        bx1, by1, bx2, by2 = d["box_points"]
        outside[max(by1 - 20, 0):by2 + 20, max(bx1 - 20, 0):bx2 + 20] = False
    assert np.array_equal(back[:, :, 0][outside], grey[outside])  # the rest as it was


def test_an_output_reached_through_a_link_into_the_image_folder_is_not_written(
        data_dir, tmp_path, capsys):
    """A link inside the output folder (out/sub -> in/sub, left by a `cp -rs`
    or an earlier tool) sent the blurred in/sub/a.jpg over the original
    through it. Such an image is left out with a warning naming the link's
    folder; the others are written."""
    photo = data_dir / "faces_dlib_examples" / "images" / "2008_001009.jpg"
    folder, out = tmp_path / "in", tmp_path / "out"
    (folder / "sub").mkdir(parents=True)
    out.mkdir()
    (folder / "sub" / "a.jpg").write_bytes(photo.read_bytes())
    (folder / "top.jpg").write_bytes(photo.read_bytes())
    (out / "sub").symlink_to(folder / "sub", target_is_directory=True)
    assert main(["images", "--img-dir", str(folder), "--out-dir", str(out), "--quiet",
                 "--no-plates", "--device", "cpu"]) == 1
    assert (folder / "sub" / "a.jpg").read_bytes() == photo.read_bytes()
    assert sorted(p.name for p in (folder / "sub").iterdir()) == ["a.jpg"]
    assert capsys.readouterr().err.splitlines() == [
        f"anonymize: warning: could not write {out / 'sub' / 'a.jpg'}: its folder leads "
        f"through a link to {folder / 'sub'}, among the originals; left out"]
    assert (out / "top.jpg").is_file()


def test_images_of_16_bits_a_channel_are_said_to_be_written_in_8(tmp_path, capsys):
    """A 16-bit PNG or TIFF (a scan, a raw export) is written in 8 bits: that
    was said in the README only, and the run said nothing of the precision it
    dropped. One warning line counts such images and names the first; the run
    still succeeds."""
    folder = tmp_path / "in"
    folder.mkdir()
    ramp = np.tile(np.linspace(0, 65535, 64).astype(np.uint16), (32, 1))
    cv2.imwrite(str(folder / "scan.tif"), np.dstack([ramp] * 3))
    cv2.imwrite(str(folder / "depth.png"), ramp)
    cv2.imwrite(str(folder / "plain.png"), np.zeros((32, 64, 3), np.uint8))
    assert main(["images", "--img-dir", str(folder), "--out-dir", str(tmp_path / "out"),
                 "--quiet", "--plates", "off"]) == 0
    assert capsys.readouterr().err.splitlines() == [
        f"anonymize: warning: 2 images of more than 8 bits a channel are written in 8 bits "
        f"(first: {folder / 'depth.png'})"]
    assert cv2.imread(str(tmp_path / "out" / "scan.tif"), cv2.IMREAD_UNCHANGED).dtype == np.uint8


def test_an_image_linked_in_from_the_output_folder_is_not_written_over(
        data_dir, tmp_path, capsys):
    """in/a.jpg a link to elsewhere/a.jpg, and elsewhere the output folder:
    the blurred copy was written over the original it had been read from."""
    photo = data_dir / "faces_dlib_examples" / "images" / "2008_001009.jpg"
    folder, elsewhere = tmp_path / "in", tmp_path / "elsewhere"
    folder.mkdir()
    elsewhere.mkdir()
    (elsewhere / "a.jpg").write_bytes(photo.read_bytes())
    (folder / "a.jpg").symlink_to(elsewhere / "a.jpg")
    (folder / "b.jpg").write_bytes(photo.read_bytes())
    assert main(["images", "--img-dir", str(folder), "--out-dir", str(elsewhere), "--quiet",
                 "--no-plates", "--device", "cpu"]) == 1
    assert (elsewhere / "a.jpg").read_bytes() == photo.read_bytes()
    assert capsys.readouterr().err.splitlines() == [
        f"anonymize: warning: could not write {elsewhere / 'a.jpg'}: it is the original "
        f"{folder / 'a.jpg'} leads to; left out"]
    assert (elsewhere / "b.jpg").is_file()


def test_a_multi_page_file_with_a_page_opencv_cannot_decode_is_left_out_too(tmp_path, capsys):
    """Pages are counted by decoding them all: one page OpenCV cannot decode
    (a float page) made that count fail, the file was taken for one picture,
    and its first page was written alone, the others dropped without a word."""
    folder = tmp_path / "in"
    folder.mkdir()
    assert cv2.imwritemulti(str(folder / "mixed.tif"), [np.zeros((16, 16, 3), np.uint8),
                                                         np.zeros((8, 8, 3), np.float32)])
    cv2.imwrite(str(folder / "ok.png"), np.zeros((8, 8, 3), np.uint8))
    assert main(["images", "--img-dir", str(folder), "--out-dir", str(tmp_path / "out"),
                 "--quiet", "--plates", "off"]) == 1
    # (OpenCV's own log lines show here: it was loaded before the command could quiet it)
    assert [line for line in capsys.readouterr().err.splitlines()
            if not line.startswith("[ WARN")] == [
        f"anonymize: warning: {folder / 'mixed.tif'} holds 2 pictures (pages or animation "
        "frames); only single-picture files are anonymized here; left out"]
    assert not (tmp_path / "out" / "mixed.tif").exists()


@pytest.mark.parametrize("suffix", [".webp", ".png"])
def test_a_transparent_image_whose_exif_opencv_does_not_read_keeps_its_alpha(tmp_path, suffix):
    """An EXIF block that starts with JPEG's 'Exif\\0\\0' marker inside a WebP
    or PNG (older ImageMagick wrote them so) is not read by OpenCV, which
    leaves the colour as stored; the alpha plane was turned by it all the
    same, so it no longer fitted the picture and was dropped: the cut-out came
    back opaque. The alpha follows the colour."""
    import struct

    tiff = b"MM\x00\x2a" + struct.pack(">IHHHIHH", 8, 1, 0x0112, 3, 1, 6, 0) + bytes(4)
    bgra = np.zeros((20, 40, 4), np.uint8)
    bgra[:, :, 3] = np.tile(np.linspace(0, 255, 40, dtype=np.uint8), (20, 1))
    ok, data = cv2.imencodeWithMetadata(suffix, bgra, [cv2.IMAGE_METADATA_EXIF],
                                        [np.frombuffer(b"Exif\x00\x00" + tiff, np.uint8)])
    assert ok
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / f"cut{suffix}").write_bytes(data.tobytes())
    assert cv2.imdecode(data, cv2.IMREAD_COLOR).shape == (20, 40, 3)  # as stored
    assert main(["images", "--img-dir", str(tmp_path / "in"), "--out-dir", str(tmp_path / "out"),
                 "--quiet", "--plates", "off"]) == 0
    out = cv2.imread(str(tmp_path / "out" / f"cut{suffix}"), cv2.IMREAD_UNCHANGED)
    assert out.shape == (20, 40, 4) and np.array_equal(out[:, :, 3], bgra[:, :, 3])


def test_pages_are_counted_without_holding_every_page_in_memory(tmp_path):
    """Every page of a multi-page file was decoded at once to count them: a
    24 MB scanned TIFF of 40 pages of 25 megapixels took 2.2 GB (a 300-page
    document at 600 dpi, some 10 GB). Two pages tell that a file holds
    several; their number is read without decoding them."""
    import subprocess
    import sys
    from pathlib import Path

    if not Path("/proc/self/status").is_file():
        pytest.skip("the peak memory of a process is read from /proc (Linux)")

    pages = [np.full((5000, 5000), i, np.uint8) for i in range(24)]  # 600 MB of pixels
    ok, data = cv2.imencodemulti(".tif", pages)
    assert ok
    del pages
    path = tmp_path / "scan.tif"
    path.write_bytes(data.tobytes())
    del data
    # the peak of the child's own memory (VmHWM: ru_maxrss keeps the parent's across exec)
    proc = subprocess.run([sys.executable, "-c", "import sys\n"
                           "from pathlib import Path\n"
                           "from pipeline.images import picture_count\n"
                           "print(picture_count(Path(sys.argv[1])))\n"
                           "print(next(line.split()[1] for line in open('/proc/self/status')"
                           " if line.startswith('VmHWM')))",
                           str(path)], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parent.parent)
    count, peak_kb = proc.stdout.split()
    # the interpreter with numpy, PyAV and OpenCV: some 260 MB
    assert int(peak_kb) < 550_000, f"{int(peak_kb) // 1024} MB"
    assert proc.returncode == 0 and count == "24", proc.stderr[-500:]


def test_two_images_written_to_one_file_are_not_both_reported_written(data_dir, tmp_path,
                                                                     capsys):
    """Two inputs whose outputs are one file (on a file system that ignores
    case, IMG_1.JPG and img_1.jpg from a Linux share; here a folder of the
    output linked to another) were both written, the second over the first,
    and both listed in detections.pkl: one photo's output was the other's.
    The second is left out with a warning naming the first."""
    photos = sorted((data_dir / "faces_dlib_examples" / "images").glob("*.jpg"))
    folder, out = tmp_path / "in", tmp_path / "out"
    for sub, photo in (("A", photos[0]), ("B", photos[1])):
        (folder / sub).mkdir(parents=True)
        (folder / sub / "x.jpg").write_bytes(photo.read_bytes())
    (out / "A").mkdir(parents=True)
    (out / "B").symlink_to(out / "A", target_is_directory=True)
    assert main(["images", "--img-dir", str(folder), "--out-dir", str(out), "--quiet",
                 "--no-plates", "--device", "cpu"]) == 1
    assert capsys.readouterr().err.splitlines() == [
        f"anonymize: warning: could not write {out / 'B' / 'x.jpg'}: it is the file "
        f"{out / 'A' / 'x.jpg'} was written to (a file system that ignores case, or a "
        "link); left out"]
    rows = pickle.loads((out / "detections.pkl").read_bytes())
    assert [r["filename"] for r in rows] == ["A/x.jpg"]
    assert read_image(out / "A" / "x.jpg").shape == read_image(photos[0]).shape


@pytest.mark.parametrize("kind", ["enospc", "efbig"])
def test_a_full_disk_stops_images_at_the_first_image_it_refuses(data_dir, tmp_path, kind,
                                                                 request):
    """An output disk that filled up was taken for one image the folder would not
    take: every image of the folder was still detected and blurred, each left out
    with a warning line, and the run failed only at its end. Nothing else fits once
    the disk is full: one line, at once."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from tests.conftest import small_files

    src = tmp_path / "photos"
    src.mkdir()
    names = sorted(p.name for p in (data_dir / "faces_dlib_examples" / "images").iterdir())[:4]
    for name in names:
        (src / name).write_bytes((data_dir / "faces_dlib_examples" / "images" / name)
                                 .read_bytes())
    if kind == "enospc":
        out, limit = request.getfixturevalue("full_disk") / "out", None  # 16 KiB free
    else:
        out, limit = tmp_path / "out", 16 * 1024
    root = Path(__file__).resolve().parent.parent
    proc = subprocess.run(
        [sys.executable, "-m", "anonymize", "images", "--img-dir", str(src), "--out-dir",
         str(out), "--no-plates", "--batch-size", "1"],
        cwd=root, capture_output=True, text=True, timeout=300,
        preexec_fn=small_files(limit) if limit else None,
        env={**os.environ, "PYTHONPATH": str(root)})
    reason = "No space left on device" if kind == "enospc" else "File too large"
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("anonymize:")]
    assert len(lines) == 1 and lines[0].startswith(
        f"anonymize: error: {out / names[0]}: {reason}: "), lines
    assert list(out.iterdir()) == []
