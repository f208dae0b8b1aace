"""Exact per-image influence between channels of consecutive mixed blocks (docs/FORMAT.md, edges).

Influence of source channel i (output of block q-1) on destination channel j (output of block
q) for one image is the spatial max of the part of j's pre-activation that comes from i alone:
the conv of the kernel slice W'[j,i] over i's map, with BatchNorm folded into W' and no bias.
Unlike the original Bluff we evaluate every output position with the conv's real stride and
padding (no stride-3 grid), model the max-pools (between stages and before the pool
projection) and keep signs. Through a 3x3/5x5 branch the path goes through the bottleneck
channels m, and the edge is the widest path max_m min(R_kxk[j,m], R_reduce[m,i]) per image.

Everything is batched tensor code on the adapter's device: the pairwise "one kernel slice over
one channel" convs are one grouped conv, the widest path is one max-min reduction.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from bluff_ray.engine.models.base import ModelAdapter

# Upper bound on the elements of one intermediate tensor (grouped-conv output or max-min
# broadcast); work is chunked over images / channels to stay below it (2**26 fp32 = 256 MiB).
MAX_ELEMENTS = 2**26


@dataclass(frozen=True)
class FoldedConv:
    """A conv with its eval-mode BatchNorm scale folded in; the bias is dropped on purpose."""

    weight: torch.Tensor  # [Cout, Cin, kh, kw]
    stride: tuple[int, ...]
    padding: tuple[int, ...] | str
    dilation: tuple[int, ...]


def fold_bn(unit: nn.Module) -> FoldedConv:
    """W' = W * gamma / sqrt(running_var + eps) per output channel for a BasicConv2d-like unit."""
    conv, bn = getattr(unit, "conv", None), getattr(unit, "bn", None)
    if not isinstance(conv, nn.Conv2d) or not isinstance(bn, nn.BatchNorm2d):
        raise TypeError(f"expected a conv unit with .conv (Conv2d) and .bn (BatchNorm2d), got {type(unit).__name__}")
    if conv.groups != 1:
        raise ValueError(f"grouped convs are not supported (groups={conv.groups})")
    if conv.padding_mode != "zeros":
        raise ValueError(f"only zero padding is supported, got {conv.padding_mode!r}")
    if bn.running_var is None:
        raise ValueError("BatchNorm without running statistics cannot be folded")
    scale = torch.rsqrt(bn.running_var + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight
    w = conv.weight * scale.to(conv.weight.dtype).view(-1, 1, 1, 1)
    return FoldedConv(w.detach(), tuple(conv.stride), conv.padding, tuple(conv.dilation))


def _is_pointwise(fc: FoldedConv) -> bool:
    pad = fc.padding
    no_pad = pad == "valid" or pad == "same" or (not isinstance(pad, str) and all(p == 0 for p in pad))
    return fc.weight.shape[2:] == (1, 1) and fc.stride == (1, 1) and no_pad


def pairwise_influence(x: torch.Tensor, fc: FoldedConv, max_elements: int = MAX_ELEMENTS) -> torch.Tensor:
    """R[n,j,i] = spatial max over all output positions of conv(x[n,i], fc.weight[j,i]).

    x: [N,I,H,W], fc.weight: [J,I,kh,kw] -> [N,J,I]. All (j,i) pairs are one grouped conv
    (groups = I, J outputs per group), chunked over images and input channels to bound memory.
    A 1x1, stride-1, unpadded conv takes a shortcut that is exact, not approximate: rounding is
    monotone, so max_p(w*x_p) = w*max(x) for w >= 0 and w*min(x) for w < 0.
    """
    n, i_ch = x.shape[:2]
    j_ch = fc.weight.shape[0]
    if fc.weight.shape[1] != i_ch:
        raise ValueError(f"weight has {fc.weight.shape[1]} input channels, x has {i_ch}")
    w = fc.weight.to(device=x.device, dtype=x.dtype)
    if n == 0 or i_ch == 0 or j_ch == 0:
        return x.new_zeros(n, j_ch, i_ch)
    if _is_pointwise(fc):
        flat = x.flatten(2)
        hi, lo = flat.amax(dim=2), flat.amin(dim=2)  # [N,I]
        w2 = w[:, :, 0, 0]  # [J,I]
        return torch.where(w2 >= 0, w2 * hi[:, None, :], w2 * lo[:, None, :])
    # Grouped conv: group i sees channel i and holds the J kernels W'[:, i]; output channel
    # i*J + j is conv(x_i, W'[j,i]).
    wg = w.transpose(0, 1).reshape(i_ch * j_ch, 1, *w.shape[2:])
    kh, kw = w.shape[2:]
    out_hw = _out_hw(x.shape[2:], (kh, kw), fc)
    per_pair = max(1, out_hw[0] * out_hw[1])
    i_step = max(1, min(i_ch, max_elements // max(1, per_pair * j_ch)))
    n_step = max(1, min(n, max_elements // max(1, per_pair * j_ch * i_step)))
    out = x.new_empty(n, i_ch, j_ch)
    for n0 in range(0, n, n_step):
        for i0 in range(0, i_ch, i_step):
            i1 = min(i_ch, i0 + i_step)
            y = F.conv2d(
                x[n0 : n0 + n_step, i0:i1],
                wg[i0 * j_ch : i1 * j_ch],
                stride=fc.stride,
                padding=fc.padding,
                dilation=fc.dilation,
                groups=i1 - i0,
            )
            out[n0 : n0 + n_step, i0:i1] = y.amax(dim=(2, 3)).view(-1, i1 - i0, j_ch)
    return out.transpose(1, 2)


def _out_hw(in_hw, k, fc: FoldedConv) -> tuple[int, int]:
    if isinstance(fc.padding, str):
        return (
            tuple(in_hw)
            if fc.padding == "same"
            else tuple((s - fc.dilation[d] * (k[d] - 1) - 1) // fc.stride[d] + 1 for d, s in enumerate(in_hw))
        )
    return tuple(
        (s + 2 * fc.padding[d] - fc.dilation[d] * (k[d] - 1) - 1) // fc.stride[d] + 1 for d, s in enumerate(in_hw)
    )


def widest_path(r_out: torch.Tensor, r_in: torch.Tensor, max_elements: int = MAX_ELEMENTS) -> torch.Tensor:
    """E[n,j,i] = max_m min(r_out[n,j,m], r_in[n,m,i]): a batched max-min product.

    r_out: [N,J,M], r_in: [N,M,I] -> [N,J,I]. The [N,J,M,I] broadcast is reduced in chunks
    over images and m (running max) so no more than ``max_elements`` are live at once.
    """
    n, j_ch, m_ch = r_out.shape
    if r_in.shape[:2] != (n, m_ch):
        raise ValueError(f"shapes do not chain: {tuple(r_out.shape)} and {tuple(r_in.shape)}")
    i_ch = r_in.shape[2]
    if m_ch == 0:
        raise ValueError("widest path needs at least one bottleneck channel")
    m_step = max(1, min(m_ch, max_elements // max(1, j_ch * i_ch)))
    n_step = max(1, min(n, max_elements // max(1, j_ch * m_step * i_ch)))
    out = r_out.new_empty(n, j_ch, i_ch)
    for n0 in range(0, n, n_step):
        a, b = r_out[n0 : n0 + n_step], r_in[n0 : n0 + n_step]
        best: torch.Tensor | None = None
        for m0 in range(0, m_ch, m_step):
            part = torch.minimum(a[:, :, m0 : m0 + m_step, None], b[:, None, m0 : m0 + m_step, :]).amax(dim=2)
            best = part if best is None else torch.maximum(best, part)
        assert best is not None, "no bottleneck channel"
        out[n0 : n0 + n_step] = best
    return out


def _split_branch(branch: nn.Module) -> tuple[list[nn.Module], nn.Module]:
    """(channel-wise pre-ops, conv unit) of a 1x1 or pool-projection branch."""
    mods = list(branch) if isinstance(branch, nn.Sequential) else [branch]
    pre, unit = mods[:-1], mods[-1]
    for m in pre:
        if not isinstance(m, (nn.MaxPool2d, nn.AvgPool2d, nn.Identity)):
            raise TypeError(f"branch op {type(m).__name__} is not channel-wise; influence would not be exact")
    return pre, unit


def _slice(fc: FoldedConv, rows: torch.Tensor | None, cols: torch.Tensor | None) -> FoldedConv:
    """The folded conv restricted to output channels ``rows`` and input channels ``cols``."""
    w = fc.weight
    if rows is not None:
        w = w[rows.to(w.device)]
    if cols is not None:
        w = w[:, cols.to(w.device)]
    return FoldedConv(w, fc.stride, fc.padding, fc.dilation)


def _check_indices(idx: torch.Tensor, size: int, what: str) -> torch.Tensor:
    idx = torch.as_tensor(idx, dtype=torch.long).flatten()
    if idx.numel() and (idx.min() < 0 or idx.max() >= size):
        raise IndexError(f"{what} channel indices must lie in [0, {size}), got {idx.tolist()}")
    return idx


@torch.no_grad()
def layer_influence(
    adapter: ModelAdapter,
    q: int,
    prev_out: torch.Tensor,
    src: torch.Tensor,
    dst: torch.Tensor,
    batch_size: int = 64,
) -> torch.Tensor:
    """Per-image signed influence of ``src`` channels of block q-1 on ``dst`` channels of block q.

    prev_out: [N,P,H,W], the (post-ReLU) output of block q-1; src indexes its channels, dst the
    concatenated output channels of block q. Returns [N, len(dst), len(src)] on prev_out's device
    (computed on the adapter's device, images in chunks of ``batch_size``).
    """
    if not 1 <= q < len(adapter.blocks):
        raise IndexError(f"layer index q must be in [1, {len(adapter.blocks)}), got {q}")
    if prev_out.dim() != 4:
        raise ValueError(f"prev_out must be [N,P,H,W], got shape {tuple(prev_out.shape)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    prev_info, info = adapter.layers[q - 1], adapter.layers[q]
    if prev_out.shape[1] != prev_info.channels:
        raise ValueError(f"prev_out has {prev_out.shape[1]} channels, {prev_info.name} has {prev_info.channels}")
    src = _check_indices(src, prev_info.channels, prev_info.name)
    dst = _check_indices(dst, info.channels, info.name)
    block, pool = adapter.blocks[q], adapter.input_pools[q]
    device = adapter.device
    n = prev_out.shape[0]
    out = torch.empty(n, dst.numel(), src.numel(), dtype=prev_out.dtype, device=prev_out.device)
    if out.numel() == 0:  # nothing displayed on one side (or no images): nothing to compute
        return out

    # Destination channels grouped by branch: (positions in dst, local indices in the branch).
    branch_of = torch.tensor([info.branch_of(int(c)) for c in dst], dtype=torch.long)
    groups = []
    for b in range(4):
        pos = (branch_of == b).nonzero().flatten()
        if pos.numel():
            groups.append((b, pos, dst[pos] - info.branch_offset(b)))
    branches: list[Any] = [block.branch1, block.branch2, block.branch3, block.branch4]
    folded: dict[
        int, tuple[Any, ...]
    ] = {}  # per branch: (ops applied to A before the sliced conv(s), folded conv slices)
    for b, _, local in groups:
        if b in (1, 2):  # 1x1 reduce -> kxk: both stages, only the rows/columns needed
            reduce_unit, kxk_unit = branches[b][0], branches[b][1]
            folded[b] = (reduce_unit, _slice(fold_bn(reduce_unit), None, src), _slice(fold_bn(kxk_unit), local, None))
        else:  # 1x1 or pool projection: a single conv after channel-wise ops
            pre, unit = _split_branch(branches[b])
            folded[b] = (pre, _slice(fold_bn(unit), local, src))

    src_dev = src.to(device)
    for n0 in range(0, n, batch_size):
        a = pool(prev_out[n0 : n0 + batch_size].to(device))  # block q's input A
        a_src = a[:, src_dev]
        for b, pos, _ in groups:
            if b in (1, 2):
                reduce_unit, red, kxk = folded[b]
                z = reduce_unit(a)  # real bottleneck activations (post-ReLU), all m
                r = widest_path(pairwise_influence(z, kxk), pairwise_influence(a_src, red))
            else:
                pre, fc = folded[b]
                x = a_src
                for m in pre:  # channel-wise, so pooling only the source channels is exact
                    x = m(x)
                r = pairwise_influence(x, fc)
            out[n0 : n0 + batch_size, pos.to(out.device)] = r.to(out.device, out.dtype)
    return out
