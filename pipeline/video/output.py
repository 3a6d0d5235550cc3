"""The user's output file: checked before any work, written atomically.

A run can take hours; a bad output path found at the end throws all of it
away, and an output that is the input (through a hard link or a symlink)
destroys the user's only copy. So :func:`check_output_path` runs before the
input is even probed, and the finished video is written under a temporary
name in the destination folder and renamed into place only when complete
(:func:`atomic_output`): a crash or Ctrl-C never leaves a partial file
under the user's name.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import secrets
import tempfile
from collections.abc import Iterator
from pathlib import Path

from .encode import check_output_suffix
from .probe import VideoError


def same_file(a: Path, b: Path) -> bool:
    """Whether two paths name one file: same device and inode, so hard links and
    symlinks count too (a path that does not exist is nobody's twin)."""
    try:
        sa, sb = os.stat(a), os.stat(b)
    except OSError:
        return False
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)


def check_folder_writable(folder: Path, what: str = "output folder") -> None:
    """``folder`` exists and can be written, or can be created: the nearest existing
    ancestor is a writable directory."""
    check_name_lengths(folder, what)
    probe_dir = folder
    while not probe_dir.exists():
        if probe_dir.is_symlink():
            raise VideoError(f"{what} {folder} cannot be created: {probe_dir} is a broken link")
        probe_dir = probe_dir.parent
    if not probe_dir.is_dir():
        raise VideoError(f"{what} {folder} cannot be created: {probe_dir} is not a folder")
    # a file really made and removed: permission bits do not tell root about a
    # read-only mount or a folder like /proc, where the run failed only at its end
    try:
        with tempfile.TemporaryFile(dir=probe_dir):
            pass
    except OSError as e:
        raise VideoError(f"{what} {folder} is not writable ({probe_dir}: "
                         f"{e.strerror or e})") from None


def check_output_path(source: Path, output: Path) -> None:
    """Everything about OUTPUT that can be checked without reading the input:
    its container, that it is not the input (by file identity), that it is not
    a folder, that its folder exists or can be created."""
    source, output = Path(source), Path(output)
    check_name_lengths(output)  # first: a name too long fails every look at the path
    if output.is_dir():
        raise VideoError(f"output {output} is a folder; name a file such as {output / 'out.mp4'}")
    check_output_suffix(output)
    if same_file(source, output) or output.absolute() == source.absolute():
        raise VideoError(f"output {output} is the input file {source}; choose another name")
    check_folder_writable(output.parent)


def check_name_lengths(path: Path, what: str = "output") -> None:
    """Every name of ``path`` still to be made (the file or folder, and the
    folders above it that do not exist yet) fits its file system: a longer one
    was refused only when the finished video was renamed into place, or its
    records were written, after all the work."""
    existing = path.parent
    while existing.parent != existing:
        try:
            os.stat(existing)  # Path.exists() raises for a name too long
            break
        except OSError:
            existing = existing.parent
    limit = name_max(existing)
    for part in path.relative_to(existing).parts:
        size = len(os.fsencode(part))
        if size > limit:
            raise VideoError(f"{what} {path}: the name {part[:40]}... is {size} bytes long, "
                             f"more than the {limit} the file system of {existing} takes; "
                             f"choose a shorter name")


def check_records_folder(output: Path, records: Path, names: tuple[str, ...] = ()) -> None:
    """The records folder (``--detections-dir``) can be written and is not the output
    file, nor inside it: the records made a folder of the output's name, and the
    finished video could not be put there, found only at the end. None of the
    record files ``names`` stands there as a folder: that too was found only when
    the records were renamed into place, after all the work."""
    folder = Path(records).absolute()
    if folder == Path(output).absolute() or Path(output).absolute() in folder.parents:
        raise VideoError(f"detections folder {records} is the output file {output} (or lies "
                         f"in it); give the records a folder of their own")
    check_folder_writable(Path(records), "detections folder")
    for name in names:
        if (Path(records) / name).is_dir():
            raise VideoError(f"{Path(records) / name} is a folder, where the run writes its "
                             f"{name}: move it, or give the records another folder "
                             f"(--detections-dir)")


def partial_name(output: Path) -> Path:
    """A hidden temporary name beside ``output`` with the same suffix (the
    container format is chosen by suffix). The marks add 18 bytes to the
    name, so a legal name near the file system's limit (255 bytes: 80 CJK
    characters are 240) would fail with ENAMETOOLONG; then the stem is
    replaced by a short hash of it."""
    tag = f".partial-{secrets.token_hex(4)}{output.suffix}"
    stem = output.stem
    if len(os.fsencode(f".{stem}{tag}")) > name_max(output.parent):
        stem = hashlib.sha256(os.fsencode(stem)).hexdigest()[:16]
    return output.with_name(f".{stem}{tag}")


def final_name(path) -> str:
    """The name the user gave for a file being written under :func:`partial_name`
    (``out/.clip.partial-1a2b3c4d.mp4`` -> ``out/clip.mp4``), so that an error names
    it and not a hidden name that is gone by the time the user reads it; any other
    path as it is. A stem shortened to its hash is left as it is."""
    text = os.fsdecode(path)
    folder, sep, name = text.rpartition("/")
    m = re.fullmatch(r"\.(.+)\.partial-[0-9a-f]{8}(\.[^./]*)?", name)
    return f"{folder}{sep}{m.group(1)}{m.group(2) or ''}" if m else text


def name_max(folder: Path) -> int:
    """Longest file name, in bytes, that ``folder``'s file system takes (255 where
    it does not say)."""
    try:
        return int(os.pathconf(folder, "PC_NAME_MAX"))
    except (OSError, ValueError, AttributeError):
        return 255


@contextlib.contextmanager
def atomic_output(output: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``output``; on success rename it over
    ``output`` (atomic on one filesystem), on any failure or interrupt remove it."""
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = partial_name(output)
    try:
        yield tmp
        os.replace(tmp, output)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        if isinstance(exc, OSError) and exc.errno and exc.filename is None:
            # a write that failed (a full disk) names no file: name the one meant
            raise OSError(exc.errno, exc.strerror, str(output)) from exc
        raise


def write_atomic(path: Path, data: bytes) -> Path:
    """Write a small file (records, reports) so readers never see half of it; a
    write the system refuses (a full disk) names ``path`` (:func:`atomic_output`)."""
    with atomic_output(Path(path)) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_atomic_all(files: dict[Path, bytes]) -> None:
    """Write small files that belong together (a run's records) as :func:`write_atomic`
    does, and all or none: each under its temporary name, renamed into place only once
    every one is complete. One that does not fit (a full disk) left the others already
    renamed: a set of records that no run wrote."""
    with contextlib.ExitStack() as stack:
        for path, data in files.items():
            stack.enter_context(atomic_output(Path(path))).write_bytes(data)
