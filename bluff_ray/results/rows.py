"""The engine's typed records as the FORMAT.md Arrow tables (``pairs``, ``nodes``, ``edges``, ``causal``).

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
KINDS = ("pairs", "nodes", "edges", "causal")


@dataclass
class UnitTables:
    """One unit's rows of the partitioned tables (one row group per target, target order)."""

    pairs: pa.Table
    nodes: pa.Table
    edges: pa.Table
    causal: pa.Table
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


def pairs_table(s: PairSummary, defused: tuple[float, ...] = (), row_group: int = ROW_GROUP_UNSET,
                part: int = ROW_GROUP_UNSET) -> pa.Table:
    d = list(defused) if defused else [math.nan] * len(s.strengths)
    return pa.table({
        "target": [s.target], "n_images": [s.n_images], "n_success": [list(s.n_success)],
        "success_rate": [list(s.success_rate)], "n_nodes": [len(s.node_layer)],
        "n_edges": [len(s.edge_src_layer)], "n_exploited": [s.n_exploited], "defused": [d],
        "row_group": [row_group], "part": [part],
    }, schema=layout.PAIRS_SCHEMA)


def nodes_table(s: PairSummary, effect: np.ndarray | None = None) -> pa.Table:
    n, k = len(s.node_layer), len(s.strengths)
    nv = s.node_values.astype(np.float32) if n else np.zeros((0, 2 + k), np.float32)
    if effect is None:
        effect = np.full((n, k), np.nan, np.float32)
    return pa.table({
        "target": pa.array(np.full(n, s.target, np.int32)),
        "layer": pa.array(s.node_layer, pa.string()),
        "channel": pa.array(s.node_channel.astype(np.int32)),
        "role": pa.array(s.node_role, pa.string()),
        "importance_original": pa.array(nv[:, 0]),
        "importance_target": pa.array(nv[:, 1]),
        "importance_attacked": list_column(nv[:, 2:]),
        "exploited_mask": pa.array(s.exploited_mask.astype(np.int32)),
        "effect": list_column(np.asarray(effect, np.float32).reshape(n, k)),
    }, schema=layout.NODES_SCHEMA)


def edges_table(s: PairSummary) -> pa.Table:
    e, k = len(s.edge_src_layer), len(s.strengths)
    ev = s.edge_values.astype(np.float32) if e else np.zeros((0, 2 + k), np.float32)
    return pa.table({
        "target": pa.array(np.full(e, s.target, np.int32)),
        "src_layer": pa.array(s.edge_src_layer, pa.string()),
        "src_channel": pa.array(s.edge_src_channel.astype(np.int32)),
        "dst_layer": pa.array(s.edge_dst_layer, pa.string()),
        "dst_channel": pa.array(s.edge_dst_channel.astype(np.int32)),
        "influence_original": pa.array(ev[:, 0]),
        "influence_target": pa.array(ev[:, 1]),
        "influence_attacked": list_column(ev[:, 2:]),
    }, schema=layout.EDGES_SCHEMA)


def causal_table(rows: CausalRows | None) -> pa.Table:
    if rows is None:
        return layout.CAUSAL_SCHEMA.empty_table()
    n = len(rows.layer)
    return pa.table({"target": [rows.target] * n, "layer": rows.layer, "n_exploited": rows.n_exploited,
                     "n_random": rows.n_random, "n_both": rows.n_both,
                     "defused_exploited": rows.defused_exploited, "defused_random": rows.defused_random,
                     "defused_both": rows.defused_both}, schema=layout.CAUSAL_SCHEMA)


def pair_tables(rec: PairRecords, row_group: int = ROW_GROUP_UNSET, part: int = ROW_GROUP_UNSET) -> dict[str, pa.Table]:
    """One pair's rows of every table (``row_group``/``part`` as the pipeline will write them)."""
    p = rec.patch
    return {"pairs": pairs_table(rec.summary, p.defused if p else (), row_group, part),
            "nodes": nodes_table(rec.summary, p.effect if p else None),
            "edges": edges_table(rec.summary),
            "causal": causal_table(p.table if p else None)}


def unit_tables(unit: UnitRecords) -> UnitTables:
    """A unit's records as its tables: row group i of every file holds target i."""
    parts = [pair_tables(r, row_group=i, part=unit.part) for i, r in enumerate(unit.pairs)]
    schemas = {"pairs": layout.PAIRS_SCHEMA, "nodes": layout.NODES_SCHEMA, "edges": layout.EDGES_SCHEMA,
               "causal": layout.CAUSAL_SCHEMA}
    cat = {k: pa.concat_tables([p[k] for p in parts]) if parts else schemas[k].empty_table() for k in KINDS}
    return UnitTables(**cat, targets=unit.targets, samples=unit.samples, timings=dict(unit.timings))
