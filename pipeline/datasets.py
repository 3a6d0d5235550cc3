"""Annotated image sets for evaluation.

Two layouts are read:

* ``--dataset DIR``: ``DIR/annotations.json`` as README describes it ("Command
  line", ``eval --dataset``), boxes in pixel coordinates of the stored image;
* the research YOLO-txt layout (``--anno-dir`` / ``--img-dir``): one
  ``<stem>.txt`` per image with ``class cx cy w h`` rows normalised to 0..1;
  class ids become labels through an explicit mapping (the research plate
  class id was 15), rows of other classes are ignored.

Annotations are parsed eagerly (cheap, and the evaluator needs the set of
annotated labels before the first image), images are decoded lazily, one at a
time, so a large set never sits in memory.

Images are decoded *without* applying EXIF orientation: annotation tools
store boxes in the pixel grid of the stored image, and a rotated decode would
put every box in the wrong place.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import struct
import sys
import tempfile
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

#: image files read (and, by `images`, written back in their own format) with OpenCV
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".bmp", ".webp", ".tif", ".tiff",
                  ".gif", ".jp2", ".avif", ".ppm", ".pgm", ".pbm", ".pnm")
#: image formats met in photo folders that OpenCV does not read (phone HEIC,
#: camera raw, layered or vector files): listed with the images so that each is
#: reported as left out rather than passed over in silence
UNREADABLE_SUFFIXES = (".heic", ".heif", ".dng", ".cr2", ".cr3", ".nef", ".arw", ".orf", ".rw2",
                       ".raf", ".psd", ".svg", ".tga", ".ico", ".jxl")


@dataclass
class GTBox:
    """One ground-truth box: label as annotated and ``[x1, y1, x2, y2]`` in pixels."""

    label: str
    xyxy: list[float]


@dataclass
class ImageRecord:
    """An annotated image before decoding.

    ``normalized`` boxes (YOLO-txt) are in 0..1 and are scaled to pixels once
    the image size is known (:meth:`pixel_boxes`).
    """

    path: Path
    boxes: list[GTBox] = field(default_factory=list)
    width: int | None = None
    height: int | None = None
    normalized: bool = False
    name: str = ""  # path relative to the dataset root, used as the pickle filename

    def pixel_boxes(self, width: int, height: int) -> list[GTBox]:
        if not self.normalized:
            return list(self.boxes)
        out = []
        for b in self.boxes:
            cx, cy, w, h = b.xyxy
            out.append(GTBox(b.label, [(cx - w / 2) * width, (cy - h / 2) * height,
                                       (cx + w / 2) * width, (cy + h / 2) * height]))
        return out


@dataclass
class Sample:
    """A decoded annotated image: RGB uint8 pixels plus its ground truth in pixels."""

    path: Path
    name: str
    image: np.ndarray
    gt: list[GTBox]


def read_image(path: str | Path, upright: bool = False) -> np.ndarray:
    """Decode an image file to RGB uint8 (H, W, 3): the stored pixels, or with
    ``upright`` turned as a viewer shows them (the EXIF orientation applied,
    as phones store portrait photos sideways). A file that cannot be read (a
    broken link, no permission) or decoded raises ValueError naming it, which
    folder commands report as a left-out image."""
    import cv2

    path = Path(path)
    try:
        data = np.fromfile(path, dtype=np.uint8)  # bytes: OpenCV's path functions fail on
    except OSError as exc:                         # names that are not UTF-8
        why = (f"a link to {os.readlink(path)}, which does not exist"
               if path.is_symlink() and not path.exists() else exc.strerror or str(exc))
        raise ValueError(f"cannot read image: {path} ({why})") from None
    flags = cv2.IMREAD_COLOR if upright else cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION
    cut = png_cut_short(data)
    said: list[str] = []
    try:
        with native_stderr(said):
            bgr = cv2.imdecode(data, flags) if data.size and not cut else None
    except cv2.error as exc:  # raised, not None: over OpenCV's pixel limit, ...
        raise ValueError(f"cannot decode image: {path} ({_opencv_reason(exc)})") from None
    if bgr is None:
        errors = [line.removeprefix("libpng error: ") for line in said
                  if line.startswith("libpng error: ")]
        hint = (" (an empty file)" if not data.size else
                " (a PNG cut short: its last chunks are missing)" if cut else
                f" (libpng: {errors[0]})" if errors else
                " (a JPEG cut short: its end is missing)" if jpeg_cut_short(data) else
                f" ({path.suffix} files are not read here: convert it to JPEG or PNG)"
                if path.suffix.lower() in UNREADABLE_SUFFIXES else "")
        raise ValueError(f"cannot decode image: {path}{hint}")
    if not upright and bytes(data[:4]) in (b"II*\x00", b"MM\x00*"):
        # OpenCV turns a TIFF by its own Orientation tag whatever the flags say
        bgr = unorient(bgr, exif_orientation(data))
    return np.ascontiguousarray(bgr[:, :, ::-1])


def exif_orientation(exif: bytes | memoryview) -> int:
    """The Orientation tag (0x0112) of IFD0 in an EXIF block, or of a TIFF
    file's first page (a TIFF header starts both), 1 when absent or unreadable."""
    tiff = memoryview(exif).cast("B")
    if bytes(tiff[:6]) == b"Exif\x00\x00":
        tiff = tiff[6:]
    order = {b"II": "<", b"MM": ">"}.get(bytes(tiff[:2]))
    if order is None or len(tiff) < 8:
        return 1
    try:
        (ifd,) = struct.unpack_from(order + "I", tiff, 4)
        (count,) = struct.unpack_from(order + "H", tiff, ifd)
        for i in range(count):
            tag, kind, _, value = struct.unpack_from(order + "HHIH", tiff, ifd + 2 + 12 * i)
            if tag == 0x0112 and kind == 3:
                return value if 1 <= value <= 8 else 1
    except struct.error:
        pass
    return 1


def orient(image: np.ndarray, orientation: int) -> np.ndarray:
    """``image`` turned by an EXIF orientation (1..8), the transforms OpenCV
    applies when it decodes upright."""
    import cv2

    if orientation >= 5:  # 5..8 swap the axes first
        image = cv2.transpose(image)
    flip = {2: 1, 3: -1, 4: 0, 6: 1, 7: -1, 8: 0}.get(orientation)
    return image if flip is None else cv2.flip(image, flip)


def unorient(image: np.ndarray, orientation: int) -> np.ndarray:
    """``image`` turned back: the inverse of :func:`orient`."""
    return orient(image, {6: 8, 8: 6}.get(orientation, orientation))


@contextlib.contextmanager
def native_stderr(said: list[str]) -> Iterator[None]:
    """Around a decode: what the image libraries write on the process's stderr
    themselves (libpng: 'libpng error: IDAT: CRC error', 'libpng warning:
    eXIf: invalid', past OpenCV's log level) is taken into ``said`` instead of
    standing beside the command's own lines; the reader of ``said`` words the
    reason a file is left out from it. Anything else written there meanwhile
    is written out again."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no stderr to take
        yield
        return
    with tempfile.TemporaryFile() as taken:
        os.dup2(taken.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            taken.seek(0)
            lines = taken.read().decode("utf-8", "replace").splitlines(keepends=True)
    said += [line.rstrip("\r\n") for line in lines if line.startswith("libpng ")]
    other = "".join(line for line in lines if not line.startswith("libpng "))
    if other:  # as it was written (a progress bar's '\r' too)
        sys.stderr.write(other)


def _opencv_reason(exc: Exception) -> str:
    """Why OpenCV refused to decode, in words: its size limit (a gigapixel
    panorama, or a megabyte PNG that claims 40000x30000 pixels of nothing;
    2^28 pixels from the command line, :data:`anonymize.cli.MAX_IMAGE_PIXELS`)
    raised an assertion that stopped the whole folder with a traceback."""
    if "CV_IO_MAX_IMAGE_PIXELS" in str(exc):
        # the limit OpenCV read as it loaded: the command line's, or the variable's
        try:
            limit = int(os.environ.get("OPENCV_IO_MAX_IMAGE_PIXELS", 1 << 30))
        except ValueError:
            limit = 1 << 30
        return (f"more than {limit / 1e6:.0f} megapixels, the most decoded here: a larger "
                "OPENCV_IO_MAX_IMAGE_PIXELS allows more, at about 15 bytes of memory a pixel")
    from models.errors import one_line

    return one_line(exc)


def jpeg_cut_short(data: np.ndarray) -> bool:
    """Whether ``data`` is a JPEG without its end marker (FF D9) at the end, as
    a copy cut short leaves it (padding zeros after the marker allowed)."""
    raw = bytes(memoryview(data).cast("B")[:3])
    return raw == b"\xff\xd8\xff" and not _tail(data).rstrip(b"\x00").endswith(b"\xff\xd9")


def _tail(data: np.ndarray, size: int = 4096) -> bytes:
    return bytes(memoryview(data).cast("B")[-size:])


def png_cut_short(data: np.ndarray) -> bool:
    """Whether ``data`` is a PNG that ends before its IEND chunk (a copy or
    download cut short). OpenCV cannot decode one, and libpng then prints a
    line of its own on stderr ('libpng error: PNG input buffer is incomplete'),
    beside the one warning that names the file; so it is not handed over."""
    raw = memoryview(data).cast("B")
    if bytes(raw[:8]) != b"\x89PNG\r\n\x1a\n":
        return False
    pos = 8
    while pos + 8 <= len(raw):  # chunks: length, type, data, CRC
        if bytes(raw[pos + 4:pos + 8]) == b"IEND":
            return False
        pos += 12 + int.from_bytes(raw[pos:pos + 4], "big")
    return True


def read_or_skip(path: Path, skipped: list | None, entry=None,
                 upright: bool = False) -> np.ndarray | None:
    """:func:`read_image`; with a ``skipped`` list, a file that does not decode
    is noted there as (``entry`` or the path, reason) and None returned, so one
    damaged image does not stop a folder or a long evaluation; without one it
    raises."""
    try:
        return read_image(path, upright)
    except ValueError as exc:
        if skipped is None:
            raise
        skipped.append((path if entry is None else entry, str(exc)))
        return None


def load_annotations(dataset_dir: str | Path) -> list[ImageRecord]:
    """Records of ``DIR/annotations.json`` (paths resolved against DIR).

    Everything that can be checked without decoding is checked here, before
    any model loads: each entry's shape (a malformed box is an error naming
    the entry, never a silently dropped ground truth) and that every listed
    image exists. A box given with its corners swapped (x2 < x1) still marks
    an object: its corners are put in order."""
    root = Path(dataset_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"dataset directory not found: {root}")
    anno = root / "annotations.json"
    if not anno.is_file():
        raise FileNotFoundError(f"no annotations.json in dataset directory {root}")
    try:
        # utf-8-sig: UTF-8, also with the byte-order mark Windows tools write first
        data = json.loads(anno.read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{anno} is not valid JSON: {exc}") from exc
    except UnicodeDecodeError as exc:
        raise ValueError(f"{anno} is not UTF-8 text: {exc}") from exc
    images = data.get("images") if isinstance(data, dict) else None
    if not isinstance(images, list):
        raise ValueError(f"{anno} has no 'images' list")
    records = [_record(root, f"{anno}: images[{i}]", entry) for i, entry in enumerate(images)]
    first: dict[str, int] = {}
    for i, r in enumerate(records):  # listed twice: its boxes and detections would count twice
        j = first.setdefault(os.path.normpath(r.path), i)
        if j != i:
            raise ValueError(f"{anno}: images[{i}] ({r.name}) is the image images[{j}] "
                             f"({records[j].name}) lists already; list each image once, with "
                             "all its boxes")
    missing = [r for r in records if not r.path.is_file()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} of the {len(records)} images listed in {anno} "
                                f"not found, first: {missing[0].path}")
    return records


def _record(root: Path, where: str, entry) -> ImageRecord:
    """One entry of the ``images`` list, checked (``where`` names it in errors)."""
    if not isinstance(entry, dict):
        raise ValueError(f"{where} is not an object")
    file = entry.get("file")
    if not isinstance(file, str) or not file.strip():
        raise ValueError(f"{where} has no 'file' path")
    where = f"{where} ({file})"
    size = [_pixels(where, key, entry.get(key)) for key in ("width", "height")]
    boxes = entry.get("boxes", [])
    if not isinstance(boxes, list):
        raise ValueError(f"{where}: 'boxes' is not a list")
    path = root / _on_disk(file)
    if "\\" in file and os.sep != "\\" and not path.exists():
        # written on Windows ('images\\x.jpg'): here one name with backslashes in it
        path = root / _on_disk(file.replace("\\", "/"))
    return ImageRecord(path, [_box(f"{where}: boxes[{j}]", b) for j, b in enumerate(boxes)],
                       size[0], size[1], name=file)


def _on_disk(name: str) -> str:
    """``name`` (text from the UTF-8 JSON) as a file name Python can pass to
    the system: under an ASCII locale without UTF-8 mode file names go
    through 'ascii' with surrogate escapes, which cannot carry 'é'; the file
    on disk is named by the name's UTF-8 bytes, which such an escaped name
    stands for."""
    try:
        os.fsencode(name)
        return name
    except UnicodeEncodeError:
        return os.fsdecode(name.encode("utf-8"))


def _pixels(where: str, key: str, value) -> int | None:
    """An optional image width or height: a positive whole number (640.0 too)."""
    if value is None:
        return None
    if (isinstance(value, (int, float)) and not isinstance(value, bool)
            and float(value).is_integer() and value >= 1):
        return int(value)
    raise ValueError(f"{where}: '{key}' must be a positive whole number, got {value!r}")


def _box(where: str, box) -> GTBox:
    if not isinstance(box, dict) or "label" not in box or "xyxy" not in box:
        raise ValueError(f"{where} needs 'label' and 'xyxy'")
    label, xyxy = box["label"], box["xyxy"]
    if not isinstance(label, str) or not label.strip():  # null would become the label 'None'
        raise ValueError(f"{where} needs 'label' as text such as \"plate\", got {label!r}")
    try:  # a JSON array: a string such as "1234" would be read as its characters
        values = [float(v) for v in xyxy] if isinstance(xyxy, list) else []
    except (TypeError, ValueError):
        values = []
    if len(values) != 4 or not all(math.isfinite(v) for v in values):
        raise ValueError(f"{where}: 'xyxy' must be 4 numbers [x1, y1, x2, y2], got {xyxy!r}")
    x1, y1, x2, y2 = values
    return GTBox(label, [min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2)])


def load_yolo_dir(anno_dir: str | Path, img_dir: str | Path,
                  class_labels: dict[int, str]) -> list[ImageRecord]:
    """Records of every image in ``img_dir`` with ``anno_dir/<stem>.txt`` boxes.

    An image without a .txt file has no objects (the YOLO convention), so it
    still counts for false positives.
    """
    anno_dir, img_dir = Path(anno_dir), Path(img_dir)
    for d, what in ((anno_dir, "annotation"), (img_dir, "image")):
        if not d.is_dir():
            raise FileNotFoundError(f"{what} directory not found: {d}")
    if not class_labels:
        raise ValueError("no class id is mapped to a label (use --plate-class-id/--face-class-id)")
    negative = sorted(c for c in class_labels if c < 0)
    if negative:
        raise ValueError(f"class id {negative[0]} ({class_labels[negative[0]]}): YOLO class ids "
                         f"are 0 or more")
    # hidden files (macOS's ._IMG_0001.JPG beside each photo) are not images, nor is
    # a folder named like one (holiday.jpg); a link to a missing image is listed, so
    # that it is reported as undecodable rather than dropped in silence
    images = sorted(p for p in img_dir.iterdir()
                    if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
                    and (p.is_file() or (p.is_symlink() and not p.exists())))
    if not images:
        raise FileNotFoundError(f"no images in {img_dir}")
    _one_image_per_txt(images, anno_dir)
    records = []
    seen: set[int] = set()
    for img in images:
        txt = anno_dir / f"{img.stem}.txt"
        try:
            boxes = parse_yolo_txt(txt.read_text(encoding="utf-8"), class_labels, seen) \
                if txt.is_file() else []
        except (ValueError, UnicodeDecodeError) as exc:
            raise ValueError(f"{txt}: {exc}") from exc
        records.append(ImageRecord(img, boxes, normalized=True, name=img.name))
    _warn_orphans(anno_dir, img_dir, {img.stem for img in images}, class_labels)
    for cid, label in sorted(class_labels.items()):
        if cid not in seen:  # a wrong id evaluated against no boxes at all, unsaid
            warnings.warn(f"no annotation row in {anno_dir} has class id {cid} (the "
                          f"{label} id): no {label} box is evaluated; the rows' class ids "
                          f"are {', '.join(map(str, sorted(seen))) or 'none'}", stacklevel=2)
    return records


def _warn_orphans(anno_dir: Path, img_dir: Path, stems: set[str],
                  class_labels: dict[int, str]) -> None:
    """Name the annotation files that hold boxes of a mapped class but have no
    image (their boxes cannot be evaluated); files that are no YOLO rows
    (LabelImg's ``classes.txt``) are not annotation files."""
    orphans = []
    for txt in sorted(anno_dir.glob("*.txt")):
        if txt.stem in stems or txt.name.startswith("."):
            continue
        try:
            if parse_yolo_txt(txt.read_text(encoding="utf-8"), class_labels):
                orphans.append(txt)
        except (OSError, ValueError, UnicodeDecodeError):
            continue
    if orphans:
        n = len(orphans)
        warnings.warn(f"{n} annotation file{'s' if n != 1 else ''} in {anno_dir} "
                      f"{'have' if n != 1 else 'has'} boxes but no image in {img_dir} (first: "
                      f"{orphans[0].name}); {'their' if n != 1 else 'its'} boxes are not "
                      "evaluated", stacklevel=3)


def parse_yolo_txt(text: str, class_labels: dict[int, str],
                   seen: set[int] | None = None) -> list[GTBox]:
    """``class cx cy w h`` rows (a sixth column, a confidence, ignored), or
    polygon rows ``class x1 y1 x2 y2 x3 y3 ...`` (the box around their
    points) -> normalised boxes (cx, cy, w, h); every row's class id goes into
    ``seen`` when given."""
    boxes = []
    not_normalised = None  # the first such row, refused once every row has been read
    # a byte-order mark (Notepad, PowerShell 5) made row 1 unreadable
    for line_no, line in enumerate(text.removeprefix("\ufeff").splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        # more than six numbers: a polygon 'class x1 y1 x2 y2 x3 y3 ...' (a segmentation
        # export), read as the box around its points, as Ultralytics reads it
        polygon = len(parts) > 6
        try:
            values = [float(v) for v in (parts if polygon else parts[:5])]
        except ValueError:
            values = []
        if len(values) < 5 or not all(math.isfinite(v) for v in values):
            raise ValueError(f"YOLO row {line_no} needs 'class cx cy w h'"
                             f"{' or a polygon' if polygon else ''}: {line!r}")
        if polygon:
            if len(values) % 2 == 0:
                raise ValueError(f"YOLO row {line_no} is a polygon with an odd count of "
                                 f"coordinates: {line!r}")
            xs, ys = values[1::2], values[2::2]
            values = [values[0], (min(xs) + max(xs)) / 2, (min(ys) + max(ys)) / 2,
                      max(xs) - min(xs), max(ys) - min(ys)]
        cls = int(values[0])
        if seen is not None:
            seen.add(cls)
        if cls in class_labels:
            boxes.append(GTBox(class_labels[cls], values[1:5]))
            if not_normalised is None and not _normalised(values[1:5]):
                not_normalised = (line_no, line)
    if not_normalised is not None:
        raise ValueError(f"YOLO row {not_normalised[0]} is not a box normalised to 0..1 "
                         f"('class cx cy w h', w and h above 0; pixel coordinates "
                         f"must be divided by the image size): {not_normalised[1]!r}")
    return boxes


#: how far outside 0..1 a normalised YOLO number may be (rounding in exports)
YOLO_SLACK = 0.01


def _normalised(box: list[float]) -> bool:
    """Whether a mapped row's numbers are normalised. One that is not (a value
    above 1, as pixel coordinates are, or below 0, or no width or height) is
    refused, naming the row, as Ultralytics refuses such label files: clipped
    to the image, its box was dropped or cut to a sliver in silence. A box
    reaching past the image's edge (cx 0.98, w 0.1) is clipped, as before."""
    cx, cy, w, h = box
    return w > 0 and h > 0 and all(-YOLO_SLACK <= v <= 1 + YOLO_SLACK for v in (cx, cy, w, h))


def _one_image_per_txt(images: list[Path], anno_dir: Path) -> None:
    """Refuse two images sharing a stem when that stem has a .txt (x.jpg and x.png
    both took x.txt's boxes, right for one of them at most)."""
    by_stem: dict[str, Path] = {}
    for img in images:
        other = by_stem.setdefault(img.stem, img)
        if other is not img and (anno_dir / f"{img.stem}.txt").is_file():
            raise ValueError(f"{other.name} and {img.name} in {img.parent} share the "
                             f"annotation file {anno_dir / (img.stem + '.txt')}: give each "
                             f"image its own stem")


def iter_samples(records: Iterable[ImageRecord],
                 skipped: list[tuple[ImageRecord, str]] | None = None,
                 no_area: list[tuple[ImageRecord, GTBox]] | None = None) -> Iterator[Sample]:
    """Decode each record, yielding pixel ground truth clipped to the image
    (boxes left with no area are dropped, and noted in ``no_area`` as (record,
    box in pixels as annotated) when it is given). With a ``skipped`` list, a
    file that does not decode is recorded there (record, reason) and passed
    over (:func:`read_or_skip`)."""
    for rec in records:
        image = read_or_skip(rec.path, skipped, rec)
        if image is None:
            continue
        h, w = image.shape[:2]
        if rec.width and rec.height and (rec.width, rec.height) != (w, h):
            # annotated as a viewer shows it (EXIF orientation applied)?
            turned = read_image(rec.path, upright=True)
            if turned.shape[:2] == (rec.height, rec.width):
                image = turned
                h, w = image.shape[:2]
        if rec.width and rec.height and (rec.width, rec.height) != (w, h):
            warnings.warn(f"{rec.path}: annotated as {rec.width}x{rec.height} but decodes as "
                          f"{w}x{h}; boxes are used as annotated", stacklevel=2)
        gt = []
        for b in rec.pixel_boxes(w, h):
            x1, y1, x2, y2 = b.xyxy
            box = [min(max(x1, 0.0), w), min(max(y1, 0.0), h),
                   min(max(x2, 0.0), w), min(max(y2, 0.0), h)]
            if box[2] > box[0] and box[3] > box[1]:
                gt.append(GTBox(b.label, box))
            elif no_area is not None:  # wholly off-image boxes cannot leak; said, not lost
                no_area.append((rec, b))
        yield Sample(rec.path, rec.name or rec.path.name, image, gt)
