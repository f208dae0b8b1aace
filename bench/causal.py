"""Cost of the activation-patching experiments per pair, relative to the attack of the same unit.

    .venv/bin/python bench/causal.py            # digits (demo units) and the rehearsal model, on this CPU

Runs ``engine.compute_unit`` twice on the same unit (same images, seed and batch), without and
with ``pathways.causal``, side by side in one process, and reports the extra time of the patching
experiments as a fraction of the unit's attack time (the target is at most 15 %). The attacked
images are the real ones: the fraction depends on how many attacks succeed (only successful
images are patched), so the number of successes is printed too.

    .venv/bin/python bench/causal.py --only googlenet   # GoogLeNet size (slow: ~9 min on one thread)

GoogLeNet (torchvision, 224 px) has random weights here (no weights are downloaded), so no targeted
attack succeeds and ``compute_unit`` would have nothing to patch. The cost of patching depends on
counts (held-out images, exploited neurons per layer), not on success, so this case calls
``causal.Patching`` directly, as ``compute.patch_pair`` does, on images attacked by a short PGD run
(eps 0.5, a few steps) and TREATED AS SUCCESSFUL although they are not: one strength with
2 x ``--held`` "successful" images (half select, half are patched). By default (``--importance
worst``) the two classes' importances are set so that every layer has the most exploited neurons
the design allows (k//2), the cost's upper bound; ``natural`` uses the random net's importance of
random images (measured: no exploited neuron in any layer, so only the baselines run). It measures side by side, after a warm-up of each, the attack time per image-step
and the patching time per held-out image without and with a dose-response curve, the
experiments run and the FLOPs of both (``torch.utils.flop_counter``), and extrapolates to a full
pair (50 images x 10 strengths x 50 steps; 10 strengths x 8 held-out images, with 25 selection
images per strength, i.e. every attack successful) for ``curves`` none, one and every.
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


GOOGLENET_PAIR = dict(images=50, strengths=10, steps=50, held=8, selection=25)  # a full pair, all successful


class _Counted:
    """Counts the experiments ``Patching.logits`` receives and times the selection pass, by wrapping
    the two methods on the class for the duration (``run`` builds a new Patching per strength)."""

    def __init__(self) -> None:
        self.denoising = self.noising = 0
        self.selection_s = 0.0

    def __enter__(self):
        from unittest import mock

        from bluff_ray.engine.causal import Patching

        logits, stats = Patching.logits, Patching._selection_stats

        def counted(p, experiments, noising=False):
            exps = list(experiments)
            if noising:
                self.noising += len(exps)
            else:
                self.denoising += len(exps)
            return logits(p, exps, noising)

        def timed(p, rows):
            t0 = time.perf_counter()
            try:
                return stats(p, rows)
            finally:
                self.selection_s += time.perf_counter() - t0

        self._patches = [
            mock.patch.object(Patching, "logits", counted),
            mock.patch.object(Patching, "_selection_stats", timed),
        ]
        for m in self._patches:
            m.start()
        return self

    def __exit__(self, *exc) -> None:
        for m in self._patches:
            m.stop()


def _sync(device: str) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def measure_googlenet(held: int = 8, attack_steps: int = 4, importance: str = "worst", device: str = "cpu") -> dict:
    """Patching vs attack cost at GoogLeNet size (module docstring: random weights, images treated
    as successful)."""
    from torch.utils.flop_counter import FlopCounterMode

    from bluff_ray.engine.attack import attack
    from bluff_ray.engine.causal import Patching, allocate_images, block_modules
    from bluff_ray.engine.pathways import importance_of

    adapter = load_model("googlenet", weights="random", device=device)
    pcfg = PathwayConfig()
    model = adapter.attack_model()
    blocks = block_modules(model, adapter.model, adapter.blocks)
    names, channels = adapter.layer_names, [info.channels for info in adapter.layers]
    n = 2 * held  # "successful" images: even rows select, odd rows are patched
    batch = max(16, n)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(batch, *adapter.input_shape, generator=g).to(device)
    x_t = torch.rand(8, *adapter.input_shape, generator=g).to(device)
    targets = torch.full((batch,), 1, dtype=torch.long, device=device)
    eps = max(adapter.metadata["default_strengths"])

    def attack_per_image_step() -> tuple[float, torch.Tensor]:
        cfg = AttackConfig(steps=attack_steps, seed=0)
        _sync(device)
        t0 = time.perf_counter()
        adv = attack(model, x, targets, eps, cfg)
        _sync(device)
        return (time.perf_counter() - t0) / (batch * attack_steps), adv

    attack(model, x[:2], targets[:2], eps, AttackConfig(steps=1, seed=0))  # warm-up
    step_before, adv = attack_per_image_step()

    if importance == "natural":
        imp_o, imp_t = importance_of(adapter, x, pcfg.batch_size), importance_of(adapter, x_t, pcfg.batch_size)
    else:  # the selection images' most active channels are fresh (not top original/target): k//2 exploited per layer
        worst = {k: -v for k, v in importance_of(adapter, adv[0:n:2], pcfg.batch_size).items()}
        imp_o = imp_t = worst

    def patch(curves: str, patch_images: int):
        p = Patching(
            model,
            blocks,
            names,
            channels,
            adv[:n],
            x[:n],
            seed=1,
            batch_size=pcfg.batch_size,
            patch_images=patch_images,
            draws=pcfg.null_draws,
            curves=curves,
        )
        return p.run(0, 1, [imp_o[k] for k in names], [imp_t[k] for k in names], [n], pcfg.k)

    patch("none", 1)  # warm-up (same selection images, one held-out image)
    timed: dict[str, dict] = {}
    for curves in ("none", "one"):
        with _Counted() as c:
            _sync(device)
            t0 = time.perf_counter()
            res = patch(curves, held)
            _sync(device)
            total = time.perf_counter() - t0
        exploited = {layer: 0 for layer in names}
        for layer, _ch in res.effect:
            exploited[layer] += 1
        timed[curves] = dict(
            per_held_s=(total - c.selection_s) / held,
            selection_per_image_s=c.selection_s / held,
            denoising=c.denoising,
            noising=c.noising,
            exploited=exploited,
        )
    step_after, _ = attack_per_image_step()
    step_s = min(step_before, step_after)

    # FLOPs: one forward, one attack step (per image), and one held-out image per curve setting
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        model(x[:2].contiguous(memory_format=torch.channels_last))
    fwd_flops = fc.get_total_flops() / 2
    # the attack step's computation (attack._loss_grad) through backward(inputs=...): FlopCounterMode's
    # module hooks refuse autograd.grad on a leaf; only the input gradient is computed either way
    xs = x[:2].contiguous(memory_format=torch.channels_last).requires_grad_(True)
    with FlopCounterMode(display=False) as fc:
        torch.nn.functional.cross_entropy(model(xs), targets[:2], reduction="sum").backward(inputs=[xs])
    step_flops = fc.get_total_flops() / 2
    flops = {}
    for curves in ("none", "one"):
        with FlopCounterMode(display=False) as fc:
            patch(curves, 1)
        flops[curves] = fc.get_total_flops() - 2 * held * fwd_flops  # selection: 2 forwards per image

    fp = GOOGLENET_PAIR
    steps_per_pair = fp["images"] * fp["strengths"] * fp["steps"]
    per_s = {k: fp["held"] * v["per_held_s"] for k, v in timed.items()}  # one strength's held-out images
    sel_s = fp["strengths"] * fp["selection"] * timed["none"]["selection_per_image_s"]
    per_f = {k: fp["held"] * v for k, v in flops.items()}
    sel_f = fp["strengths"] * fp["selection"] * 2 * fwd_flops
    mix = {"none": (0, fp["strengths"]), "one": (1, fp["strengths"] - 1), "every": (fp["strengths"], 0)}
    attack_s, attack_f = steps_per_pair * step_s, steps_per_pair * step_flops
    shares = {}
    for name, (with_curve, without) in mix.items():
        ps = with_curve * per_s["one"] + without * per_s["none"] + sel_s
        pf = with_curve * per_f["one"] + without * per_f["none"] + sel_f
        shares[name] = dict(patching_s=ps, patching_flops=pf, time=ps / attack_s, flops=pf / attack_f)
    # the engine's budget (pathways.patch_budget): held-out images per strength as many as fit, from
    # the measured FLOPs per held-out image; the half of 50 successful images is 25 per strength
    budget = PathwayConfig().patch_budget * attack_f / fwd_flops - fp["strengths"] * fp["selection"] * 2
    budgeted = {}
    for name, (with_curve, without) in mix.items():
        units = [flops["one"] / fwd_flops] * with_curve + [flops["none"] / fwd_flops] * without
        n = allocate_images(units, [fp["selection"]] * fp["strengths"], budget)[0]
        ps = n * (with_curve * timed["one"]["per_held_s"] + without * timed["none"]["per_held_s"]) + sel_s
        pf = n * (with_curve * flops["one"] + without * flops["none"]) + sel_f
        budgeted[name] = dict(images=n, patching_s=ps, patching_flops=pf, time=ps / attack_s, flops=pf / attack_f)
    out = dict(
        held=held,
        attack_steps=attack_steps,
        attack_batch=batch,
        importance=importance,
        step_s=step_s,
        step_s_before_after=(step_before, step_after),
        fwd_flops=fwd_flops,
        step_flops=step_flops,
        timed=timed,
        patch_flops_per_held=flops,
        attack_pair_s=attack_s,
        attack_pair_flops=attack_f,
        selection_pair_s=sel_s,
        selection_pair_flops=sel_f,
        shares=shares,
        budgeted=budgeted,
    )
    print(f"# {out}", file=sys.stderr, flush=True)
    return out


def print_googlenet(r: dict) -> None:
    t, f = r["timed"], r["patch_flops_per_held"]
    print(
        f"GoogLeNet (random weights, 224 px), attacked images TREATED AS SUCCESSFUL; importance={r['importance']}; "
        f"{r['held']} held-out + {r['held']} selection images, one strength"
    )
    print(
        f"attack: {1e3 * r['step_s']:.1f} ms per image-step (batch {r['attack_batch']}, {r['attack_steps']} steps; "
        f"before/after the patching: {1e3 * r['step_s_before_after'][0]:.1f} / {1e3 * r['step_s_before_after'][1]:.1f} ms); "
        f"{r['step_flops'] / 1e9:.2f} GFLOP per image-step, {r['fwd_flops'] / 1e9:.2f} GFLOP per forward"
    )
    for curves, label in (("none", "without curve"), ("one", "with curve")):
        x = t[curves]
        per_layer = ", ".join(str(v) for v in x["exploited"].values())
        print(
            f"patching {label}: {x['per_held_s']:.2f} s per held-out image "
            f"({x['per_held_s'] / r['step_s']:.0f} attack image-steps), {f[curves] / 1e9:.0f} GFLOP per held-out image "
            f"({f[curves] / r['step_flops']:.0f} image-steps); experiments: {x['denoising']} denoising + "
            f"{x['noising']} noising rows per image; exploited per layer: {per_layer}; "
            f"selection {x['selection_per_image_s']:.3f} s per image"
        )
    print(
        f"full pair: attack {GOOGLENET_PAIR['images']} x {GOOGLENET_PAIR['strengths']} x {GOOGLENET_PAIR['steps']} "
        f"image-steps = {r['attack_pair_s']:.0f} s, {r['attack_pair_flops'] / 1e12:.1f} TFLOP; selection "
        f"({GOOGLENET_PAIR['strengths']} x {GOOGLENET_PAIR['selection']} images) {r['selection_pair_s']:.0f} s"
    )
    print("| curves | patching per pair | patching / attack (time) | patching / attack (FLOPs) |")
    print("|---|---|---|---|")
    for name, sh in r["shares"].items():
        print(
            f"| {name} | {sh['patching_s']:.0f} s, {sh['patching_flops'] / 1e12:.2f} TFLOP | {100 * sh['time']:.1f} % | "
            f"{100 * sh['flops']:.1f} % |",
            flush=True,
        )
    print(f"with the engine's budget (pathways.patch_budget {PathwayConfig().patch_budget}):")
    print("| curves | held-out images per strength | patching / attack (time) | patching / attack (FLOPs) |")
    print("|---|---|---|---|")
    for name, b in r["budgeted"].items():
        print(f"| {name} | {b['images']} | {100 * b['time']:.1f} % | {100 * b['flops']:.1f} % |", flush=True)


def count_merged(model: str, data: str, n_images: int, steps: int = 20) -> list[dict]:
    """Experiments planned (labels) and run (identical ones merged) over one unit of 2 targets, for
    ``curves`` one and every: what running identical experiments once saves."""
    from bluff_ray.engine.causal import Patching
    from bluff_ray.run.data import make_source

    adapter = load_model(model)
    src = make_source(data, adapter, max_images=n_images)

    def cd(c):
        x, _ = src.class_images(c, n_images)
        return class_data(adapter, c, x, benign_stats(adapter, x, c))

    original, targets = cd(0), [cd(1), cd(2)]
    cfg = AttackConfig(strengths=tuple(adapter.metadata["default_strengths"]), steps=steps)
    counts = {"labels": 0, "experiments": 0}
    execute = Patching._execute

    def counted(self, out, effect, s, plan, *rest):
        counts["labels"] += len(plan.index)
        counts["experiments"] += len(plan.exps)
        return execute(self, out, effect, s, plan, *rest)

    rows = []
    Patching._execute = counted  # type: ignore[method-assign]
    try:
        for curves in ("one", "every"):
            counts.update(labels=0, experiments=0)
            compute_unit(adapter, original, targets, cfg, PathwayConfig(curves=curves), seed=1, batching=Batching(4096))
            rows.append(dict(model=model, curves=curves, **counts))
            print(
                f"| {model} | {curves} | {counts['labels']} | {counts['experiments']} | "
                f"{100 * (1 - counts['experiments'] / counts['labels']):.1f} % |",
                flush=True,
            )
    finally:
        Patching._execute = execute  # type: ignore[method-assign]
    return rows


def bytes_per_pair(n_images: int = 16, steps: int = 20) -> None:
    """Bytes per pair of the causal and causal_curve files as the pipeline writes them (zstd, one
    row group per target), for ``curves`` one and every: a unit of 2 targets on the rehearsal model."""
    from bluff_ray.results import layout
    from bluff_ray.run.data import make_source

    adapter = load_model("rehearsal")
    src = make_source("synthetic", adapter, max_images=n_images)

    def cd(c):
        x, _ = src.class_images(c, n_images)
        return class_data(adapter, c, x, benign_stats(adapter, x, c))

    original, targets = cd(0), [cd(1), cd(2)]
    cfg = AttackConfig(strengths=tuple(adapter.metadata["default_strengths"]), steps=steps)
    print("| curves | causal rows / bytes per pair | causal_curve rows / bytes per pair |")
    print("|---|---|---|", flush=True)
    for curves in ("one", "every"):
        u = unit_tables(
            compute_unit(adapter, original, targets, cfg, PathwayConfig(curves=curves), seed=1, batching=Batching(4096))
        )
        cells = []
        for name in ("causal", "causal_curve"):
            table = getattr(u, name)
            size = len(layout.table_to_parquet(table, group_by="target", groups=list(u.targets)))
            cells.append(f"{table.num_rows / len(u.targets):.0f} / {size / len(u.targets) / 1e3:.1f} KB")
        print(f"| {curves} | {cells[0]} | {cells[1]} |", flush=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument(
        "--only",
        choices=["digits", "rehearsal", "googlenet", "merged", "bytes"],
        action="append",
        help="measure only these (repeatable; default: digits and rehearsal; googlenet is slow; merged counts "
        "the experiments that run once instead of several times; bytes: causal file bytes per pair)",
    )
    ap.add_argument(
        "--held", type=int, default=8, help="googlenet: held-out images timed (8: a full strength; scaled per image)"
    )
    ap.add_argument("--attack-steps", type=int, default=4, help="googlenet: PGD steps timed (batch of 16)")
    ap.add_argument(
        "--importance",
        choices=["worst", "natural"],
        default="worst",
        help="googlenet: k//2 exploited neurons per layer (worst) or the random net's own",
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
    if "merged" in only:
        print("| model | curves | experiments planned | run (identical ones once) | saved |")
        print("|---|---|---|---|---|", flush=True)
        count_merged("digits", "digits", 32)
        count_merged("rehearsal", "synthetic", 16)
    if "bytes" in only:
        bytes_per_pair()
    if "googlenet" in only:
        print_googlenet(measure_googlenet(args.held, args.attack_steps, args.importance))
    if not rows:
        return 0
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
