"""The plan (pure; no Ray): work units, their seeds, and what is left to do.

Pairs are grouped by original class into units of ``targets_per_file`` targets; each unit writes
one ``nodes``/``edges``/``causal`` file and, last, its ``pairs/`` commit marker, and has its own
seed, so a retried or resumed unit writes the same numbers.
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
    """Group pairs by original class, targets ascending, ``target_chunk`` targets per unit."""
    by_original: dict[int, list[int]] = {}
    for o, t in pairs:
        by_original.setdefault(int(o), []).append(int(t))
    units = []
    for o in sorted(by_original):
        targets = sorted(set(by_original[o]))
        for j, start in enumerate(range(0, len(targets), target_chunk)):
            units.append(Unit(o, j, tuple(targets[start: start + target_chunk])))
    return units


def unit_seed(seed: int, original: int, chunk: int) -> int:
    """A 63-bit seed for one unit: the same on every rerun and retry, different across units."""
    return derive_seed("unit", seed, original, chunk)


def pending_units(units: Sequence[Unit], done: set[str]) -> tuple[list[Unit], list[Unit]]:
    """Split units into (to do, already done) by their ``pairs/`` commit markers."""
    todo = [u for u in units if u.marker not in done]
    finished = [u for u in units if u.marker in done]
    return todo, finished


def class_chunks(classes: Sequence[int], size: int = BENIGN_CLASSES_PER_TASK) -> list[tuple[int, ...]]:
    classes = list(classes)
    return [tuple(classes[i: i + size]) for i in range(0, len(classes), size)]


def rounds(items: Sequence, size: int):
    """``items`` in slices of ``size``: parallel reads in bounded rounds."""
    for i in range(0, len(items), size):
        yield items[i: i + size]


@dataclass
class BenignTable:
    """Every class's benign statistics for the pairs stage: one object in Ray's object store."""

    importance: dict[int, np.ndarray]  # class -> float32 [sum of channels], layers in model order
    correct: dict[int, np.ndarray]  # class -> bool [N]
