"""The one-line error text every layer shows users.

Errors a user can fix are reported as one line (``anonymize: error: …``, a
job's ``error`` field). Exceptions from libraries (FFmpeg, torch, boto3)
often carry several lines or none; :func:`one_line` is how every layer
turns one into a single line.
"""

from __future__ import annotations

import errno

#: what a local file system answers when it takes no more data: full, over quota, a file
#: larger than it (or ``ulimit -f``) allows, mounted read-only. Never a network's
#: error, and no retry fixes it: the user has to make room.
DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS})


class WeightsError(RuntimeError):
    """Missing, corrupt or unconvertible weights; the message is one line."""


class DeviceError(ValueError):
    """A device setting this machine cannot serve (``cuda`` without CUDA, ``cuda:3``
    on a machine with one GPU): the user's to fix, so one line, exit status 2, and a
    job fails at once rather than retrying on the same machine."""


#: control characters (a line break in a file name) as they are written escaped
_ESCAPED = {c: repr(chr(c))[1:-1] for c in (*range(32), 127)}


def escape_controls(text: str) -> str:
    """``text`` with control characters written escaped (``\\n``): a file name may
    hold a line break, which made two lines of what is meant as one."""
    return text.translate(_ESCAPED)


def one_line(exc: BaseException | str, limit: int | None = None) -> str:
    """The first non-empty line of ``exc``'s message (its type name if it has
    none), whitespace collapsed, cut to ``limit`` characters when given."""
    text = str(exc).strip()
    line = " ".join(text.splitlines()[0].split()) if text else type(exc).__name__
    return line[:limit] if limit else line
