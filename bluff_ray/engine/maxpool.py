"""Max-pool that keeps no int64 indices: the backward recomputes each output's winning input.

Why: ``max_pool2d_with_indices`` saves an int64 index for every output element and its NHWC CUDA
kernels were 42 % of a GoogLeNet PGD step on an H200 (13 pools per forward); the indices were also a
large share of the ~25 MB autograd keeps per attacked sample. Here the forward keeps only the input
and the output (tensors the neighbouring convolutions keep anyway), and the backward finds, per
output, the input position that won, with PyTorch's rule, then routes the gradient there. Or, with
``save="winners"`` (the "lean" step, whose convolutions keep nothing of their inputs), the forward
finds the winners in the same scan and keeps only them: one byte per output.

PyTorch's rule (CPU and CUDA kernels alike): scan the window clipped to the input (padding never
wins) row by row, take a value when it is ``>`` the best so far or NaN; the first valid position
starts the scan. So: the FIRST maximum in scan order wins, the LAST NaN wins a window holding NaN,
and a window of -inf only is won by its first valid position. The gradients are therefore those of
``F.max_pool2d`` exactly (ties included); a position that wins several overlapping windows sums
their gradients in PyTorch's order (outputs row-major), so float64 results are bitwise equal.

Two implementations of the same rule:
- ``"torch"``: vectorised torch ops (one pass per window offset); the CPU path and the reference.
- ``"triton"``: the kernels of :mod:`bluff_ray.engine.maxpool_triton` (window scan writing the
  output, or in the backward a uint8 winner offset; then a per-input gather that sums the gradients
  of the outputs it won, in a fixed order: no atomics). Used for CUDA tensors when Triton imports;
  testable on a CPU with ``TRITON_INTERPRET=1``.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import nn

IMPLS = ("auto", "torch", "triton")
SAVES = ("input", "winners")


def _pair(v) -> tuple[int, int]:
    return (int(v[0]), int(v[1])) if isinstance(v, (tuple, list)) else (int(v), int(v))


def output_size(n: int, k: int, s: int, p: int, d: int, ceil_mode: bool) -> int:
    """PyTorch's ``pooling_output_shape``: the last window must start inside the input or left padding."""
    num = n + 2 * p - d * (k - 1) - 1
    o = (num + (s - 1 if ceil_mode else 0)) // s + 1
    if ceil_mode and (o - 1) * s >= n + p:
        o -= 1
    return o


def _memory_format(x: torch.Tensor) -> torch.memory_format:
    cl = torch.channels_last
    return (
        cl if x.dim() == 4 and x.is_contiguous(memory_format=cl) and not x.is_contiguous() else torch.contiguous_format
    )


# ----------------------------------------------------------------------------- torch (reference)


def _windows(x: torch.Tensor, oh: int, ow: int, k, s, p, d):
    """Yield (offset index, strided view of the padded input at that window offset, validity mask)."""
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = k, s, p, d
    h, w = x.shape[-2:]
    need_h, need_w = (oh - 1) * sh + dh * (kh - 1) + 1, (ow - 1) * sw + dw * (kw - 1) + 1
    xp = F.pad(x, (pw, max(0, need_w - w - pw), ph, max(0, need_h - h - ph)))
    rows = torch.arange(oh, device=x.device) * sh - ph
    cols = torch.arange(ow, device=x.device) * sw - pw
    for i in range(kh):
        r = rows + i * dh
        vr = (r >= 0) & (r < h)
        for j in range(kw):
            c = cols + j * dw
            valid = vr[:, None] & ((c >= 0) & (c < w))[None, :]
            view = xp[..., i * dh : i * dh + (oh - 1) * sh + 1 : sh, j * dw : j * dw + (ow - 1) * sw + 1 : sw]
            yield i * kw + j, view, valid


def winners_torch(x: torch.Tensor, y: torch.Tensor, k, s, p, d) -> torch.Tensor:
    """uint8 [..., OH, OW]: the window offset ``i * kw + j`` of each output's winner (PyTorch's rule)."""
    oh, ow = y.shape[-2:]
    nan_y = torch.isnan(y)
    win = torch.zeros(y.shape, dtype=torch.uint8, device=y.device)
    found = torch.zeros(y.shape, dtype=torch.bool, device=y.device)
    for idx, view, valid in _windows(x, oh, ow, k, s, p, d):
        first = valid & (view == y) & ~found  # first maximum (== the pooled value) in scan order
        nan = valid & nan_y & torch.isnan(view)  # a later NaN overrides an earlier one
        win = torch.where(first | nan, idx, win)
        found |= first
    return win


def _scatter_torch(g: torch.Tensor, win: torch.Tensor, shape, fmt, k, s, p, d) -> torch.Tensor:
    """The input gradient (``shape``, memory format ``fmt``): each output's gradient routed to its winner."""
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = k, s, p, d
    h, w = shape[-2:]
    oh, ow = g.shape[-2:]
    need_h, need_w = (oh - 1) * sh + dh * (kh - 1) + 1, (ow - 1) * sw + dw * (kw - 1) + 1
    gp = torch.zeros((*shape[:-2], max(need_h, h + ph), max(need_w, w + pw)), dtype=g.dtype, device=g.device)
    zero = torch.zeros((), dtype=g.dtype, device=g.device)
    # Offsets in reverse scan order = the outputs a position won in row-major order, the order in
    # which PyTorch's kernels sum them: float64 results are then bitwise PyTorch's.
    for i in reversed(range(kh)):
        for j in reversed(range(kw)):
            view = gp[..., i * dh : i * dh + (oh - 1) * sh + 1 : sh, j * dw : j * dw + (ow - 1) * sw + 1 : sw]
            view += torch.where(win == i * kw + j, g, zero)
    return gp[..., ph : ph + h, pw : pw + w].contiguous(memory_format=fmt)


# ----------------------------------------------------------------------------- triton (CUDA)


@functools.cache
def _triton_kernels():
    """The Triton kernels (module imported lazily: the CPU path must not need Triton)."""
    from bluff_ray.engine import maxpool_triton as k

    return k.maxpool_fwd, k.maxpool_winners, k.maxpool_bwd_gather


BLOCK = 256


def _scan_triton(x: torch.Tensor, oh: int, ow: int, k, s, p, d, want_y: bool, want_win: bool):
    """(y or None, winners or None) in one scan of ``x``; winners are uint8 in (N, OH, OW, C) order."""
    fwd, winners, _ = _triton_kernels()
    n, c, h, w = x.shape
    y = torch.empty((n, c, oh, ow), dtype=x.dtype, device=x.device, memory_format=_memory_format(x)) if want_y else None
    win = torch.empty((n, oh, ow, c), dtype=torch.uint8, device=x.device) if want_win else None
    total = n * c * oh * ow
    if total:
        geometry = (k[0], k[1], s[0], s[1], p[0], p[1], d[0], d[1])
        grid = (math.ceil(total / BLOCK),)
        if y is not None:
            keep = win is not None
            fwd[grid](
                x,
                y,
                win if keep else y,
                total,
                c,
                h,
                w,
                oh,
                ow,
                *x.stride(),
                *y.stride(),
                *geometry,
                WRITE_WIN=keep,
                BLOCK=BLOCK,
            )
        else:
            winners[grid](x, win, total, c, h, w, oh, ow, *x.stride(), *geometry, BLOCK=BLOCK)
    return y, win


def _gather_triton(g: torch.Tensor, win: torch.Tensor, shape, fmt, k, s, p, d) -> torch.Tensor:
    *_, gather = _triton_kernels()
    n, c, h, w = shape
    oh, ow = g.shape[-2:]
    gx = torch.empty(shape, dtype=g.dtype, device=g.device, memory_format=fmt)
    total = n * c * h * w
    if total:
        gather[(math.ceil(total / BLOCK),)](
            g,
            win,
            gx,
            total,
            c,
            h,
            w,
            oh,
            ow,
            *g.stride(),
            *gx.stride(),
            k[0],
            k[1],
            s[0],
            s[1],
            p[0],
            p[1],
            d[0],
            d[1],
            F64=g.dtype == torch.float64,
            BLOCK=BLOCK,
        )
    return gx


def triton_available() -> bool:
    try:
        _triton_kernels()
        return True
    except Exception:  # no Triton, or one that cannot build kernels here
        return False


# ----------------------------------------------------------------------------- autograd + module


def _use_triton(x: torch.Tensor, impl: str) -> bool:
    if impl == "triton":
        return True
    return impl == "auto" and x.is_cuda and triton_available()


class _MaxPool2dNoIndices(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, k, s, p, d, ceil_mode, impl, save):
        oh = output_size(x.shape[-2], k[0], s[0], p[0], d[0], ceil_mode)
        ow = output_size(x.shape[-1], k[1], s[1], p[1], d[1], ceil_mode)
        ctx.triton = _use_triton(x, impl) and x.dim() == 4
        keep = save == "winners"
        if ctx.triton:
            y, win = _scan_triton(x, oh, ow, k, s, p, d, want_y=True, want_win=keep)
        else:
            y = F.max_pool2d(x, k, s, p, d, ceil_mode)
            win = winners_torch(x, y, k, s, p, d) if keep else None
        if keep:
            ctx.save_for_backward(win)
            ctx.input = (x.shape, _memory_format(x))
        else:
            ctx.save_for_backward(x, y)
        ctx.geometry = (k, s, p, d)
        return y

    @staticmethod
    def backward(ctx, g):
        k, s, p, d = ctx.geometry
        if len(ctx.saved_tensors) == 1:  # save="winners"
            (win,) = ctx.saved_tensors
            shape, fmt = ctx.input
        else:
            x, y = ctx.saved_tensors
            shape, fmt = x.shape, _memory_format(x)
            oh, ow = y.shape[-2:]
            win = _scan_triton(x, oh, ow, k, s, p, d, False, True)[1] if ctx.triton else winners_torch(x, y, k, s, p, d)
        gx = (_gather_triton if ctx.triton else _scatter_torch)(g, win, shape, fmt, k, s, p, d)
        return gx, None, None, None, None, None, None, None


def max_pool2d(
    x: torch.Tensor,
    kernel_size,
    stride=None,
    padding=0,
    dilation=1,
    ceil_mode: bool = False,
    impl: str = "auto",
    save: str = "input",
) -> torch.Tensor:
    """``F.max_pool2d`` (same values, same gradients) that saves no indices for its backward.

    ``impl``: "auto" (Triton for CUDA tensors when available, else torch), "torch" or "triton"
    (forces the Triton kernels, e.g. on CPU tensors under ``TRITON_INTERPRET=1``).
    ``save``: what the backward gets: "input" (the input and output, which the neighbouring
    convolutions keep anyway; the backward finds the winners again) or "winners" (each output's
    winner offset, 1 byte per output, found in the forward: for a model whose other layers keep
    nothing of this size, the ``"lean"`` attack step).
    """
    if impl not in IMPLS:
        raise ValueError(f"unknown max-pool implementation {impl!r}; valid: {', '.join(IMPLS)}")
    if save not in SAVES:
        raise ValueError(f"unknown max-pool save mode {save!r}; valid: {', '.join(SAVES)}")
    k = _pair(kernel_size)
    s = _pair(stride if stride is not None and stride != () else kernel_size)
    p, d = _pair(padding), _pair(dilation)
    if p[0] > k[0] // 2 or p[1] > k[1] // 2:
        raise ValueError(f"padding {p} must be at most half the kernel size {k}")
    if k[0] * k[1] > 255:
        raise ValueError(f"kernel {k} has more than 255 positions (winners are stored as uint8)")
    if x.dim() not in (3, 4):
        raise ValueError(f"max_pool2d wants (C, H, W) or (N, C, H, W), got shape {tuple(x.shape)}")
    if x.dim() == 3:
        return _MaxPool2dNoIndices.apply(x.unsqueeze(0), k, s, p, d, bool(ceil_mode), impl, save).squeeze(0)
    return _MaxPool2dNoIndices.apply(x, k, s, p, d, bool(ceil_mode), impl, save)


class MaxPool2dNoIndices(nn.MaxPool2d):
    """``nn.MaxPool2d`` through :func:`max_pool2d`: still a MaxPool2d (code reading kernel_size,
    stride, padding keeps working); the output keeps the input's memory format."""

    def __init__(self, *args, impl: str = "auto", save: str = "input", **kwargs):
        super().__init__(*args, **kwargs)
        if self.return_indices:
            raise ValueError("MaxPool2dNoIndices cannot return indices")
        self.impl, self.save = impl, save

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return max_pool2d(
            x, self.kernel_size, self.stride, self.padding, self.dilation, self.ceil_mode, self.impl, self.save
        )


def swap_max_pools(module: nn.Module, impl: str = "auto", save: str = "input") -> int:
    """Replace, in place, every ``nn.MaxPool2d`` (subclasses included) under ``module`` by a
    :class:`MaxPool2dNoIndices` with the same geometry; returns how many were replaced."""
    count = 0
    for name, child in list(module.named_children()):
        if isinstance(child, nn.MaxPool2d) and not isinstance(child, MaxPool2dNoIndices):
            if child.return_indices:
                raise ValueError(f"{name}: a max-pool that returns indices cannot be swapped")
            setattr(
                module,
                name,
                MaxPool2dNoIndices(
                    child.kernel_size,
                    child.stride,
                    child.padding,
                    child.dilation,
                    ceil_mode=child.ceil_mode,
                    impl=impl,
                    save=save,
                ),
            )
            count += 1
        else:
            count += swap_max_pools(child, impl, save)
    return count
