"""``config.resolve`` scaling: classes x originals -> pairs, timed at two sizes side by side.

    .venv/bin/python bench/resolve.py            # this tree, 100 vs 1,000 originals
    .venv/bin/python bench/resolve.py --before   # also the config.py of commit 3bf6741 (100 vs 300)

Linear work gives a time ratio close to the pair ratio (10x the pairs: ~10x the time); the former
quadratic count of targets per original grows with the square. Prints ratios, not absolute times
(those depend on the machine).
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
import time

from bluff_ray.engine.models.base import ModelAdapter
from bluff_ray.run.config import RunConfig, resolve


def adapter(n: int) -> ModelAdapter:
    return ModelAdapter(
        name="bench",
        model=None,
        blocks=[],
        layers=[],
        input_pools=[],
        class_names=[f"class {i}" for i in range(n)],
        class_ids=[f"n{i:08d}" for i in range(n)],
        input_shape=(1, 8, 8),
        input_space="bench",
        load_image=None,
        metadata={"default_strengths": (0.5, 1.0)},
    )


def timed(n_classes: int, n_originals: int, module=None, repeat: int = 3) -> tuple[int, float]:
    run_config, do_resolve = (module.RunConfig, module.resolve) if module else (RunConfig, resolve)
    a = adapter(n_classes)
    cfg = run_config(classes=[f"n{i:08d}" for i in range(n_classes)], originals=list(range(n_originals)))
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        r = do_resolve(cfg, a)
        best = min(best, time.perf_counter() - t0)
    return len(r.pairs), best


def old_config(commit: str = "3bf6741"):
    """config.py as it was at ``commit`` (the quadratic resolve), loaded beside this tree's."""
    text = subprocess.run(
        ["git", "show", f"{commit}:bluff_ray/run/config.py"], capture_output=True, text=True, check=True
    ).stdout
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as f:
        f.write(text)
    spec = importlib.util.spec_from_file_location("old_config", f.name)
    module = importlib.util.module_from_spec(spec)
    sys.modules["old_config"] = module
    spec.loader.exec_module(module)
    return module


def report(label: str, small: tuple[int, float], large: tuple[int, float]) -> None:
    print(f"{label}: {small[0]:,} -> {large[0]:,} pairs (x{large[0] / small[0]:.1f}): time x{large[1] / small[1]:.1f}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--before", action="store_true", help="also time the quadratic resolve of commit 3bf6741")
    args = ap.parse_args()
    report("this tree, 1,000 classes, 100 -> 1,000 originals", timed(1000, 100), timed(1000, 1000))
    if args.before:
        old = old_config()
        report("this tree, 1,000 classes, 100 -> 300 originals", timed(1000, 100), timed(1000, 300))
        report(
            "commit 3bf6741, 1,000 classes, 100 -> 300 originals", timed(1000, 100, old, 1), timed(1000, 300, old, 1)
        )


if __name__ == "__main__":
    main()
