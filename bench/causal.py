"""Cost of the activation-patching experiments per pair, relative to the attack of the same unit.

    .venv/bin/python bench/causal.py            # digits (demo units) and the rehearsal model, on this CPU

Runs ``engine.compute_unit`` twice on the same unit (same images, seed and batch), without and
with ``pathways.causal``, side by side in one process, and reports the extra time of the patching
experiments as a fraction of the unit's attack time (the target is at most 15 %). The attacked
images are the real ones: the fraction depends on how many attacks succeed (only successful
images are patched), so the number of successes is printed too.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bluff_ray.engine.attack import AttackConfig, Batching  # noqa: E402
from bluff_ray.engine.compute import benign_stats, class_data, compute_unit  # noqa: E402
from bluff_ray.engine.models import load_model  # noqa: E402
from bluff_ray.engine.pathways import PathwayConfig  # noqa: E402
from bluff_ray.results.rows import unit_tables  # noqa: E402


def measure(
    model: str,
    data: str,
    n_images: int,
    targets: list[int],
    steps: int,
    repeats: int = 2,
) -> dict:
    from bluff_ray.run.data import make_source

    adapter = load_model(model)
    src = make_source(data, adapter, max_images=n_images)

    def cd(c):
        x, _ = src.class_images(c, n_images)
        return class_data(adapter, c, x, benign_stats(adapter, x, c))

    original, tdata = cd(0), [cd(t) for t in targets]
    cfg = AttackConfig(strengths=tuple(adapter.metadata["default_strengths"]), steps=steps)
    best = {}
    for _ in range(repeats):  # alternate, keep the best of each
        for causal in (False, True):
            t0 = time.perf_counter()
            r = unit_tables(
                compute_unit(
                    adapter, original, tdata, cfg, PathwayConfig(causal=causal), seed=1, batching=Batching(4096)
                )
            )
            dt = time.perf_counter() - t0
            key = "causal" if causal else "plain"
            if key not in best or dt < best[key][0]:
                best[key] = (
                    dt,
                    r.timings,
                    sum(map(sum, r.pairs.column("n_success").to_pylist())),
                    sum(r.pairs.column("n_exploited").to_pylist()) / len(targets),
                )
    plain, causal = best["plain"], best["causal"]
    out = {
        "model": model,
        "images": n_images,
        "targets": len(targets),
        "steps": steps,
        "successes": causal[2],
        "exploited": causal[3],
        "samples": n_images * len(cfg.strengths) * len(targets),
        "attack_s": plain[1]["attack"],
        "strengths": len(cfg.strengths),
        "patching_timer_s": causal[1].get("patching", float("nan")),
        "patching_s": causal[0] - plain[0],
        "share": (causal[0] - plain[0]) / plain[1]["attack"],
    }
    print(f"# {out}", file=sys.stderr, flush=True)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument(
        "--only",
        choices=["digits", "rehearsal"],
        action="append",
        help="measure only these models (repeatable; default: digits and rehearsal)",
    )
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    only = set(args.only or ["digits", "rehearsal"])
    rows = []
    if "digits" in only:
        rows.append(measure("digits", "digits", 32, [1, 2, 3], 50))  # a demo unit
    if "rehearsal" in only:
        rows += [
            measure("rehearsal", "synthetic", 8, [1, 2, 3, 4, 5], 50),
            measure("rehearsal", "synthetic", 50, [1, 2], 50, repeats=1),
        ]  # ImageNet val's 50 images
    print("| model | unit | successful attacks | exploited neurons per pair | attack | patching | patching / attack |")
    print("|---|---|---|---|---|---|---|", flush=True)
    for r in rows:
        print(
            f"| {r['model']} | {r['targets']} targets x {r['strengths']} strengths x {r['images']} images, {r['steps']} steps | "
            f"{r['successes']} of {r['samples']} | {r['exploited']:.0f} | {r['attack_s']:.2f} s | {r['patching_s']:.2f} s | "
            f"{100 * r['share']:.1f} % |",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
