"""The GPU benchmark, one command: how fast each attack-step variant runs, and what a 999,000-pair
ImageNet run would cost on a GPU cluster.

    python3 bench/gpu.py --out gpu.json                 # on a GPU machine (CUDA): the full measurement, < 8 min
    python3 bench/gpu.py --quick --out gpu.json         # the same stages at small sizes (~2-3 min on a GPU)
    .venv/bin/python bench/gpu.py --device cpu --quick  # a smoke run of the same code on a CPU

Needs torch + torchvision + this repository only (no Ray: the pipeline stage runs when Ray imports
and says so when it does not). GoogLeNet 224x224 with seeded random weights (the cost does not
depend on the weights). Every timed stage is preceded by a warm-up of the same shapes (cuDNN
autotuning, torch.compile, CUDA-graph capture, Triton builds). Stages, each time-boxed within
``--budget-s`` (default 480 s):

1. FLOPs per PGD image-step (forward + input gradient, ``torch.utils.flop_counter``);
2. per attack-step variant (``AttackConfig.step`` reference/fast/lean x eager/compile/CUDA graphs):
   image-steps/s at one batch, achieved TFLOP/s and share of the device's peak (``--peak-tflops``
   or a table of known devices), memory per sample (saved tensors, and on CUDA the peak allocation
   of one step divided by the batch);
3. agreement of each eager variant with the reference step (bf16 on CUDA) on one batch with the
   same starts: adversarial images and success counts per strength, beside the reference's own
   bf16-vs-fp32 difference (the scale a bf16 tolerance is derived from);
4. a per-kernel-family breakdown of one step (``torch.profiler``) for the reference and the fastest
   variant: max-pool forward/backward, convolution forward/backward, elementwise add, casts, ReLU,
   cat, other;
5. ``layer_influence`` images/s; ``engine.compute_unit`` pairs/s at full size per pair (50 images
   x 10 strengths x 50 steps) with the fastest variant, with and without activation patching
   (random weights: no attack succeeds, so nothing is patched there); then the patching's own
   cost at GoogLeNet size on images treated as successful (bench/causal.py), as a share of the
   attack at the fastest rate;
6. the Ray pipeline for a few units, if Ray imports (see bench/ray_bundle.sh);
7. the projected hours for 999,000 pairs on 16 such GPUs.

It prints a markdown report and writes every number to ``--out`` (JSON). Nothing here is a test.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import re
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

from bluff_ray.engine.attack import AttackConfig, Batching, attack, make_step  # noqa: E402
from bluff_ray.engine.models import load_model  # noqa: E402

PAIRS = 999_000
GPUS = 16
IMAGE_STEPS_PER_PAIR = 50 * 10 * 50  # images x strengths x PGD steps

#: Dense bf16 tensor-core peaks (TFLOP/s, no sparsity) by device-name substring, first match wins.
#: H200 is the H100 SXM chip (989); a bf16 GEMM measured ~790 on the lent H200s.
PEAK_BF16_TFLOPS = [
    ("H200", 989.0),
    ("H100 PCIe", 756.0),
    ("H100", 989.0),
    ("GH200", 989.0),
    ("B200", 2250.0),
    ("A100", 312.0),
    ("L40S", 362.0),
    ("L4", 121.0),
    ("A10", 125.0),
    ("V100", 125.0),
]

#: Attack-step variants: name -> AttackConfig fields. On a CPU only the eager ones run.
#: Measured in this order (the budget may skip the last ones): the eager steps, CUDA graphs, compile.
VARIANTS = {
    "reference": {},
    "fast": {"step": "fast"},
    "lean": {"step": "lean"},
    "lean+graphs": {"step": "lean", "cuda_graphs": True},
    "fast+graphs": {"step": "fast", "cuda_graphs": True},
    "reference+graphs": {"cuda_graphs": True},
    "lean+compile": {"step": "lean", "compile": True},
    "fast+compile": {"step": "fast", "compile": True},
    "reference+compile": {"compile": True},
}


class Budget:
    """Wall-clock budget of the whole run; stages ask before starting."""

    def __init__(self, seconds: float):
        self.t0, self.seconds = time.perf_counter(), seconds

    def left(self) -> float:
        return self.seconds - (time.perf_counter() - self.t0)

    def allows(self, need: float, what: str, report: dict) -> bool:
        if self.left() >= need:
            return True
        report.setdefault("skipped", []).append(f"{what}: {self.left():.0f} s left of the budget, needs ~{need:.0f} s")
        print(f"skipped {what} (budget: {self.left():.0f} s left)", flush=True)
        return False


def sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def peak_tflops(device, override: float | None) -> tuple[float | None, str]:
    if override:
        return override, "--peak-tflops"
    if torch.device(device).type != "cuda":
        return None, "no peak for a CPU"
    name = torch.cuda.get_device_name(device)
    for key, tf in PEAK_BF16_TFLOPS:
        if key.lower() in name.lower():
            return tf, f"dense bf16 peak of {key} (table in bench/gpu.py)"
    return None, f"unknown device {name!r}: pass --peak-tflops"


def flops_per_image_step(adapter, device) -> float:
    """FLOPs of one forward + input gradient of the attack model, per image (FlopCounterMode)."""
    import torch.nn.functional as F
    from torch.utils.flop_counter import FlopCounterMode

    model = adapter.attack_model()  # weights frozen: backward() computes the input gradient only
    x = torch.rand(2, *adapter.input_shape, device=device).contiguous(memory_format=torch.channels_last)
    x.requires_grad_(True)
    with FlopCounterMode(display=False) as fc:  # (its module hooks refuse autograd.grad: use backward)
        F.cross_entropy(model(x), torch.tensor([1, 2], device=device), reduction="sum").backward()
    return fc.get_total_flops() / 2


def variant_cfg(name: str, steps: int, bf16: bool) -> AttackConfig:
    return AttackConfig(steps=steps, bf16=bf16, **VARIANTS[name])


def variant_model(adapter, cfg: AttackConfig, device):
    return adapter.attack_model(
        compiled=cfg.compile and torch.device(device).type == "cuda", step=cfg.step, bf16=cfg.bf16
    )


def batch_inputs(adapter, batch: int, device, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(batch, *adapter.input_shape, generator=gen).to(device)
    targets = torch.randint(0, 1000, (batch,), generator=gen).to(device)
    strengths = torch.tensor(AttackConfig().strengths)
    eps = strengths[torch.arange(batch) % len(strengths)].to(device)
    return x, targets, eps


def pgd_variant(adapter, name: str, batch: int, steps: int, bf16: bool, device) -> dict:
    """Warm-up (same shapes), then image-steps/s of ``steps`` PGD steps on ``batch`` samples."""
    cfg = variant_cfg(name, steps, bf16)
    model = variant_model(adapter, cfg, device)
    x, t, eps = batch_inputs(adapter, batch, device)
    t0 = time.perf_counter()
    attack(model, x, t, eps, dataclasses.replace(cfg, steps=3))  # compile / capture / autotune
    sync(device)
    warm = time.perf_counter() - t0
    t0 = time.perf_counter()
    attack(model, x, t, eps, cfg)
    sync(device)
    dt = time.perf_counter() - t0
    return {
        "variant": name,
        "batch": batch,
        "steps": steps,
        "seconds": dt,
        "warmup_s": warm,
        "image_steps_per_s": batch * steps / dt,
    }


def memory_per_sample(adapter, name: str, batch: int, bf16: bool, device) -> dict:
    """Saved-tensor bytes per sample (compute.per_sample_bytes) and, on CUDA, the peak allocation of
    one eager step (forward + input gradient) above the resting state, divided by the batch."""
    from bluff_ray.engine.compute import per_sample_bytes

    cfg = variant_cfg(name, 1, bf16)
    out = {"saved_bytes": per_sample_bytes(adapter, bf16, cfg.step)}
    if torch.device(device).type == "cuda":
        model = variant_model(adapter, dataclasses.replace(cfg, compile=False), device)
        x, t, _ = batch_inputs(adapter, batch, device)
        x = x.contiguous(memory_format=torch.channels_last)
        step = make_step(model, dataclasses.replace(cfg, cuda_graphs=False), torch.device(device))
        step(x, t)
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        g = step(x, t)
        sync(device)
        out["peak_bytes"] = (torch.cuda.max_memory_allocated(device) - base) / batch
        del g
    return out


def agreement(adapter, names, batch: int, steps: int, bf16: bool, device) -> dict:
    """Each variant against the reference step on one batch (same starts): adversarial images and
    success counts per strength; and the fp32 reference step against itself in fp32 (the bf16 scale)."""
    x, t, eps = batch_inputs(adapter, batch, device, seed=1)
    n_str = len(AttackConfig().strengths)

    def run(name, half):
        cfg = variant_cfg(name, steps, half)
        model = variant_model(adapter, cfg, device)
        adv = attack(model, x, t, eps, cfg, generator=torch.Generator().manual_seed(5))
        with torch.no_grad():
            ok = adapter.attack_model()(adv).argmax(1) == t
        return adv, ok.view(-1, n_str).sum(0).tolist() if batch % n_str == 0 else [int(ok.sum())]

    ref_adv, ref_ok = run("reference", bf16)
    out = {"batch": batch, "steps": steps, "reference_success_per_strength": ref_ok, "variants": {}}
    if bf16:
        f32_adv, f32_ok = run("reference", False)
        out["reference_bf16_vs_fp32"] = {
            "max_abs": float((ref_adv - f32_adv).abs().max()),
            "mean_abs": float((ref_adv - f32_adv).abs().mean()),
            "success_per_strength_fp32": f32_ok,
        }
    for name in names:
        if name == "reference":
            continue
        adv, ok = run(name, bf16)
        out["variants"][name] = {
            "max_abs": float((adv - ref_adv).abs().max()),
            "mean_abs": float((adv - ref_adv).abs().mean()),
            "success_per_strength": ok,
        }
    return out


FAMILIES = [  # (family, pattern on the lower-cased kernel or op name), first match wins
    ("maxpool bwd", r"max_pool.*backward|maxpool.*backward|max_pool_backward|maxpool_winners|maxpool_bwd"),
    ("maxpool fwd", r"max_pool|maxpool"),
    ("conv bwd", r"dgrad|wgrad|convolution_backward|conv.*backward|bprop"),
    ("conv fwd", r"fprop|conv|cudnn|implicit_gemm|xmma|cutlass|gemm|addmm|mm\b"),
    ("relu", r"relu|threshold|clamp_min"),
    ("cat", r"\bcat\b|catarray|cat_"),
    ("casts/copies", r"copy|to_copy|\bto\b|_to_|convert|cast"),
    ("elementwise add", r"\badd|add_|addfunctor|cudafunctor_add"),
]


def family(name: str) -> str:
    low = name.lower()
    for fam, pat in FAMILIES:
        if re.search(pat, low):
            return fam
    return "other"


def kernel_breakdown(adapter, name: str, batch: int, bf16: bool, device) -> dict:
    """Per-family share of one step's device time (CUDA kernels; CPU: aten ops' self time)."""
    from torch.profiler import ProfilerActivity, profile

    cfg = variant_cfg(name, 2, bf16)
    model = variant_model(adapter, cfg, device)
    x, t, eps = batch_inputs(adapter, batch, device, seed=2)
    cuda = torch.device(device).type == "cuda"
    attack(model, x, t, eps, cfg)  # warm
    sync(device)
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=acts) as prof:
        attack(model, x, t, eps, cfg)
        sync(device)
    fams: dict[str, float] = {}
    top: list[tuple[float, str]] = []
    for e in prof.key_averages():
        if cuda:
            us = getattr(e, "self_device_time_total", 0) or getattr(e, "self_cuda_time_total", 0)
            if e.device_type != torch.autograd.DeviceType.CUDA:
                continue
        else:
            us = e.self_cpu_time_total
            if not e.key.startswith("aten::") or e.key in ("aten::empty", "aten::empty_strided"):
                continue
        if us <= 0:
            continue
        fams[family(e.key)] = fams.get(family(e.key), 0.0) + us
        top.append((us, e.key))
    total = sum(fams.values()) or 1.0
    top.sort(reverse=True)
    return {
        "variant": name,
        "batch": batch,
        "unit": "device time" if cuda else "CPU op self time",
        "total_ms": total / 1e3,
        "shares": {k: v / total for k, v in sorted(fams.items(), key=lambda kv: -kv[1])},
        "top": [{"name": k[:120], "ms": us / 1e3, "family": family(k)} for us, k in top[:12]],
    }


def influence_rate(adapter, images: int, displayed: int, device) -> float:
    from bluff_ray.engine.influence import layer_influence

    gen = torch.Generator().manual_seed(0)
    x = torch.rand(images, *adapter.input_shape, generator=gen).to(device)
    choice = [torch.randperm(l.channels, generator=gen)[:displayed] for l in adapter.layers]
    names = adapter.layer_names
    with torch.no_grad():
        _, acts = adapter.forward_with_activations(x)
        for _ in range(2):  # the first pass is the warm-up; the second is timed
            sync(device)
            t0 = time.perf_counter()
            for q in range(1, len(names)):
                layer_influence(adapter, q, acts[names[q - 1]], choice[q - 1], choice[q], batch_size=images)
            sync(device)
    return images / (time.perf_counter() - t0)


def unit_rate(
    adapter,
    name: str,
    n_images: int,
    n_targets: int,
    steps: int,
    bf16: bool,
    device,
    budget: Budget,
    report: dict,
    rate: float,
) -> dict:
    """engine.compute_unit on synthetic images with one variant: pairs/s without and with the
    activation-patching experiments, after a warm-up call of the same shapes (2 steps)."""
    from bluff_ray.engine.compute import auto_batch_size, benign_stats, class_data, compute_unit
    from bluff_ray.engine.pathways import PathwayConfig
    from bluff_ray.results.rows import unit_tables
    from bluff_ray.run.data import SyntheticSource

    src = SyntheticSource(adapter.input_shape, per_class=n_images)

    def data(c):
        x, _ = src.class_images(c, n_images)
        st = benign_stats(adapter, x.to(device), c)
        st.correct[:] = True  # random weights classify nothing correctly; attack every image
        return class_data(adapter, c, x, st)

    original, targets = data(0), [data(t) for t in range(1, n_targets + 1)]
    cfg = variant_cfg(name, steps, bf16)
    size = auto_batch_size(adapter, bf16, cfg.step)
    out: dict = {"variant": name, "batch": size, "pairs": n_targets, "images": n_images, "steps": steps}
    t0 = time.perf_counter()
    compute_unit(
        adapter, original, targets, dataclasses.replace(cfg, steps=2), PathwayConfig(), seed=1, batching=Batching(size)
    )
    sync(device)
    out["warmup_s"] = time.perf_counter() - t0
    for causal in (False, True):
        # (the warm-up may include compiling: estimate from the measured PGD rate instead)
        est = out.get("plain", {}).get("seconds", n_images * 10 * n_targets * steps / rate + 5)
        if not budget.allows(est * 1.2, f"compute_unit causal={causal}", report):
            break
        sync(device)
        t0 = time.perf_counter()
        r = unit_tables(
            compute_unit(adapter, original, targets, cfg, PathwayConfig(causal=causal), seed=1, batching=Batching(size))
        )  # the Arrow rows too, as the actor does
        sync(device)
        dt = time.perf_counter() - t0
        out["causal" if causal else "plain"] = {"seconds": dt, "pairs_per_s": n_targets / dt, **r.timings}
    if "plain" in out and "causal" in out:
        out["patching_share"] = (out["causal"]["seconds"] - out["plain"]["seconds"]) / out["plain"]["attack"]
    return out


def patching_share(device, held: int, image_steps_per_s: float) -> dict:
    """The activation patching's cost at GoogLeNet size against the attack at the fastest PGD rate
    (bench/causal.py ``measure_googlenet``: random weights, so the attacked images are TREATED AS
    successful, with the most exploited neurons per layer; ``compute_unit`` above patches nothing
    because no random-weight attack succeeds). Shares for the engine's budgeted image counts."""
    import causal as causal_bench  # bench/causal.py

    r = causal_bench.measure_googlenet(held=held, attack_steps=2, device=str(device))
    attack_s = IMAGE_STEPS_PER_PAIR / image_steps_per_s
    return {
        "held_timed": held,
        "per_held_s": {k: v["per_held_s"] for k, v in r["timed"].items()},
        "experiments": {k: v["denoising"] + v["noising"] for k, v in r["timed"].items()},
        "attack_pair_s_at_best_rate": attack_s,
        "budgeted": {
            name: {**b, "share_at_best_rate": b["patching_s"] / attack_s} for name, b in r["budgeted"].items()
        },
        "note": "patching runs the eager fp32 attack model; the attack rate is the fastest variant's",
    }


class GpuBusy:
    """Samples the device's utilisation (NVML through torch) every 0.2 s while running."""

    def __init__(self, device):
        self.device, self.samples, self._stop = device, [], threading.Event()

    def __enter__(self):
        def loop():
            while not self._stop.wait(0.2):
                try:
                    self.samples.append(torch.cuda.utilization(self.device))
                except Exception:
                    return

        self._t = threading.Thread(target=loop, daemon=True)
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()

    @property
    def share(self) -> float | None:
        return sum(self.samples) / (100 * len(self.samples)) if self.samples else None


def pipeline_rate(n_images: int, steps: int, bf16: bool, originals: int, classes: int, step: str, device) -> dict:
    """The real pipeline (Ray, storage, reduce) on this machine: GoogLeNet random weights, synthetic data."""
    import ray

    from bluff_ray.run.config import load

    try:
        from bluff_ray.run.driver import run
    except ImportError:
        from bluff_ray.run.pipeline import run

    out = tempfile.mkdtemp(prefix="bluff-gpu-bench-")
    over = {
        "model": "googlenet",
        "weights": "random",
        "data": "synthetic",
        "out": out,
        "classes": list(range(classes)),
        "originals": list(range(originals)),
        "images_per_class": n_images,
        "attack.steps": steps,
        "attack.bf16": bf16,
        "assets.enabled": False,
        "progress": False,
        "device": "cuda" if torch.device(device).type == "cuda" else "cpu",
    }
    note = ""
    try:
        cfg = load(None, {**over, "attack.step": step}) if step != "reference" else load(None, over)
    except (ValueError, KeyError, TypeError, SystemExit) as e:  # attack.step not in the run config yet
        cfg, note = load(None, over), f"ran the reference step ({e})"
    busy = GpuBusy(torch.device(device)) if torch.device(device).type == "cuda" else None
    t0 = time.perf_counter()
    if busy:
        with busy:
            s = run(cfg)
    else:
        s = run(cfg)
    dt = time.perf_counter() - t0
    if ray.is_initialized():
        ray.shutdown()
    return {
        "pairs": s.pairs_written,
        "seconds": dt,
        "pairs_per_s": s.pairs_written / dt,
        "workers": s.workers,
        "failed": len(s.failed),
        "gpu_busy_share": busy.share if busy else None,
        "step": step,
        "note": note,
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--quick", action="store_true", help="small sizes (a smoke run, e.g. on a CPU)")
    ap.add_argument(
        "--batch",
        type=int,
        default=None,
        help="PGD batch of the variant comparison (default 1024 on CUDA; 20 with --quick; 4 on a CPU)",
    )
    ap.add_argument("--steps", type=int, default=None, help="timed PGD steps per variant (default 20; 3 with --quick)")
    ap.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated, from: " + ", ".join(VARIANTS))
    ap.add_argument(
        "--peak-tflops", type=float, default=None, help="the device's dense bf16 peak (overrides the table)"
    )
    ap.add_argument(
        "--size", type=int, default=None, help="input height = width (default 224; 32 for --quick on a CPU)"
    )
    ap.add_argument("--budget-s", type=float, default=480.0, help="wall-clock budget; later stages are skipped")
    ap.add_argument("--no-unit", action="store_true", help="skip compute_unit")
    ap.add_argument("--no-pipeline", action="store_true", help="skip the Ray pipeline stage")
    ap.add_argument("--out", "--json", dest="out", default=None, help="write the numbers to this JSON file")
    args = ap.parse_args(argv)
    budget = Budget(args.budget_s)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    torch.backends.cudnn.benchmark = True
    quick = args.quick
    tiny = quick and not cuda  # the CPU smoke run: every stage, at toy sizes
    bf16 = cuda
    batch = args.batch or (1024 if cuda and not quick else 20 if cuda else 4)
    steps = args.steps or (2 if tiny else 3 if quick else 20)
    names = [n.strip() for n in args.variants.split(",") if n.strip()]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        print(f"unknown variant(s) {', '.join(unknown)}; valid: {', '.join(VARIANTS)}", file=sys.stderr)
        return 2
    if not cuda:  # compile was slower on CPUs and CUDA graphs need CUDA: eager variants only
        names = [n for n in names if not VARIANTS[n].get("compile") and not VARIANTS[n].get("cuda_graphs")]
    if "reference" not in names:
        names.insert(0, "reference")
    adapter = load_model("googlenet", weights="random", device=str(device))
    size = args.size or (32 if tiny else 224)
    adapter.input_shape = (3, size, size)  # GoogLeNet is fully convolutional (adaptive average pool)
    peak, peak_src = peak_tflops(device, args.peak_tflops)
    from bluff_ray.engine.maxpool import triton_available

    report: dict = {
        "device": torch.cuda.get_device_name(device) if cuda else "cpu",
        "torch": torch.__version__,
        "bf16": bf16,
        "quick": quick,
        "size": size,
        "peak_tflops": peak,
        "peak_source": peak_src,
        "triton_pool": cuda and triton_available(),
    }
    print(f"device {report['device']}, torch {torch.__version__}, peak {peak} TFLOP/s ({peak_src})", flush=True)

    flops = flops_per_image_step(adapter, device)
    report["flops_per_image_step"] = flops
    print(f"FLOPs per image-step: {flops / 1e9:.2f} GFLOP", flush=True)

    rows = []
    for name in names:
        if not budget.allows(90 if "compile" in name else 20, f"PGD {name}", report):
            continue
        try:
            r = pgd_variant(adapter, name, batch, steps, bf16, device)
            r.update(memory_per_sample(adapter, name, min(batch, 256), bf16, device))
        except torch.OutOfMemoryError:
            r = {"variant": name, "batch": batch, "image_steps_per_s": float("nan"), "error": "out of memory"}
            torch.cuda.empty_cache()
        except Exception as e:  # one failing variant must not cost the others' numbers
            r = {
                "variant": name,
                "batch": batch,
                "image_steps_per_s": float("nan"),
                "error": f"{type(e).__name__}: {e}",
            }
        rate = r["image_steps_per_s"]
        r["tflops"] = rate * flops / 1e12 if rate == rate else float("nan")
        r["share_of_peak"] = r["tflops"] / peak if peak else None
        rows.append(r)
        share = f", {100 * r['share_of_peak']:.1f} % of peak" if peak else ""
        print(
            f"PGD {name}, batch {batch}: {rate:,.0f} image-steps/s ({r['tflops']:.1f} TFLOP/s{share})"
            + (f" [{r['error']}]" if "error" in r else ""),
            flush=True,
        )
    report["pgd"] = rows
    ok = [r for r in rows if r["image_steps_per_s"] == r["image_steps_per_s"]]
    best = max(ok, key=lambda r: r["image_steps_per_s"])["variant"] if ok else "reference"
    report["fastest_variant"] = best

    if budget.allows(30, "agreement", report):
        eager = [r["variant"] for r in ok if not VARIANTS[r["variant"]].get("compile")]  # (a new shape recompiles)
        report["agreement"] = agreement(
            adapter, eager, 10 if tiny else 20 if quick else 100, min(steps, 10), bf16, device
        )
        print(
            "agreement with the reference step: "
            + ", ".join(f"{k} max |d adv| {v['max_abs']:.2e}" for k, v in report["agreement"]["variants"].items()),
            flush=True,
        )

    report["profile"] = []
    for name in dict.fromkeys(["reference", best]):
        if budget.allows(20, f"profile {name}", report):
            p = kernel_breakdown(adapter, name, batch, bf16, device)  # the timed shape: nothing recompiles
            report["profile"].append(p)
            print(f"profile {name}: " + ", ".join(f"{k} {100 * v:.1f} %" for k, v in p["shares"].items()), flush=True)

    if budget.allows(20, "influence", report):
        report["influence_images_per_s"] = influence_rate(adapter, 2 if tiny else 4 if quick else 64, 22, device)

    n_images, n_targets, unit_steps = (2, 1, 2) if tiny else (2, 2, 2) if quick else (50, 8, 50)
    if not args.no_unit and budget.allows(60 if not quick else 10, "compute_unit", report):
        best_rate = max((r["image_steps_per_s"] for r in ok), default=1.0)
        report["unit"] = unit_rate(
            adapter, best, n_images, n_targets, unit_steps, bf16, device, budget, report, best_rate
        )
        u = report["unit"]
        if "causal" in u:
            print(
                f"compute_unit ({best}), {n_targets} pairs: {u['causal']['pairs_per_s']:.3f} pairs/s with patching",
                flush=True,
            )

    if not args.no_unit and budget.allows(40 if not quick else 20, "patching share", report):
        best_rate = max((r["image_steps_per_s"] for r in ok), default=float("nan"))
        try:
            report["patching"] = patching_share(device, 1 if tiny else 2 if quick else 8, best_rate)
        except Exception as e:
            report["patching"] = {"error": f"{type(e).__name__}: {e}"}

    if args.no_pipeline:
        report["pipeline"] = {"skipped": "--no-pipeline"}
    else:
        try:
            import ray  # noqa: F401
        except ImportError:
            report["pipeline"] = {"skipped": "Ray is not importable here (see bench/ray_bundle.sh)"}
            print("pipeline stage skipped: Ray is not importable here", flush=True)
        else:
            if budget.allows(120 if not quick else 60, "pipeline", report):
                try:
                    report["pipeline"] = pipeline_rate(
                        2 if quick else 50,
                        unit_steps,
                        bf16,
                        1,
                        3 if quick else 11,
                        VARIANTS[best].get("step", "reference"),
                        device,
                    )
                except Exception as e:
                    report["pipeline"] = {"error": f"{type(e).__name__}: {e}"}

    u = report.get("unit", {})
    per_gpu = u.get("causal", u.get("plain", {})).get("pairs_per_s")
    best_rate = max((r["image_steps_per_s"] for r in ok), default=float("nan"))
    report["projection"] = {
        "gpus": GPUS,
        "pairs": PAIRS,
        "pairs_per_s_per_gpu": per_gpu,
        "hours_999k_pairs": PAIRS / (per_gpu * GPUS) / 3600 if per_gpu else None,
        "attack_only_pairs_per_s_per_gpu": best_rate / IMAGE_STEPS_PER_PAIR,
        "attack_only_hours": PAIRS * IMAGE_STEPS_PER_PAIR / (best_rate * GPUS) / 3600
        if best_rate == best_rate
        else None,
        "note": (
            "compute_unit at full size per pair (50 images x 10 strengths x 50 steps) on one GPU; the "
            "pipeline's storage and reduce overlap with compute"
            if not quick
            else "--quick: tiny sizes, the projection means nothing"
        ),
    }
    print_report(report)
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=1, default=str))
        print(f"wrote {args.out} ({budget.seconds - budget.left():.0f} s)")
    return 0


def print_report(r: dict) -> None:
    def pct(v) -> str:
        return f"{100 * v:.1f} %" if isinstance(v, float) and math.isfinite(v) else "-"

    def mb(row: dict, k: str) -> str:
        return f"{row[k] / 1e6:.1f} MB" if k in row else "-"

    print(
        f"\n{r['device']} (torch {r['torch']}), {'bf16' if r['bf16'] else 'fp32'}, {r['size']}x{r['size']}; "
        f"{r['flops_per_image_step'] / 1e9:.2f} GFLOP per image-step; peak {r['peak_tflops']} TFLOP/s\n"
    )
    print("| variant | batch | image-steps/s | TFLOP/s | share of peak | saved bytes/sample | peak bytes/sample |")
    print("|---|---|---|---|---|---|---|")
    for x in r["pgd"]:
        print(
            f"| {x['variant']} | {x['batch']} | {x['image_steps_per_s']:,.0f} | {x.get('tflops', float('nan')):.1f} | "
            f"{pct(x.get('share_of_peak'))} | {mb(x, 'saved_bytes')} | {mb(x, 'peak_bytes')} |"
        )
    for p in r.get("profile", []):
        print(
            f"\nprofile of one attack ({p['variant']}, batch {p['batch']}, {p['unit']}, {p['total_ms']:.1f} ms): "
            + ", ".join(f"{k} {pct(v)}" for k, v in p["shares"].items())
        )
    if "influence_images_per_s" in r:
        print(f"\ninfluence, 8 transitions, 22 neurons/layer: {r['influence_images_per_s']:,.1f} images/s")
    u = r.get("unit", {})
    for k in ("plain", "causal"):
        if k in u:
            print(
                f"compute_unit {k} ({u['variant']}, {u['pairs']} pairs, batch {u['batch']}): "
                f"{u[k]['pairs_per_s']:.3f} pairs/s"
            )
    pt = r.get("patching", {})
    if "budgeted" in pt:
        print(
            "patching at GoogLeNet size (images treated as successful), share of the attack at the fastest PGD rate: "
            + ", ".join(
                f"curves {k}: {b['images']} images/strength, {pct(b['share_at_best_rate'])} (FLOPs {pct(b['flops'])})"
                for k, b in pt["budgeted"].items()
            )
        )
    elif pt:
        print(f"patching: {pt}")
    p = r.get("pipeline", {})
    if "pairs_per_s" in p:
        busy = f", GPU busy {pct(p['gpu_busy_share'])}" if p.get("gpu_busy_share") is not None else ""
        print(
            f"pipeline (Ray, storage, reduce; step {p['step']}), {p['pairs']} pairs, {p['workers']} worker(s): "
            f"{p['pairs_per_s']:.3f} pairs/s{busy} {p['note']}"
        )
    else:
        print(f"pipeline: {p}")
    pr = r["projection"]
    if pr["hours_999k_pairs"]:
        print(
            f"projection: 999,000 pairs on {GPUS} GPUs: {pr['hours_999k_pairs']:,.1f} h "
            f"(attack alone at the fastest PGD rate: {pr['attack_only_hours']:,.1f} h)"
        )
    if r.get("skipped"):
        print("skipped: " + "; ".join(r["skipped"]))


if __name__ == "__main__":
    sys.exit(main())
