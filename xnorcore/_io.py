"""Atomic file writes: a file is replaced whole or not at all."""

import contextlib
import os
import tempfile
from pathlib import Path

__all__ = ["atomic_write"]


def _new_file_mode():
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


@contextlib.contextmanager
def atomic_write(path):
    """Open a temporary file next to ``path`` for binary writing; on success it replaces ``path``.

    The data goes to a temporary file in the same folder, is flushed to disk,
    and then renamed over ``path`` (an atomic step on POSIX and Windows), so a
    failure at any point (a full disk, an exception while writing, Ctrl-C)
    leaves an existing ``path`` as it was and no temporary file behind.  The
    new file keeps the permissions of the file it replaces.

    Raises
    ------
    FileNotFoundError
        If the folder of ``path`` does not exist.
    OSError
        If ``path`` exists and is not a regular file (a device, a FIFO or a
        folder is never replaced), or the folder cannot be written.
    """
    path = Path(path)
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        mode = None
    if mode is not None and not os.path.isfile(path):
        raise OSError(f"{path} exists and is not a regular file")
    if not path.parent.is_dir():  # named here, not as the temporary file that mkstemp would name
        raise FileNotFoundError(f"{path}: the folder {path.parent} does not exist")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), (mode & 0o7777) if mode is not None else _new_file_mode())
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
