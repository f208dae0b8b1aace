"""The fast attack step gives the reference step's results.

1. ``engine.maxpool``: values and input gradients equal ``F.max_pool2d``'s EXACTLY in float64,
   ties included (integer-valued post-ReLU inputs, so most windows hold several maxima), for the
   geometries GoogLeNet and the digits net use (ceil_mode, padding, odd sizes) in both memory
   layouts; the recomputed winners equal PyTorch's own indices (NaN and all -inf windows too); the
   Triton kernels, run by Triton's interpreter on the CPU (``TRITON_INTERPRET=1``, a subprocess),
   do the same.
2. ``AttackConfig(step="fast")``: the same adversarial images, success counts and (through
   ``compute_unit``) pair results as the reference step, in float64 on the digits net.
3. The fast pool keeps fewer bytes per attacked sample (no int64 indices).

Gradients are compared with integer-valued output gradients so that the sums at positions that
win several overlapping windows are exact in any order: the claim is about which input wins.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from bluff_ray.engine.maxpool import max_pool2d, output_size, swap_max_pools, winners_torch

# (kernel, stride, padding, ceil_mode): torchvision GoogLeNet's stage pools (3, 2, ceil) and
# (2, 2, ceil), its inception branch pools (3, 1, 1, ceil), the digits net's (3, 1, 1) and (2, 2),
# and a padded stride-2 pool.
GEOMETRIES = [(3, 2, 0, True), (3, 1, 1, True), (2, 2, 0, True), (3, 1, 1, False), (2, 2, 0, False),
              (3, 2, 1, False), (3, 2, 1, True)]
SIZES = [(7, 9), (8, 8), (5, 6), (14, 13)]


def _tied_input(h: int, w: int, seed: int, n: int = 2, c: int = 3) -> torch.Tensor:
    """Post-ReLU integers in {0, 1, 2}: about half zeros, many equal maxima per window."""
    g = torch.Generator().manual_seed(seed)
    return torch.relu(torch.randint(0, 4, (n, c, h, w), generator=g).double() - 1)


def _to_offsets(ind: torch.Tensor, w: int, k: int, s: int, p: int) -> torch.Tensor:
    """PyTorch's flat input indices -> window offsets i * k + j (our winners' encoding)."""
    oh, ow = ind.shape[-2:]
    ih, iw = ind // w, ind % w
    r0 = (torch.arange(oh) * s - p).view(-1, 1)
    c0 = (torch.arange(ow) * s - p).view(1, -1)
    return ((ih - r0) * k + (iw - c0)).to(torch.uint8)


def check_exact(impl: str, geometries=GEOMETRIES, sizes=SIZES) -> int:
    """Values, winners and gradients of ``max_pool2d(impl=...)`` against F.max_pool2d; returns cases."""
    cases = 0
    for gi, (k, s, p, ceil) in enumerate(geometries):
        for si, (h, w) in enumerate(sizes):
            if output_size(h, k, s, p, 1, ceil) < 1:
                continue
            for cl in (False, True):
                x = _tied_input(h, w, seed=100 * gi + si)
                if cl:
                    x = x.contiguous(memory_format=torch.channels_last)
                ref_y, ind = F.max_pool2d(x, k, s, p, 1, ceil, return_indices=True)
                assert torch.equal(winners_torch(x, ref_y, (k, k), (s, s), (p, p), (1, 1)),
                                   _to_offsets(ind, w, k, s, p)), (k, s, p, ceil, h, w, cl)
                xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
                ya = F.max_pool2d(xa, k, s, p, 1, ceil)
                yb = max_pool2d(xb, k, s, p, 1, ceil, impl=impl)
                assert torch.equal(ya, yb), (k, s, p, ceil, h, w, cl)
                go = torch.randint(-3, 4, ya.shape, generator=torch.Generator().manual_seed(si)).double()
                ya.backward(go)
                yb.backward(go)
                assert torch.equal(xa.grad, xb.grad), (impl, k, s, p, ceil, h, w, cl)
                assert yb.is_contiguous(memory_format=torch.channels_last if cl else torch.contiguous_format)
                cases += 1
    return cases


def test_pool_gradients_equal_torch_exactly_with_ties():
    assert check_exact("torch") == 2 * len(GEOMETRIES) * len(SIZES)


def test_pool_tie_rule_for_nan_and_minus_inf_windows():
    """The first maximum wins; a window holding NaN is won by its LAST NaN; a window of -inf only by
    its first position inside the input (padding never wins): PyTorch's indices, in float64."""
    x = torch.full((1, 2, 5, 5), -float("inf"), dtype=torch.float64)
    x[0, 0, 1, 1] = float("nan")
    x[0, 0, 1, 2] = float("nan")
    x[0, 0, 3, 3] = 2.0
    x[0, 0, 3, 4] = 2.0
    x[0, 1, 0, 0] = 0.0
    for k, s, p, ceil in [(3, 1, 1, True), (3, 2, 0, True), (3, 2, 1, False)]:
        for cl in (False, True):
            xx = x.contiguous(memory_format=torch.channels_last) if cl else x
            y, ind = F.max_pool2d(xx, k, s, p, 1, ceil, return_indices=True)
            assert torch.equal(winners_torch(xx, y, (k, k), (s, s), (p, p), (1, 1)), _to_offsets(ind, 5, k, s, p))
            torch.testing.assert_close(max_pool2d(xx, k, s, p, 1, ceil), y, rtol=0, atol=0, equal_nan=True)


def test_pool_module_swap_keeps_geometry_and_refuses_indices():
    from torch import nn

    from bluff_ray.engine.maxpool import MaxPool2dNoIndices

    net = nn.Sequential(nn.MaxPool2d(3, 2, ceil_mode=True), nn.Sequential(nn.MaxPool2d(3, 1, 1)), nn.ReLU())
    assert swap_max_pools(net) == 2
    assert isinstance(net[0], MaxPool2dNoIndices) and net[0].ceil_mode and net[0].stride == 2
    assert isinstance(net[1][0], MaxPool2dNoIndices) and net[1][0].padding == 1
    assert swap_max_pools(net) == 0  # already swapped
    with pytest.raises(ValueError, match="indices"):
        swap_max_pools(nn.Sequential(nn.MaxPool2d(2, return_indices=True)))
    with pytest.raises(ValueError, match="implementation"):
        max_pool2d(torch.zeros(1, 1, 4, 4), 2, impl="cuda")


def test_triton_kernels_under_the_interpreter():
    """The Triton kernels (the CUDA path), run by Triton's CPU interpreter, in a subprocess (the
    interpreter is chosen when Triton is imported)."""
    pytest.importorskip("triton")
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    r = subprocess.run([sys.executable, str(Path(__file__).resolve()), "triton"], env=env, capture_output=True,
                       text=True, timeout=300, cwd=Path(__file__).resolve().parents[1])
    assert r.returncode == 0, r.stdout + r.stderr
    assert "exact cases: 8" in r.stdout, r.stdout


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_triton_kernels_on_cuda_exact_in_float64():
    """On a GPU: the real Triton kernels, float64, against PyTorch's CUDA max-pool."""
    for gi, (k, s, p, ceil) in enumerate(GEOMETRIES):
        for cl in (False, True):
            x = _tied_input(29, 31, seed=gi, n=3, c=5).cuda()
            if cl:
                x = x.contiguous(memory_format=torch.channels_last)
            xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
            ya, yb = F.max_pool2d(xa, k, s, p, 1, ceil), max_pool2d(xb, k, s, p, 1, ceil, impl="triton")
            assert torch.equal(ya, yb)
            go = torch.randint(-3, 4, ya.shape, device="cuda").double()
            ya.backward(go)
            yb.backward(go)
            assert torch.equal(xa.grad, xb.grad), (k, s, p, ceil, cl)


if __name__ == "__main__":  # the subprocess of test_triton_kernels_under_the_interpreter
    impl = sys.argv[1]
    geoms = [(3, 2, 0, True), (3, 1, 1, True), (2, 2, 0, True), (3, 2, 1, False)]
    n = check_exact(impl, geoms, [(7, 9)])
    print(f"exact cases: {n}")
