"""Triton kernels of :mod:`bluff_ray.engine.maxpool` (imported only when they run: CUDA, or a CPU
under ``TRITON_INTERPRET=1``). Three kernels with distinct names, so a profile tells them apart:

- ``maxpool_fwd``: one lane per output, scans its window (PyTorch's rule), writes the max (and,
  for a pool that saves winners instead of its input, ``save="winners"``, the winner's offset);
- ``maxpool_winners`` (backward): the same scan, writes the winner's window offset as uint8;
- ``maxpool_bwd_gather`` (backward): one lane per input, sums the gradients of the outputs it won,
  outputs in row-major order (PyTorch's order), in fp32 (fp64 for fp64 tensors); no atomics.

Lanes run channel fastest: coalesced for channels_last tensors (any strides work). Offsets are int64
(a batch of 8192 GoogLeNet stems has more than 2^31 elements).
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _window_max(
    x_ptr,
    offs,
    live,
    C,
    H,
    W,
    OH,
    OW,
    sxn,
    sxc,
    sxh,
    sxw,
    KH: tl.constexpr,
    KW: tl.constexpr,
    SH: tl.constexpr,
    SW: tl.constexpr,
    PH: tl.constexpr,
    PW: tl.constexpr,
    DH: tl.constexpr,
    DW: tl.constexpr,
    BLOCK: tl.constexpr,
):
    c = offs % C
    t = offs // C
    ow = t % OW
    t = t // OW
    oh = t % OH
    n = t // OH
    base = x_ptr + n * sxn + c * sxc
    best = tl.zeros([BLOCK], dtype=x_ptr.dtype.element_ty)
    idx = tl.zeros([BLOCK], dtype=tl.int32)
    seen = tl.zeros([BLOCK], dtype=tl.int1)
    for i in tl.static_range(KH):
        ih = oh * SH - PH + i * DH
        for j in tl.static_range(KW):
            iw = ow * SW - PW + j * DW
            valid = live & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
            v = tl.load(base + ih * sxh + iw * sxw, mask=valid, other=0.0)
            # PyTorch's rule: the first valid position starts; then strictly greater, or NaN.
            take = valid & ((v > best) | (v != v) | (seen == 0))
            best = tl.where(take, v, best)
            idx = tl.where(take, i * KW + j, idx)
            seen = seen | valid
    return best, idx, n, c, oh, ow


@triton.jit
def maxpool_fwd(
    x_ptr,
    y_ptr,
    w_ptr,
    total,
    C,
    H,
    W,
    OH,
    OW,
    sxn,
    sxc,
    sxh,
    sxw,
    syn,
    syc,
    syh,
    syw,
    KH: tl.constexpr,
    KW: tl.constexpr,
    SH: tl.constexpr,
    SW: tl.constexpr,
    PH: tl.constexpr,
    PW: tl.constexpr,
    DH: tl.constexpr,
    DW: tl.constexpr,
    WRITE_WIN: tl.constexpr,
    BLOCK: tl.constexpr,
):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    live = offs < total
    best, idx, n, c, oh, ow = _window_max(
        x_ptr, offs, live, C, H, W, OH, OW, sxn, sxc, sxh, sxw, KH, KW, SH, SW, PH, PW, DH, DW, BLOCK
    )
    tl.store(y_ptr + n * syn + c * syc + oh * syh + ow * syw, best, mask=live)
    if WRITE_WIN:  # save="winners": the backward's winners from this same scan
        tl.store(w_ptr + offs, idx.to(tl.uint8), mask=live)  # (N, OH, OW, C) order


@triton.jit
def maxpool_winners(
    x_ptr,
    w_ptr,
    total,
    C,
    H,
    W,
    OH,
    OW,
    sxn,
    sxc,
    sxh,
    sxw,
    KH: tl.constexpr,
    KW: tl.constexpr,
    SH: tl.constexpr,
    SW: tl.constexpr,
    PH: tl.constexpr,
    PW: tl.constexpr,
    DH: tl.constexpr,
    DW: tl.constexpr,
    BLOCK: tl.constexpr,
):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    live = offs < total
    best, idx, n, c, oh, ow = _window_max(
        x_ptr, offs, live, C, H, W, OH, OW, sxn, sxc, sxh, sxw, KH, KW, SH, SW, PH, PW, DH, DW, BLOCK
    )
    tl.store(w_ptr + offs, idx.to(tl.uint8), mask=live)  # (N, OH, OW, C) order


@triton.jit
def maxpool_bwd_gather(
    g_ptr,
    w_ptr,
    gx_ptr,
    total,
    C,
    H,
    W,
    OH,
    OW,
    sgn,
    sgc,
    sgh,
    sgw,
    sxn,
    sxc,
    sxh,
    sxw,
    KH: tl.constexpr,
    KW: tl.constexpr,
    SH: tl.constexpr,
    SW: tl.constexpr,
    PH: tl.constexpr,
    PW: tl.constexpr,
    DH: tl.constexpr,
    DW: tl.constexpr,
    F64: tl.constexpr,
    BLOCK: tl.constexpr,
):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    live = offs < total
    c = offs % C
    t = offs // C
    iw = t % W
    t = t // W
    ih = t % H
    n = t // H
    if F64:
        acc = tl.zeros([BLOCK], dtype=tl.float64)
    else:
        acc = tl.zeros([BLOCK], dtype=tl.float32)
    for ii in tl.static_range(KH):
        i = KH - 1 - ii  # a larger window row means a smaller output row: outputs in row-major order
        nh = ih + PH - i * DH
        oh = nh // SH
        okh = (nh >= 0) & (nh % SH == 0) & (oh < OH)
        for jj in tl.static_range(KW):
            j = KW - 1 - jj
            nw = iw + PW - j * DW
            ow = nw // SW
            ok = live & okh & (nw >= 0) & (nw % SW == 0) & (ow < OW)
            won = tl.load(w_ptr + ((n * OH + oh) * OW + ow) * C + c, mask=ok, other=255)
            hit = ok & (won.to(tl.int32) == i * KW + j)
            gv = tl.load(g_ptr + n * sgn + c * sgc + oh * sgh + ow * sgw, mask=hit, other=0.0)
            acc += gv.to(acc.dtype)
    tl.store(gx_ptr + n * sxn + c * sxc + ih * sxh + iw * sxw, acc.to(gx_ptr.dtype.element_ty), mask=live)
