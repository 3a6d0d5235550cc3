"""The ``anonymize`` command line.

Each subcommand lives in ``anonymize/commands/<name>.py`` and exposes
``HELP`` (one line), ``add_arguments(parser)`` and ``run(args) -> int``.
Modules are imported only when their command runs, so ``anonymize run``
never imports Celery and ``anonymize status`` never imports torch.

Errors a user can fix (missing file, not a video, bad weights, bad
settings, a full disk) are printed as one line ``anonymize: error: ...`` with exit
status 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import importlib
import os
import sys

#: command name -> module under anonymize.commands
COMMANDS = {
    "run": "run",
    "render": "render",
    "review": "review",
    "submit": "submit",
    "status": "status",
    "cancel": "cancel",
    "worker": "worker",
    "images": "images",
    "faces": "faces",
    "eval": "eval",
    "convert-weights": "convert_weights",
    "models": "models",
}


def _user_errors() -> tuple[type[BaseException], ...]:
    errors: list[type[BaseException]] = [FileNotFoundError, ValueError, IsADirectoryError]
    # modules that do not import torch: a refusal must be quick
    for mod, name in (("models.errors", "WeightsError"), ("pipeline.video.probe", "VideoError")):
        try:
            errors.append(getattr(importlib.import_module(mod), name))
        except (ImportError, AttributeError):
            pass
    return tuple(errors)


#: errors of the machine's storage, not of the program, with what the user can do
#: about each: a full disk or quota, a file larger than the file system (or ``ulimit
#: -f``) allows, a read-only or failing file system, no permission. They are one
#: line, not a traceback that ends in the same words; the output itself was never
#: renamed into place.
_STORAGE_HINTS = {
    errno.ENOSPC: "free some space there", errno.EDQUOT: "free some space there",
    errno.EFBIG: "a file there cannot grow that large (FAT32 holds at most 4 GiB; "
                 "see also ulimit -f)",
    errno.EROFS: "the file system is mounted read-only",
    errno.EIO: "the storage failed: check the disk",
    errno.EACCES: "check the permissions there", errno.EPERM: "check the permissions there",
}


def _storage_error(exc: OSError) -> str | None:
    """The one-line error for ``exc`` when the machine's storage refused a read or
    write, or None for any other OSError (a bug: keep its traceback). It names the
    file by its final name, not the hidden temporary one it was being written
    under; a file in a work folder of ours under TMPDIR (which holds a run's
    copies of the source, removed before this line is printed) is named by TMPDIR,
    the folder the user can change."""
    import tempfile
    from pathlib import Path

    from pipeline.video.output import final_name

    hint = _STORAGE_HINTS.get(exc.errno)
    if hint is None:
        return None
    reason = exc.strerror or os.strerror(exc.errno)
    if not exc.filename:
        return f"{reason} writing the output, its records or the work folder under TMPDIR: {hint}"
    path = Path(final_name(exc.filename))
    folder = path.parent
    while folder.name.startswith("anonymize-") and folder.parent != folder:
        folder = folder.parent  # a work folder of ours (pipeline/process.py, video/contain.py)
    if folder != path.parent and folder == Path(tempfile.gettempdir()):
        return (f"{reason} in {folder}, which holds the temporary files of a run: {hint}, "
                f"or set TMPDIR to a folder with room")
    return f"{path}: {reason}: {hint}"


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="anonymize",
        description="Blur faces and licence plates in videos and images.")
    parser.add_argument("--version", action="version", version=f"anonymize {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, module_name in COMMANDS.items():
        if only is not None and name != only:
            # cheap placeholder so `anonymize --help` lists every command
            sub.add_parser(name, help=_help_of(module_name), add_help=False)
            continue
        module = importlib.import_module(f"anonymize.commands.{module_name}")
        p = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def _version() -> str:
    """The installed distribution's version (pyproject.toml's, at install time)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("anonymize")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "(not installed)"


#: modules of the optional extras -> the extra that installs them: a command that
#: needs one where it is not installed says so in one line, not a traceback
_EXTRA_OF = {"celery": "distributed", "kombu": "distributed", "redis": "distributed",
             "boto3": "distributed", "botocore": "distributed", "flower": "distributed"}


def _missing_extra(exc: ModuleNotFoundError, command: str | None) -> str | None:
    """The one-line error for a module of an optional extra that is not installed,
    or None when ``exc`` is about any other module (a bug: keep its traceback)."""
    top = (exc.name or "").split(".")[0]
    extra = _EXTRA_OF.get(top)
    if extra is None:
        return None
    return (f"`anonymize {command}` needs the {extra} extra ({top} is not installed): "
            f"pip install 'anonymize[{extra}]'")


def _help_of(module_name: str) -> str:
    try:
        return importlib.import_module(f"anonymize.commands.{module_name}").HELP
    except Exception:  # a command whose optional dependencies are missing
        return "(unavailable)"


#: the most pixels an image may have to be decoded, unless OPENCV_IO_MAX_IMAGE_PIXELS
#: says otherwise: 2^28 (268 megapixels) holds every camera's photos (200 MP phones,
#: 150 MP medium format). OpenCV's own limit, 2^30, let a 1 MB PNG of one colour claim a
#: gigapixel (a decompression bomb), which needs about 15 bytes of memory a pixel here
MAX_IMAGE_PIXELS = 1 << 28

#: the project's packages: warnings raised from them are the project's own
_OWN_PACKAGES = frozenset({"anonymize", "pipeline", "models", "workers", "tasks"})


def _one_line_warnings() -> None:
    """The project's own warnings (a dataset image whose size differs from its
    annotation, ...) reach the user as one ``anonymize: warning:`` line, like
    the commands' other warnings, instead of Python's form that names a file
    and repeats a source line; other libraries' warnings keep Python's form."""
    import warnings
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    python_form = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        try:
            parts = Path(filename).resolve().relative_to(root).parts
        except ValueError:
            parts = ()
        if parts[:1] and parts[0] in _OWN_PACKAGES:
            from anonymize.commands.run import warn

            warn(" ".join(str(message).split()))
        else:
            python_form(message, category, filename, lineno, file, line)

    warnings.showwarning = show


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP, raised as the interrupt Ctrl-C raises so that the same
    clean-up runs. Without it the default action ends the process on the spot,
    and a run stopped by ``docker stop``, systemd or ``timeout`` left its
    temporary folder behind, which holds stream copies of the source's
    unblurred video, and a half-written output beside the real one."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


@contextlib.contextmanager
def _stopped_like_ctrl_c():
    """SIGTERM and SIGHUP raise :class:`Terminated` while the command runs (where
    they still have their default action, in the main thread)."""
    import signal
    import threading

    signals = (signal.SIGTERM, signal.SIGHUP)
    before = {sig: signal.getsignal(sig) for sig in signals}

    def stop(signum, frame):
        # a second signal must not cut the clean-up the first one started short
        for sig in signals:
            signal.signal(sig, signal.SIG_IGN)
        raise Terminated(signum)

    ours = threading.current_thread() is threading.main_thread()
    if ours:
        for sig in signals:
            if before[sig] == signal.SIG_DFL:
                signal.signal(sig, stop)
    try:
        yield
    finally:
        if ours:
            for sig, handler in before.items():
                signal.signal(sig, handler)


def main(argv: list[str] | None = None) -> int:
    from pipeline.memory import limit_heap_growth

    limit_heap_growth()  # before the first frame buffer: flat memory on long videos
    _one_line_warnings()
    # before OpenCV loads: its own log lines ('[ WARN:0@1.7] global grfmt_tiff.cpp:811
    # readData OpenCV TIFF: ... can not handle images with 32-bit samples', three
    # '[ERROR:...]' lines when an encoder refuses a picture) stood beside the one line
    # that names the file left out; every such failure is reported in that line
    os.environ.setdefault("OPENCV_LOG_LEVEL", "FATAL")
    # also before OpenCV loads, which reads it then: images over this many pixels
    # are refused from their header, before anything is allocated
    os.environ.setdefault("OPENCV_IO_MAX_IMAGE_PIXELS", str(MAX_IMAGE_PIXELS))
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(only=command if command in COMMANDS else None)
    args = parser.parse_args(argv)
    # a Celery worker has its own shutdown on SIGTERM
    stopping = _stopped_like_ctrl_c() if command != "worker" else contextlib.nullcontext()
    try:
        with stopping:
            # every command, not only those that read settings: a misspelt
            # ANONYMIZE_MODELS_DIR sent `models fetch` to the default cache unsaid
            from pipeline.settings import check_environment

            check_environment(os.environ)
            return int(args._run(args) or 0)
    except Terminated as exc:
        import signal

        print(f"anonymize: stopped by {signal.Signals(exc.signum).name}", file=sys.stderr)
        return 128 + exc.signum
    except KeyboardInterrupt:
        print("anonymize: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head` and the like
        sys.stderr.close()
        return 0
    except ModuleNotFoundError as exc:
        line = _missing_extra(exc, command)
        if line is None:
            raise
        print(f"anonymize: error: {line}", file=sys.stderr)
        return 2
    except _user_errors() as exc:
        from models.errors import one_line

        print(f"anonymize: error: {one_line(_names_escaped(exc, argv))}", file=sys.stderr)
        return 2
    except OSError as exc:
        from models.errors import escape_controls

        line = _storage_error(exc)
        if line is None:
            raise
        print(f"anonymize: error: {escape_controls(line)}", file=sys.stderr)
        return 2


def _names_escaped(exc: BaseException, argv: list[str]) -> BaseException | str:
    """``exc``'s message with every argument that holds a control character (a
    file name with a line break) written escaped where the message names it: the
    error line is the message's first line, and such a name cut it off there."""
    from models.errors import escape_controls

    text = str(exc)
    odd = [a for a in argv if a != escape_controls(a) and a in text]
    if not odd:
        return exc
    for arg in sorted(odd, key=len, reverse=True):
        text = text.replace(arg, escape_controls(arg))
    return text


if __name__ == "__main__":
    sys.exit(main())
