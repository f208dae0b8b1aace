"""Activation pathways of one class pair: displayed neurons, their roles and their connections.

``summarize_pair`` turns the images of the pair's conditions (benign original, benign target,
successfully attacked at each strength) into a :class:`PairSummary`: importance of every neuron
per condition, roles (DESIGN §1), the displayed neurons (union of roles per layer) and the median
exact influence of every edge between displayed neurons of consecutive layers. ``to_arrow`` gives
the pair's rows of the ``pairs``, ``nodes`` and ``edges`` tables of docs/FORMAT.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import pyarrow as pa
import torch

from .attack import AttackConfig, attack_grid
from .importance import median, roles, spatial_max_activations
from .influence import layer_influence
from .models.base import ModelAdapter

PAIRS_SCHEMA = pa.schema(
    [
        ("target", pa.int32()),
        ("n_images", pa.int32()),
        ("n_success", pa.list_(pa.int32())),
        ("success_rate", pa.list_(pa.float32())),
        ("n_nodes", pa.int32()),
        ("n_edges", pa.int32()),
        ("n_exploited", pa.int32()),
        ("row_group", pa.int32()),
    ]
)
NODES_SCHEMA = pa.schema(
    [
        ("target", pa.int32()),
        ("layer", pa.string()),
        ("channel", pa.int32()),
        ("role", pa.string()),
        ("importance_original", pa.float32()),
        ("importance_target", pa.float32()),
        ("importance_attacked", pa.list_(pa.float32())),
    ]
)
EDGES_SCHEMA = pa.schema(
    [
        ("target", pa.int32()),
        ("src_layer", pa.string()),
        ("src_channel", pa.int32()),
        ("dst_layer", pa.string()),
        ("dst_channel", pa.int32()),
        ("influence_original", pa.float32()),
        ("influence_target", pa.float32()),
        ("influence_attacked", pa.list_(pa.float32())),
    ]
)

#: ``row_group`` in a single pair's ``pairs`` row: unknown until the pipeline writes the
#: partition and knows the pair's row-group index in the nodes/edges files.
ROW_GROUP_UNSET = -1


@dataclass(frozen=True)
class PathwayConfig:
    """How a pair is summarised.

    k: top-k per layer and condition for roles (exploited takes the first k//2 per strength).
    batch_size: images per forward pass / influence chunk on the device.
    min_edge_influence: an edge is kept if its influence exceeds this in at least one condition
        (FORMAT.md: 0.0, i.e. it transmits something through the ReLU somewhere).
    """

    k: int = 10
    batch_size: int = 64
    min_edge_influence: float = 0.0

    def __post_init__(self) -> None:
        if not isinstance(self.k, int) or self.k < 2:
            raise ValueError(f"k must be an integer >= 2 (exploited takes k//2 per strength), got {self.k!r}")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"batch_size must be an integer >= 1, got {self.batch_size!r}")
        if not math.isfinite(self.min_edge_influence):
            raise ValueError(f"min_edge_influence must be finite, got {self.min_edge_influence!r}")


@dataclass(frozen=True)
class NodeRecord:
    """One displayed neuron; ``importance_attacked`` has one value per strength (NaN: no success)."""

    layer: str
    channel: int
    role: str
    importance_original: float
    importance_target: float
    importance_attacked: tuple[float, ...]

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
    """Everything stored for one (original -> target) pair.

    ``nodes`` are in layer order (input to output), within a layer by role (original, both,
    target, exploited) then channel; ``edges`` by destination layer, then destination neuron, then
    source neuron, both in node order.
    """

    original: int
    target: int
    strengths: tuple[float, ...]
    n_images: int
    n_success: tuple[int, ...]
    nodes: list[NodeRecord] = field(default_factory=list)
    edges: list[EdgeRecord] = field(default_factory=list)

    @property
    def success_rate(self) -> tuple[float, ...]:
        return tuple(s / self.n_images if self.n_images else math.nan for s in self.n_success)

    @property
    def excitation(self) -> np.ndarray:
        """[n_nodes, n_strengths] importance@eps - importance(original), aligned with ``nodes``."""
        if not self.nodes:
            return np.zeros((0, len(self.strengths)), dtype=np.float32)
        return np.array([n.excitation for n in self.nodes], dtype=np.float32).reshape(len(self.nodes), -1)

    @property
    def n_exploited(self) -> int:
        return sum(n.role == "exploited" for n in self.nodes)

    def to_arrow(self) -> dict[str, pa.Table]:
        """This pair's rows of the ``pairs``, ``nodes`` and ``edges`` tables (docs/FORMAT.md).

        Partition columns (``original``) are not included, and ``row_group`` is
        ``ROW_GROUP_UNSET``: the pipeline sets both when it writes the partition.
        """
        t = self.target
        pairs = pa.table(
            {
                "target": [t],
                "n_images": [self.n_images],
                "n_success": [list(self.n_success)],
                "success_rate": [list(self.success_rate)],
                "n_nodes": [len(self.nodes)],
                "n_edges": [len(self.edges)],
                "n_exploited": [self.n_exploited],
                "row_group": [ROW_GROUP_UNSET],
            },
            schema=PAIRS_SCHEMA,
        )
        nodes = pa.table(
            {
                "target": [t] * len(self.nodes),
                "layer": [n.layer for n in self.nodes],
                "channel": [n.channel for n in self.nodes],
                "role": [n.role for n in self.nodes],
                "importance_original": [n.importance_original for n in self.nodes],
                "importance_target": [n.importance_target for n in self.nodes],
                "importance_attacked": [list(n.importance_attacked) for n in self.nodes],
            },
            schema=NODES_SCHEMA,
        )
        edges = pa.table(
            {
                "target": [t] * len(self.edges),
                "src_layer": [e.src_layer for e in self.edges],
                "src_channel": [e.src_channel for e in self.edges],
                "dst_layer": [e.dst_layer for e in self.edges],
                "dst_channel": [e.dst_channel for e in self.edges],
                "influence_original": [e.influence_original for e in self.edges],
                "influence_target": [e.influence_target for e in self.edges],
                "influence_attacked": [list(e.influence_attacked) for e in self.edges],
            },
            schema=EDGES_SCHEMA,
        )
        return {"pairs": pairs, "nodes": nodes, "edges": edges}


@torch.no_grad()
def condition_influence(
    adapter: ModelAdapter,
    images: torch.Tensor,
    displayed: dict[str, torch.Tensor],
    batch_size: int,
) -> list[torch.Tensor]:
    """Median over ``images`` of the influence between displayed neurons, per layer transition.

    Entry q-1 is [len(displayed[layer q]), len(displayed[layer q-1])] for q = 1..L-1, on the CPU;
    all NaN when there are no images (a strength without a successful attack).
    """
    names = adapter.layer_names
    per_image: list[list[torch.Tensor]] = [[] for _ in names[1:]]
    device = adapter.device
    for start in range(0, images.shape[0], batch_size):
        _, acts = adapter.forward_with_activations(images[start : start + batch_size].to(device))
        for q in range(1, len(names)):
            src, dst = displayed[names[q - 1]], displayed[names[q]]
            r = layer_influence(adapter, q, acts[names[q - 1]], src, dst, batch_size=batch_size)
            per_image[q - 1].append(r.float().cpu())
    out = []
    for q in range(1, len(names)):
        shape = (len(displayed[names[q]]), len(displayed[names[q - 1]]))
        stacked = torch.cat(per_image[q - 1]) if per_image[q - 1] else torch.empty(0, *shape)
        out.append(median(stacked, dim=0))
    return out


def summarize_pair(
    adapter: ModelAdapter,
    original: int,
    target: int,
    original_images: torch.Tensor,
    target_images: torch.Tensor,
    attacked_images: Sequence[torch.Tensor],
    n_images: int,
    n_success: Sequence[int],
    strengths: Sequence[float],
    cfg: PathwayConfig = PathwayConfig(),
) -> PairSummary:
    """Importance -> roles -> displayed neurons -> median influence of their edges, per condition.

    ``attacked_images[s]`` are the images of ``original`` successfully attacked into ``target``
    at ``strengths[s]`` (possibly none: that condition's values are NaN). ``n_images`` is how
    many images were attacked and ``n_success[s]`` how many succeeded (= len(attacked_images[s])).
    Activations are computed twice per condition (once for importance, once for influence) so
    that only one batch of activation maps is held at a time.
    """
    strengths = tuple(float(s) for s in strengths)
    n_success = tuple(int(s) for s in n_success)
    if not (len(attacked_images) == len(strengths) == len(n_success)):
        raise ValueError(
            f"need one attacked image set and one success count per strength: got {len(attacked_images)} "
            f"image sets, {len(n_success)} counts, {len(strengths)} strengths"
        )
    for name, imgs in (("original", original_images), ("target", target_images)):
        if imgs.dim() != 4 or imgs.shape[0] == 0:
            raise ValueError(f"{name}_images must be a non-empty [N,C,H,W] tensor, got shape {tuple(imgs.shape)}")
    for s, (imgs, ns) in enumerate(zip(attacked_images, n_success)):
        if imgs.shape[0] != ns:
            raise ValueError(f"strength {strengths[s]}: {imgs.shape[0]} attacked images but n_success={ns}")
        if ns > n_images:
            raise ValueError(f"strength {strengths[s]}: n_success={ns} exceeds n_images={n_images}")

    conditions = [original_images, target_images, *attacked_images]
    bs = cfg.batch_size
    imps = []
    for imgs in conditions:
        maxes = spatial_max_activations(adapter, imgs, bs)
        imps.append({layer: median(m, dim=0) for layer, m in maxes.items()})
    attacked_imps = [imp if imgs.shape[0] else None for imp, imgs in zip(imps[2:], attacked_images)]
    role_map = roles(imps[0], imps[1], attacked_imps, cfg.k)
    displayed = {layer: torch.tensor(list(r), dtype=torch.long) for layer, r in role_map.items()}

    nodes = []
    for layer in adapter.layer_names:
        ch = displayed[layer]
        vals = torch.stack([imp[layer][ch] for imp in imps], dim=1).tolist()  # [n_nodes, n_conditions]
        for c, v in zip(ch.tolist(), vals):
            nodes.append(NodeRecord(layer, c, role_map[layer][c], v[0], v[1], tuple(v[2:])))

    infl = [condition_influence(adapter, imgs, displayed, bs) for imgs in conditions]
    names = adapter.layer_names
    edges = []
    for q in range(1, len(names)):
        stacked = torch.stack([cond[q - 1] for cond in infl], dim=-1)  # [dst, src, n_conditions]
        keep = (stacked > cfg.min_edge_influence).any(dim=-1)  # NaN compares False: empty conditions never keep
        src_ch, dst_ch = displayed[names[q - 1]].tolist(), displayed[names[q]].tolist()
        for (d, s), v in zip(keep.nonzero().tolist(), stacked[keep].tolist()):
            edges.append(EdgeRecord(names[q - 1], src_ch[s], names[q], dst_ch[d], v[0], v[1], tuple(v[2:])))
    return PairSummary(original, target, strengths, int(n_images), n_success, nodes, edges)


def compute_pair(
    adapter: ModelAdapter,
    original: int,
    target: int,
    original_images: torch.Tensor,
    target_images: torch.Tensor,
    attack_cfg: AttackConfig,
    pathway_cfg: PathwayConfig = PathwayConfig(),
    generator: torch.Generator | None = None,
    attack_batch_size: int = 512,
) -> PairSummary:
    """Attack ``original_images`` toward ``target`` at every strength, then :func:`summarize_pair`.

    Only the successfully attacked images of each strength form its ``attacked@eps`` condition.
    """
    grid = attack_grid(adapter.attack_model(), original_images.to(adapter.device), [target], attack_cfg,
                       batch_size=attack_batch_size, generator=generator)
    adv, success = grid.adv[0], grid.success[0]  # [S,N,C,H,W], [S,N]
    attacked = [adv[s][success[s].to(adv.device)] for s in range(adv.shape[0])]
    return summarize_pair(
        adapter,
        original,
        target,
        original_images,
        target_images,
        attacked,
        n_images=original_images.shape[0],
        n_success=[int(v) for v in success.sum(dim=1).tolist()],
        strengths=attack_cfg.strengths,
        cfg=pathway_cfg,
    )
