"""Neuron importance and roles (DESIGN §1): pure tensor functions plus one activation collector.

Importance of a channel for a condition is the median, over the condition's images, of the
per-image spatial max of the channel's post-ReLU activation. Roles split each layer's most
important channels into the four groups the viewer draws (original / both / target / exploited).
"""

from __future__ import annotations

from typing import Mapping, Sequence

import torch

from .models.base import ModelAdapter

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


@torch.no_grad()
def spatial_max_activations(
    adapter: ModelAdapter, images: torch.Tensor, batch_size: int = 64
) -> dict[str, torch.Tensor]:
    """Per-image spatial max of every mixed layer, {layer: [N,C]} on the CPU, float32.

    Runs the model in batches on the adapter's device so that only one batch of full activation
    maps is ever held; the [N,C] maxima are all importance needs.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if images.dim() != 4:
        raise ValueError(f"images must be [N,C,H,W], got shape {tuple(images.shape)}")
    device = adapter.device
    parts: dict[str, list[torch.Tensor]] = {l.name: [] for l in adapter.layers}
    for start in range(0, images.shape[0], batch_size):
        batch = images[start : start + batch_size].to(device)
        _, acts = adapter.forward_with_activations(batch)
        for name in parts:
            parts[name].append(spatial_max(acts[name]).float().cpu())
    return {
        l.name: torch.cat(parts[l.name]) if parts[l.name] else torch.empty(0, l.channels)
        for l in adapter.layers
    }


def ranked_channels(values: torch.Tensor) -> list[int]:
    """Channel indices by descending value; ties go to the lower channel (a stable sort)."""
    if values.dim() != 1:
        raise ValueError(f"expected a 1-D importance vector, got shape {tuple(values.shape)}")
    if torch.isnan(values).any():
        raise ValueError("cannot rank importances containing NaN")
    order = torch.sort(-values.detach().cpu().double(), stable=True).indices
    return order.tolist()


def top_k(values: torch.Tensor, k: int) -> list[int]:
    """The first ``k`` channels of :func:`ranked_channels` (all of them if fewer than k)."""
    return ranked_channels(values)[:k]


def roles(
    imp_original: Mapping[str, torch.Tensor],
    imp_target: Mapping[str, torch.Tensor],
    imp_attacked: Sequence[Mapping[str, torch.Tensor] | None],
    k: int,
) -> dict[str, dict[int, str]]:
    """Role of every displayed channel, per layer (DESIGN §1); the four groups are disjoint.

    O = top-k original, T = top-k target; ``both`` = O∩T, ``original`` = O∖T, ``target`` = T∖O;
    ``exploited`` = union over strengths of the first k//2 channels (by attacked importance,
    descending) of top-k attacked ∖ O ∖ T. A strength given as ``None`` or with all-NaN
    importances (no successful image) contributes nothing. Ranking is deterministic: descending
    importance, ties broken by ascending channel index.
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
        o, t = set(top_k(io, k)), set(top_k(it, k))
        layer_roles: dict[int, str] = {}
        for c in o & t:
            layer_roles[c] = "both"
        for c in o - t:
            layer_roles[c] = "original"
        for c in t - o:
            layer_roles[c] = "target"
        for att in imp_attacked:
            if att is None:
                continue
            if layer not in att:
                raise ValueError(f"attacked importances lack layer {layer}")
            ia = att[layer]
            if ia.shape != io.shape:
                raise ValueError(f"{layer}: attacked importance shape {ia.shape} != {io.shape}")
            if torch.isnan(ia).all():
                continue  # no successful image at this strength
            fresh = [c for c in top_k(ia, k) if c not in o and c not in t]
            for c in fresh[: k // 2]:
                layer_roles[c] = "exploited"
        out[layer] = dict(sorted(layer_roles.items(), key=lambda kv: (ROLES.index(kv[1]), kv[0])))
    return out
