"""A results root on any fsspec filesystem, written one whole object at a time.

Why whole objects: resume trusts ``exists()``. On S3 one ``fs.pipe`` is one PUT (or one multipart
upload), which becomes visible only when complete; on a local disk the bytes go to a temporary file
in the same folder and are renamed into place. Either way no reader, and no rerun, ever sees a
partial file.

Credentials: ``storage_options`` (and the standard AWS settings s3fs reads) go to the filesystem
only. Error messages name the URL (with any ``user:secret@`` removed), never the options.
"""

from __future__ import annotations

import io
import json
import os
import posixpath
import tempfile
import uuid
from typing import Any, Iterable

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem

from .config import redact_url

PARQUET_OPTIONS = dict(compression="snappy", write_statistics=True)
# mkstemp creates 0600 files; results should get the usual permissions (0666 minus the umask) so
# that a web server running as another user can serve a local results folder.
_UMASK = os.umask(0)
os.umask(_UMASK)
FILE_MODE = 0o666 & ~_UMASK


class StorageError(RuntimeError):
    """The results root cannot be used (unreachable, read-only, missing bucket, ...)."""


def table_to_parquet(table: pa.Table, group_by: str | None = None, groups: Iterable[Any] | None = None) -> bytes:
    """Serialise ``table`` to Parquet bytes (snappy, statistics).

    With ``group_by``, rows must be sorted by that column and each value in ``groups`` (in order)
    gets exactly one row group, empty when no row has that value, so a pair's row-group index is
    the same in the nodes and edges files.
    """
    sink = pa.BufferOutputStream()
    with pq.ParquetWriter(sink, table.schema, **PARQUET_OPTIONS) as w:
        if group_by is None:
            w.write_table(table, row_group_size=max(1, table.num_rows))
        else:
            col = table.column(group_by).to_pylist()
            if col != sorted(col):
                raise ValueError(f"rows must be sorted by {group_by}")
            start = 0
            for g in groups:
                stop = start
                while stop < len(col) and col[stop] == g:
                    stop += 1
                part = table.slice(start, stop - start)
                w.write_table(part, row_group_size=max(1, part.num_rows))
                start = stop
            if start != len(col):
                raise ValueError(f"rows with {group_by} values not in groups: {sorted(set(col[start:]))}")
    return sink.getvalue().to_pybytes()


class Store:
    """Relative paths under one root URL; every write is one whole object."""

    def __init__(self, url: str, storage_options: dict | None = None):
        self.url = str(url).rstrip("/") or str(url)
        self.storage_options = dict(storage_options or {})
        try:
            self.fs, self.root = fsspec.core.url_to_fs(self.url, **self.storage_options)
        except (ImportError, ValueError, TypeError) as e:
            raise StorageError(f"cannot open results root {redact_url(self.url)}: {e}") from None
        self.root = self.root.rstrip("/")
        self.local = isinstance(self.fs, LocalFileSystem)

    # Stores travel to Ray actors by URL + options; each process opens its own filesystem
    # (s3fs instances must not be shared across fork).
    def __reduce__(self):
        return (Store, (self.url, self.storage_options))

    def __repr__(self) -> str:  # never shows storage_options
        return f"Store({redact_url(self.url)!r})"

    def path(self, rel: str) -> str:
        rel = rel.strip("/")
        return f"{self.root}/{rel}" if rel else self.root

    def uri(self, rel: str = "") -> str:
        """The full URL of ``rel`` (for readers such as pandas/DuckDB), without credentials."""
        return redact_url(f"{self.url}/{rel.strip('/')}" if rel else self.url)

    # --- writes ---------------------------------------------------------------------------------
    def write_bytes(self, rel: str, data: bytes) -> None:
        path = self.path(rel)
        if self.local:
            folder = os.path.dirname(path)
            os.makedirs(folder, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-" + os.path.basename(path) + ".")
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                os.chmod(tmp, FILE_MODE)
                os.replace(tmp, path)
            except BaseException:
                if os.path.exists(tmp):
                    os.unlink(tmp)
                raise
        else:
            self.fs.pipe_file(path, bytes(data))

    def write_table(self, rel: str, table: pa.Table, group_by: str | None = None, groups: Iterable[Any] | None = None) -> None:
        self.write_bytes(rel, table_to_parquet(table, group_by, groups))

    def write_json(self, rel: str, obj: Any) -> None:
        self.write_bytes(rel, (json.dumps(obj, indent=2, sort_keys=True, allow_nan=False) + "\n").encode())

    # --- reads ----------------------------------------------------------------------------------
    def exists(self, rel: str) -> bool:
        return self.fs.exists(self.path(rel))

    def read_bytes(self, rel: str) -> bytes:
        return self.fs.cat_file(self.path(rel))

    def read_json(self, rel: str) -> Any:
        return json.loads(self.read_bytes(rel))

    def read_table(self, rel: str, columns: list[str] | None = None) -> pa.Table:
        return pq.read_table(io.BytesIO(self.read_bytes(rel)), columns=columns)

    def read_parquet_file(self, rel: str) -> pq.ParquetFile:
        return pq.ParquetFile(io.BytesIO(self.read_bytes(rel)))

    def list(self, rel: str = "", recursive: bool = True) -> list[str]:
        """Relative paths of the files under ``rel`` (sorted; [] when it does not exist)."""
        base = self.path(rel)
        try:
            found = self.fs.find(base) if recursive else self.fs.ls(base, detail=False)
        except FileNotFoundError:
            return []
        root = self.root + "/"
        out = []
        for p in found:
            p = p.rstrip("/")
            if p.startswith(root):
                out.append(p[len(root):])
            elif p.lstrip("/").startswith(root.lstrip("/")):
                out.append(p.lstrip("/")[len(root.lstrip("/")):])
        return sorted(r for r in out if not posixpath.basename(r).startswith(".tmp-"))

    def refresh(self) -> None:
        """Forget cached listings: another process (an actor, an earlier run) may have written."""
        self.fs.invalidate_cache()

    def delete(self, rel: str) -> None:
        """Remove ``rel`` (a file or a folder, recursively) if it exists."""
        path = self.path(rel)
        if self.fs.exists(path):
            self.fs.rm(path, recursive=True)

    # --- preflight ------------------------------------------------------------------------------
    def preflight(self) -> None:
        """Write, read back and delete a probe object: fail fast, before any compute is spent."""
        rel = f".bluff-preflight-{uuid.uuid4().hex}"
        probe = b"bluff_ray preflight " + uuid.uuid4().bytes
        where = redact_url(self.url)
        try:
            self.write_bytes(rel, probe)
        except Exception as e:
            raise StorageError(f"results root {where} is not writable: {_describe(e)}") from None
        try:
            back = self.read_bytes(rel)
        except Exception as e:
            raise StorageError(f"results root {where}: wrote a probe object but cannot read it back: {_describe(e)}") from None
        if back != probe:
            raise StorageError(f"results root {where}: the probe object read back differs from what was written")
        try:
            self.fs.rm(self.path(rel))
        except Exception as e:
            raise StorageError(f"results root {where}: cannot delete the probe object {rel}: {_describe(e)}") from None


def _describe(e: BaseException) -> str:
    """A short cause for an error message (exception type and first line; no options echoed)."""
    msg = str(e).splitlines()[0] if str(e) else ""
    return f"{type(e).__name__}: {msg}" if msg else type(e).__name__
