"""The engine's typed records as the FORMAT.md Arrow tables (``pairs``, ``nodes``, ``edges``, ``causal``,
``causal_curve``).

Why a module of its own: the engine (``bluff_ray.engine``) is pure tensor code and knows nothing
of the storage format; this is the one place where its column records meet ``layout``'s schemas.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from bluff_ray.engine.causal import CausalRows
from bluff_ray.engine.compute import PairRecords, UnitRecords
from bluff_ray.engine.pathways import PairSummary
from bluff_ray.results import layout

#: ``row_group``/``part`` of a single pair's ``pairs`` row before the pipeline knows where it goes.
ROW_GROUP_UNSET = -1
KINDS = ("pairs", "nodes", "edges", "causal", "causal_curve")


@dataclass
class UnitTables:
    """One unit's rows of the partitioned tables (one row group per target, target order)."""

    pairs: pa.Table
    nodes: pa.Table
    edges: pa.Table
    causal: pa.Table
    causal_curve: pa.Table
    targets: tuple[int, ...]
    samples: int
    timings: dict[str, float] = field(default_factory=dict)

    def tables(self) -> dict[str, pa.Table]:
        return {k: getattr(self, k) for k in KINDS}


def list_column(m: np.ndarray) -> pa.Array:
    """[n, s] float32 -> list<float32> with n lists of s values (one buffer, no Python loop)."""
    m = np.ascontiguousarray(m, dtype=np.float32)
    n, s = m.shape
    offsets = pa.array(np.arange(0, (n + 1) * s, s, dtype=np.int32) if n else np.zeros(1, np.int32))
    return pa.ListArray.from_arrays(offsets, pa.array(m.reshape(-1)))


def pairs_table(
    s: PairSummary, defused: tuple[float, ...] = (), row_group: int = ROW_GROUP_UNSET, part: int = ROW_GROUP_UNSET
) -> pa.Table:
    d = list(defused) if defused else [math.nan] * len(s.strengths)
    return pa.table(
        {
            "target": [s.target],
            "n_images": [s.n_images],
            "n_success": [list(s.n_success)],
            "success_rate": [list(s.success_rate)],
            "n_nodes": [len(s.node_layer)],
            "n_edges": [len(s.edge_src_layer)],
            "n_exploited": [s.n_exploited],
            "defused": [d],
            "row_group": [row_group],
            "part": [part],
        },
        schema=layout.PAIRS_SCHEMA,
    )


def nodes_table(s: PairSummary, effect: np.ndarray | None = None) -> pa.Table:
    n, k = len(s.node_layer), len(s.strengths)
    nv = s.node_values.astype(np.float32) if n else np.zeros((0, 2 + k), np.float32)
    if effect is None:
        effect = np.full((n, k), np.nan, np.float32)
    return pa.table(
        {
            "target": pa.array(np.full(n, s.target, np.int32)),
            "layer": pa.array(s.node_layer, pa.string()),
            "channel": pa.array(s.node_channel.astype(np.int32)),
            "role": pa.array(s.node_role, pa.string()),
            "importance_original": pa.array(nv[:, 0]),
            "importance_target": pa.array(nv[:, 1]),
            "importance_attacked": list_column(nv[:, 2:]),
            "exploited_mask": pa.array(s.exploited_mask.astype(np.int32)),
            "effect": list_column(np.asarray(effect, np.float32).reshape(n, k)),
        },
        schema=layout.NODES_SCHEMA,
    )


def edges_table(s: PairSummary) -> pa.Table:
    """Edges with one influence column per condition, rounded to ``layout.INFLUENCE_MANTISSA_BITS``."""
    e, k = len(s.edge_src_layer), len(s.strengths)
    ev = layout.round_influence(s.edge_values if e else np.zeros((0, 2 + k), np.float32))
    names = ["influence_original", "influence_target"] + [layout.influence_column(i) for i in range(k)]
    return pa.table(
        {
            "target": pa.array(np.full(e, s.target, np.int32)),
            "src_layer": pa.array(s.edge_src_layer, pa.string()),
            "src_channel": pa.array(s.edge_src_channel.astype(np.int32)),
            "dst_layer": pa.array(s.edge_dst_layer, pa.string()),
            "dst_channel": pa.array(s.edge_dst_channel.astype(np.int32)),
            **{n: pa.array(ev[:, j]) for j, n in enumerate(names)},
        },
        schema=layout.edges_schema(k),
    )


#: Engine column -> (list column, field) of the ``causal`` table, in layout's field order.
_CAUSAL_LISTS = {
    "recovery": ("n_images", "recovery_mean", "recovery_median", "restored", "defused", "ld_clean", "ld_adv"),
    "null_stats": ("null_mean", "null_sd", "null_q05", "null_q95", "null_percentile", "null_p", "draws"),
    "matched": ("matched_mean", "matched_q95", "matched_percentile", "matched_p"),
    "noising": ("noising", "noising_null_mean", "noising_null_q95", "noising_percentile", "noising_p"),
}


def causal_table(rows: CausalRows | None) -> pa.Table:
    """The pair's ``causal`` rows: one per (strength, layer or "all", set); the statistics packed
    into the list columns in the order of ``layout.CAUSAL_*_FIELDS``."""
    if rows is None or not rows.rows:
        return layout.CAUSAL_SCHEMA.empty_table()
    r = rows.rows
    n = len(r["layer"])
    cols = {
        "target": [rows.target] * n,
        "strength": r["strength"],
        "layer": r["layer"],
        "set": r["set"],
        "n_neurons": r["n_neurons"],
    }
    for name, fields in _CAUSAL_LISTS.items():
        cols[name] = list_column(np.array([r[f] for f in fields], np.float64).T.reshape(n, len(fields)))
    return pa.table(cols, schema=layout.CAUSAL_SCHEMA)


def causal_curve_table(rows: CausalRows | None) -> pa.Table:
    """The pair's ``causal_curve`` rows: one per (strength, layer, order), k and R as lists."""
    if rows is None or not rows.curve:
        return layout.CAUSAL_CURVE_SCHEMA.empty_table()
    c = rows.curve
    n = len(c["layer"])
    return pa.table(
        {
            "target": [rows.target] * n,
            "strength": c["strength"],
            "layer": c["layer"],
            "order": c["order"],
            "k": c["k"],
            "recovery": c["recovery"],
            "q05": c["q05"],
            "q95": c["q95"],
            "summary": [[a, b] for a, b in zip(c["auc"], c["k50"])],
        },
        schema=layout.CAUSAL_CURVE_SCHEMA,
    )


def node_effect(s: PairSummary, effect: dict[tuple[str, int], np.ndarray]) -> np.ndarray:
    """[n_nodes, S] single-neuron recovery of the displayed nodes (NaN where not measured)."""
    out = np.full((len(s.node_layer), len(s.strengths)), np.nan, np.float32)
    for i, key in enumerate(zip(s.node_layer, s.node_channel.tolist())):
        if key in effect:
            out[i] = effect[key]
    return out


def pair_tables(rec: PairRecords, row_group: int = ROW_GROUP_UNSET, part: int = ROW_GROUP_UNSET) -> dict[str, pa.Table]:
    """One pair's rows of every table (``row_group``/``part`` as the pipeline will write them)."""
    p = rec.patch
    return {
        "pairs": pairs_table(rec.summary, p.defused if p else (), row_group, part),
        "nodes": nodes_table(rec.summary, node_effect(rec.summary, p.effect) if p else None),
        "edges": edges_table(rec.summary),
        "causal": causal_table(p.table if p else None),
        "causal_curve": causal_curve_table(p.table if p else None),
    }


def unit_tables(unit: UnitRecords) -> UnitTables:
    """A unit's records as its tables: row group i of every file holds target i."""
    parts = [pair_tables(r, row_group=i, part=unit.part) for i, r in enumerate(unit.pairs)]
    k = len(unit.pairs[0].summary.strengths) if unit.pairs else 0
    schemas = {
        "pairs": layout.PAIRS_SCHEMA,
        "nodes": layout.NODES_SCHEMA,
        "edges": layout.edges_schema(k),
        "causal": layout.CAUSAL_SCHEMA,
        "causal_curve": layout.CAUSAL_CURVE_SCHEMA,
    }
    cat = {k: pa.concat_tables([p[k] for p in parts]) if parts else schemas[k].empty_table() for k in KINDS}
    return UnitTables(**cat, targets=unit.targets, samples=unit.samples, timings=dict(unit.timings))
