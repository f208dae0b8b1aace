"""Neuron importance and roles (docs/FORMAT.md, Roles): pure tensor functions plus one activation collector.

Importance of a channel for a condition is the median, over the condition's images, of the
per-image spatial max of the channel's post-ReLU activation. Roles split each layer's most
important channels into the four groups the viewer draws (original / both / target / exploited).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from bluff_ray.engine.models.base import ModelAdapter

# Role names, in the viewer's left-to-right order (also the order of nodes within a layer).
ROLES = ("original", "both", "target", "exploited")


def spatial_max(act: torch.Tensor) -> torch.Tensor:
    """Per-image, per-channel max over all spatial positions: [N,C,H,W] -> [N,C]."""
    if act.dim() != 4:
        raise ValueError(f"spatial_max expects [N,C,H,W], got shape {tuple(act.shape)}")
    return act.amax(dim=(2, 3))


def median(x: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """Exact median along ``dim``, like ``numpy.median``.

    An even count averages the two middle values (``torch.median`` returns the lower one, which
    would make a two-image condition report its smaller value). An empty ``dim`` gives NaN, and
    a NaN anywhere along ``dim`` gives NaN, as numpy does. Integer inputs are promoted to float.
    """
    if not x.is_floating_point():
        x = x.to(torch.get_default_dtype())
    dim = dim % x.dim() if x.dim() else 0
    n = x.shape[dim]
    out_shape = x.shape[:dim] + x.shape[dim + 1 :]
    if n == 0:
        return torch.full(out_shape, float("nan"), dtype=x.dtype, device=x.device)
    s = x.sort(dim=dim).values
    lo = s.select(dim, (n - 1) // 2)
    hi = s.select(dim, n // 2)
    med = lo if n % 2 else (lo + hi) / 2
    nan = torch.isnan(x).any(dim=dim)
    return torch.where(nan, torch.full_like(med, float("nan")), med)


def importance(acts: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Per layer, the median over images of the per-image spatial max: {layer: [N,C,H,W]} -> {layer: [C]}."""
    return {layer: median(spatial_max(a), dim=0) for layer, a in acts.items()}


def spatial_max_activations(
    adapter: ModelAdapter, images: torch.Tensor, batch_size: int = 64
) -> dict[str, torch.Tensor]:
    """Per-image spatial max of every mixed layer, {layer: [N,C]} on the adapter's device, in the
    model's dtype (the pair summary keeps working on them there, without a host sync).

    Collected batch by batch (``ModelAdapter.activations``): the [N,C] maxima are all importance
    needs, so no full activation map outlives its batch.
    """
    return adapter.activations(images, batch_size=batch_size, reduce=lambda _layer, act: spatial_max(act))[1]


def ranked_channels(values: torch.Tensor) -> list[int]:
    """Channel indices by descending value; ties go to the lower channel (a stable sort)."""
    if values.dim() != 1:
        raise ValueError(f"expected a 1-D importance vector, got shape {tuple(values.shape)}")
    if torch.isnan(values).any():
        raise ValueError("cannot rank importances containing NaN")
    order = torch.sort(-values.detach().cpu().double(), stable=True).indices
    return order.tolist()


def segment_median(values: torch.Tensor, sizes: Sequence[int]) -> torch.Tensor:
    """Exact medians of consecutive row segments: ``values`` [sum(sizes), ...] -> [len(sizes), ...].

    One sort for all segments (rows padded with NaN, which sorts last), then the two middle rows of
    each segment are averaged, as :func:`median` does. An empty segment gives NaN. ``sizes`` are
    host integers, so nothing here waits for the device.
    """
    sizes = [int(n) for n in sizes]
    if sum(sizes) != values.shape[0]:
        raise ValueError(f"segment sizes {sizes} do not add up to {values.shape[0]} rows")
    if not values.is_floating_point():
        values = values.to(torch.get_default_dtype())
    rest = values.shape[1:]
    n_seg, width = len(sizes), max(sizes, default=0)
    if width == 0:
        return values.new_full((n_seg, *rest), float("nan"))
    padded = values.new_full((n_seg, width, *rest), float("nan"))
    start = 0
    for i, n in enumerate(sizes):
        if n:
            padded[i, :n] = values[start : start + n]
        start += n
    srt = padded.sort(dim=1).values
    sz = torch.tensor(sizes, device=values.device)
    lo_i = ((sz - 1).clamp_min(0) // 2).view(n_seg, 1, *([1] * len(rest))).expand(n_seg, 1, *rest)
    hi_i = (sz // 2).clamp_max(width - 1).view(n_seg, 1, *([1] * len(rest))).expand(n_seg, 1, *rest)
    lo = srt.gather(1, lo_i).squeeze(1)
    hi = srt.gather(1, hi_i).squeeze(1)
    med = (lo + hi) / 2
    empty = (sz == 0).view(n_seg, *([1] * len(rest)))
    return torch.where(empty, torch.full_like(med, float("nan")), med)


#: Role codes of :func:`role_codes` (index into ROLES); NOT_SHOWN for channels outside every role.
NOT_SHOWN = len(ROLES)


def role_codes(
    imp_original: torch.Tensor, imp_target: torch.Tensor, imp_attacked: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Roles of one layer's channels, computed on the device without a host sync.

    ``imp_original``, ``imp_target``: [C]; ``imp_attacked``: [S, C], a row of NaN for a strength
    without a successful image. Returns (codes int64 [C]: index into ``ROLES`` or ``NOT_SHOWN``,
    exploited_mask int64 [C]: bit s set when the channel is among the first k//2 fresh channels
    at strength s). Ranking is descending importance, ties to the lower channel.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    c = imp_original.shape[0]
    if imp_target.shape != (c,) or imp_attacked.dim() != 2 or imp_attacked.shape[1] != c:
        raise ValueError(
            f"importance shapes differ: {tuple(imp_original.shape)}, {tuple(imp_target.shape)}, "
            f"{tuple(imp_attacked.shape)}"
        )
    device = imp_original.device
    kk = min(k, c)

    def top_mask(v: torch.Tensor) -> torch.Tensor:
        order = torch.sort(v, descending=True, stable=True).indices[..., :kk]
        return torch.zeros(v.shape, dtype=torch.bool, device=device).scatter_(-1, order, True)

    o, t = top_mask(imp_original), top_mask(imp_target)
    ot = o | t
    s = imp_attacked.shape[0]
    valid = ~torch.isnan(imp_attacked).all(dim=1)  # [S]
    order = torch.sort(torch.nan_to_num(imp_attacked, nan=float("-inf")), dim=1, descending=True, stable=True).indices[
        :, :kk
    ]  # [S, kk]
    fresh = ~ot[order]  # [S, kk]
    keep = fresh & (torch.cumsum(fresh.to(torch.int64), dim=1) <= k // 2) & valid[:, None]
    per_s = torch.zeros((s, c), dtype=torch.bool, device=device).scatter_(1, order, keep)
    weights = (2 ** torch.arange(s, device=device, dtype=torch.int64))[:, None]
    mask = (per_s.to(torch.int64) * weights).sum(dim=0)
    codes = torch.full((c,), NOT_SHOWN, dtype=torch.int64, device=device)
    codes = torch.where(per_s.any(dim=0), torch.full_like(codes, ROLES.index("exploited")), codes)
    codes = torch.where(t & ~o, torch.full_like(codes, ROLES.index("target")), codes)
    codes = torch.where(o & t, torch.full_like(codes, ROLES.index("both")), codes)
    codes = torch.where(o & ~t, torch.full_like(codes, ROLES.index("original")), codes)
    return codes, mask


def roles(
    imp_original: Mapping[str, torch.Tensor],
    imp_target: Mapping[str, torch.Tensor],
    imp_attacked: Sequence[Mapping[str, torch.Tensor] | None],
    k: int,
) -> dict[str, dict[int, str]]:
    """Role of every displayed channel, per layer (docs/FORMAT.md, Roles); the groups are disjoint.

    O = top-k original, T = top-k target; ``both`` = O∩T, ``original`` = O∖T, ``target`` = T∖O;
    ``exploited`` = union over strengths of the first k//2 channels (by attacked importance,
    descending) of top-k attacked ∖ O ∖ T. A strength given as ``None`` or with all-NaN
    importances (no successful image) contributes nothing. Ranking is deterministic: descending
    importance, ties broken by ascending channel index. (A dict view of :func:`role_codes`.)
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if set(imp_original) != set(imp_target):
        raise ValueError("original and target importances cover different layers")
    out: dict[str, dict[int, str]] = {}
    for layer, io in imp_original.items():
        it = imp_target[layer]
        if io.shape != it.shape:
            raise ValueError(f"{layer}: original/target importance shapes differ: {io.shape} vs {it.shape}")
        rows = []
        for att in imp_attacked:
            if att is None:
                continue
            if layer not in att:
                raise ValueError(f"attacked importances lack layer {layer}")
            if att[layer].shape != io.shape:
                raise ValueError(f"{layer}: attacked importance shape {att[layer].shape} != {io.shape}")
            rows.append(att[layer])
        att_m = torch.stack(rows) if rows else io.new_zeros((0, io.shape[0]))
        codes, _ = role_codes(io, it, att_m, k)
        out[layer] = {
            c: ROLES[r] for r, c in sorted((int(r), c) for c, r in enumerate(codes.tolist()) if r < NOT_SHOWN)
        }
    return out
