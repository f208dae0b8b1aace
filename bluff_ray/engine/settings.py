"""One declaration per setting: a dataclass field carrying its help text and its bounds.

``setting(50, "PGD iterations", ge=1, le=10_000)`` is a plain ``dataclasses.field`` whose metadata
holds ``description`` and pydantic ``Field`` constraints (``ge``, ``gt``, ``le``, ``lt``,
``allow_inf_nan``), ``choices`` (the values a text field may take; ``what`` names it in the error)
and, for a speed-only knob, ``identity=False`` (it never changes the numbers,
so it is not part of a run's results identity). The engine stays free of pydantic: ``bluff_ray.run.config`` validates user
input against these declarations with pydantic (which reads them from the field metadata) and
generates the ``bluff run`` options and their help from them; :func:`check` enforces the same
declarations when engine code builds a config directly.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import types
import typing
from typing import Any

#: Metadata keys that are bounds (pydantic ``Field`` argument names), with their test and wording.
_BOUNDS = {
    "ge": (lambda v, b: v >= b, ">="),
    "gt": (lambda v, b: v > b, ">"),
    "le": (lambda v, b: v <= b, "<="),
    "lt": (lambda v, b: v < b, "<"),
}


def setting(default: Any, description: str, **constraints: Any) -> Any:
    """A dataclass field with its ``description`` (the ``--help`` text) and ``constraints``.

    ``default`` may be a class or function (``default_factory``) for mutable or nested defaults.
    """
    meta = {"description": description, **constraints}
    if callable(default):
        return dataclasses.field(default_factory=default, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


@functools.cache
def _hints(cls: Any) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _base(hint: Any) -> Any:
    """``int | None`` -> int; other unions and generics are returned as they are."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    union = typing.get_origin(hint) in (typing.Union, types.UnionType)
    return args[0] if union and len(args) == 1 else hint


def check(obj: Any) -> None:
    """Raise ValueError naming the first field of dataclass ``obj`` that breaks its declaration:
    an ``int`` field holding a non-integer (or a bool), a number outside its bounds or not finite,
    a value not among its ``choices``."""
    cls: Any = type(obj)
    hints = _hints(cls)
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        if v is None:
            continue
        choices = f.metadata.get("choices")
        if choices is not None and v not in choices:
            raise ValueError(f"unknown {f.metadata.get('what', f.name)} {v!r}; valid: {', '.join(map(str, choices))}")
        base = _base(hints.get(f.name))
        if base is int and (isinstance(v, bool) or not isinstance(v, int)):
            raise ValueError(f"{f.name} must be an integer, got {v!r}")
        if base is float and (isinstance(v, bool) or not isinstance(v, (int, float))):
            raise ValueError(f"{f.name} must be a number, got {v!r}")
        if base not in (int, float):
            continue
        if f.metadata.get("allow_inf_nan") is False and not math.isfinite(v):
            raise ValueError(f"{f.name} must be finite, got {v!r}")
        for key, (ok, word) in _BOUNDS.items():
            if key in f.metadata and not ok(v, f.metadata[key]):
                raise ValueError(f"{f.name} must be {word} {f.metadata[key]}, got {v!r}")
