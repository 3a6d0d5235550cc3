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
from collections.abc import Callable, Iterator
from pathlib import Path

import cv2
import numpy as np

from models.detections import FACE, Detections
from models.errors import DISK_FULL_ERRNOS

from .blur import anonymize_frame
from .datasets import IMAGE_SUFFIXES, UNREADABLE_SUFFIXES, read_or_skip
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
                unreadable: list[tuple[Path, str]] | None = None) -> list[Path]:
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
    in silence; the image folder itself unreadable is an error."""
    folder = Path(folder)
    if not folder.is_dir():  # an existing file was "not found" too
        raise FileNotFoundError(f"image folder not found: {folder}" if not folder.exists() else
                                f"image folder {folder} is a file, not a folder: give the "
                                f"folder that holds it")
    inside = check_out_dir(folder, out_dir) if out_dir is not None else None
    found = []
    searched: set[str] = set()
    failed: list[tuple[Path, str]] = []

    def cannot_read(err: OSError) -> None:
        failed.append((Path(err.filename or folder), err.strerror or str(err)))

    for top, dirs, files in os.walk(folder, followlinks=True, onerror=cannot_read):
        real = os.path.realpath(top)
        if real in searched:  # a link loop, or a second link to one folder
            dirs[:] = []
            continue
        searched.add(real)
        dirs[:] = sorted((d for d in dirs if not d.startswith(".")),
                         key=lambda d: natural_key(Path(d)))
        for name in files:
            p = Path(top, name)
            if (name.startswith(".")
                    or p.suffix.lower() not in IMAGE_SUFFIXES + UNREADABLE_SUFFIXES
                    or not (p.is_file() or (p.is_symlink() and not p.exists()))):
                continue
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


def check_out_dir(folder: Path, out_dir: Path) -> Path | None:
    """Refuse an output folder where blurred images could replace originals;
    return it (resolved) when it lies inside ``folder``, else None.

    Refused: the image folder itself; a folder that holds the image folder
    (``--img-dir lib/new --out-dir lib`` writes ``lib/new/a.jpg`` over
    ``lib/a.jpg``); and a folder inside the image folder that already holds
    files but no records of an earlier run (:data:`RUN_RECORDS`): its own
    images would be left out of the run and could be overwritten by its
    outputs. Accepted inside: a folder that does not exist yet, an empty
    one, or an earlier run's output (run again into it, it is refreshed),
    also one stopped before its records (:data:`RUN_MARKER`)."""
    out, root = Path(out_dir).resolve(), Path(folder).resolve()
    if out == root:
        raise ValueError(f"the output folder {out_dir} is the image folder: the originals "
                         "would be overwritten; give another folder")
    if root.is_relative_to(out):
        raise ValueError(f"the output folder {out_dir} holds the image folder {folder}: "
                         "the originals could be overwritten; give another folder")
    if not out.is_relative_to(root):
        return None
    if out.is_dir() and any(out.iterdir()) and not any((out / n).is_file()
                                                       for n in (*RUN_RECORDS, RUN_MARKER)):
        raise ValueError(f"the output folder {out_dir} lies inside the image folder and "
                         f"already holds files, but no {' or '.join(RUN_RECORDS)} of an "
                         "earlier run: its images would be left out and could be "
                         "overwritten; give an empty or new folder")
    return out


def write_rgb(path: Path, rgb: np.ndarray, like: Path | None = None) -> None:
    """Write ``rgb``; with ``like`` (the source file) in its channel layout: a
    grey source stays grey, a source with transparency keeps its alpha
    channel (the blurred colour under it), so a cut-out PNG does not come
    back on an opaque background. 16-bit sources are written in 8 bits.

    The source's colour profile (ICC) goes with the pixels where the format
    holds one (JPEG, PNG, WebP): the pixels are read as stored, in the
    profile's colours, and without it a wide-gamut photo (every phone's
    Display P3) is shown dull. A profile for other channels than the output
    has (a CMYK JPEG's, decoded to RGB) is left out."""
    path.parent.mkdir(parents=True, exist_ok=True)
    out = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    # the source, every channel and bit depth, turned as ``rgb`` was
    stored, profile = read_unchanged_upright(like) if like is not None else (None, None)
    if stored is not None and stored.ndim == 2:
        out = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    elif stored is not None and stored.shape[2] == 4 and stored.shape[:2] == rgb.shape[:2]:
        alpha = stored[:, :, 3]
        out = np.dstack([out, alpha if alpha.dtype == np.uint8 else (alpha >> 8).astype(np.uint8)])
    if profile is not None and profile[16:20] != (b"GRAY" if out.ndim == 2 else b"RGB "):
        profile = None
    suffix = path.suffix.lower()
    as_suffix = _ENCODE_AS.get(suffix, suffix)
    data = _encode(as_suffix, out, profile)
    if data is None:
        # an encoder that is there can still refuse a picture: OpenJPEG one under
        # 32 px a side, netpbm's .pgm a colour one (a .pgm holding a PNG)
        why = (f"OpenCV cannot encode this {out.shape[1]}x{out.shape[0]} "
               f"{'grey' if out.ndim == 2 else f'{out.shape[2]}-channel'} picture as {suffix}"
               if cv2.haveImageWriter("x" + as_suffix) else f"no {suffix} encoder here")
        raise ValueError(f"could not write image: {path} ({why})")
    with atomic_output(path) as partial:  # a reader never sees half an image
        partial.write_bytes(data.tobytes())


def _encode(ext: str, image: np.ndarray, profile: bytes | None) -> np.ndarray | None:
    """``image`` encoded as ``ext``, with the colour profile where the format
    takes it (else without); None when OpenCV has no such encoder, or its
    encoder refuses this picture."""
    if profile is not None and ext in _PROFILE_FORMATS:
        try:
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
        image, kinds, chunks = cv2.imdecodeWithMetadata(data, cv2.IMREAD_UNCHANGED)
    except cv2.error:
        return None, None
    if image is None or not image.size:
        return None, None
    found: dict[int, bytes] = {}  # the first chunk of each kind
    for k, c in zip(np.asarray(kinds).ravel(), chunks, strict=False):
        found.setdefault(int(k), bytes(np.asarray(c, np.uint8).ravel()))
    exif = found.get(cv2.IMAGE_METADATA_EXIF)
    return (orient(image, exif_orientation(exif) if exif else 1),
            found.get(cv2.IMAGE_METADATA_ICCP) or None)


def exif_orientation(exif: bytes) -> int:
    """The Orientation tag (0x0112) of IFD0 in an EXIF block, 1 when absent or unreadable."""
    tiff = exif[6:] if exif.startswith(b"Exif\x00\x00") else exif
    order = {b"II": "<", b"MM": ">"}.get(tiff[:2])
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
    if orientation >= 5:  # 5..8 swap the axes first
        image = cv2.transpose(image)
    flip = {2: 1, 3: -1, 4: 0, 6: 1, 7: -1, 8: 0}.get(orientation)
    return image if flip is None else cv2.flip(image, flip)


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

    Counted from the file's bytes, never by handing the path to OpenCV: its
    path functions take the name as UTF-8 text, and a name that is not
    (``caf\\xe9.jpg`` from an old camera or a Latin-1 share, which Python
    holds with surrogate escapes) crashes the process. Pages are decoded in
    grey, the cheapest form that still counts them."""
    try:
        ok, pages = cv2.imdecodemulti(np.fromfile(path, dtype=np.uint8), cv2.IMREAD_GRAYSCALE)
    except cv2.error:
        return 1
    return len(pages) if ok and pages else 1


def anonymize_folder(img_dir: Path, out_dir: Path, stack, settings: Settings,
                     progress: Callable[[int], None] | None = None,
                     skipped: list[tuple[Path, str]] | None = None) -> dict[str, Detections]:
    """Blur every image of ``img_dir`` into ``out_dir`` (same relative paths);
    returns detections per relative path. Files that do not decode go to
    ``skipped`` (see :func:`iter_batches`), as do images that cannot be
    written (the file system's error named)."""
    img_dir, out_dir = Path(img_dir), Path(out_dir)
    paths = list_images(img_dir, out_dir)
    if check_out_dir(img_dir, out_dir) is not None:  # inside: ours before its first image
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

    for batch in iter_batches(paths, settings.batch_size, skipped):
        dets = stack.detect([img for _, img in batch])
        for (path, img), d in zip(batch, dets, strict=True):
            rel = str(path.relative_to(img_dir))
            target = out_dir / rel
            try:
                write_rgb(target, anonymize_frame(img, d, settings.mode, settings.shape,
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
