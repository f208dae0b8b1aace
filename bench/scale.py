"""The reduce at full scale: 999,000 pairs fed unit by unit, then every global file written.

    .venv/bin/python bench/scale.py --out /tmp/bluff-scale            # 1,000 classes, all pairs
    .venv/bin/python bench/scale.py --classes 100 --out /tmp/s100     # quicker

Pair rows and atlas contributions are synthetic but shaped like the rehearsal model's (GoogLeNet's
nine mixed layers, ~180 displayed and ~15 exploited neurons per pair, 10 strengths), and go
through the production code: ``reduce.Aggregate.add_unit`` with a ``UnitAtlas`` per unit (what a
worker returns, or what a resumed run reads from a unit marker's metadata), then
``reduce.write_global`` into a local results folder. Reported: the driver time of each step, the
driver's peak memory, the bytes and object counts of the global files, and the size of a unit
marker (what a resume reads per unit).
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bluff_ray.results import layout  # noqa: E402
from bluff_ray.results.reduce import Aggregate, LayerSpec, UnitAtlas, write_global  # noqa: E402
from bluff_ray.results.store import Store  # noqa: E402

WIDTHS = [256, 480, 512, 512, 512, 528, 832, 832, 1024]
NAMES = ["mixed3a", "mixed3b", "mixed4a", "mixed4b", "mixed4c", "mixed4d", "mixed4e", "mixed5a", "mixed5b"]
S = 10


def unit(rng, original: int, part: int, targets: np.ndarray, total: int) -> tuple[pa.Table, UnitAtlas]:
    n = len(targets)
    ns = np.sort(rng.integers(0, 51, (n, S)), axis=1).astype(np.int32)
    rate = (ns / 50).astype(np.float32)
    lst = lambda m, t: pa.array(list(m), pa.list_(t))  # noqa: E731
    pairs = pa.table({
        "target": pa.array(targets, pa.int32()), "n_images": pa.array(np.full(n, 50), pa.int32()),
        "n_success": lst(ns, pa.int32()), "success_rate": lst(rate, pa.float32()),
        "n_nodes": pa.array(np.full(n, 180), pa.int32()), "n_edges": pa.array(np.full(n, 2800), pa.int32()),
        "n_exploited": pa.array(rng.integers(0, 30, n), pa.int32()),
        "defused": lst(rng.random((n, S)).astype(np.float32), pa.float32()),
        "row_group": pa.array(np.arange(n), pa.int32()), "part": pa.array(np.full(n, part), pa.int32()),
    }, schema=layout.PAIRS_SCHEMA)
    disp_t = np.repeat(targets, 180).astype(np.int32)
    disp_n = rng.integers(0, total, n * 180).astype(np.int32)
    ex_t = np.repeat(targets, 15).astype(np.int32)
    displayed = pa.table({"target": disp_t, "neuron": disp_n})
    exploited = pa.table({"target": ex_t, "neuron": rng.integers(0, total, n * 15).astype(np.int32),
                          "exploited_mask": rng.integers(1, 1024, n * 15).astype(np.int32),
                          "effect": lst(rng.random((n * 15, S)).astype(np.float32), pa.float32())})
    return pairs, UnitAtlas(displayed, exploited)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--classes", type=int, default=1000)
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    n = args.classes
    layers = [LayerSpec(a, b) for a, b in zip(NAMES, WIDTHS)]
    total = sum(WIDTHS)
    agg = Aggregate([f"class {i}" for i in range(n)], layers, S)
    rng = np.random.default_rng(0)
    k = layout.max_targets_per_file(S)
    t_make = t_add = 0.0
    marker_bytes = None
    units = 0
    for o in range(n):
        targets = np.array([t for t in range(n) if t != o], np.int32)
        for j in range(0, len(targets), k):
            t0 = time.perf_counter()
            pairs, atlas = unit(rng, o, j // k, targets[j: j + k], total)
            t1 = time.perf_counter()
            if marker_bytes is None:
                marker_bytes = len(layout.table_to_parquet(pairs, metadata=atlas.metadata()))
            agg.add_unit(o, j // k, pairs, atlas=atlas)
            t_add += time.perf_counter() - t1
            t_make += t1 - t0
            units += 1
    store = Store(args.out)
    t0 = time.perf_counter()
    write_global(store, agg, [str(i) for i in range(n)], {})
    t_write = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    sizes = {}
    for rel in store.list():
        top = rel.split("/")[0]
        sizes.setdefault(top, [0, 0])
        sizes[top][0] += 1
        sizes[top][1] += os.path.getsize(os.path.join(args.out, rel))
    print(f"{n} classes, {agg.n_pairs:,} pairs in {units:,} units of {k} targets\n")
    print("| step | driver time |\n|---|---|")
    print(f"| add_unit x {units:,} (pair rows + atlas counters) | {t_add:.1f} s |")
    print(f"| write_global (pair index, rankings, overview, atlas, classes) | {t_write:.1f} s |")
    print(f"\ndriver peak memory (RSS): {peak:,.0f} MB; one unit marker with its atlas metadata: "
          f"{marker_bytes / 1024:.1f} KiB (a resume reads {units:,} of them: "
          f"{units * marker_bytes / 2**30:.2f} GiB)\n")
    print("| global files | objects | bytes |\n|---|---|---|")
    for top, (count, b) in sorted(sizes.items()):
        print(f"| {top} | {count:,} | {b / 2**20:,.1f} MiB |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
