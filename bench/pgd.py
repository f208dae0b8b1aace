"""PGD throughput: bluff_ray's batched multi-strength attack vs torchattacks looped per strength.

CPU mode (default) runs both side by side in one process on the same model, images, targets and
steps, and prints a markdown table of image-steps/s, the speed ratio and the success rate per
strength of each (a sanity check that both do the same attack). A third column times bluff_ray on
``adapter.attack_model()`` (BatchNorm folded, channels_last), which is what the pipeline runs. Models: the digits demo net
(one batch of test images, random wrong targets) and GoogLeNet with random weights at a reduced
batch/steps so it finishes in minutes on a laptop CPU.

GPU mode (``--device cuda``) measures the production configuration: GoogLeNet at
224x224 on ``adapter.attack_model()`` as the pipeline runs it, ``--bf16`` (the pipeline's
``attack.bf16``: autocast bfloat16) and
``--compile`` (torch.compile, the pipeline's ``attack.compile``), and reports PGD image-steps/s
(goal >= 36,000 on one H100). ``bench/gpu.py`` is the one-command GPU benchmark of the whole path.

Examples:
    .venv/bin/python bench/pgd.py --threads 1
    .venv/bin/python bench/pgd.py --device cuda --compile --bf16 --models googlenet --gn-images 128 --gn-steps 50
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bluff_ray.engine.attack import AttackConfig, attack_grid  # noqa: E402
from bluff_ray.engine.models.digits import DIGITS_STRENGTHS, digits_split, train_digits  # noqa: E402
from bluff_ray.engine.models.googlenet import GOOGLENET_STRENGTHS, googlenet_adapter  # noqa: E402


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_ours(model, x, target, cfg, device):
    """All strengths in ONE attack_grid loop (one target, N images x S strengths per batch)."""
    _sync(device)
    t0 = time.perf_counter()
    grid = attack_grid(model, x, [target], cfg, batch_size=len(x) * len(cfg.strengths), seed=0)
    _sync(device)
    return time.perf_counter() - t0, grid.success_rate[0].tolist()


def run_torchattacks(model, x, target, cfg, device):
    """torchattacks PGDL2, targeted, one call per strength (how it is normally used)."""
    import torchattacks

    t = torch.full((len(x),), target, dtype=torch.long, device=device)
    rates = []
    _sync(device)
    t0 = time.perf_counter()
    for eps in cfg.strengths:
        atk = torchattacks.PGDL2(model, eps=eps, alpha=eps * cfg.step_ratio, steps=cfg.steps, random_start=True)
        atk.set_mode_targeted_by_label(quiet=True)
        adv = atk(x, t)
        with torch.no_grad():
            rates.append((model(adv).argmax(1) == t).float().mean().item())
    _sync(device)
    return time.perf_counter() - t0, rates


def compare(name, adapter, x, target, cfg, device, repeats):
    model, folded = adapter.model, adapter.attack_model()
    img_steps = len(x) * len(cfg.strengths) * cfg.steps
    best_o = best_t = best_f = float("inf")
    for _ in range(repeats):  # alternate so that load changes hit all sides alike
        dt_o, rates_o = run_ours(model, x, target, cfg, device)
        dt_t, rates_t = run_torchattacks(model, x, target, cfg, device)
        dt_f, _ = run_ours(folded, x, target, cfg, device)
        best_o, best_t, best_f = min(best_o, dt_o), min(best_t, dt_t), min(best_f, dt_f)
    return {
        "name": name,
        "n": len(x),
        "S": len(cfg.strengths),
        "steps": cfg.steps,
        "img_steps": img_steps,
        "ours": img_steps / best_o,
        "theirs": img_steps / best_t,
        "folded": img_steps / best_f,
        "rates_o": rates_o,
        "rates_t": rates_t,
    }


def digits_case(args, device):
    adapter = train_digits(cache_dir=args.cache_dir).to(device)
    x, y = digits_split("test")
    # one original class, as the pipeline attacks it (all its test images toward one target)
    keep = y == args.digits_class
    x = x[keep][: args.digits_images].to(device)
    cfg = AttackConfig(strengths=DIGITS_STRENGTHS, steps=args.digits_steps)
    target = (args.digits_class + 1) % 10
    return compare(
        f"digits 1x8x8, class {args.digits_class} -> {target}", adapter, x, target, cfg, device, args.repeats
    )


def digits_curve(args, device):
    """Success vs strength for random wrong targets over the first N test images (default steps)."""
    from bluff_ray.engine.attack import attack

    adapter = train_digits(cache_dir=args.cache_dir).to(device)
    x, y = digits_split("test")
    x, y = x[: args.curve], y[: args.curve]
    g = torch.Generator().manual_seed(1)
    t = (y + 1 + torch.randint(0, 9, (len(y),), generator=g)) % 10
    s = DIGITS_STRENGTHS
    cfg = AttackConfig(strengths=s)
    eps = torch.tensor(s).repeat_interleave(len(x))
    adv = attack(adapter.model, x.repeat(len(s), 1, 1, 1).to(device), t.repeat(len(s)).to(device), eps.to(device), cfg)
    with torch.no_grad():
        ok = (adapter.model(adv).argmax(1).cpu() == t.repeat(len(s))).view(len(s), -1).float().mean(1)
    return ok.tolist()


def googlenet(device):
    torch.manual_seed(0)
    net = __import__("torchvision").models.googlenet(weights=None, aux_logits=False, init_weights=True)
    return googlenet_adapter(net, weights_source="random").to(device)


def googlenet_case(args, device):
    adapter = googlenet(device)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(args.gn_images, 3, args.gn_size, args.gn_size, generator=g).to(device)
    cfg = AttackConfig(strengths=GOOGLENET_STRENGTHS, steps=args.gn_steps)
    return compare(
        f"GoogLeNet 3x{args.gn_size}x{args.gn_size}, random weights", adapter, x, 1, cfg, device, args.repeats
    )


def gpu_throughput(args, device):
    """Production-style run: one big mixed-strength batch, optionally compiled and bf16."""
    torch.backends.cudnn.benchmark = True
    model = googlenet(device).attack_model()  # what the pipeline's actors attack
    if args.compile:
        model = torch.compile(model)
    cfg = AttackConfig(strengths=GOOGLENET_STRENGTHS, steps=args.gn_steps, bf16=args.bf16)
    x = torch.rand(args.gn_images, 3, args.gn_size, args.gn_size, device=device)
    per_batch = args.gn_images * len(cfg.strengths)
    # warm-up (compilation, cudnn autotune) with the same shapes
    attack_grid(model, x, [1], AttackConfig(strengths=cfg.strengths, steps=2, bf16=args.bf16), batch_size=per_batch)
    _sync(device)
    t0 = time.perf_counter()
    grid = attack_grid(model, x, [1], cfg, batch_size=per_batch)
    _sync(device)
    dt = time.perf_counter() - t0
    img_steps = per_batch * cfg.steps
    return {
        "batch": per_batch,
        "steps": cfg.steps,
        "seconds": dt,
        "rate": img_steps / dt,
        "success": grid.success_rate[0].tolist(),
        "device": torch.cuda.get_device_name(device),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", help="cpu (side-by-side comparison) or cuda (GPU throughput)")
    p.add_argument("--models", default="digits,googlenet", help="comma list of: digits, googlenet")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--repeats", type=int, default=2, help="timed repeats per side; the best is reported")
    p.add_argument("--digits-class", type=int, default=3, help="original class attacked in the digits case")
    p.add_argument("--digits-images", type=int, default=54, help="images of that class (test split has ~54)")
    p.add_argument("--digits-steps", type=int, default=50)
    p.add_argument("--gn-images", type=int, default=2, help="GoogLeNet images (x10 strengths per batch)")
    p.add_argument("--gn-steps", type=int, default=3, help="GoogLeNet PGD steps (50 in production)")
    p.add_argument("--gn-size", type=int, default=224, help="GoogLeNet input size")
    p.add_argument(
        "--compile", action="store_true", help="torch.compile the model (GPU mode; not done by the pipeline)"
    )
    p.add_argument("--bf16", action="store_true", help="bf16 autocast, the pipeline's attack.bf16 (GPU mode)")
    p.add_argument("--curve", type=int, default=0, help="also print the digits success curve over N test images")
    p.add_argument("--cache-dir", default=None, help="digits checkpoint cache (default $BLUFF_CACHE)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    bad = set(models) - {"digits", "googlenet"}
    if bad:
        p.error(f"unknown model(s) {sorted(bad)}; valid: digits, googlenet")
    print(f"torch {torch.__version__}, device {device}, threads {torch.get_num_threads()}\n")

    if device.type == "cuda":
        r = gpu_throughput(args, device)
        print("| model | device | batch (images x strengths) | steps | compile | bf16 | PGD image-steps/s |")
        print("|---|---|---|---|---|---|---|")
        print(
            f"| GoogLeNet {args.gn_size}x{args.gn_size} | {r['device']} | {r['batch']} | {r['steps']} | "
            f"{args.compile} | {args.bf16} | {r['rate']:,.0f} |"
        )
        return 0

    rows = []
    if "digits" in models:
        rows.append(digits_case(args, device))
    if "googlenet" in models:
        rows.append(googlenet_case(args, device))
    print(
        "| model | images x strengths | steps | torchattacks PGDL2, loop per strength (image-steps/s) "
        "| bluff_ray attack_grid, one loop (image-steps/s) | speedup "
        "| bluff_ray on attack_model() (image-steps/s) | speedup |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['name']} | {r['n']} x {r['S']} | {r['steps']} | {r['theirs']:,.1f} | {r['ours']:,.1f} "
            f"| {r['ours'] / r['theirs']:.2f}x | {r['folded']:,.1f} | {r['folded'] / r['theirs']:.2f}x |"
        )
    for r in rows:
        print(f"\nSuccess rate per strength, {r['name']} (sanity: both attacks should agree):\n")
        print(
            "| eps | "
            + " | ".join(
                f"{s:g}" for s in (DIGITS_STRENGTHS if r["name"].startswith("digits") else GOOGLENET_STRENGTHS)
            )
            + " |"
        )
        print("|---" * (r["S"] + 1) + "|")
        print("| bluff_ray | " + " | ".join(f"{v:.2f}" for v in r["rates_o"]) + " |")
        print("| torchattacks | " + " | ".join(f"{v:.2f}" for v in r["rates_t"]) + " |")
    if args.curve:
        rates = digits_curve(args, device)
        print(f"\nDigits targeted PGD-L2 success (50 steps, first {args.curve} test images, random wrong targets):\n")
        print("| eps | " + " | ".join(f"{s:g}" for s in DIGITS_STRENGTHS) + " |")
        print("|---" * 11 + "|")
        print("| success | " + " | ".join(f"{v:.2f}" for v in rates) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
