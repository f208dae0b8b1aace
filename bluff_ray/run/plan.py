"""The plan (pure; no Ray): work units, their seeds, and what is left to do.

Pairs are grouped by original class and fixed target ranges: unit ``(o, j)`` holds the selected
targets ``t`` of original ``o`` with ``t // targets_per_file == j``, so a unit's identity does not
depend on which other pairs were selected. Each unit writes one ``nodes``/``edges``/``causal``
file and, last, its ``pairs/`` commit marker. Every pair has its own seed (``pair_seed``), so a
pair's numbers are the same whatever else is selected, retried or resumed: a results root can grow
by runs over other selections and equal one run over their union.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from bluff_ray.engine.seeds import derive_seed
from bluff_ray.results import layout

#: Classes per benign task: enough work per call to hide its overhead, small enough to spread.
BENIGN_CLASSES_PER_TASK = 16


@dataclass(frozen=True)
class Unit:
    """All pairs of one original class within one target chunk: one attack loop, one file per table."""

    original: int
    chunk: int
    targets: tuple[int, ...]

    @property
    def marker(self) -> str:
        return layout.part_path("pairs", self.original, self.chunk)

    def path(self, kind: str) -> str:
        return layout.part_path(kind, self.original, self.chunk)

    @property
    def label(self) -> str:
        t = list(self.targets)
        text = str(t) if len(t) <= 8 else f"{t[0]}..{t[-1]}, {len(t)} targets"
        return f"unit original={self.original} part={self.chunk} (targets {text})"


def plan_units(pairs: Sequence[tuple[int, int]], target_chunk: int) -> list[Unit]:
    """Group pairs by original class and target range ``[j*target_chunk, (j+1)*target_chunk)``,
    targets ascending."""
    by_unit: dict[tuple[int, int], set[int]] = {}
    for o, t in pairs:
        by_unit.setdefault((int(o), int(t) // target_chunk), set()).add(int(t))
    return [Unit(o, j, tuple(sorted(by_unit[o, j]))) for o, j in sorted(by_unit)]


def unit_seed(seed: int, original: int, chunk: int) -> int:
    """A 63-bit seed for one unit (the engine's fixture and benchmarks; runs seed per pair)."""
    return derive_seed("unit", seed, original, chunk)


def pair_seed(seed: int, original: int, target: int) -> int:
    """A 63-bit seed for one pair: its attack's random starts and its patching controls, the same
    whatever unit, selection, rerun or retry computes it."""
    return derive_seed("pair", seed, original, target)


def marker_unit(rel: str) -> tuple[int, int] | None:
    """(original, chunk) of a ``pairs/original=<o>/part-<j>.parquet`` marker path, else None."""
    try:
        head, name = rel.rsplit("/", 1)
        o = int(head.split("original=", 1)[1])
        if not (name.startswith("part-") and name.endswith(".parquet")):
            return None
        return o, int(name[len("part-") : -len(".parquet")])
    except (ValueError, IndexError):
        return None


def pending_units(units: Sequence[Unit], done: set[str]) -> tuple[list[Unit], list[Unit]]:
    """Split units into (to do, already done) by their ``pairs/`` commit markers."""
    todo = [u for u in units if u.marker not in done]
    finished = [u for u in units if u.marker in done]
    return todo, finished


def class_chunks(classes: Sequence[int], size: int = BENIGN_CLASSES_PER_TASK) -> list[tuple[int, ...]]:
    classes = list(classes)
    return [tuple(classes[i : i + size]) for i in range(0, len(classes), size)]


def rounds(items: Sequence, size: int):
    """``items`` in slices of ``size``: parallel reads in bounded rounds."""
    for i in range(0, len(items), size):
        yield items[i : i + size]


@dataclass
class BenignTable:
    """Every class's benign statistics for the pairs stage: one object in Ray's object store."""

    importance: dict[int, np.ndarray]  # class -> float32 [sum of channels], layers in model order
    correct: dict[int, np.ndarray]  # class -> bool [N]
