"""Host work per pair, before and after the engine rework, side by side in one run (CPU).

    git worktree add /tmp/bluff-v1 f604815          # the engine before the rework
    .venv/bin/python bench/host.py --old /tmp/bluff-v1

On a GPU node the attack's forward/backward passes run on the device; everything else the
device waits for is the host's share. This benchmark runs one work unit (GoogLeNet 224x224,
seeded random weights, synthetic images; small so a CPU finishes it) through the old engine
(``attack_grid`` then ``summarize_pair`` per target, as the old actor did) and the new one
(``engine.compute_unit``), and counts per pair, identically for both:

- calls that read a tensor back to the host (``.cpu()``, ``.tolist()``, ``.item()``; each is a
  device synchronisation when the tensor lives on a GPU; on this CPU run some of them touch
  tensors that would be on the host anyway, for both engines alike);
- full-model forward passes (the old summary recomputed the original and target importance
  from images for every pair; the new one reuses the benign stage's);
- random-start generation time on a CPU generator (the old engine always drew on the CPU;
  the new one draws on the attack's device);
- wall time outside the attack model's forward/backward (on this CPU; it includes the
  influence convolutions, which a GPU runs fast, so it is an upper bound of the host share).

Image reads per pair are counted separately by ``--reads`` (the real pipeline on an instrumented
filesystem); see BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parents[1]


class Counters:
    def __init__(self):
        self.syncs = 0
        self.forwards = 0
        self.model_s = 0.0
        self.d2h_bytes = 0


@contextlib.contextmanager
def instrument(counters: Counters, models):
    """Count host syncs and time the attack model's forward/backward passes."""
    T = torch.Tensor
    saved = {name: getattr(T, name) for name in ("cpu", "tolist", "item")}  # .numpy() needs a host tensor

    def wrap(name):
        fn = saved[name]

        def inner(self, *a, **k):
            counters.syncs += 1
            if name == "cpu" and self.dim() >= 4:
                counters.d2h_bytes += self.numel() * self.element_size()
            return fn(self, *a, **k)

        return inner

    for name in saved:
        setattr(T, name, wrap(name))
    grad = torch.autograd.grad

    def timed_grad(*a, **k):
        t0 = time.perf_counter()
        try:
            return grad(*a, **k)
        finally:
            counters.model_s += time.perf_counter() - t0

    torch.autograd.grad = timed_grad
    hooks = []
    for m in models:
        starts = {}
        hooks.append(m.register_forward_pre_hook(lambda mod, inp, s=starts: s.__setitem__("t", time.perf_counter())))

        def post(mod, inp, out, s=starts):
            counters.forwards += 1
            counters.model_s += time.perf_counter() - s["t"]

        hooks.append(m.register_forward_hook(post))
    try:
        yield counters
    finally:
        for name, fn in saved.items():
            setattr(T, name, fn)
        torch.autograd.grad = grad
        for h in hooks:
            h.remove()


def load_engine(root: Path):
    """Import bluff_ray from ``root`` (the current tree or an old worktree) as a fresh package."""
    for name in [m for m in sys.modules if m == "bluff_ray" or m.startswith("bluff_ray.")]:
        del sys.modules[name]
    sys.path.insert(0, str(root))
    try:
        return importlib.import_module("bluff_ray")
    finally:
        sys.path.remove(str(root))


def run_old(root: Path, n_images: int, targets: list[int], steps: int) -> dict:
    load_engine(root)
    from bluff_ray.engine.attack import AttackConfig, attack_grid
    from bluff_ray.engine.models.googlenet import load_googlenet
    from bluff_ray.engine.pathways import PathwayConfig, summarize_pair

    adapter = _random_googlenet(load_googlenet)
    x, tx = _images(n_images, targets)
    cfg = AttackConfig(steps=steps)
    c = Counters()
    with instrument(c, [adapter.model, adapter.attack_model()]):
        t0 = time.perf_counter()
        gen = torch.Generator().manual_seed(1)
        g0 = time.perf_counter()
        from bluff_ray.engine.attack import random_start

        random_start(
            (len(targets) * len(cfg.strengths) * n_images, *adapter.input_shape),
            "pgd_l2",
            torch.Generator().manual_seed(1),
        )
        start_s = time.perf_counter() - g0
        grid = attack_grid(adapter.attack_model(), x, targets, cfg, batch_size=4096, generator=gen)
        for ti, t in enumerate(targets):
            adv, ok = grid.adv[ti], grid.success[ti]
            attacked = [adv[k][ok[k]] for k in range(adv.shape[0])]
            summarize_pair(
                adapter, 0, t, x, tx[ti], attacked, n_images, ok.sum(1).tolist(), cfg.strengths, PathwayConfig()
            )
        wall = time.perf_counter() - t0
    return _result(c, wall, len(targets), start_s)


def run_new(n_images: int, targets: list[int], steps: int) -> dict:
    load_engine(HERE)
    from bluff_ray.engine.attack import AttackConfig, StartNoise
    from bluff_ray.engine.compute import ClassData, benign_stats, class_data, compute_unit
    from bluff_ray.engine.models.googlenet import load_googlenet
    from bluff_ray.engine.pathways import PathwayConfig
    from bluff_ray.results.rows import unit_tables

    adapter = _random_googlenet(load_googlenet)
    x, tx = _images(n_images, targets)
    cfg = AttackConfig(steps=steps)
    original = class_data(adapter, 0, x, benign_stats(adapter, x, 0))
    original = ClassData(0, original.images, torch.ones(len(x), dtype=torch.bool), original.importance)
    tdata = [class_data(adapter, t, tx[i], benign_stats(adapter, tx[i], t)) for i, t in enumerate(targets)]
    c = Counters()
    with instrument(c, [adapter.model, adapter.attack_model()]):
        t0 = time.perf_counter()
        g0 = time.perf_counter()
        StartNoise(1, "pgd_l2", adapter.input_shape, len(targets) * len(cfg.strengths) * n_images).get(
            0, len(targets) * len(cfg.strengths) * n_images
        )
        start_s = time.perf_counter() - g0
        unit_tables(compute_unit(adapter, original, tdata, cfg, PathwayConfig(causal=False), seed=1, batching=4096))
        wall = time.perf_counter() - t0
    return _result(c, wall, len(targets), start_s)


def _random_googlenet(load_googlenet):
    from torchvision.models import GoogLeNet

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = GoogLeNet(num_classes=1000, aux_logits=False, transform_input=True, init_weights=True)
    from bluff_ray.engine.models.googlenet import googlenet_adapter

    return googlenet_adapter(net, "random")


def _images(n: int, targets: list[int]):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(n, 3, 224, 224, generator=g)
    return x, [torch.rand(n, 3, 224, 224, generator=g) for _ in targets]


def _result(c: Counters, wall: float, n_pairs: int, start_s: float) -> dict:
    return {
        "syncs_per_pair": c.syncs / n_pairs,
        "model_forwards_per_pair": c.forwards / n_pairs,
        "adv_bytes_to_host_per_pair": c.d2h_bytes / n_pairs,
        "outside_model_s_per_pair": (wall - c.model_s - start_s) / n_pairs,
        "random_start_s_per_pair": start_s / n_pairs,
        "wall_s_per_pair": wall / n_pairs,
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--old", required=True, help="a worktree of the engine before the rework (commit f604815)")
    ap.add_argument("--images", type=int, default=4)
    ap.add_argument("--targets", type=int, default=2)
    ap.add_argument("--steps", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    targets = list(range(1, args.targets + 1))
    old = run_old(Path(args.old), args.images, targets, args.steps)
    new = run_new(args.images, targets, args.steps)
    n = args.images * 10
    print(
        f"Adversarial images copied to the host per pair at {args.images} images: before {n * 3 * 224 * 224 * 4 / 1e6:.1f} MB "
        "(attack_grid kept its grid on the CPU), after 0 (they stay on the device)\n"
    )
    print(
        f"GoogLeNet 224x224 (random weights), {args.images} images x 10 strengths x {args.steps} step(s), "
        f"{args.targets} targets, {args.threads} thread(s)\n"
    )
    print("| per pair | before (f604815) | after | ")
    print("|---|---|---|")
    for key, label in [
        ("syncs_per_pair", "host reads of tensors (.cpu/.tolist/.item)"),
        ("model_forwards_per_pair", "full-model forward passes"),
        (
            "random_start_s_per_pair",
            "random starts (s; before: always a CPU generator, after: the attack's device, here the CPU too)",
        ),
        ("outside_model_s_per_pair", "CPU time outside the attack's forward/backward (s)"),
        ("wall_s_per_pair", "wall time (s)"),
    ]:
        print(f"| {label} | {old[key]:,.3f} | {new[key]:,.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
