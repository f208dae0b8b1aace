"""The GPU benchmark, one command: what a 999,000-pair ImageNet run would cost on a GPU cluster.

    .venv/bin/python bench/gpu.py                      # on a GPU node (CUDA), the full measurement
    .venv/bin/python bench/gpu.py --device cpu --quick # a smoke run of the same code on a CPU

It measures, on torchvision GoogLeNet at 224x224 with seeded random weights (no download needed:
the cost does not depend on the weights), everything the projection needs:

1. PGD image-steps/s of ``adapter.attack_model()`` (what the pipeline attacks) in bf16 autocast,
   eager and ``torch.compile``-d, over several batch sizes (and the automatic batch size the
   pipeline would choose on this device);
2. ``layer_influence`` images/s over the eight mixed-layer transitions (22 displayed neurons per
   layer, about what a pair shows);
3. end to end, ``engine.compute_unit`` pairs/s for one work unit (the real attack, summaries and
   activation patching) on synthetic images, and the real Ray pipeline (``pipeline.run``) on this
   machine's GPUs for a few units;
4. the projected hours for all 999,000 ordered pairs on 16 such GPUs.

It prints a markdown report (and ``--json`` writes the numbers). Nothing here is a test.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

from bluff_ray.engine.attack import AttackConfig, Batching, attack_stream  # noqa: E402
from bluff_ray.engine.models import load_model  # noqa: E402

PAIRS = 999_000
GPUS = 16


def sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def pgd_rate(adapter, batch: int, steps: int, bf16: bool, compiled: bool, device) -> float:
    """Image-steps/s of the attack loop on ``batch`` samples (one target, strengths mixed)."""
    cfg = AttackConfig(steps=steps, bf16=bf16, compile=compiled)
    n = max(1, batch // len(cfg.strengths))
    x = torch.rand(n, *adapter.input_shape, device=device)
    model = adapter.attack_model(compiled=compiled)
    warm = dataclasses.replace(cfg, steps=2)
    for _ in attack_stream(model, x, [1], warm, Batching(n * len(cfg.strengths)), seed=0, pad=compiled):
        pass
    sync(device)
    t0 = time.perf_counter()
    for _ in attack_stream(model, x, [1], cfg, Batching(n * len(cfg.strengths)), seed=0, pad=compiled):
        pass
    sync(device)
    return n * len(cfg.strengths) * steps / (time.perf_counter() - t0)


def influence_rate(adapter, images: int, displayed: int, device) -> float:
    from bluff_ray.engine.influence import layer_influence

    gen = torch.Generator().manual_seed(0)
    x = torch.rand(images, *adapter.input_shape, generator=gen).to(device)
    choice = [torch.randperm(l.channels, generator=gen)[:displayed] for l in adapter.layers]
    with torch.no_grad():
        _, acts = adapter.forward_with_activations(x)
        sync(device)
        t0 = time.perf_counter()
        names = adapter.layer_names
        for q in range(1, len(names)):
            layer_influence(adapter, q, acts[names[q - 1]], choice[q - 1], choice[q], batch_size=images)
        sync(device)
    return images / (time.perf_counter() - t0)


def unit_rate(adapter, n_images: int, n_targets: int, steps: int, bf16: bool, compiled: bool, batch: int | None,
              device) -> dict:
    """engine.compute_unit on synthetic images: pairs/s and the share of the patching experiments."""
    from bluff_ray.run.data import SyntheticSource
    from bluff_ray.engine.compute import auto_batch_size, benign_stats, class_data, compute_unit
    from bluff_ray.engine.pathways import PathwayConfig

    src = SyntheticSource(adapter.input_shape, per_class=n_images)

    def data(c):
        x, _ = src.class_images(c, n_images)
        st = benign_stats(adapter, x.to(device), c)
        st.correct[:] = True  # random weights classify nothing correctly; attack every image
        return class_data(adapter, c, x, st)

    original, targets = data(0), [data(t) for t in range(1, n_targets + 1)]
    cfg = AttackConfig(steps=steps, bf16=bf16, compile=compiled)
    size = batch or auto_batch_size(adapter, bf16)
    out = {}
    for causal in (False, True):
        sync(device)
        t0 = time.perf_counter()
        r = compute_unit(adapter, original, targets, cfg, PathwayConfig(causal=causal), seed=1,
                         batching=Batching(size))
        sync(device)
        dt = time.perf_counter() - t0
        out["causal" if causal else "plain"] = {"seconds": dt, "pairs_per_s": n_targets / dt, **r.timings}
    out["batch"] = size
    out["patching_share"] = (out["causal"]["seconds"] - out["plain"]["seconds"]) / out["plain"]["attack"]
    return out


def pipeline_rate(n_images: int, steps: int, bf16: bool, originals: int, device) -> dict:
    """The real pipeline (Ray, storage, reduce) on this machine: GoogLeNet random weights, synthetic data."""
    import ray

    from bluff_ray.run.config import load
    from bluff_ray.run.driver import run

    out = tempfile.mkdtemp(prefix="bluff-gpu-bench-")
    cfg = load(None, {"model": "googlenet", "weights": "random", "data": "synthetic", "out": out,
                      "classes": list(range(21)), "originals": list(range(originals)),
                      "images_per_class": n_images, "attack.steps": steps, "attack.bf16": bf16,
                      "assets.enabled": False, "progress": False,
                      "device": "cuda" if torch.device(device).type == "cuda" else "cpu"})
    t0 = time.perf_counter()
    s = run(cfg)
    dt = time.perf_counter() - t0
    if ray.is_initialized():
        ray.shutdown()
    return {"pairs": s.pairs_written, "seconds": dt, "pairs_per_s": s.pairs_written / dt, "workers": s.workers,
            "failed": len(s.failed)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--quick", action="store_true", help="tiny sizes (a smoke run, e.g. on a CPU)")
    ap.add_argument("--batches", default="256,512,1024,2048", help="PGD batch sizes to time")
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile measurement")
    ap.add_argument("--json", default=None, help="also write the numbers to this file")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    torch.backends.cudnn.benchmark = True
    adapter = load_model("googlenet", weights="random", device=str(device))
    quick = args.quick
    steps = 2 if quick else 20
    batches = [20] if quick else [int(b) for b in args.batches.split(",")]
    report: dict = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                    "torch": torch.__version__}
    rows = []
    for compiled in ([False] if args.no_compile or device.type != "cuda" else [False, True]):
        for b in batches:
            try:
                rate = pgd_rate(adapter, b, steps, bf16=device.type == "cuda", compiled=compiled, device=device)
            except torch.OutOfMemoryError:
                rate = float("nan")
                torch.cuda.empty_cache()
            rows.append({"compiled": compiled, "batch": b, "image_steps_per_s": rate})
            print(f"PGD {'compiled' if compiled else 'eager'} batch {b}: {rate:,.0f} image-steps/s", flush=True)
    report["pgd"] = rows
    report["influence_images_per_s"] = influence_rate(adapter, 4 if quick else 64, 22, device)
    n_images, n_targets = (2, 2) if quick else (50, 20)
    unit_steps = 2 if quick else 50
    best = max((r for r in rows if r["image_steps_per_s"] == r["image_steps_per_s"]),
               key=lambda r: r["image_steps_per_s"], default=None)
    report["unit"] = unit_rate(adapter, n_images, n_targets, unit_steps, bf16=device.type == "cuda",
                               compiled=bool(best and best["compiled"]), batch=None, device=device)
    print(f"unit of {n_targets} pairs: {report['unit']['causal']['pairs_per_s']:.3f} pairs/s with patching "
          f"(patching {100 * report['unit']['patching_share']:.1f} % of the attack time)", flush=True)
    report["pipeline"] = pipeline_rate(2 if quick else 50, unit_steps, device.type == "cuda", 1 if quick else 2, device)
    per_gpu = report["unit"]["causal"]["pairs_per_s"]
    hours = PAIRS / (per_gpu * GPUS) / 3600
    report["projection"] = {"pairs_per_s_per_gpu": per_gpu, "gpus": GPUS, "hours_999k_pairs": hours,
                            "note": "compute_unit at full size (50 images x 10 strengths x 50 steps) on one GPU; "
                                    "the pipeline's storage and reduce overlap with compute"}
    print("\n| measurement | value |\n|---|---|")
    print(f"| device | {report['device']} (torch {report['torch']}) |")
    for r in rows:
        print(f"| PGD {'bf16' if device.type == 'cuda' else 'fp32'} {'compiled' if r['compiled'] else 'eager'}, batch {r['batch']} | "
              f"{r['image_steps_per_s']:,.0f} image-steps/s |")
    print(f"| influence, 8 transitions, 22 neurons/layer | {report['influence_images_per_s']:,.1f} images/s |")
    u = report["unit"]
    print(f"| compute_unit, {n_targets} pairs, batch {u['batch']} | {u['causal']['pairs_per_s']:.3f} pairs/s "
          f"(without patching {u['plain']['pairs_per_s']:.3f}); patching = {100 * u['patching_share']:.1f} % of the attack |")
    p = report["pipeline"]
    print(f"| pipeline (Ray, storage, reduce), {p['pairs']} pairs, {p['workers']} worker(s) | {p['pairs_per_s']:.3f} pairs/s |")
    print(f"| projection: 999,000 pairs on {GPUS} GPUs | {hours:,.1f} hours |")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
