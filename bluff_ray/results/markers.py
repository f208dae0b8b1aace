"""What a unit's ``pairs/`` commit marker records about the unit's other files, and its check on resume.

Why: a marker is written last, so it says "this unit is complete"; but a file can be damaged
after that (a disk error, a partial copy, a hand edit). The marker therefore records each of the
unit's ``nodes``/``edges``/``causal`` files as written: its size and the SHA-256 of the whole
object. A resume compares them with what is there and recomputes the units that do not match:

- ``"size"`` (the default): sizes from one listing per table folder (no object is read);
  catches missing, truncated and overwritten-with-other-content files of another size.
- ``"checksum"``: also reads every file and compares its SHA-256 (reads the whole root).

Within a file, Parquet page checksums (written by ``layout.table_to_parquet``) catch damaged
pages when a reader verifies them.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
from collections.abc import Mapping

#: Marker metadata key: {"nodes": {"size": int, "sha256": hex}, "edges": ..., "causal": ...}.
FILES_KEY = b"bluff.files"
VERIFY_LEVELS = ("size", "checksum")


def file_record(data: bytes) -> dict:
    """What the marker records about one file written as ``data``."""
    return {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def files_metadata(files: Mapping[str, dict]) -> dict[bytes, bytes]:
    return {FILES_KEY: json.dumps(dict(files), sort_keys=True, separators=(",", ":")).encode()}


def files_from_metadata(meta: Mapping[bytes, bytes] | None) -> dict[str, dict] | None:
    """The recorded files, or None for a marker that records none (written before this check)."""
    if not meta or FILES_KEY not in meta:
        return None
    return json.loads(meta[FILES_KEY])


def listed_sizes(store, folder: str) -> dict[str, int]:
    """Relative path -> size of every file under ``folder``: one listing, no reads."""
    out: dict[str, int] = {}
    base = store.root.strip("/") + "/"
    try:
        found = store.fs.find(store.path(folder), detail=True)
    except FileNotFoundError:
        return out
    for path, info in found.items():
        p = path.strip("/")
        if p.startswith(base) and not posixpath.basename(p).startswith(".tmp-"):
            out[p[len(base) :]] = int(info.get("size") or 0)
    return out


def mismatches(recorded: Mapping[str, dict], paths: Mapping[str, str], sizes: Mapping[str, int]) -> list[str]:
    """The files (by kind) whose size is not the recorded one (or that are missing).
    ``paths``: kind -> relative path of the unit's file."""
    return [
        kind for kind, rec in sorted(recorded.items()) if kind in paths and sizes.get(paths[kind]) != int(rec["size"])
    ]


def checksum_mismatches(store, recorded: Mapping[str, dict], paths: Mapping[str, str]) -> list[str]:
    """The files (by kind) whose SHA-256 is not the recorded one (reads them)."""
    bad = []
    for kind, rec in sorted(recorded.items()):
        if kind not in paths:
            continue
        try:
            data = store.read_bytes(paths[kind])
        except FileNotFoundError:
            bad.append(kind)
            continue
        if hashlib.sha256(data).hexdigest() != rec["sha256"]:
            bad.append(kind)
    return bad
