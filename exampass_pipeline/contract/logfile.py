"""Writing one log line so that a full disk leaves a whole line or nothing, and says so.

Why this exists: the prediction log promises whole lines (one ``write`` per record on ``O_APPEND``), but a
write on a full file system can be *short*: the kernel stores the bytes that fit and returns their count, and
the next write fails with ENOSPC. Left there, those bytes are a torn line, and because nothing ends it, the
first record written once space returns would be glued onto it and lost with it. So a short write is cut
back (``ftruncate`` to the size before it) when the file still ends with exactly our partial bytes, and the
caller gets ``LogUnavailable``: the API answers 503 and, since nothing was logged, the prediction is not
handed out either (an unlogged answer would be invisible to monitoring). The descriptor stays open, so the
first write after space returns simply succeeds: logging resumes by itself.
"""

from __future__ import annotations

import errno
import os


class LogUnavailable(OSError):
    """The log could not take a whole record (disk full, I/O error); nothing of the record was kept.

    An ``OSError`` so that callers that already handled the log's I/O errors keep handling this one.
    """


def _reason(exc: OSError) -> str:
    name = errno.errorcode.get(exc.errno or 0, "")
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"no space left on the log's file system ({name})"
    return f"{name or type(exc).__name__}: {exc.strerror or exc}"


def _cut_back(fd: int, partial: bytes) -> bool:
    """Remove ``partial`` from the end of the file, only if the file really ends with it.

    Another process appending to the same file after us would make the end not ours; then nothing is cut
    (the reader quarantines a torn line with its reason, which is better than deleting someone's record).
    The descriptor is write-only, so the tail is read through a second, read-only descriptor.
    """
    size = os.fstat(fd).st_size
    start = size - len(partial)
    if start < 0:
        return False
    if not os.path.isdir("/proc/self/fd"):
        return False  # no way to read a write-only descriptor's tail: leave it (see above)
    reader = os.open(f"/proc/self/fd/{fd}", os.O_RDONLY)
    try:
        if os.pread(reader, len(partial), start) != partial:
            return False
    finally:
        os.close(reader)
    os.ftruncate(fd, start)
    return True


def write_line(fd: int, line: bytes, where: object) -> None:
    """Append ``line`` (one whole record ending in a newline) to ``fd`` with one ``write``, or raise.

    On success this costs exactly the one ``write`` the hot path always cost. On a failed write nothing was
    stored; on a short write the stored part is cut back first. Either way ``LogUnavailable`` names ``where``
    (the log's directory) and the reason.
    """
    try:
        written = os.write(fd, line)
    except OSError as exc:
        raise LogUnavailable(f"cannot append to the log in {where}: {_reason(exc)}") from exc
    if written == len(line):
        return
    try:
        cut = _cut_back(fd, line[:written])
    except OSError:
        cut = False
    kept = "cut back" if cut else "could not be cut back"
    raise LogUnavailable(
        f"cannot append to the log in {where}: short write ({written} of {len(line)} bytes, {kept}): "
        "no space left on the log's file system",
    )
