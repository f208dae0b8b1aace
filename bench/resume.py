"""Resume at scale: what a rerun reads back from the unit markers, and the driver's memory doing it.

    .venv/bin/python bench/resume.py --units 50000 --out /tmp/bluff-resume   # the issue's scale
    .venv/bin/python bench/resume.py --units 5000 --out /tmp/r5k             # quicker

Writes ``--units`` unit markers shaped like the rehearsal model's (``bench/scale.py``'s synthetic
units: GoogLeNet's nine mixed layers, 20 targets per unit, ~180 displayed and ~15 exploited
neurons per pair, 10 strengths) into a local root, twice, side by side: as markers were written
before (atlas metadata in the Arrow schema metadata, so the file holds it twice) and as the actor
writes them now (``layout.table_to_parquet(..., metadata_in_schema=False)``: once). Then, for each,
a fresh process runs the driver's resume read (``driver.read_finished``: parallel rounds into
``reduce.Aggregate``) and reports the bytes read, the wall time and the process's peak memory.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

TARGETS_PER_UNIT = 20


def write_markers(root: Path, n_units: int, once: bool) -> int:
    """``n_units`` markers under ``root``; returns their total bytes."""
    from scale import WIDTHS, unit  # bench/scale.py's synthetic rehearsal-shaped units

    from bluff_ray.results import layout
    from bluff_ray.results.store import Store

    store, rng, total = Store(str(root)), np.random.default_rng(0), 0
    n_classes = 1000
    per_original = -(-(n_classes - 1) // TARGETS_PER_UNIT)
    for i in range(n_units):
        o, j = divmod(i, per_original)
        targets = np.arange(j * TARGETS_PER_UNIT, min((j + 1) * TARGETS_PER_UNIT, n_classes))
        pairs, atlas = unit(rng, o, j, targets, sum(WIDTHS))
        meta = atlas.metadata()
        if not once:  # as before: base64 values, also repeated inside the embedded Arrow schema
            meta = {k: base64.b64encode(v) for k, v in meta.items()}
        data = layout.table_to_parquet(pairs, metadata=meta, metadata_in_schema=not once)
        store.write_bytes(layout.part_path("pairs", o, j), data)
        total += len(data)
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

    store.read_bytes = counted  # the bytes every marker read fetches
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
    for label, once in (("before (metadata twice)", False), ("after (metadata once)", True)):
        root = Path(args.out) / ("once" if once else "twice")
        written = write_markers(root, args.units, once)
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
