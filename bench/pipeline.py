"""Pipeline throughput with 1 vs 2 Ray actors (side by side, one run), bytes per pair on disk, and
the wall time of `bluff demo`.

    .venv/bin/python bench/pipeline.py                  # 1 vs 2 actors on digits classes 0-2 (6 one-pair units) + bytes/pair
    .venv/bin/python bench/pipeline.py --demo           # also time `bluff demo --no-serve` (all 90 pairs)
    .venv/bin/python bench/pipeline.py --classes 0,1,2,3 --workers 1,2,4

Each setting computes the same pairs (full science: default strengths, 50 PGD steps, all test
images of each class; assets off so only the pairs pipeline is timed) into a fresh root on one
local Ray instance. On a GPU machine the actors are GPU actors (one per GPU) and `--workers` is
capped by the GPU count.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("RAY_AUTH_MODE", "disabled")


def bytes_per_pair(root: str, n_pairs: int) -> dict[str, float]:
    out = {}
    for kind in ("pairs", "nodes", "edges", "causal"):
        total = 0
        for dirpath, _, files in os.walk(os.path.join(root, kind)):
            total += sum(os.path.getsize(os.path.join(dirpath, f)) for f in files)
        out[kind] = total / n_pairs
    out["total"] = sum(out.values())
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--classes", default="0,1,2", help="digit classes (default 0,1,2: 6 ordered pairs)")
    ap.add_argument("--workers", default="1,2", help="actor counts to compare (default 1,2)")
    ap.add_argument(
        "--target-chunk",
        type=int,
        default=1,
        help="targets per work unit (default 1: one pair per unit, so units split evenly over actors)",
    )
    ap.add_argument("--demo", action="store_true", help="also time `bluff demo --no-serve` into a temp folder")
    args = ap.parse_args()

    import ray
    import torch

    from bluff_ray.run.config import RunConfig
    from bluff_ray.run.driver import run

    base = RunConfig()
    classes = [int(c) for c in args.classes.split(",")]
    workers = [int(w) for w in args.workers.split(",")]
    cpus = os.cpu_count() or 2
    gpu = torch.cuda.is_available()
    print(
        f"machine: {cpus} CPUs, GPU: {torch.cuda.get_device_name(0) if gpu else 'none'}; "
        f"load average {os.getloadavg()[0]:.1f}"
    )
    ray.init(address="local", num_cpus=max(cpus, max(workers)), include_dashboard=False, log_to_driver=False)
    tmp = tempfile.mkdtemp(prefix="bluff-bench-")
    results = []
    try:
        # Warm-up: trains/caches the digits model and imports everything once.
        from bluff_ray.engine.models import load_model

        load_model("digits")
        for n in workers:
            root = os.path.join(tmp, f"w{n}")
            cfg = RunConfig(
                out=root,
                classes=classes,
                num_workers=n,
                progress=False,
                target_chunk=args.target_chunk,
                assets=__import__("dataclasses").replace(base.assets, enabled=False),
            )
            t0 = time.perf_counter()
            summary = run(cfg)
            wall = time.perf_counter() - t0
            assert not summary.failed, summary.failed
            results.append((n, summary.pairs_written, wall, bytes_per_pair(root, summary.pairs_written)))
            print(
                f"{n} actor(s): {summary.pairs_written} pairs in {wall:.1f} s = {summary.pairs_written / wall:.3f} pairs/s"
            )
    finally:
        ray.shutdown()
    base_rate = results[0][1] / results[0][2]
    print("\n| actors | pairs | wall s | pairs/s | speed-up vs 1 |")
    print("|---|---|---|---|---|")
    for n, p, wall, _ in results:
        print(f"| {n} | {p} | {wall:.1f} | {p / wall:.3f} | {p / wall / base_rate:.2f}x |")
    b = results[-1][3]
    print(
        f"\nbytes per pair on disk: pairs {b['pairs']:.0f} + nodes {b['nodes']:.0f} + edges {b['edges']:.0f} "
        f"+ causal {b['causal']:.0f} = {b['total']:.0f} B"
    )

    if args.demo:
        out = os.path.join(tmp, "demo")
        t0 = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-m", "bluff_ray.cli", "demo", "--no-serve", "--out", out], capture_output=True, text=True
        )
        wall = time.perf_counter() - t0
        print(proc.stdout[-2000:])
        if proc.returncode != 0:
            print(proc.stderr[-4000:], file=sys.stderr)
        print(f"`bluff demo --no-serve` (90 pairs, assets on): {wall:.0f} s wall, exit {proc.returncode}")
        if proc.returncode == 0:
            b = bytes_per_pair(out, 90)
            print(
                f"demo bytes per pair on disk (3 pairs per partition file): pairs {b['pairs']:.0f} + nodes "
                f"{b['nodes']:.0f} + edges {b['edges']:.0f} + causal {b['causal']:.0f} = {b['total']:.0f} B"
            )
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
