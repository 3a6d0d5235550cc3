"""Image folders: the research `inference*.py` / `face_detection.py` jobs.

Images are read as a viewer shows them (EXIF orientation applied): phones
store portrait photos sideways, and the detectors find upright faces (dlib
photos stored a quarter turn off: coverage 0.907 on the stored pixels, 1.000
upright). They are written back upright, in their own format, without EXIF
(no orientation left to apply twice, and no GPS). Detections refer to the
written pixels.
"""

from __future__ import annotations

import os
import pickle
import re
import struct
import tempfile
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import cv2
import numpy as np

from models.detections import FACE, Detections
from models.errors import DISK_FULL_ERRNOS

from .blur import anonymize_frame
from .datasets import (
    IMAGE_SUFFIXES,
    UNREADABLE_SUFFIXES,
    exif_orientation,
    native_stderr,
    orient,
    read_or_skip,
)
from .records import face_pickle
from .settings import Settings
from .video.output import atomic_output, write_atomic

#: records an `images` or `faces` run writes last into its output folder: an
#: output folder inside the image folder that holds one is an earlier run's
RUN_RECORDS = ("detections.pkl", "faces.pkl")
#: written first into an output folder inside the image folder, before any image: a
#: run stopped before its records (Ctrl-C, a crash) leaves it, and may be run again
RUN_MARKER = ".anonymize-output"


def natural_key(rel: Path) -> tuple:
    """Sort key of a relative path in natural order, numbers by value:
    ``frame_2`` before ``frame_10``, as a file browser shows them and as
    frames exported without zero padding were numbered."""
    return tuple(tuple(int(t) if i % 2 else t for i, t in enumerate(re.split(r"(\d+)", part)))
                 for part in rel.parts)


def list_images(folder: Path, out_dir: Path | None = None,
                passed_over: list[Path] | None = None,
                unreadable: list[tuple[Path, str]] | None = None,
                linked: dict[Path, Path] | None = None) -> list[Path]:
    """Every image file below ``folder``, in natural order (:func:`natural_key`),
    including files of image formats that cannot be read
    (``UNREADABLE_SUFFIXES``: they fail to decode and are reported as left
    out, never skipped in silence).

    Folders reached through a symbolic link are searched like the others
    (a photo library often links event folders in), each real folder once,
    so a link back to an ancestor does not loop. A link to an image that
    does not exist is listed: reading it fails, so it is reported as left
    out like any unreadable image.

    Left out: hidden files and folders (a name starting with '.': the
    ``._IMG_0001.JPG`` files macOS leaves on shared drives are not images,
    and our own unfinished outputs are hidden), and, when ``out_dir`` lies
    inside ``folder``, everything under it (a second run would blur its own
    outputs again); those are added to ``passed_over`` so the caller can say
    so. ``out_dir`` is checked first (:func:`check_out_dir`).

    A sub-folder that cannot be read (no permission, a disk error) goes to
    ``unreadable`` with the reason, so that its images are never passed over
    in silence; the image folder itself unreadable is an error. ``linked``
    is filled with the folders outside ``folder`` that the walk reached
    through links (:func:`linked_folders`), so a caller need not walk again."""
    folder = Path(folder)
    if not folder.is_dir():  # an existing file was "not found" too
        raise FileNotFoundError(f"image folder not found: {folder}" if not folder.exists() else
                                f"image folder {folder} is a file, not a folder: give the "
                                f"folder that holds it")
    if out_dir is not None:  # what needs no listing is refused before the walk
        check_out_dir(folder, out_dir)
    files, reached, failed = _walk(folder)
    outside = linked_folders(folder, reached)
    if linked is not None:
        linked.update(outside)
    inside = check_out_dir(folder, out_dir, outside) if out_dir is not None else None
    found = []
    for p in files:
        if inside is not None and p.resolve().is_relative_to(inside):
            if passed_over is not None:
                passed_over.append(p)
        else:
            found.append(p)
    if failed and failed[0][0] == folder:
        raise ValueError(f"cannot read the image folder {folder}: {failed[0][1]}")
    if unreadable is not None:
        unreadable += failed
    return sorted(found, key=lambda p: natural_key(p.relative_to(folder)))


def _walk(folder: Path) -> tuple[list[Path], dict[str, Path], list[tuple[Path, str]]]:
    """The image files below ``folder`` (links followed, hidden names left
    out); every real folder searched, mapped to the path it was first reached
    by; and the folders that could not be read, with the reason."""
    files: list[Path] = []
    reached: dict[str, Path] = {}
    failed: list[tuple[Path, str]] = []

    def cannot_read(err: OSError) -> None:
        failed.append((Path(err.filename or folder), err.strerror or str(err)))

    for top, dirs, names in os.walk(folder, followlinks=True, onerror=cannot_read):
        real = os.path.realpath(top)
        if real in reached:  # a link loop, or a second link to one folder
            dirs[:] = []
            continue
        reached[real] = Path(top)
        dirs[:] = sorted((d for d in dirs if not d.startswith(".")),
                         key=lambda d: natural_key(Path(d)))
        for name in names:
            p = Path(top, name)
            if (not name.startswith(".")
                    and p.suffix.lower() in IMAGE_SUFFIXES + UNREADABLE_SUFFIXES
                    and (p.is_file() or (p.is_symlink() and not p.exists()))):
                files.append(p)
    return files, reached, failed


def linked_folders(folder: Path, reached: dict[str, Path] | None = None) -> dict[Path, Path]:
    """The folders outside ``folder`` that the listing searches through links
    below it, each the top of what it searches there: real path -> the link
    path it is reached by (``reached``: from :func:`_walk`, else the folder
    is walked)."""
    root = Path(folder).resolve()
    if reached is None:
        reached = _walk(Path(folder))[1]
    outside = {Path(real): path for real, path in reached.items()
               if not Path(real).is_relative_to(root)}
    return {real: path for real, path in outside.items()
            if not any(parent in outside for parent in real.parents)}


def check_out_dir(folder: Path, out_dir: Path,
                  linked: dict[Path, Path] | None = None) -> Path | None:
    """Refuse an output folder where blurred images could replace originals;
    return it (resolved) when it lies inside ``folder`` or inside one of the
    ``linked`` folders (:func:`linked_folders`), else None.

    Refused: the image folder itself; a folder that holds the image folder
    (``--img-dir lib/new --out-dir lib`` writes ``lib/new/a.jpg`` over
    ``lib/a.jpg``); and a folder inside the image folder that already holds
    files but no records of an earlier run (:data:`RUN_RECORDS`): its own
    images would be left out of the run and could be overwritten by its
    outputs. Accepted inside: a folder that does not exist yet, an empty
    one, or an earlier run's output (run again into it, it is refreshed),
    also one stopped before its records (:data:`RUN_MARKER`). A folder
    reached through a link below the image folder holds originals as the
    image folder does, and is held to the same rules (its target as the
    output folder had ``in/top.jpg`` blurred over the original that
    ``in/linked/top.jpg`` had just been read from)."""
    out, root = Path(out_dir).resolve(), Path(folder).resolve()
    if out == root:
        raise ValueError(f"the output folder {out_dir} is the image folder: the originals "
                         "would be overwritten; give another folder")
    if root.is_relative_to(out):
        raise ValueError(f"the output folder {out_dir} holds the image folder {folder}: "
                         "the originals could be overwritten; give another folder")
    for real, link in (linked or {}).items():
        if out == real or real.is_relative_to(out):
            raise ValueError(f"the output folder {out_dir} "
                             f"{'is' if out == real else 'holds'} the folder linked from "
                             f"the image folder as {link}: its originals could be "
                             "overwritten; give another folder")
    if not any(out.is_relative_to(r) for r in (root, *(linked or {}))):
        return None
    if out.is_dir() and any(out.iterdir()) and not any((out / n).is_file()
                                                       for n in (*RUN_RECORDS, RUN_MARKER)):
        raise ValueError(f"the output folder {out_dir} lies inside the image folder and "
                         f"already holds files, but no {' or '.join(RUN_RECORDS)} of an "
                         "earlier run: its images would be left out and could be "
                         "overwritten; give an empty or new folder")
    return out


def write_rgb(path: Path, rgb: np.ndarray, like: Path | None = None) -> bool:
    """Write ``rgb``; with ``like`` (the source file) in its channel layout: a
    grey source stays grey, a source with transparency keeps its alpha
    channel (the blurred colour under it), so a cut-out PNG does not come
    back on an opaque background, and a grey one with transparency (a PNG of
    colour type 4) stays grey with its alpha. 16-bit sources are written in
    8 bits.

    The source's colour profile (ICC) goes with the pixels where the format
    holds one (JPEG, PNG, WebP): the pixels are read as stored, in the
    profile's colours, and without it a wide-gamut photo (every phone's
    Display P3) is shown dull. A profile for other channels than the output
    has (a CMYK JPEG's, decoded to RGB) is left out.

    Returns whether the source had more than 8 bits a channel, which the
    written image does not keep."""
    path.parent.mkdir(parents=True, exist_ok=True)
    out = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    # the source, every channel and bit depth, turned as ``rgb`` was
    stored, profile = read_unchanged_upright(like) if like is not None else (None, None)
    if stored is not None and stored.ndim == 2:
        out = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    elif stored is not None and stored.shape[2] == 4 and stored.shape[:2] == rgb.shape[:2]:
        alpha = stored[:, :, 3]
        out = np.dstack([out, alpha if alpha.dtype == np.uint8 else (alpha >> 8).astype(np.uint8)])
    suffix = path.suffix.lower()
    as_suffix = _ENCODE_AS.get(suffix, suffix)
    # a grey PNG with transparency: OpenCV decodes it as BGRA and writes no grey+alpha
    grey_alpha = (out.ndim == 3 and out.shape[2] == 4 and as_suffix == ".png"
                  and png_colour_type(like) == PNG_GREY_ALPHA)
    if profile is not None and profile[16:20] != (b"GRAY" if out.ndim == 2 or grey_alpha
                                                  else b"RGB "):
        profile = None
    data = (np.frombuffer(png_grey_alpha(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY), out[:, :, 3],
                                         profile), np.uint8)
            if grey_alpha else _encode(as_suffix, out, profile))
    if data is None:
        # an encoder that is there can still refuse a picture: OpenJPEG one under
        # 32 px a side, netpbm's .pgm a colour one (a .pgm holding a PNG)
        why = (f"OpenCV cannot encode this {out.shape[1]}x{out.shape[0]} "
               f"{'grey' if out.ndim == 2 else f'{out.shape[2]}-channel'} picture as {suffix}"
               if cv2.haveImageWriter("x" + as_suffix) else f"no {suffix} encoder here")
        raise ValueError(f"could not write image: {path} ({why})")
    with atomic_output(path) as partial:  # a reader never sees half an image
        partial.write_bytes(data.tobytes())
    return stored is not None and stored.dtype != np.uint8


#: the PNG colour type of grey pixels with an alpha channel
PNG_GREY_ALPHA = 4


def png_colour_type(path: Path | None) -> int | None:
    """The colour type in a PNG file's header (0 grey, 2 RGB, 3 palette, 4 grey
    with alpha, 6 RGBA); None for a file that is not a PNG or cannot be read."""
    if path is None:
        return None
    try:
        with open(path, "rb") as f:
            head = f.read(26)
    except OSError:
        return None
    if len(head) < 26 or head[:8] != b"\x89PNG\r\n\x1a\n" or head[12:16] != b"IHDR":
        return None
    return head[25]


def png_grey_alpha(grey: np.ndarray, alpha: np.ndarray, profile: bytes | None = None) -> bytes:
    """An 8-bit grey+alpha PNG of ``grey`` and ``alpha`` (H, W uint8), with a
    grey ICC profile when given: OpenCV's PNG encoder takes 1, 3 or 4
    channels only. Each row is stored with PNG's 'Sub' filter (the
    difference to the pixel on its left), which deflate packs about as
    well as libpng's choice on photos and scans."""
    h, w = grey.shape
    pixels = np.dstack([grey, alpha]).reshape(h, 2 * w)
    rows = np.empty((h, 2 * w + 1), np.uint8)
    rows[:, 0] = 1  # filter type 1, Sub
    rows[:, 1:] = pixels
    rows[:, 3:] -= pixels[:, :-2]  # modulo 256, as the filter is defined

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data)))

    icc = chunk(b"iCCP", b"ICC profile\x00\x00" + zlib.compress(profile)) if profile else b""
    return (b"\x89PNG\r\n\x1a\n"
            + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, PNG_GREY_ALPHA, 0, 0, 0)) + icc
            + chunk(b"IDAT", zlib.compress(rows.tobytes(), 6)) + chunk(b"IEND", b""))


def _encode(ext: str, image: np.ndarray, profile: bytes | None) -> np.ndarray | None:
    """``image`` encoded as ``ext``, with the colour profile where the format
    takes it (else without); None when OpenCV has no such encoder, or its
    encoder refuses this picture."""
    if profile is not None and ext in _PROFILE_FORMATS:
        try:
            with native_stderr([]):  # libpng's own line when it refuses the profile
                ok, data = cv2.imencodeWithMetadata(ext, image, [cv2.IMAGE_METADATA_ICCP],
                                                    [np.frombuffer(profile, np.uint8)])
            if ok:
                return data
        except cv2.error:
            pass  # a profile the encoder refuses (libpng checks them): written without
    try:
        ok, data = cv2.imencode(ext, image)
    except cv2.error:
        return None
    return data if ok else None


def read_unchanged_upright(path: Path) -> tuple[np.ndarray | None, bytes | None]:
    """``path`` decoded with every channel and bit depth, with its EXIF
    orientation applied as :func:`~pipeline.datasets.read_image` applies it
    to the colour: OpenCV turns only 3-channel decodes, and the alpha plane
    of a turned RGBA photo must turn with its pixels; and its ICC colour
    profile. (None, None) if it does not decode."""
    data = np.fromfile(path, dtype=np.uint8)
    if not hasattr(cv2, "imdecodeWithMetadata"):  # an older OpenCV: the alpha stays as stored
        try:
            return cv2.imdecode(data, cv2.IMREAD_UNCHANGED), None
        except cv2.error:
            return None, None
    try:
        with native_stderr([]):  # a warning libpng gave as the image was read
            image, kinds, chunks = cv2.imdecodeWithMetadata(data, cv2.IMREAD_UNCHANGED)
    except cv2.error:
        return None, None
    if image is None or not image.size:
        return None, None
    found: dict[int, bytes] = {}  # the first chunk of each kind
    for k, c in zip(np.asarray(kinds).ravel(), chunks, strict=False):
        found.setdefault(int(k), bytes(np.asarray(c, np.uint8).ravel()))
    exif = found.get(cv2.IMAGE_METADATA_EXIF)
    # OpenCV hands a JPEG's block over without its 'Exif\0\0' marker, and reads no
    # block that keeps it (a WebP's from older ImageMagick): its colour stays as
    # stored then, and so must every channel
    readable = exif and not exif.startswith(b"Exif\x00\x00")
    return (orient(image, exif_orientation(exif) if readable else 1),
            found.get(cv2.IMAGE_METADATA_ICCP) or None)


#: suffixes OpenCV reads but encodes under another name of the same format
_ENCODE_AS = {".jfif": ".jpg", ".jpe": ".jpg"}
#: formats whose OpenCV encoder stores a colour profile
_PROFILE_FORMATS = (".jpg", ".jpeg", ".png", ".webp")


def iter_batches(paths: list[Path], size: int, skipped: list[tuple[Path, str]] | None = None
                 ) -> Iterator[list[tuple[Path, np.ndarray]]]:
    """Decoded images in batches of ``size``. With a ``skipped`` list, a file
    that does not decode, or that holds several pictures (a multi-page TIFF,
    an animated GIF or WebP: only the first would be decoded and written, the
    others lost), is recorded there (path, reason) and passed over, so one
    such file does not stop a folder; without one it raises."""
    batch = []
    for p in paths:
        image = read_or_skip(p, skipped, upright=True)
        if image is None:
            continue
        n = picture_count(p)
        if n > 1:
            reason = (f"{p} holds {n} pictures (pages or animation frames); only "
                      "single-picture files are anonymized here")
            if skipped is None:
                raise ValueError(reason)
            skipped.append((p, reason))
            continue
        batch.append((p, image))
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def picture_count(path: Path) -> int:
    """Pictures in an image file that decodes (pages, animation frames).

    Two pages at most are decoded (in grey, the cheapest form): one tells a
    single picture, and decoding every page at once to count them held a
    whole scanned document in memory (40 pages of 25 megapixels: 2.2 GB).
    Several pages, or a page OpenCV cannot decode (a float page of a TIFF,
    which made the decode fail and the file count as one picture, its other
    pages dropped), are counted without decoding them, from a copy of the
    bytes under a name of ours: OpenCV's path functions take the name as
    UTF-8 text, and a name that is not (``caf\\xe9.jpg`` from an old camera
    or a Latin-1 share, held with surrogate escapes) crashes the process."""
    data = np.fromfile(path, dtype=np.uint8)
    try:
        with native_stderr([]):  # a warning libpng gave as the image was read
            ok, pages = cv2.imdecodemulti(data, cv2.IMREAD_GRAYSCALE, None, (0, 2))
        if ok and len(pages) == 1:
            return 1
    except cv2.error:
        pass
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp, "picture" + path.suffix.lower())
        copy.write_bytes(data.tobytes())
        try:
            return max(int(cv2.imcount(str(copy))), 1)
        except cv2.error:
            return 1


def anonymize_folder(img_dir: Path, out_dir: Path, stack, settings: Settings,
                     progress: Callable[[int], None] | None = None,
                     skipped: list[tuple[Path, str]] | None = None,
                     eight_bit: list[Path] | None = None) -> dict[str, Detections]:
    """Blur every image of ``img_dir`` into ``out_dir`` (same relative paths);
    returns detections per relative path. Files that do not decode go to
    ``skipped`` (see :func:`iter_batches`), as do images that cannot be
    written (the file system's error named). Images of more than 8 bits a
    channel, written in 8, go to ``eight_bit``."""
    img_dir, out_dir = Path(img_dir), Path(out_dir)
    linked: dict[Path, Path] = {}
    paths = list_images(img_dir, out_dir, linked=linked)
    if check_out_dir(img_dir, out_dir, linked) is not None:
        # inside the image folder (or a folder linked from it): ours before its first image
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / RUN_MARKER).touch()
    found: dict[str, Detections] = {}
    left_out = skipped if skipped is not None else []
    counted = len(left_out)

    def advance() -> None:  # files left out count too: the bar ends at the folder's size
        nonlocal counted
        now = len(found) + len(left_out)
        if progress and now > counted:
            progress(now - counted)
        counted = now

    # where originals are: an output reached through a link (out/sub -> in/sub)
    # must not land there, nor on a linked image's own file (in/a.jpg -> out/a.jpg)
    originals, out_real = (img_dir.resolve(), *linked), out_dir.resolve()
    linked_images = {p.resolve(): p for p in paths if p.is_symlink()}

    def among_originals(target: Path) -> str | None:
        if (link := linked_images.get(target.resolve())) is not None:
            return f"it is the original {link} leads to"
        real = target.parent.resolve()
        if real.is_relative_to(out_real) or not any(real.is_relative_to(o) for o in originals):
            return None
        return f"its folder leads through a link to {real}, among the originals"

    # files this run wrote, by identity: two names of one file (a file system that
    # ignores case: IMG_1.JPG and img_1.jpg) must not both count as written
    written: dict[tuple[int, int], Path] = {}

    def identity(path: Path) -> tuple[int, int] | None:
        try:
            st = path.stat()
        except OSError:
            return None
        return st.st_dev, st.st_ino

    for batch in iter_batches(paths, settings.batch_size, skipped):
        dets = stack.detect([img for _, img in batch])
        for (path, img), d in zip(batch, dets, strict=True):
            rel = str(path.relative_to(img_dir))
            target = out_dir / rel
            try:
                if (why := among_originals(target)) is not None:
                    raise ValueError(f"could not write {target}: {why}")
                if (key := identity(target)) is not None and key in written:
                    earlier = written[key]
                    raise ValueError(f"could not write {target}: it is the file {earlier} "
                                     "was written to (a file system that ignores case, or a "
                                     "link)")
                deeper = write_rgb(target, anonymize_frame(img, d, settings.mode, settings.shape,
                                                           settings.mask_scale), like=path)
            except (ValueError, OSError) as exc:
                # one image the file system will not take (a name too long for
                # it, a folder of that name in the way) does not stop the others;
                # a full disk takes none of them
                if skipped is None or getattr(exc, "errno", None) in DISK_FULL_ERRNOS:
                    raise
                skipped.append((path, str(exc) if isinstance(exc, ValueError) else
                                f"could not write {target}: {exc.strerror or exc}"))
                continue
            found[rel] = d
            if (key := identity(target)) is not None:
                written[key] = target
            if deeper and eight_bit is not None:
                eight_bit.append(path)
        advance()
    advance()
    return found


def write_image_detections(out_dir: Path, found: dict[str, Detections]) -> Path:
    """``detections.pkl``: list of {filename, det} with det in the ImageAI format."""
    rows = [{"filename": name, "det": d.to_imageai()} for name, d in found.items()]
    # whole or not at all, like the images (the folder is made: every image may
    # have been left out)
    return write_atomic(Path(out_dir) / "detections.pkl", pickle.dumps(rows, protocol=4))


def write_face_pickle(save_dir: Path, found: dict[str, Detections], frames_dir: Path,
                      listing: list[str] | None = None) -> Path:
    """Research face pickle keyed by frame path. ``frame_idx`` is the frame's
    position in ``listing``, every frame listed (:func:`list_images`' natural
    order) including those that did not decode, so a damaged frame does not
    shift the later ones' index; without it, the position among ``found``."""
    position = {name: i for i, name in enumerate(listing if listing is not None else found)}
    frames = {position[name]: d.with_class(FACE) for name, d in found.items()}
    names = {position[name]: str(Path(frames_dir) / name) for name in found}
    return write_atomic(Path(save_dir) / "faces.pkl",
                        pickle.dumps(face_pickle(frames, names), protocol=4))
