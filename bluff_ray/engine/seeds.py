"""One way to derive a seed: a 63-bit integer from a path of names and numbers.

Why hashing instead of ``seed + i``: seeds of neighbouring units, blocks or neurons must be
unrelated (no shared streams), the same on every host, rerun and retry, and independent of batch
composition; a SHA-256 of the path gives all three.
"""

from __future__ import annotations

import hashlib


def derive_seed(kind: str, *parts: int | str) -> int:
    """``sha256("bluff_ray/<kind>/<part>/...")``'s first 8 bytes, little-endian, as a 63-bit int."""
    path = "/".join(
        ["bluff_ray", kind, *(str(int(p)) if isinstance(p, bool) or not isinstance(p, str) else p for p in parts)]
    )
    return int.from_bytes(hashlib.sha256(path.encode()).digest()[:8], "little") & (2**63 - 1)
