"""A results root on any fsspec filesystem, written one whole object at a time.

Why whole objects: resume trusts ``exists()``. On S3 one ``fs.pipe`` is one PUT (or one multipart
upload), which becomes visible only when complete; on a local disk the bytes go to a temporary file
in the same folder and are renamed into place. Either way no reader, and no rerun, ever sees a
partial file.

Credentials: ``storage_options`` (and the standard AWS settings s3fs reads) go to the filesystem
only. Error messages name the URL (with any ``user:secret@`` removed), never the options.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import posixpath
import re
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar, overload

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
from fsspec import AbstractFileSystem
from fsspec.implementations.local import LocalFileSystem

from bluff_ray.localfile import TEMP_PREFIX, atomic_write, temp_beside
from bluff_ray.results.layout import table_to_parquet

T = TypeVar("T")
_USERINFO = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*://)[^/@]*@")


@overload
def redact_url(url: str) -> str: ...
@overload
def redact_url(url: None) -> None: ...
def redact_url(url: str | None) -> str | None:
    """Drop ``user:secret@`` from a URL so it can go into manifest.json and logs."""
    return None if url is None else _USERINFO.sub(r"\1", str(url))


#: Parallel requests when many small objects are read (resume, reduce): a round of this many GETs
#: costs about one request's latency.
READ_CONCURRENCY = 32
#: Seconds the storage preflight may take before the run gives up on the endpoint (a safety net:
#: the probe's own timeouts below end it sooner).
PREFLIGHT_TIMEOUT_S = 9.0
# s3fs/botocore defaults for endpoints that accept a connection and never answer: bounded
# connect/read timeouts and standard retries (overridable with storage_options config_kwargs).
S3_CONFIG = {"connect_timeout": 10, "read_timeout": 60, "retries": {"max_attempts": 5, "mode": "standard"}}
# The preflight probe asks once, with short timeouts: a closed port, a black hole or an unknown
# host is reported in seconds (the run's own requests keep S3_CONFIG's patience).
PROBE_S3_CONFIG = {"connect_timeout": 3, "read_timeout": 5, "retries": {"max_attempts": 1, "mode": "standard"}}


class StorageError(RuntimeError):
    """The results root cannot be used (unreachable, read-only, missing bucket, ...)."""


class SealedError(StorageError):
    """A write to a store that ``seal()`` closed (a worker its driver stopped)."""


class CorruptFile(StorageError):
    """A results file exists but cannot be decoded (truncated JSON, garbled Parquet page, ...)."""


def open_url(url: str, storage_options: dict | None = None, probe: bool = False) -> tuple[AbstractFileSystem, str]:
    """``(filesystem, path)`` of ``url``: the one place bluff_ray opens fsspec filesystems.

    Results, images and weights all come through here, so an S3 endpoint that stalls is bounded by
    the same timeouts and retries (``S3_CONFIG``; ``probe``: ``PROBE_S3_CONFIG`` and no s3fs-level
    retries, for the preflight). ``storage_options`` go to the filesystem only; ``config_kwargs``
    in them override the defaults key by key.
    """
    options = dict(storage_options or {})
    s3 = str(url).startswith(("s3://", "s3a://"))
    if s3:
        options["config_kwargs"] = {
            **(PROBE_S3_CONFIG if probe else S3_CONFIG),
            **dict(options.get("config_kwargs") or {}),
        }
        if probe:
            options["skip_instance_cache"] = True  # its retries are changed below: never share it
    fs, path = fsspec.core.url_to_fs(str(url), **options)
    if s3 and probe:
        fs.retries = 1  # s3fs retries connection errors itself (5 times, backing off) on top of botocore
    return fs, path


def read_url(url: str, storage_options: dict | None = None) -> bytes:
    """The whole object at ``url`` (a local path or fsspec URL), through ``open_url``.

    Raises FileNotFoundError naming the URL (credentials removed) when nothing is there.
    """
    fs, path = open_url(url, storage_options)
    try:
        return fs.cat_file(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"not found: {redact_url(url)}") from None


class Store:
    """Relative paths under one root URL; every write is one whole object."""

    def __init__(self, url: str, storage_options: dict | None = None, probe: bool = False):
        self.url = str(url).rstrip("/") or str(url)
        self.storage_options = dict(storage_options or {})
        try:
            self.fs, self.root = open_url(self.url, self.storage_options, probe=probe)
        except (ImportError, ValueError, TypeError) as e:
            raise StorageError(f"cannot open results root {redact_url(self.url)}: {e}") from None
        self.root = self.root.rstrip("/")
        self.local = isinstance(self.fs, LocalFileSystem)
        self._writes = threading.Condition()  # guards _active and _sealed (seal())
        self._active = 0
        self._sealed = False

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
    def seal(self, timeout_s: float | None = None) -> bool:
        """Refuse every later write and wait for those in progress; True once none is left.

        Why: a stopped worker's process outlives the driver's ``ray.kill`` by milliseconds, long
        enough to write a unit's marker after the driver has returned and released the run lock.
        """
        with self._writes:
            self._sealed = True
            return self._writes.wait_for(lambda: self._active == 0, timeout_s)

    @contextlib.contextmanager
    def _writing(self, rel: str) -> Iterator[None]:
        with self._writes:
            if self._sealed:
                raise SealedError(f"{self.uri(rel)}: not written, this worker was stopped")
            self._active += 1
        try:
            yield
        finally:
            with self._writes:
                self._active -= 1
                self._writes.notify_all()

    def write_bytes(self, rel: str, data: bytes) -> None:
        path = self.path(rel)
        with self._writing(rel):
            if self.local:
                atomic_write(path, data)
            else:
                self.fs.pipe_file(path, bytes(data))

    def write_table(
        self,
        rel: str,
        table: pa.Table,
        group_by: str | None = None,
        groups: Iterable[Any] | None = None,
        footer_limit: int | None = None,
    ) -> bytes:
        """Write ``table`` as one Parquet object; returns the bytes written (unit markers record them)."""
        data = table_to_parquet(table, group_by, groups, footer_limit=footer_limit)
        self.write_bytes(rel, data)
        return data

    def write_json(self, rel: str, obj: Any) -> None:
        self.write_bytes(rel, (json.dumps(obj, indent=2, sort_keys=True, allow_nan=False) + "\n").encode())

    def create(self, rel: str, data: bytes) -> bool:
        """Write ``rel`` only if it does not exist (atomically); False if it already existed.

        Local disks: a temporary file hard-linked into place (``link`` fails if the name exists).
        S3: one PUT with ``If-None-Match: *``. Other filesystems: an ``xb`` open where supported.
        """
        with self._writing(rel):
            return self._create(self.path(rel), data)

    def _create(self, path: str, data: bytes) -> bool:
        if self.local:
            with temp_beside(path, data) as tmp:
                try:
                    os.link(tmp, path)  # fails if the name exists, unlike rename
                except FileExistsError:
                    return False
            return True
        try:
            if self.fs.protocol in ("s3", "s3a") or "s3" in tuple(self.fs.protocol):
                self.fs.pipe_file(path, bytes(data), mode="create")
            else:
                with self.fs.open(path, "xb") as f:
                    f.write(bytes(data))
        except FileExistsError:
            return False
        except OSError as e:  # S3 answers 412 Precondition Failed when the key exists
            if "PreconditionFailed" in repr(e) or "412" in str(e):
                return False
            raise
        return True

    # --- reads ----------------------------------------------------------------------------------
    def exists(self, rel: str) -> bool:
        return self.fs.exists(self.path(rel))

    def read_bytes(self, rel: str) -> bytes:
        return self.fs.cat_file(self.path(rel))

    def read_json(self, rel: str) -> Any:
        """The JSON object at ``rel``; ``CorruptFile`` (one line naming the file) when unreadable."""
        data = self.read_bytes(rel)
        try:
            return json.loads(data)
        except (ValueError, UnicodeDecodeError) as e:  # JSONDecodeError is a ValueError
            raise CorruptFile(
                f"{self.uri(rel)} is not valid JSON ({len(data)} bytes; {_describe(e)}): "
                "repair or delete it (or pass --overwrite)"
            ) from None

    def read_table(self, rel: str, columns: list[str] | None = None) -> pa.Table:
        """The Parquet table at ``rel``, every data page's CRC verified (``CorruptFile`` on a mismatch)."""
        data = self.read_bytes(rel)
        try:
            return pq.read_table(io.BytesIO(data), columns=columns, page_checksum_verification=True)
        except (pa.ArrowException, OSError, ValueError) as e:
            raise self._corrupt(rel, e) from None

    def read_parquet_file(self, rel: str) -> pq.ParquetFile:
        """An open ``ParquetFile`` of ``rel``'s bytes whose reads verify page checksums; the footer is
        parsed here (``CorruptFile`` if it is not Parquet)."""
        data = self.read_bytes(rel)
        try:
            return _CheckedParquetFile(
                io.BytesIO(data), page_checksum_verification=True, on_error=lambda e: self._corrupt(rel, e)
            )
        except (pa.ArrowException, OSError, ValueError) as e:
            raise self._corrupt(rel, e) from None

    def _corrupt(self, rel: str, e: BaseException) -> CorruptFile:
        return CorruptFile(
            f"{self.uri(rel)} is not a readable Parquet file ({_describe(e)}): delete it to have it "
            "recomputed, or pass --overwrite"
        )

    def read_many(
        self, rels: Sequence[Any], read: Callable[[Any], T] | None = None, concurrency: int = READ_CONCURRENCY
    ) -> list[T]:
        """``read(rel)`` (default: the bytes) for every path, ``concurrency`` requests at a time, in order.

        Why: resuming a run re-reads every finished unit's small marker; one at a time that is
        tens of thousands of sequential requests on S3, in parallel rounds it is a few hundred.
        """
        fn: Callable[[str], Any] = read or self.read_bytes
        if len(rels) <= 1 or concurrency <= 1:
            return [fn(r) for r in rels]
        with ThreadPoolExecutor(max_workers=min(concurrency, len(rels)), thread_name_prefix="bluff-read") as pool:
            return list(pool.map(fn, rels))

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
                out.append(p[len(root) :])
            elif p.lstrip("/").startswith(root.lstrip("/")):
                out.append(p.lstrip("/")[len(root.lstrip("/")) :])
        return sorted(r for r in out if not posixpath.basename(r).startswith(TEMP_PREFIX))

    def refresh(self) -> None:
        """Forget cached listings: another process (an actor, an earlier run) may have written."""
        self.fs.invalidate_cache()

    def delete(self, rel: str) -> None:
        """Remove ``rel`` (a file or a folder, recursively) if it exists."""
        path = self.path(rel)
        with self._writing(rel):
            if self.fs.exists(path):
                self.fs.rm(path, recursive=True)

    # --- preflight ------------------------------------------------------------------------------
    def preflight(self, timeout_s: float = PREFLIGHT_TIMEOUT_S) -> None:
        """Write, read back and delete a probe object: fail fast, before any compute is spent.

        The probe asks once with short timeouts (``PROBE_S3_CONFIG``), so a closed port, an
        endpoint that accepts connections but never answers, or an unknown host fail in seconds;
        it also runs in a thread and ``StorageError`` is raised after ``timeout_s`` seconds whatever
        the filesystem does.
        """
        outcome: list[BaseException | None] = []
        prober = Store(self.url, self.storage_options, probe=True) if not self.local else self

        def probe() -> None:
            try:
                prober._probe()
                outcome.append(None)
            except BaseException as e:  # noqa: BLE001 - handed to the caller's thread
                outcome.append(e)

        t = threading.Thread(target=probe, name="bluff-preflight", daemon=True)
        t.start()
        t.join(timeout_s)
        if not outcome:
            raise StorageError(
                f"results root {redact_url(self.url)}: no answer from the storage within "
                f"{timeout_s:.0f} s (check the endpoint address and the network)"
            )
        if outcome[0] is not None:
            raise outcome[0]

    def _probe(self) -> None:
        rel = f".bluff-preflight-{uuid.uuid4().hex}"
        probe = b"bluff_ray preflight " + uuid.uuid4().bytes
        where = redact_url(self.url)
        try:
            self.write_bytes(rel, probe)
        except Exception as e:  # noqa: BLE001 - any failure of the probe is the answer
            raise StorageError(f"results root {where} is not writable: {_describe(e)}") from None
        try:
            back = self.read_bytes(rel)
        except Exception as e:  # noqa: BLE001 - any failure of the probe is the answer
            raise StorageError(
                f"results root {where}: wrote a probe object but cannot read it back: {_describe(e)}"
            ) from None
        if back != probe:
            raise StorageError(f"results root {where}: the probe object read back differs from what was written")
        try:
            self.fs.rm(self.path(rel))
        except Exception as e:  # noqa: BLE001 - any failure of the probe is the answer
            raise StorageError(f"results root {where}: cannot delete the probe object {rel}: {_describe(e)}") from None


class _CheckedParquetFile(pq.ParquetFile):
    """A ParquetFile whose reads turn a decoding error (a failed page checksum) into ``CorruptFile``."""

    def __init__(self, source: Any, *, on_error: Callable[[BaseException], BaseException], **kw: Any):
        super().__init__(source, **kw)
        self._on_error = on_error

    def read(self, *a: Any, **kw: Any) -> pa.Table:
        try:
            return super().read(*a, **kw)
        except (pa.ArrowException, OSError, ValueError) as e:
            raise self._on_error(e) from None

    def read_row_group(self, *a: Any, **kw: Any) -> pa.Table:
        try:
            return super().read_row_group(*a, **kw)
        except (pa.ArrowException, OSError, ValueError) as e:
            raise self._on_error(e) from None


def _describe(e: BaseException) -> str:
    """A short cause for an error message (exception type and first line; no options echoed)."""
    msg = str(e).splitlines()[0] if str(e) else ""
    return f"{type(e).__name__}: {msg}" if msg else type(e).__name__
