"""Benchmark: vectorised widest-path influence vs the original's per-edge Python composition.

Two measurements, printed as one markdown table:

1. Composition, side by side in one run on the same inputs: ``bluff_ray.engine.influence.widest_path``
   (one batched max-min tensor op) against a pure-Python triple loop over (j, i, m) with
   ``min``/``max``, which is how the original Bluff composed the widest path (edges.py, on the
   median matrices of a condition; here it runs once per image, exactly the work our per-image
   definition needs). Sizes are GoogLeNet mixed4a -> mixed4b (3x3 bottleneck M=112, 5x5 M=24)
   with the displayed nodes per layer, plus one full-layer case (every destination of the 3x3
   branch, every source channel) on a subset of images. Both results are checked equal.
2. ``layer_influence`` throughput for every mixed-block transition of GoogLeNet (random weights,
   224x224 inputs, real activations from a forward pass): images per second for all 8
   transitions with the displayed nodes per layer. ``--device cuda`` for a GPU.

Run:  .venv/bin/python bench/influence.py [--device cpu|cuda] [--images 8] [--displayed 30]
"""

from __future__ import annotations

import argparse
import math
import platform
import time

import torch

from bluff_ray.engine.influence import layer_influence, widest_path
from bluff_ray.engine.models.base import ModelAdapter
from bluff_ray.engine.models.googlenet import googlenet_adapter


def python_widest_path(r_out: list[list[float]], r_in: list[list[float]]) -> list[list[float]]:
    """The original's composition: for every edge (j, i), max over m of min(R[j][m], R[m][i])."""
    j_n, m_n, i_n = len(r_out), len(r_in), len(r_in[0])
    out = [[0.0] * i_n for _ in range(j_n)]
    for j in range(j_n):
        row = r_out[j]
        for i in range(i_n):
            best = -math.inf
            for m in range(m_n):
                v = min(row[m], r_in[m][i])
                if v > best:
                    best = v
            out[j][i] = best
    return out


def _time(fn, repeats: int) -> tuple[float, object]:
    best, result = math.inf, None
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t0)
    return best, result


def bench_composition(n_images: int, j: int, m: int, i: int, repeats: int, gen: torch.Generator) -> dict:
    r_out = torch.randn(n_images, j, m, generator=gen)
    r_in = torch.randn(n_images, m, i, generator=gen)
    t_vec, got = _time(lambda: widest_path(r_out, r_in), repeats)
    lists = [(r_out[n].tolist(), r_in[n].tolist()) for n in range(n_images)]
    t_py, want = _time(lambda: [python_widest_path(a, b) for a, b in lists], repeats)
    assert torch.equal(got, torch.tensor(want)), "vectorised and per-edge compositions disagree"
    return {"t_vec": t_vec, "t_py": t_py}


def googlenet_random(device: str) -> ModelAdapter:
    """torchvision GoogLeNet with random weights (no download needed), as bluff_ray's adapter."""
    from torchvision.models import googlenet

    torch.manual_seed(0)
    net = googlenet(weights=None, aux_logits=False, init_weights=True)
    return googlenet_adapter(net, weights_source="random (benchmark)").to(device)


def bench_throughput(device: str, n_images: int, displayed: int, repeats: int, gen: torch.Generator) -> dict:
    adapter = googlenet_random(device)
    x = torch.rand(n_images, 3, 224, 224, generator=gen).to(device)
    with torch.no_grad():
        _, acts = adapter.forward_with_activations(x)
    names = adapter.layer_names
    choice = {l.name: torch.randperm(l.channels, generator=gen)[:displayed] for l in adapter.layers}

    def run():
        outs = [
            layer_influence(adapter, q, acts[names[q - 1]], choice[names[q - 1]], choice[names[q]], batch_size=n_images)
            for q in range(1, len(names))
        ]
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        return outs

    run()  # warm-up (allocator, cuDNN autotune)
    t, _ = _time(run, repeats)
    return {"t": t, "ips": n_images / t}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    p.add_argument("--device", default="cpu", help="torch device for the throughput part (cpu, cuda, cuda:1, ...)")
    p.add_argument("--images", type=int, default=8, help="images per condition for composition and throughput")
    p.add_argument("--displayed", type=int, default=30, help="displayed neurons per layer")
    p.add_argument("--full-images", type=int, default=1, help="images for the full-layer composition case")
    p.add_argument("--repeats", type=int, default=3, help="repeats of every timing, both sides (best kept)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch default)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(0)
    d = args.displayed
    rows = []
    # mixed4a -> mixed4b: 3x3 bottleneck 112, 5x5 bottleneck 24 (torchvision GoogLeNet).
    for label, n, j, m, i in [
        (f"3x3 branch, {d} dst x {d} src, M=112", args.images, d, 112, d),
        (f"5x5 branch, {d} dst x {d} src, M=24", args.images, d, 24, d),
        ("full 3x3 branch: 224 dst x 512 src, M=112", args.full_images, 224, 112, 512),
    ]:
        r = bench_composition(n, j, m, i, args.repeats, gen)
        rows.append(
            (
                f"widest path mixed4a->mixed4b, {label}, {n} image(s)",
                f"{r['t_py'] * 1e3:.1f} ms",
                f"{r['t_vec'] * 1e3:.2f} ms",
                f"{r['t_py'] / r['t_vec']:.0f}x",
            )
        )
    thr = bench_throughput(args.device, args.images, d, args.repeats, gen)
    print(
        f"torch {torch.__version__}, {platform.processor() or platform.machine()}, "
        f"threads={torch.get_num_threads()}, device={args.device}\n"
    )
    print("| case | per-edge Python (original) | vectorised (bluff_ray) | speedup |")
    print("|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    print()
    print("| layer_influence, GoogLeNet 224x224 random weights, all 8 transitions | images | time | images/s |")
    print("|---|---|---|---|")
    print(
        f"| {d} displayed per layer, device={args.device} | {args.images} | {thr['t'] * 1e3:.0f} ms | {thr['ips']:.1f} |"
    )


if __name__ == "__main__":
    main()
