"""Whole-file writes on a local disk: the one atomic-write helper of bluff_ray.

Why a module of its own, below every layer (it imports nothing from bluff_ray): local files are
written by the results store (a local results root), by the run layer's node cache of decoded
images and by the digits model's checkpoint cache, and each must never leave a partial file for a
reader or a rerun to trust. The bytes go to a temporary file in the same folder, which is then
renamed into place (``atomic_write``) or hard-linked when the name must not exist yet
(``temp_beside`` + ``os.link``: the results store's exclusive create).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator

#: Temporary files start with this, so listings can skip them.
TEMP_PREFIX = ".tmp-"

# mkstemp creates 0600 files; results should get the usual permissions (0666 minus the umask) so
# that a web server running as another user can serve a local results folder.
_UMASK = os.umask(0)
os.umask(_UMASK)
FILE_MODE = 0o666 & ~_UMASK


@contextlib.contextmanager
def temp_beside(path: str | os.PathLike, data: bytes) -> Iterator[str]:
    """``data`` in a temporary file next to ``path`` (created folders; usual permissions; flushed to
    disk), removed afterwards unless the caller renamed or linked it into place."""
    path = os.fspath(path)
    folder = os.path.dirname(path) or "."
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=TEMP_PREFIX + os.path.basename(path) + ".")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, FILE_MODE)
        yield tmp
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write(path: str | os.PathLike, data: bytes) -> None:
    """Replace ``path`` with ``data`` in one rename: a reader sees the old file or the new one, whole."""
    with temp_beside(path, data) as tmp:
        os.replace(tmp, os.fspath(path))
