"""Resume at scale: what a rerun reads back from the unit markers, and the driver's memory doing it.

    .venv/bin/python bench/resume.py --units 50000 --out /tmp/bluff-resume   # the issue's scale
    .venv/bin/python bench/resume.py --units 5000 --out /tmp/r5k             # quicker

Writes ``--units`` unit markers shaped like the rehearsal model's (GoogLeNet's nine mixed layers,
20 targets per unit, 22 displayed channels per layer and pair, 15 of them exploited with a
single-neuron effect at each strength they are exploited at and a causal ``neuron:<channel>`` row,
10 strengths, the unit's file records; the pair rows are ``bench/scale.py``'s; the 50 units of an
original are drawn once and repeated for every original, their rows naming no original) into a local root,
twice, side by side: with the atlas contribution as markers carried it before (one zstd Arrow IPC
stream per table, neuron ids as int32 next to repeated targets) and as the actor writes it now
(``reduce.UnitAtlas.metadata``: one compact table). Then, for each, a fresh process runs the
driver's resume read (``driver.read_finished``: parallel rounds into ``reduce.Aggregate``) and
reports the bytes read, the wall time and the process's peak memory.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

if TYPE_CHECKING:
    from bluff_ray.results.reduce import UnitAtlas

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

TARGETS_PER_UNIT = 20  # 999 targets in 50 units (the last of 19)
DISPLAYED_PER_LAYER = 22  # displayed nodes per layer and pair at GoogLeNet widths (rehearsal: ~22 x 9)
EXPLOITED = 15  # exploited nodes per pair
STRENGTHS = 10
CURVE_STRENGTH = 5  # the strength of the causal neuron:<channel> rows


def unit(rng, original: int, part: int, targets: np.ndarray) -> tuple[pa.Table, UnitAtlas, pa.Array]:
    """A rehearsal-shaped unit: its pair rows, its atlas contribution, and the per-exploited-node
    effect vectors the markers carried before (their ``exploited`` table's ``effect`` column)."""
    from scale import WIDTHS
    from scale import unit as scale_unit  # bench/scale.py's pair rows

    from bluff_ray.results.reduce import UnitAtlas

    pairs, _ = scale_unit(rng, original, part, targets, sum(WIDTHS))
    offsets = np.cumsum([0, *WIDTHS[:-1]])
    disp_t, disp_n, ex_t, ex_n, ex_m, eff = [], [], [], [], [], []
    for t in targets:
        # DISPLAYED_PER_LAYER distinct channels of every layer, EXPLOITED of them exploited
        shown = np.concatenate([o + rng.choice(w, DISPLAYED_PER_LAYER, replace=False) for o, w in zip(offsets, WIDTHS)])
        ex = rng.choice(shown, EXPLOITED, replace=False)
        mask = rng.integers(1, 2**STRENGTHS, EXPLOITED)
        bits = (mask[:, None] >> np.arange(STRENGTHS)[None, :]) & 1
        # a single-neuron effect at each strength where the node is exploited (causal.py), else NaN
        e = np.where(bits == 1, rng.normal(0, 0.2, (EXPLOITED, STRENGTHS)), np.nan).astype(np.float32)
        disp_t.append(np.full(len(shown), t))
        disp_n.append(shown)
        ex_t.append(np.full(EXPLOITED, t))
        ex_n.append(ex)
        ex_m.append(mask)
        eff.append(e)
    ex_n_all, eff_all = np.concatenate(ex_n).astype(np.int32), np.concatenate(eff)
    tested = np.isfinite(eff_all[:, CURVE_STRENGTH])
    lst = lambda m: pa.array(list(m), pa.list_(pa.float32()))  # noqa: E731
    atlas = UnitAtlas(
        pa.table(
            {"target": np.concatenate(disp_t).astype(np.int32), "neuron": np.concatenate(disp_n).astype(np.int32)}
        ),
        pa.table(
            {
                "target": np.concatenate(ex_t).astype(np.int32),
                "neuron": ex_n_all,
                "exploited_mask": np.concatenate(ex_m).astype(np.int32),
            }
        ),
        pa.table({"neuron": ex_n_all, "effect": lst(eff_all)}),
        pa.table(  # the causal neuron:<channel> rows: the nodes exploited at the curve strength
            {
                "neuron": ex_n_all[tested],
                "recovery": rng.normal(0.2, 0.2, int(tested.sum())).astype(np.float32),
                "percentile": rng.uniform(0, 100, int(tested.sum())).astype(np.float32),
            }
        ),
    )
    return pairs, atlas, lst(eff_all)


def before_metadata(atlas: UnitAtlas, effect: pa.Array) -> dict[bytes, bytes]:
    """The atlas metadata as markers carried it before: one zstd Arrow IPC stream per table, the
    exploited nodes with their effect vectors too."""
    from bluff_ray.results.reduce import _ipc

    return {
        b"bluff.displayed": _ipc(atlas.displayed),
        b"bluff.exploited": _ipc(atlas.exploited.append_column("effect", effect)),
        b"bluff.effects": _ipc(atlas.effects),
        b"bluff.tested": _ipc(atlas.tested),
    }


def write_markers(root: Path, n_units: int, compact: bool) -> int:
    """``n_units`` markers under ``root``; returns their total bytes."""
    from bluff_ray.results import layout
    from bluff_ray.results.markers import file_record, files_metadata
    from bluff_ray.results.store import Store

    store, rng, total = Store(str(root)), np.random.default_rng(0), 0
    n_classes = 1000
    per_original = -(-(n_classes - 1) // TARGETS_PER_UNIT)
    files = files_metadata({k: file_record(k.encode() * 1000) for k in ("nodes", "edges", "causal", "causal_curve")})
    markers: dict[int, bytes] = {}  # unit j's marker, the same for every original (its rows name no original)
    for i in range(n_units):
        o, j = divmod(i, per_original)
        if j not in markers:
            targets = np.arange(j * TARGETS_PER_UNIT, min((j + 1) * TARGETS_PER_UNIT, n_classes))
            pairs, atlas, effect = unit(rng, o, j, targets)
            meta = atlas.metadata() if compact else before_metadata(atlas, effect)
            markers[j] = layout.table_to_parquet(pairs, metadata={**meta, **files}, metadata_in_schema=False)
        store.write_bytes(layout.part_path("pairs", o, j), markers[j])
        total += len(markers[j])
    return total


def resume(root: str, n_units: int) -> dict:
    """The driver's resume read of every marker under ``root`` (run in a fresh process)."""
    from scale import NAMES, WIDTHS

    from bluff_ray.results.reduce import Aggregate, LayerSpec
    from bluff_ray.results.store import Store
    from bluff_ray.run.driver import read_finished
    from bluff_ray.run.plan import Unit, marker_unit

    store = Store(root)
    read = [0]
    plain = store.read_bytes

    def counted(rel: str) -> bytes:
        data = plain(rel)
        read[0] += len(data)
        return data

    store.read_bytes = counted  # type: ignore[method-assign]  # the bytes every marker read fetches
    baseline = _rss_mb()  # the driver's modules (torch, pyarrow, ...) before any marker is read
    t0 = time.perf_counter()
    units = [Unit(*k, ()) for k in (marker_unit(r) for r in store.list("pairs")) if k is not None]
    agg = Aggregate([str(i) for i in range(1000)], [LayerSpec(n, w) for n, w in zip(NAMES, WIDTHS)], 10)
    redo = read_finished(store, units, agg, verify="size")
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "units": len(units),
        "redo": len(redo),
        "pairs": agg.n_pairs,
        "bytes_read": read[0],
        "seconds": seconds,
        "peak_rss_mb": peak,
        "baseline_rss_mb": baseline,
    }


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--units", type=int, default=50000)
    ap.add_argument("--out", required=True)
    ap.add_argument("--resume-only", metavar="ROOT", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.resume_only:
        print(json.dumps(resume(args.resume_only, args.units)))
        return 0
    rows = []
    for label, compact in (("before (one IPC stream per table)", False), ("after (one compact table)", True)):
        root = Path(args.out) / ("compact" if compact else "tables")
        written = write_markers(root, args.units, compact)
        proc = subprocess.run(
            [sys.executable, __file__, "--units", str(args.units), "--out", args.out, "--resume-only", str(root)],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "PYTHONPATH": str(HERE.parent)},
        )
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        rows.append((label, written / args.units, r))
    print(
        f"| markers ({args.units:,} units of {TARGETS_PER_UNIT} pairs) | marker size | resume read | "
        "driver peak RSS (of which imports) | resume time |"
    )
    print("|---|---|---|---|---|")
    for label, size, r in rows:
        print(
            f"| {label} | {size / 1024:.1f} KiB | {r['bytes_read'] / 2**30:.2f} GiB | {r['peak_rss_mb']:,.0f} MB ({r['baseline_rss_mb']:,.0f} MB) | "
            f"{r['seconds']:.1f} s |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
