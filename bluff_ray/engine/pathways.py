"""Activation pathways of one class pair: displayed neurons, their roles and their connections.

``summarize_pair`` turns the images of the pair's conditions (benign original, benign target,
successfully attacked at each strength) into a :class:`PairSummary`: importance of every neuron
per condition, roles (docs/FORMAT.md), the displayed neurons (union of roles per layer) and the
median exact influence of every edge between displayed neurons of consecutive layers.

Why it is written the way it is: on a GPU the attack of a pair takes well under a second, so the
summary must not make the device wait on the host. Everything stays on the device (medians of
all conditions in one sort per layer, roles as masks), and the host reads back twice per pair:
the displayed channels (to size the influence computation) and the final numbers.
``PairSummary`` keeps columns (numpy), not one Python object per edge.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from bluff_ray.engine.causal import CURVES, NULL_DRAWS, PATCH_BUDGET, PATCH_IMAGES
from bluff_ray.engine.importance import NOT_SHOWN, ROLES, role_codes, segment_median, spatial_max_activations
from bluff_ray.engine.influence import layer_influence
from bluff_ray.engine.models.base import ModelAdapter
from bluff_ray.engine.settings import check, setting


@dataclass(frozen=True)
class PathwayConfig:
    """How a pair is summarised.

    k: top-k per layer and condition for roles (exploited takes the first k//2 per strength).
    batch_size: images per forward pass / influence chunk on the device (speed only).
    min_edge_influence: an edge is kept if its influence exceeds this in at least one condition
        (FORMAT.md: 0.0, i.e. it transmits something through the ReLU somewhere).
    causal: run the activation-patching experiments (causal/ files, ``effect``, ``defused``).
    patch_images: patch at most this many held-out successful images per strength (the first ones;
        the other half selects the neurons).
    patch_budget: the patching FLOPs of a pair at most this share of its attack's FLOPs (the
        issue's bound, 15 %): it sets how many held-out images each strength patches.
    null_draws: seeded random sets per null control (and random orders per dose-response curve).
    curves: at which strengths the dose-response curves run (``causal.CURVES``; they cost most).
    """

    # Bounds: generous limits no real run needs (GoogLeNet's widest layer has 1,024 channels).
    k: int = setting(
        10, "top-k neurons per layer and condition for the roles (exploited takes k//2 per strength)", ge=2, le=1024
    )
    batch_size: int = setting(
        64, "images per forward pass / influence chunk when summarising a pair", ge=1, le=65_536, identity=False
    )
    min_edge_influence: float = setting(
        0.0, "store an edge when its influence exceeds this in some condition", allow_inf_nan=False
    )
    causal: bool = setting(True, "run the activation-patching experiments (causal/ files, node effect, pair defused)")
    patch_images: int = setting(
        PATCH_IMAGES,
        "patch at most this many held-out successful images per strength (the other half selects the neurons)",
        ge=1,
        le=10_000,
    )
    patch_budget: float = setting(
        PATCH_BUDGET,
        "the patching of a pair costs at most this share of its attack, in FLOPs: each strength patches "
        "the same number of held-out images, as many as fit (at least one)",
        gt=0,
        le=100,
        allow_inf_nan=False,
    )
    null_draws: int = setting(
        NULL_DRAWS, "random sets per null control and random dose-response order (patching)", ge=16, le=1024
    )
    curves: str = setting(
        "one",
        "strengths with dose-response curves (patching): 'one' (the one with the most held-out "
        "images), 'every' (each with held-out images; a curve strength costs about 3x one without, so "
        "the budget patches fewer images) or 'none'",
        choices=CURVES,
        what="pathways.curves",
    )

    def __post_init__(self) -> None:
        check(self)  # types, bounds and choices declared on the fields


@dataclass(frozen=True)
class NodeRecord:
    """One displayed neuron; ``importance_attacked`` has one value per strength (NaN: no success)."""

    layer: str
    channel: int
    role: str
    importance_original: float
    importance_target: float
    importance_attacked: tuple[float, ...]
    exploited_mask: int = 0

    @property
    def excitation(self) -> tuple[float, ...]:
        """importance@eps - importance(original) per strength; inhibition is its negative."""
        return tuple(a - self.importance_original for a in self.importance_attacked)


@dataclass(frozen=True)
class EdgeRecord:
    """A connection from a displayed neuron of one layer to one of the next (median influence)."""

    src_layer: str
    src_channel: int
    dst_layer: str
    dst_channel: int
    influence_original: float
    influence_target: float
    influence_attacked: tuple[float, ...]


@dataclass
class PairSummary:
    """One pair's displayed neurons and connections, as columns (FORMAT.md ``nodes``/``edges``;
    ``bluff_ray.results.rows`` turns them into the Arrow tables).

    ``node_values``: [n_nodes, 2 + S] (original, target, attacked per strength);
    ``edge_values``: [n_edges, 2 + S]; ``displayed``: the displayed channels of each layer, in
    node order.
    """

    original: int
    target: int
    strengths: tuple[float, ...]
    n_images: int
    n_success: tuple[int, ...]
    node_layer: list[str]
    node_channel: np.ndarray
    node_role: list[str]
    node_values: np.ndarray
    exploited_mask: np.ndarray
    edge_src_layer: list[str]
    edge_src_channel: np.ndarray
    edge_dst_layer: list[str]
    edge_dst_channel: np.ndarray
    edge_values: np.ndarray
    displayed: list[np.ndarray] = field(default_factory=list)

    @property
    def success_rate(self) -> tuple[float, ...]:
        return tuple(s / self.n_images if self.n_images else math.nan for s in self.n_success)

    @property
    def nodes(self) -> list[NodeRecord]:
        return [
            NodeRecord(l, int(c), r, float(v[0]), float(v[1]), tuple(float(x) for x in v[2:]), int(m))
            for l, c, r, v, m in zip(
                self.node_layer, self.node_channel, self.node_role, self.node_values, self.exploited_mask
            )
        ]

    @property
    def edges(self) -> list[EdgeRecord]:
        return [
            EdgeRecord(sl, int(sc), dl, int(dc), float(v[0]), float(v[1]), tuple(float(x) for x in v[2:]))
            for sl, sc, dl, dc, v in zip(
                self.edge_src_layer, self.edge_src_channel, self.edge_dst_layer, self.edge_dst_channel, self.edge_values
            )
        ]

    @property
    def excitation(self) -> np.ndarray:
        """[n_nodes, n_strengths] importance@eps - importance(original), aligned with ``nodes``."""
        return (self.node_values[:, 2:] - self.node_values[:, :1]).astype(np.float32)

    @property
    def n_exploited(self) -> int:
        return sum(r == "exploited" for r in self.node_role)


def importance_of(adapter: ModelAdapter, images: torch.Tensor, batch_size: int) -> dict[str, torch.Tensor]:
    """Median over ``images`` of the per-image spatial max, {layer: [C]} (NaN without images)."""
    return {
        k: segment_median(v, [v.shape[0]])[0] for k, v in spatial_max_activations(adapter, images, batch_size).items()
    }


@torch.no_grad()
def _influence_medians(
    adapter: ModelAdapter, images: torch.Tensor, sizes: Sequence[int], displayed: list[torch.Tensor], batch_size: int
) -> list[torch.Tensor]:
    """Per transition q (1..L-1): the median over each condition's images of the per-image influence
    between displayed channels, [n_conditions, len(dst), len(src)] on the device."""
    names = adapter.layer_names
    q_of = {name: q for q, name in enumerate(names[:-1], start=1)}  # block q-1's output feeds transition q
    _, per_image = adapter.activations(
        images,
        names[:-1],
        batch_size,
        reduce=lambda name, act: layer_influence(
            adapter, q_of[name], act, displayed[q_of[name] - 1], displayed[q_of[name]], batch_size=batch_size
        ),
    )
    return [segment_median(per_image[names[q - 1]], sizes) for q in range(1, len(names))]


def _as_batch(attacked: torch.Tensor | Sequence[torch.Tensor], like: torch.Tensor) -> torch.Tensor:
    if isinstance(attacked, torch.Tensor):
        return attacked
    parts = [a for a in attacked if a.shape[0]]
    return torch.cat(parts) if parts else like.new_empty((0, *like.shape[1:]))


def summarize_pair(
    adapter: ModelAdapter,
    original: int,
    target: int,
    original_images: torch.Tensor,
    target_images: torch.Tensor,
    attacked_images: torch.Tensor | Sequence[torch.Tensor],
    n_images: int,
    n_success: Sequence[int],
    strengths: Sequence[float],
    cfg: PathwayConfig = PathwayConfig(),
    importance_original: dict[str, torch.Tensor] | None = None,
    importance_target: dict[str, torch.Tensor] | None = None,
) -> PairSummary:
    """Importance -> roles -> displayed neurons -> median influence of their edges, per condition.

    ``attacked_images`` are the images of ``original`` successfully attacked into ``target``: a
    list with one tensor per strength, or one tensor holding them strength by strength
    (``n_success[s]`` rows for strength s). ``n_images`` is how many images were attacked.
    ``importance_original``/``importance_target`` ({layer: [C]}, e.g. from the benign stage) skip
    recomputing those conditions' importance. (The activation-patching experiments are a separate
    step, :mod:`bluff_ray.engine.causal`, run by ``compute.compute_unit`` after the summary.)
    """
    strengths = tuple(float(s) for s in strengths)
    n_success = tuple(int(s) for s in n_success)
    attacked = _checked_attacked(original_images, target_images, attacked_images, n_images, n_success, strengths)
    bs = cfg.batch_size
    imp_o = importance_original or importance_of(adapter, original_images, bs)
    imp_t = importance_target or importance_of(adapter, target_images, bs)
    nodes = _displayed_nodes(adapter, imp_o, imp_t, spatial_max_activations(adapter, attacked, bs), n_success, cfg.k)
    sizes = [original_images.shape[0], target_images.shape[0], *n_success]
    device = adapter.device
    conds = torch.cat([original_images.to(device), target_images.to(device), attacked.to(device)])
    meds = _influence_medians(adapter, conds, sizes, nodes.displayed, bs)
    keep_h, kept_vals = _kept_edges(meds, cfg.min_edge_influence)
    # host read 2: the numbers
    node_vals_h = nodes.values.double().cpu().numpy()
    mask_h = nodes.mask.cpu().numpy()
    kept_h = kept_vals.double().cpu().numpy() if kept_vals is not None else np.zeros((0, len(sizes)))
    src_l, src_c, dst_l, dst_c = _edge_keys(adapter.layer_names, nodes.displayed, keep_h)
    return PairSummary(
        original=int(original),
        target=int(target),
        strengths=strengths,
        n_images=int(n_images),
        n_success=n_success,
        node_layer=nodes.layer,
        node_channel=np.concatenate([d.numpy() for d in nodes.displayed]).astype(np.int32),
        node_role=nodes.role,
        node_values=node_vals_h,
        exploited_mask=mask_h.astype(np.int64),
        edge_src_layer=src_l,
        edge_src_channel=np.concatenate(src_c).astype(np.int32) if src_c else np.zeros(0, np.int32),
        edge_dst_layer=dst_l,
        edge_dst_channel=np.concatenate(dst_c).astype(np.int32) if dst_c else np.zeros(0, np.int32),
        edge_values=kept_h,
        displayed=[d.numpy() for d in nodes.displayed],
    )


def _checked_attacked(
    original_images: torch.Tensor,
    target_images: torch.Tensor,
    attacked_images: torch.Tensor | Sequence[torch.Tensor],
    n_images: int,
    n_success: tuple[int, ...],
    strengths: tuple[float, ...],
) -> torch.Tensor:
    """The attacked images as one batch, strength by strength, after checking every count."""
    if isinstance(attacked_images, torch.Tensor):
        n_sets = len(n_success)
    else:
        n_sets = len(attacked_images)
        for s, (imgs, ns) in enumerate(zip(attacked_images, n_success)):
            if imgs.shape[0] != ns:
                raise ValueError(f"strength {s}: {imgs.shape[0]} attacked images but n_success={ns}")
    if not (n_sets == len(strengths) == len(n_success)):
        raise ValueError(
            f"need one attacked image set and one success count per strength: got {n_sets} "
            f"image sets, {len(n_success)} counts, {len(strengths)} strengths"
        )
    for name, imgs in (("original", original_images), ("target", target_images)):
        if imgs.dim() != 4 or imgs.shape[0] == 0:
            raise ValueError(f"{name}_images must be a non-empty [N,C,H,W] tensor, got shape {tuple(imgs.shape)}")
    for s, ns in enumerate(n_success):
        if ns > n_images:
            raise ValueError(f"strength {strengths[s]}: n_success={ns} exceeds n_images={n_images}")
    attacked = _as_batch(attacked_images, original_images)
    if attacked.shape[0] != sum(n_success):
        raise ValueError(f"{attacked.shape[0]} attacked images but n_success adds up to {sum(n_success)}")
    return attacked


@dataclass
class _Nodes:
    """The displayed neurons of a pair: per layer the channels (role order, then channel), and per
    node its layer, role, importance per condition [2 + S] and exploited-at-strength mask (device)."""

    displayed: list[torch.Tensor]
    layer: list[str]
    role: list[str]
    values: torch.Tensor
    mask: torch.Tensor


def _displayed_nodes(
    adapter: ModelAdapter,
    imp_o: dict[str, torch.Tensor],
    imp_t: dict[str, torch.Tensor],
    att_max: dict[str, torch.Tensor],
    n_success: tuple[int, ...],
    k: int,
) -> _Nodes:
    """Importance per condition -> roles -> the displayed neurons (host read 1: who is displayed)."""
    device, names = adapter.device, adapter.layer_names
    codes, masks, values = [], [], []
    for layer in names:
        io, it = imp_o[layer].to(device), imp_t[layer].to(device)
        ia = segment_median(att_max[layer], n_success).to(io.dtype)  # [S, C]
        c, m = role_codes(io, it, ia, k)
        codes.append(c)
        masks.append(m)
        values.append(torch.cat([io[:, None], it[:, None], ia.T], dim=1))  # [C, 2 + S]
    codes_h = torch.cat(codes).cpu().numpy()
    displayed: list[torch.Tensor] = []
    node_layer: list[str] = []
    node_role: list[str] = []
    sel = []
    offset = 0
    for layer, info in zip(names, adapter.layers):
        lc = codes_h[offset : offset + info.channels]
        ch = np.flatnonzero(lc < NOT_SHOWN)
        ch = ch[np.lexsort((ch, lc[ch]))]  # role order, then channel
        displayed.append(torch.as_tensor(ch, dtype=torch.long))
        node_layer += [layer] * len(ch)
        node_role += [ROLES[r] for r in lc[ch]]
        sel.append(torch.as_tensor(ch + offset, dtype=torch.long, device=device))
        offset += info.channels
    all_sel = torch.cat(sel)
    return _Nodes(displayed, node_layer, node_role, torch.cat(values)[all_sel], torch.cat(masks)[all_sel])


def _kept_edges(meds: Sequence[torch.Tensor], min_influence: float) -> tuple[np.ndarray, torch.Tensor | None]:
    """Which displayed edges to keep (host mask, per transition dst-major) and their medians [E, conditions]."""
    keeps, edge_vals = [], []
    for m in meds:
        stacked = m.permute(1, 2, 0)  # [dst, src, conditions]
        keeps.append((stacked > min_influence).any(dim=-1).flatten())  # NaN compares False
        edge_vals.append(stacked.reshape(-1, stacked.shape[-1]))
    if not keeps:
        return np.zeros(0, bool), None
    keep_h = torch.cat(keeps).cpu().numpy()
    return keep_h, torch.cat(edge_vals)[torch.as_tensor(keep_h, device=edge_vals[0].device)]


def _edge_keys(
    names: Sequence[str], displayed: Sequence[torch.Tensor], keep_h: np.ndarray
) -> tuple[list[str], list[np.ndarray], list[str], list[np.ndarray]]:
    """Source/destination layer and channel of each kept edge, destination-major in node order."""
    src_l: list[str] = []
    dst_l: list[str] = []
    src_c: list[np.ndarray] = []
    dst_c: list[np.ndarray] = []
    pos = 0
    for q in range(1, len(names)):
        src, dst = displayed[q - 1].numpy(), displayed[q].numpy()
        k = keep_h[pos : pos + len(src) * len(dst)].reshape(len(dst), len(src))
        pos += len(src) * len(dst)
        d_idx, s_idx = np.nonzero(k)  # row-major: destination, then source, in node order
        src_l += [names[q - 1]] * len(d_idx)
        dst_l += [names[q]] * len(d_idx)
        src_c.append(src[s_idx])
        dst_c.append(dst[d_idx])
    return src_l, src_c, dst_l, dst_c
