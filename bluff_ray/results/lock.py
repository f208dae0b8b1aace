"""One run at a time per results root: a lock object with a heartbeat (docs/FORMAT.md, "Concurrent runs").

Why: two runs writing one root either compute everything twice (same configuration) or mix
their results for good (different configurations: both pass the manifest check before either
has written it). The lock is created with an exclusive create (``Store.create``), refreshed by a
heartbeat thread, and removed when the run ends. A lock is stale (and may be taken over) when its
heartbeat is older than ``STALE_AFTER_S`` or when it names a process on this host that is gone
(a killed driver), so a crash never blocks the next run for long.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import socket
import threading
import time
import uuid

from bluff_ray.results.layout import LOCK_PATH
from bluff_ray.results.store import Store

HEARTBEAT_S = 15.0
STALE_AFTER_S = 120.0


class LockedError(RuntimeError):
    """Another run holds the results root."""


def _now() -> float:
    return time.time()


def _iso(t: float) -> str:
    return _dt.datetime.fromtimestamp(t, _dt.UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RunLock:
    """``with RunLock(store, config_hash):`` holds the root for this run (``LockedError`` if taken)."""

    def __init__(
        self, store: Store, config_hash: str, heartbeat_s: float = HEARTBEAT_S, stale_after_s: float = STALE_AFTER_S
    ):
        self.store, self.config_hash = store, config_hash
        self.heartbeat_s, self.stale_after_s = heartbeat_s, stale_after_s
        self.run_id = uuid.uuid4().hex
        self.started = _now()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _record(self) -> bytes:
        return json.dumps(
            {
                "run_id": self.run_id,
                "config_hash": self.config_hash,
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "started": _iso(self.started),
                "heartbeat": _now(),
            }
        ).encode()

    def _stale(self, held: dict) -> bool:
        if _now() - float(held.get("heartbeat", 0)) > self.stale_after_s:
            return True
        return held.get("host") == socket.gethostname() and not _process_alive(int(held.get("pid", -1)))

    def acquire(self) -> None:
        for _ in range(3):
            if self.store.create(LOCK_PATH, self._record()):
                self._thread = threading.Thread(target=self._beat, name="bluff-lock-heartbeat", daemon=True)
                self._thread.start()
                return
            try:
                held = json.loads(self.store.read_bytes(LOCK_PATH))
            except FileNotFoundError:
                continue  # released in the meantime: try again
            except ValueError:
                held = {}
            if self._stale(held):
                self.store.delete(LOCK_PATH)
                continue
            age = _now() - float(held.get("heartbeat", 0))
            same = held.get("config_hash") == self.config_hash
            what = "another run of the same configuration" if same else "another run with a different configuration"
            raise LockedError(
                f"{self.store.uri()} is in use: {what} is writing to it (host {held.get('host', '?')}, pid "
                f"{held.get('pid', '?')}, started {held.get('started', '?')}, last heartbeat {age:.0f} s ago). "
                + (
                    "Running both would compute every pair twice: wait for it to finish (rerunning afterwards resumes)."
                    if same
                    else "Running both would mix their results: wait for it, or write to another output root."
                )
                + f" A lock without a heartbeat for {self.stale_after_s:.0f} s is taken over automatically."
            )
        raise LockedError(f"{self.store.uri()}: could not take the run lock {LOCK_PATH} (it kept changing)")

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                self.store.write_bytes(LOCK_PATH, self._record())
            except Exception:  # a storage hiccup: the next beat tries again
                pass

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        try:
            held = json.loads(self.store.read_bytes(LOCK_PATH))
            if held.get("run_id") == self.run_id:
                self.store.delete(LOCK_PATH)
        except Exception:  # gone already, or storage down: a stale lock is taken over later
            pass

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
