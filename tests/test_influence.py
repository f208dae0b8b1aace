"""Influence equals a brute-force per-edge computation through the real block modules.

The brute force never touches bluff_ray.engine.influence's folding or grouped convs: it runs the real
BasicConv2d ``conv`` and ``bn`` modules on inputs with all channels but one zeroed, subtracts the
all-zero run (which removes the BN bias), takes the spatial max, and composes the widest path
with plain Python loops.
"""

from __future__ import annotations

import random

import pytest
import torch
from torch import nn
from torchvision.models import googlenet

from bluff_ray.engine.influence import FoldedConv, fold_bn, layer_influence, pairwise_influence, widest_path
from bluff_ray.engine.models.base import LayerInfo, ModelAdapter
from bluff_ray.engine.models.digits import DigitsNet, digits_adapter
from bluff_ray.engine.models.googlenet import googlenet_adapter

# ---------------------------------------------------------------------------------------------
# bluff_ray's own adapters with random weights and random BatchNorm statistics.


def randomize_bn(model: nn.Module, gen: torch.Generator) -> None:
    """Random eval-mode BN statistics and affine parameters, so folding is really exercised."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            c = m.num_features
            m.running_mean.copy_(torch.randn(c, generator=gen))
            m.running_var.copy_(torch.rand(c, generator=gen) * 2 + 0.1)
            m.weight.data.copy_(torch.randn(c, generator=gen))
            m.bias.data.copy_(torch.randn(c, generator=gen))
    model.eval()


def googlenet_test_adapter(seed: int = 0) -> ModelAdapter:
    """torchvision GoogLeNet (3x3 "5x5" branch, torchvision's quirk), random weights and BN."""
    torch.manual_seed(seed)
    net = googlenet(weights=None, aux_logits=False, init_weights=True)
    randomize_bn(net, torch.Generator().manual_seed(seed))
    return googlenet_adapter(net, weights_source="random (test)")


def digits_test_adapter(seed: int = 0) -> ModelAdapter:
    """The digits demo net (real 5x5 branch, 2x2 stage pool before mixed4a), random weights and BN."""
    torch.manual_seed(seed)
    net = DigitsNet()
    randomize_bn(net, torch.Generator().manual_seed(seed + 1))
    return digits_adapter(net)


# ---------------------------------------------------------------------------------------------
# Brute force: real modules, one channel at a time, Python loops.


def _linear_part(unit: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """BN(conv(x)) - BN(conv(0)): the unit's pre-activation without its bias (BasicConv2d minus ReLU)."""
    return unit.bn(unit.conv(x)) - unit.bn(unit.conv(torch.zeros_like(x)))


def _only(x: torch.Tensor, c: int) -> torch.Tensor:
    y = torch.zeros_like(x)
    y[:, c] = x[:, c]
    return y


def brute_influence(adapter: ModelAdapter, q: int, prev_out: torch.Tensor, src, dst) -> torch.Tensor:
    info, block, pool = adapter.layers[q], adapter.blocks[q], adapter.input_pools[q]
    n = prev_out.shape[0]
    out = torch.zeros(n, len(dst), len(src), dtype=prev_out.dtype)
    with torch.no_grad():
        a_full = pool(prev_out)
        a_only = {i: pool(_only(prev_out, i)) for i in src}  # all input channels but i zeroed, real pool
        stages = {}  # per bottleneck branch: (R_kxk as lists [img][m][local], R_reduce as lists [i][img][m])
        for b in (1, 2):
            branch = block.branch2 if b == 1 else block.branch3
            z = branch[0](a_full)  # real bottleneck activations
            r_kxk = torch.stack([_linear_part(branch[1], _only(z, m)).amax(dim=(2, 3)) for m in range(z.shape[1])], 1)
            r_red = {i: _linear_part(branch[0], a_only[i]).amax(dim=(2, 3)).tolist() for i in src}
            stages[b] = (r_kxk.tolist(), r_red)
        for jj, j in enumerate(dst):
            b = info.branch_of(j)
            local = j - info.branch_offset(b)
            for ii, i in enumerate(src):
                if b == 0:
                    out[:, jj, ii] = _linear_part(block.branch1, a_only[i])[:, local].amax(dim=(1, 2))
                elif b == 3:
                    y = _linear_part(block.branch4[1], block.branch4[0](a_only[i]))
                    out[:, jj, ii] = y[:, local].amax(dim=(1, 2))
                else:
                    r_kxk, r_red = stages[b]
                    for img in range(n):
                        best = None
                        for m in range(len(r_kxk[img])):
                            v = min(r_kxk[img][m][local], r_red[i][img][m])
                            best = v if best is None else max(best, v)
                        out[img, jj, ii] = best
    return out


def _sample_dst(info: LayerInfo, per_branch: int, rng: random.Random) -> list[int]:
    dst = []
    for b in range(4):
        off = info.branch_offset(b)
        dst += rng.sample(range(off, off + info.branch_sizes[b]), min(per_branch, info.branch_sizes[b]))
    rng.shuffle(dst)  # layer_influence must not assume dst is grouped or sorted by branch
    return dst


@pytest.fixture(scope="module")
def googlenet64() -> ModelAdapter:
    adapter = googlenet_test_adapter()
    adapter.model.double()
    return adapter


@pytest.mark.parametrize("q,hw", [(1, 7), (2, 9), (7, 5)])  # mixed3b, mixed4a (stage pool), mixed5a (2x2 pool)
def test_googlenet_block_matches_brute_force(googlenet64, q, hw):
    adapter = googlenet64
    rng = random.Random(q)
    prev_info, info = adapter.layers[q - 1], adapter.layers[q]
    gen = torch.Generator().manual_seed(q)
    prev = torch.relu(torch.randn(3, prev_info.channels, hw, hw, generator=gen, dtype=torch.float64))
    src = rng.sample(range(prev_info.channels), 4)
    dst = _sample_dst(info, 2, rng)
    got = layer_influence(adapter, q, prev, torch.tensor(src), torch.tensor(dst), batch_size=2)
    want = brute_influence(adapter, q, prev, src, dst)
    assert got.shape == (3, len(dst), len(src))
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-9)
    assert (want < 0).any() and (want > 0).any()  # signs are kept, both occur


@pytest.mark.parametrize("q", [1, 2, 3])  # mixed3b; mixed4a behind the 2x2 stage pool; mixed4b
def test_digits_block_real_5x5_matches_brute_force(q):
    adapter = digits_test_adapter(seed=q)
    adapter.model.double()
    assert adapter.blocks[q].branch3[1].conv.kernel_size == (5, 5)
    gen = torch.Generator().manual_seed(3)
    hw = 8 if q < 2 else 4
    prev = torch.relu(torch.randn(4, adapter.layers[q - 1].channels, hw, hw, generator=gen, dtype=torch.float64))
    src = random.Random(q).sample(range(adapter.layers[q - 1].channels), 6)
    dst = list(range(adapter.layers[q].channels))[::-1]  # every destination, all four branches
    got = layer_influence(adapter, q, prev, torch.tensor(src), torch.tensor(dst), batch_size=3)
    want = brute_influence(adapter, q, prev, src, dst)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-9)


def test_float32_agrees_with_float64():
    adapter = digits_test_adapter(seed=5)
    gen = torch.Generator().manual_seed(0)
    prev = torch.relu(torch.randn(5, 56, 8, 8, generator=gen))
    src, dst = torch.arange(56), torch.arange(64)
    got32 = layer_influence(adapter, 2, prev, src, dst)
    adapter.model.double()
    got64 = layer_influence(adapter, 2, prev.double(), src, dst)
    assert got32.dtype == torch.float32
    torch.testing.assert_close(got32.double(), got64, rtol=1e-4, atol=1e-5)


def test_pairwise_grouped_conv_and_pointwise_shortcut_agree_with_conv2d():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(3, 6, 9, 9, generator=gen, dtype=torch.float64)
    for k, stride, pad in [(1, 1, 0), (3, 1, 1), (5, 2, 2), (1, 2, 1), (3, 1, 0)]:
        w = torch.randn(4, 6, k, k, generator=gen, dtype=torch.float64)
        fc = FoldedConv(w, (stride, stride), (pad, pad), (1, 1))
        got = pairwise_influence(x, fc, max_elements=50)  # tiny budget: exercises the chunking
        for j in range(4):
            for i in range(6):
                y = torch.nn.functional.conv2d(x[:, i : i + 1], w[j : j + 1, i : i + 1], stride=stride, padding=pad)
                torch.testing.assert_close(got[:, j, i], y.amax(dim=(1, 2, 3)))


def test_widest_path_chunked_equals_loops():
    gen = torch.Generator().manual_seed(2)
    a, b = torch.randn(2, 3, 7, generator=gen), torch.randn(2, 7, 4, generator=gen)
    got = widest_path(a, b, max_elements=5)
    for n in range(2):
        for j in range(3):
            for i in range(4):
                assert got[n, j, i] == max(min(a[n, j, m], b[n, m, i]) for m in range(7))


def test_fold_bn_matches_module():
    adapter = digits_test_adapter(seed=2)
    unit = adapter.blocks[0].branch3[1]
    x = torch.randn(2, unit.conv.in_channels, 5, 5)
    fc = fold_bn(unit)
    y = torch.nn.functional.conv2d(x, fc.weight, stride=fc.stride, padding=fc.padding)
    torch.testing.assert_close(y, _linear_part(unit, x), rtol=1e-4, atol=1e-5)


def test_bad_inputs_are_refused():
    adapter = digits_test_adapter()
    prev = torch.rand(1, 40, 4, 4)
    with pytest.raises(IndexError, match="layer index"):
        layer_influence(adapter, 0, prev, torch.tensor([0]), torch.tensor([0]))
    with pytest.raises(IndexError, match="mixed3a"):
        layer_influence(adapter, 1, prev, torch.tensor([40]), torch.tensor([0]))
    with pytest.raises(ValueError, match="channels"):
        layer_influence(adapter, 1, torch.rand(1, 5, 4, 4), torch.tensor([0]), torch.tensor([0]))
    none = torch.tensor([], dtype=torch.long)
    every_branch = torch.tensor([1, 20, 40, 50])  # mixed3b: 1x1, 3x3, 5x5, pool projection
    assert layer_influence(adapter, 1, prev, none, every_branch).shape == (1, 4, 0)
    assert layer_influence(adapter, 1, prev, torch.tensor([3]), none).shape == (1, 0, 1)
