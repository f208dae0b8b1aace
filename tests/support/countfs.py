"""``countfs://``: the local filesystem, instrumented for tests (reads logged, outages injected).

Why a filesystem and not a mock: the pipeline reads images in Ray actors (other processes), so the
instrument must work wherever the code runs. Every process with this folder on PYTHONPATH
registers the protocol (``sitecustomize.py``); the settings travel as environment variables:

- ``BLUFF_TEST_FS_LOG``: a file; every read (open for reading, cat) appends ``<pid> read <path>``
  and every listing ``<pid> ls <path>`` (one ``write`` per line, O_APPEND: safe across processes).
- ``BLUFF_TEST_FS_FAIL``: a file; while it exists every write raises ``OSError`` (a storage outage).
- ``BLUFF_TEST_FS_LATENCY``: seconds each read sleeps (a remote store's latency).
"""

from __future__ import annotations

import os
import threading
import time

from fsspec.implementations.local import LocalFileSystem
from fsspec.spec import AbstractFileSystem

_active = 0
_peak = 0
_lock = threading.Lock()


def peak_concurrency(reset: bool = False) -> int:
    """The most reads this process had in flight at once."""
    global _peak
    with _lock:
        p = _peak
        if reset:
            _peak = 0
    return p


def _log(kind: str, path: str) -> None:
    log = os.environ.get("BLUFF_TEST_FS_LOG")
    if log:
        fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, f"{os.getpid()} {kind} {path}\n".encode())
        finally:
            os.close(fd)


class CountingFS(AbstractFileSystem):
    protocol = "countfs"
    root_marker = "/"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.inner = LocalFileSystem()

    @classmethod
    def _strip_protocol(cls, path):
        path = str(path)
        if path.startswith("countfs://"):
            path = path[len("countfs://") :]
        return LocalFileSystem._strip_protocol(path)

    def _outage(self) -> None:
        flag = os.environ.get("BLUFF_TEST_FS_FAIL")
        if flag and os.path.exists(flag):
            raise OSError(5, "injected storage outage (BLUFF_TEST_FS_FAIL)")

    def _read(self, path: str) -> None:
        global _active, _peak
        _log("read", path)
        with _lock:
            _active += 1
            _peak = max(_peak, _active)
        try:
            time.sleep(float(os.environ.get("BLUFF_TEST_FS_LATENCY", "0") or 0))
        finally:
            with _lock:
                _active -= 1

    def ls(self, path, detail=True, **kwargs):
        _log("ls", path)
        return self.inner.ls(path, detail=detail, **kwargs)

    def info(self, path, **kwargs):
        return self.inner.info(path, **kwargs)

    def _open(self, path, mode="rb", **kwargs):
        if "r" in mode:
            self._read(path)
        else:
            self._outage()
            self.inner.makedirs(os.path.dirname(path), exist_ok=True)
        return self.inner._open(path, mode=mode, **kwargs)

    def cat_file(self, path, start=None, end=None, **kwargs):
        self._read(path)
        return self.inner.cat_file(path, start=start, end=end, **kwargs)

    def pipe_file(self, path, value, **kwargs):
        self._outage()
        self.inner.makedirs(os.path.dirname(path), exist_ok=True)
        return self.inner.pipe_file(path, value, **kwargs)

    def rm_file(self, path):
        self._outage()
        return self.inner.rm_file(path)

    def _rm(self, path):
        return self.rm_file(path)

    def rm(self, path, recursive=False, maxdepth=None):
        self._outage()
        return self.inner.rm(path, recursive=recursive, maxdepth=maxdepth)

    def mkdir(self, path, create_parents=True, **kwargs):
        return self.inner.mkdir(path, create_parents=create_parents, **kwargs)

    def makedirs(self, path, exist_ok=False):
        return self.inner.makedirs(path, exist_ok=exist_ok)


def register() -> None:
    import fsspec

    fsspec.register_implementation("countfs", CountingFS, clobber=True)
