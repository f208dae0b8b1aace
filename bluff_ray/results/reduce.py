"""The reduce: everything written once per run from all finished units (docs/FORMAT.md).

``Aggregate`` is fed one work unit at a time (``add_unit``: the unit's pair rows and the few node
columns the atlas needs), either straight from a worker's return value or, on resume, from the
unit's files, read in parallel rounds. It keeps only what the global files need: the pair rows
(≈100 bytes per pair, ≈100 MB at 999,000 pairs) and per-neuron counters (neurons x classes), never
the nodes or edges themselves. ``write_global`` then writes the per-original pair index, the
rankings, the overview matrix, the atlas and classes.parquet.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from bluff_ray.results import layout

ROLE_EXPLOITED = "exploited"
TOP_CLASSES = 5
#: Bytes per data page of a ranking file (about 1,000 rows of one column): the explorer fetches
#: the pages that hold its rows, so a page of the explorer costs a few KB per column.
RANKING_PAGE_BYTES = 4096


@dataclass
class LayerSpec:
    name: str
    channels: int


def layer_offsets(layers) -> dict[str, int]:
    """Where each layer's channels start in the global neuron index (layers in model order): the
    index of (layer, channel) is ``offsets[layer] + channel``. ``layers``: LayerSpec or LayerInfo."""
    out, total = {}, 0
    for l in layers:
        out[l.name] = total
        total += l.channels
    return out


def _list_matrix(col: pa.ChunkedArray | pa.Array, width: int, dtype) -> np.ndarray:
    """A list<number> column of fixed length ``width`` as an [n, width] array (nulls -> NaN)."""
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    n = len(arr)
    if n == 0:
        return np.zeros((0, width), dtype=dtype)
    flat = arr.flatten().to_numpy(zero_copy_only=False).astype(dtype)
    if flat.size != n * width:
        raise ValueError(f"expected lists of {width} values, got {flat.size} values for {n} rows")
    return flat.reshape(n, width)


@dataclass
class Aggregate:
    """Pair rows and per-neuron counters over every finished unit."""

    class_names: Sequence[str]
    layers: Sequence[LayerSpec]
    n_strengths: int
    _pairs: dict[int, list[pa.Table]] = field(default_factory=dict, repr=False)
    _units: set = field(default_factory=set, repr=False)
    _cache: dict | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.n_classes = len(self.class_names)
        self.offsets = layer_offsets(self.layers)
        total = self.n_neurons = sum(l.channels for l in self.layers)
        s = self.n_strengths
        self.displayed = np.zeros(total, np.int64)
        self.exploited_any = np.zeros(total, np.int64)
        self.exploited = np.zeros((total, s), np.int64)
        self.effect_sum = np.zeros((total, s), np.float64)
        self.effect_n = np.zeros((total, s), np.int64)
        self.tested_n = np.zeros(total, np.int64)
        self.tested_recovery = np.zeros(total, np.float64)
        self.tested_percentile = np.zeros(total, np.float64)
        self.by_original = np.zeros((total, self.n_classes), np.int32)
        self.by_target = np.zeros((total, self.n_classes), np.int32)

    # --- feeding ----------------------------------------------------------------------------------
    def add_unit(
        self, original: int, part: int, pairs: pa.Table, nodes: pa.Table | None = None, atlas: UnitAtlas | None = None
    ) -> None:
        """One finished unit: its ``pairs/`` rows and, for the atlas, either its nodes (columns
        ``target, layer, channel, role, exploited_mask, effect``) or their compact ``UnitAtlas``.
        A unit added twice counts once."""
        key = (int(original), int(part))
        if key in self._units:
            return
        self._units.add(key)
        self._cache = None
        parts = self._pairs.setdefault(int(original), [])
        parts.append(pairs.select(layout.PAIRS_SCHEMA.names).cast(layout.PAIRS_SCHEMA))
        if len(parts) >= 16:  # one contiguous table per original: a table per unit costs ~1 KB a pair
            self._pairs[int(original)] = [pa.concat_tables(parts).combine_chunks()]
        if atlas is None and nodes is not None:
            atlas = unit_atlas(nodes, self.offsets, self.n_strengths)
        if atlas is None:
            return
        np.add.at(self.displayed, atlas.displayed.column("neuron").to_numpy().astype(np.int64), 1)
        self._add_tested(atlas)
        ex = atlas.exploited
        if ex.num_rows == 0:
            return
        ei = ex.column("neuron").to_numpy().astype(np.int64)
        targets = ex.column("target").to_numpy()
        np.add.at(self.exploited_any, ei, 1)
        np.add.at(self.by_original, (ei, np.full(len(ei), int(original))), 1)
        np.add.at(self.by_target, (ei, targets), 1)
        mask = ex.column("exploited_mask").to_numpy().astype(np.int64)
        bits = (mask[:, None] >> np.arange(self.n_strengths)[None, :]) & 1
        np.add.at(self.exploited, ei, bits)

    def _add_tested(self, atlas: UnitAtlas) -> None:
        """Measured single-neuron effects (any displayed node with a finite ``effect``) and, from the
        ``causal`` rows ``neuron:<channel>``, each tested neuron's recovery and null percentile."""
        if atlas.effects is not None and atlas.effects.num_rows:
            ei = atlas.effects.column("neuron").to_numpy().astype(np.int64)
            effect = _list_matrix(atlas.effects.column("effect"), self.n_strengths, np.float64)
            ok = np.isfinite(effect)
            np.add.at(self.effect_sum, ei, np.where(ok, effect, 0.0))
            np.add.at(self.effect_n, ei, ok.astype(np.int64))
        if atlas.tested is not None and atlas.tested.num_rows:
            ti = atlas.tested.column("neuron").to_numpy().astype(np.int64)
            rec = atlas.tested.column("recovery").to_numpy().astype(np.float64)
            pct = atlas.tested.column("percentile").to_numpy().astype(np.float64)
            ok = np.isfinite(rec) & np.isfinite(pct)
            np.add.at(self.tested_n, ti[ok], 1)
            np.add.at(self.tested_recovery, ti[ok], rec[ok])
            np.add.at(self.tested_percentile, ti[ok], pct[ok])

    def displayed_neurons(self) -> list[tuple[str, int]]:
        """(layer, channel) of every neuron displayed in some pair."""
        out = []
        for l in self.layers:
            base = self.offsets[l.name]
            out += [(l.name, int(c)) for c in np.flatnonzero(self.displayed[base : base + l.channels] > 0)]
        return out

    @property
    def n_pairs(self) -> int:
        return sum(t.num_rows for ts in self._pairs.values() for t in ts)

    def units(self) -> set:
        return set(self._units)

    # --- per-original pair index --------------------------------------------------------------------
    def originals(self) -> list[int]:
        return sorted(self._pairs)

    def pair_index(self, original: int) -> pa.Table:
        t = (
            pa.concat_tables(self._pairs.get(int(original), []))
            if self._pairs.get(int(original))
            else layout.PAIR_INDEX_SCHEMA.empty_table()
        )
        return t.sort_by([("target", "ascending")])

    def _all_pairs(self) -> dict[str, np.ndarray]:
        """Every pair's columns the global files need (cached until the next ``add_unit``)."""
        if self._cache is not None:
            return self._cache
        self._cache = self._collect()
        return self._cache

    def _collect(self) -> dict[str, np.ndarray]:
        originals, tables = [], []
        for o in sorted(self._pairs):
            t = pa.concat_tables(self._pairs[o])
            originals.append(np.full(t.num_rows, o, np.int32))
            tables.append(t)
        s = self.n_strengths
        if not tables:
            z = np.zeros(0, np.int32)
            return {
                "original": z,
                "target": z,
                "success": np.zeros((0, s), np.float32),
                "exploited": np.zeros(0, np.float32),
                "n_images": z,
            }
        t = pa.concat_tables(tables)
        return {
            "original": np.concatenate(originals),
            "target": t.column("target").to_numpy().astype(np.int32),
            "success": _list_matrix(t.column("success_rate"), s, np.float32),
            "exploited": t.column("n_exploited").to_numpy().astype(np.float32),
            "n_images": t.column("n_images").to_numpy().astype(np.int32),
        }

    # --- rankings -----------------------------------------------------------------------------------
    def rankings(self) -> dict[str, tuple[pa.Table, int]]:
        """{key: (sorted table, number of rows with a finite value)} for every ranking key."""
        p = self._all_pairs()
        out = {}
        for key in layout.ranking_keys(self.n_strengths):
            if key == "exploited":
                value = p["exploited"]
            else:
                value = p["success"][:, int(key.split("-")[1])]
            out[key] = ranking_table(p["original"], p["target"], value)
        return out

    # --- overview -----------------------------------------------------------------------------------
    def overview(self) -> pa.Table:
        p = self._all_pairs()
        return overview_table(self.n_classes, self.n_strengths, p["original"], p["target"], p["success"])

    # --- classes ------------------------------------------------------------------------------------
    def classes(self, class_ids: Sequence[str], benign: dict[int, dict]) -> pa.Table:
        """classes.parquet: the model's classes, the benign stage's counts, attack statistics."""
        p = self._all_pairs()
        n = self.n_classes
        as_o = np.bincount(p["original"], minlength=n)
        as_t = np.bincount(p["target"], minlength=n)
        so = _group_nanmean(p["original"], p["success"], n)
        st = _group_nanmean(p["target"], p["success"], n)
        rec = [benign.get(c, {}) for c in range(n)]
        n_images = [int(r.get("n_images", 0)) for r in rec]
        n_correct = [int(r.get("n_correct", 0)) for r in rec]
        acc = [n_correct[i] / n_images[i] if n_images[i] else math.nan for i in range(n)]
        return pa.table(
            {
                "class_id": pa.array(range(n), pa.int32()),
                "wnid": pa.array(list(class_ids), pa.string()),
                "name": pa.array(list(self.class_names), pa.string()),
                "n_images": pa.array(n_images, pa.int32()),
                "n_correct": pa.array(n_correct, pa.int32()),
                "n_skipped": pa.array([int(r.get("n_skipped", 0)) for r in rec], pa.int32()),
                "accuracy": pa.array(acc, pa.float32()),
                "n_as_original": pa.array(as_o, pa.int32()),
                "n_as_target": pa.array(as_t, pa.int32()),
                "success_as_original": pa.array(list(so), pa.list_(pa.float32())),
                "success_as_target": pa.array(list(st), pa.list_(pa.float32())),
            },
            schema=layout.CLASSES_SCHEMA,
        )

    # --- atlas --------------------------------------------------------------------------------------
    def atlas(self) -> pa.Table:
        names, chans = [], []
        for l in self.layers:
            names += [l.name] * l.channels
            chans += list(range(l.channels))
        with np.errstate(invalid="ignore", divide="ignore"):
            mean_effect = np.where(self.effect_n > 0, self.effect_sum / np.maximum(self.effect_n, 1), np.nan)
        top_o, top_oc = _top_classes(self.by_original)
        top_t, top_tc = _top_classes(self.by_target)
        return pa.table(
            {
                "layer": names,
                "channel": pa.array(chans, pa.int32()),
                "n_displayed": pa.array(self.displayed, pa.int32()),
                "n_exploited_any": pa.array(self.exploited_any, pa.int32()),
                "n_exploited": pa.array(list(self.exploited.astype(np.int32)), pa.list_(pa.int32())),
                "mean_effect": pa.array(list(mean_effect.astype(np.float32)), pa.list_(pa.float32())),
                "n_tested": pa.array(self.tested_n, pa.int32()),
                "mean_recovery": pa.array(
                    np.where(self.tested_n > 0, self.tested_recovery / np.maximum(self.tested_n, 1), np.nan).astype(
                        np.float32
                    )
                ),
                "null_percentile": pa.array(
                    np.where(self.tested_n > 0, self.tested_percentile / np.maximum(self.tested_n, 1), np.nan).astype(
                        np.float32
                    )
                ),
                "top_originals": pa.array(top_o, pa.list_(pa.int32())),
                "top_original_counts": pa.array(top_oc, pa.list_(pa.int32())),
                "top_targets": pa.array(top_t, pa.list_(pa.int32())),
                "top_target_counts": pa.array(top_tc, pa.list_(pa.int32())),
            },
            schema=layout.ATLAS_SCHEMA,
        )

    # --- landing view -------------------------------------------------------------------------------
    def landing(self) -> dict | None:
        p = self._all_pairs()
        return landing_view(p["original"], p["target"], p["success"], p["exploited"])


@dataclass
class UnitAtlas:
    """What the atlas needs from one unit, small enough to travel in the unit's marker metadata.

    ``displayed``: (target, neuron) per displayed node (decoded from a marker: neuron only, sorted);
    ``exploited``: (target, neuron, exploited_mask) per exploited node; ``effects``: (neuron,
    effect) per node with a measured single-neuron effect; ``tested``: (neuron, recovery,
    percentile) per causal ``neuron:<channel>`` row. ``neuron`` is the global index (layer offset +
    channel, layers in model order). In the marker it travels as one compact table under
    ``bluff.atlas`` (``metadata``; docs/FORMAT.md, "Work units, commit order and resume").
    """

    displayed: pa.Table
    exploited: pa.Table
    effects: pa.Table | None = None
    tested: pa.Table | None = None

    def metadata(self) -> dict[bytes, bytes]:
        return {ATLAS_KEY: _ipc(_encode_atlas(self))}

    @classmethod
    def from_metadata(cls, meta: dict[bytes, bytes] | None) -> UnitAtlas | None:
        if not meta:
            return None
        if ATLAS_KEY in meta:
            return _decode_atlas(_from_ipc(meta[ATLAS_KEY]))
        if b"bluff.displayed" not in meta or b"bluff.exploited" not in meta:
            return None
        return cls(  # markers written before the compact table: one IPC stream per table
            _from_ipc(meta[b"bluff.displayed"]),
            _from_ipc(meta[b"bluff.exploited"]),
            _from_ipc(meta[b"bluff.effects"]) if b"bluff.effects" in meta else None,
            _from_ipc(meta[b"bluff.tested"]) if b"bluff.tested" in meta else None,
        )


#: Marker metadata key of the compact atlas table (one row; docs/FORMAT.md, "Unit markers").
ATLAS_KEY = b"bluff.atlas"


def _ids(values: np.ndarray) -> pa.Array:
    """Neuron ids as the narrowest unsigned integers that hold them (uint16 below 65,536)."""
    v = np.asarray(values, np.int64)
    return pa.array(v.astype(np.uint16 if not v.size or v.max() < 2**16 else np.uint32))


def _sorted_deltas(keys: np.ndarray, neuron: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(stable order by (key, neuron), neuron deltas within each key's run: first absolute)."""
    order = np.lexsort((neuron, keys))
    k, n = keys[order], neuron[order].astype(np.int64)
    d = np.diff(n, prepend=0)
    start = np.ones(len(k), bool)
    start[1:] = k[1:] != k[:-1]
    d[start] = n[start]
    return order, d


def _undelta(counts: np.ndarray, deltas: np.ndarray) -> np.ndarray:
    """Inverse of ``_sorted_deltas``: a cumulative sum restarted at every run of ``counts``."""
    counts = np.asarray(counts, np.int64)
    c = np.cumsum(deltas.astype(np.int64))
    before = np.concatenate([[0], c])[np.cumsum(counts) - counts]  # the sum before each run
    return (c - np.repeat(before, counts)).astype(np.int32)


def _per_target(targets: np.ndarray, table: pa.Table) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(order of ``table``'s rows by (target, neuron), their neuron deltas, row count per target)."""
    t = table.column("target").to_numpy().astype(np.int64)
    order, deltas = _sorted_deltas(t, table.column("neuron").to_numpy())
    counts = np.bincount(np.searchsorted(targets, t), minlength=len(targets)) if len(t) else np.zeros(len(targets))
    return order, deltas, counts.astype(np.int64)


def _encode_atlas(a: UnitAtlas) -> pa.Table:
    """One row: the unit's targets; the displayed nodes' neuron ids (all targets together: the atlas
    counts them per neuron) sorted and delta-encoded; per target, the number of exploited nodes,
    their neuron ids sorted and delta-encoded, their masks; the effects by neuron (float32, exact:
    the finite values and a bit per strength saying where they are); the tested neurons."""
    targets = np.unique(
        np.concatenate([a.displayed.column("target").to_numpy(), a.exploited.column("target").to_numpy()]).astype(
            np.int64
        )
    )
    dn = a.displayed.column("neuron").to_numpy()
    _, d_delta = _sorted_deltas(np.zeros(len(dn), np.int64), dn)  # the atlas counts them per neuron only
    e_order, e_delta, e_count = _per_target(targets, a.exploited)
    mask = a.exploited.column("exploited_mask").to_numpy().astype(np.int64)[e_order]
    cols: dict[str, pa.Array] = {
        "targets": pa.array(targets.astype(np.int32)),
        "displayed": _ids(d_delta),
        "n_exploited": _ids(e_count),
        "exploited": _ids(e_delta),
        "exploited_mask": _ids(mask),
    }
    if a.effects is not None:
        en = a.effects.column("neuron").to_numpy().astype(np.int64)
        order, delta = _sorted_deltas(np.zeros(len(en), np.int64), en)
        eff = a.effects.column("effect")
        s = len(eff[0]) if len(eff) else 0
        m = _list_matrix(eff, s, np.float32)[order] if len(eff) else np.zeros((0, 0), np.float32)
        finite = np.isfinite(m)
        cols["effect_neuron"] = _ids(delta)
        cols["effect_finite"] = pa.array(finite.ravel())  # row by row, one bit per strength
        cols["effect"] = pa.array(m[finite], pa.float32())  # the finite values only, exact
    if a.tested is not None:
        tn = a.tested.column("neuron").to_numpy().astype(np.int64)
        order, delta = _sorted_deltas(np.zeros(len(tn), np.int64), tn)
        cols["tested_neuron"] = _ids(delta)
        cols["recovery"] = pa.array(a.tested.column("recovery").to_numpy()[order].astype(np.float32))
        cols["percentile"] = pa.array(a.tested.column("percentile").to_numpy()[order].astype(np.float32))
    return pa.table({k: pa.array([v], pa.list_(v.type)) for k, v in cols.items()})


def _decode_atlas(t: pa.Table) -> UnitAtlas:
    col = lambda name: t.column(name)[0].values.to_numpy(zero_copy_only=False)  # noqa: E731
    targets = col("targets").astype(np.int32)
    e_count, dn = col("n_exploited").astype(np.int64), col("displayed")
    displayed = pa.table({"neuron": pa.array(_undelta(np.array([len(dn)]), dn), pa.int32())})
    exploited = pa.table(
        {
            "target": pa.array(np.repeat(targets, e_count), pa.int32()),
            "neuron": pa.array(_undelta(e_count, col("exploited")), pa.int32()),
            "exploited_mask": pa.array(col("exploited_mask").astype(np.int32), pa.int32()),
        }
    )
    effects = tested = None
    if "effect_neuron" in t.column_names:
        en = col("effect_neuron")
        finite = col("effect_finite").astype(bool)
        flat = np.full(len(finite), np.nan, np.float32)
        flat[finite] = col("effect").astype(np.float32)
        m = flat.reshape(len(en), len(finite) // max(len(en), 1))
        effects = pa.table(
            {
                "neuron": pa.array(_undelta(np.array([len(en)]), en), pa.int32()),
                "effect": pa.array(list(m), pa.list_(pa.float32()))
                if len(en)
                else pa.array([], pa.list_(pa.float32())),
            }
        )
    if "tested_neuron" in t.column_names:
        tn = col("tested_neuron")
        tested = pa.table(
            {
                "neuron": pa.array(_undelta(np.array([len(tn)]), tn), pa.int32()),
                "recovery": pa.array(col("recovery"), pa.float32()),
                "percentile": pa.array(col("percentile"), pa.float32()),
            }
        )
    return UnitAtlas(displayed, exploited, effects, tested)


def _ipc(table: pa.Table) -> bytes:
    """A zstd Arrow IPC stream, raw (Parquet key-value metadata holds binary; base64 cost a third)."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema, options=pa.ipc.IpcWriteOptions(compression="zstd")) as w:
        w.write_table(table)
    return sink.getvalue().to_pybytes()


_IPC_CONTINUATION = b"\xff\xff\xff\xff"  # how an Arrow IPC stream starts


def _from_ipc(data: bytes) -> pa.Table:
    if not data.startswith(_IPC_CONTINUATION):  # base64, as markers were written before
        import base64

        data = base64.b64decode(data)
    return pa.ipc.open_stream(pa.py_buffer(data)).read_all()


def unit_atlas(nodes: pa.Table, offsets: dict[str, int], n_strengths: int, causal: pa.Table | None = None) -> UnitAtlas:
    """The compact atlas contribution of a unit's nodes table (and its ``causal`` rows)."""
    layers = nodes.column("layer").to_pylist()
    try:
        base = np.array([offsets[l] for l in layers], dtype=np.int64)
    except KeyError as e:
        raise ValueError(f"unknown layer {e.args[0]!r} in a nodes table") from None
    neuron = (base + nodes.column("channel").to_numpy().astype(np.int64)).astype(np.int32)
    target = nodes.column("target").to_numpy().astype(np.int32)
    ex = np.asarray([r == ROLE_EXPLOITED for r in nodes.column("role").to_pylist()], dtype=bool)
    displayed = pa.table({"target": pa.array(target, pa.int32()), "neuron": pa.array(neuron, pa.int32())})
    exploited = pa.table(
        {
            "target": pa.array(target[ex], pa.int32()),
            "neuron": pa.array(neuron[ex], pa.int32()),
            "exploited_mask": pa.array(nodes.column("exploited_mask").to_numpy()[ex].astype(np.int32), pa.int32()),
        }
    )
    all_eff = (
        _list_matrix(nodes.column("effect"), n_strengths, np.float32)
        if nodes.num_rows
        else np.zeros((0, n_strengths), np.float32)
    )
    has = np.isfinite(all_eff).any(axis=1)
    effects = pa.table(
        {
            "neuron": pa.array(neuron[has], pa.int32()),
            "effect": pa.array(list(all_eff[has]), pa.list_(pa.float32()))
            if has.any()
            else pa.array([], pa.list_(pa.float32())),
        }
    )
    return UnitAtlas(displayed, exploited, effects, _tested(causal, offsets))


def _tested(causal: pa.Table | None, offsets: dict[str, int]) -> pa.Table | None:
    """(neuron, recovery, null percentile) of the causal rows ``set = "neuron:<channel>"``."""
    if causal is None:
        return None
    sets = causal.column("set").to_pylist()
    keep = [i for i, s in enumerate(sets) if s.startswith("neuron:")]
    layers = causal.column("layer").to_pylist()
    rec, null = causal.column("recovery").to_pylist(), causal.column("null_stats").to_pylist()
    neuron = [offsets[layers[i]] + int(sets[i].split(":", 1)[1]) for i in keep]
    return pa.table(
        {
            "neuron": pa.array(neuron, pa.int32()),
            "recovery": pa.array([rec[i][1] for i in keep], pa.float32()),
            "percentile": pa.array([null[i][4] for i in keep], pa.float32()),
        }
    )


def _group_nanmean(keys: np.ndarray, values: np.ndarray, n: int) -> np.ndarray:
    """Per key 0..n-1, the mean of the finite rows of ``values`` [m, s] (NaN where none)."""
    s = values.shape[1]
    ok = np.isfinite(values)
    total = np.zeros((n, s))
    count = np.zeros((n, s))
    np.add.at(total, keys, np.where(ok, values, 0.0))
    np.add.at(count, keys, ok)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan).astype(np.float32)


def _top_classes(counts: np.ndarray, k: int = TOP_CLASSES) -> tuple[list[list[int]], list[list[int]]]:
    """Per row, up to k class ids with the highest nonzero counts (ties: lower class id)."""
    if counts.shape[1] == 0:
        return [[] for _ in range(counts.shape[0])], [[] for _ in range(counts.shape[0])]
    order = np.argsort(-counts, axis=1, kind="stable")[:, :k]
    vals = np.take_along_axis(counts, order, axis=1)
    ids, cnts = [], []
    for o, v in zip(order, vals):
        keep = v > 0
        ids.append(o[keep].astype(int).tolist())
        cnts.append(v[keep].astype(int).tolist())
    return ids, cnts


def ranking_table(original: np.ndarray, target: np.ndarray, value: np.ndarray) -> tuple[pa.Table, int]:
    """Pairs sorted by value descending (NaN last), then original and target ascending."""
    value = np.asarray(value, np.float32)
    nan = ~np.isfinite(value)
    order = np.lexsort((target, original, -np.where(nan, 0, value), nan))
    t = pa.table(
        {
            "original": pa.array(original[order], pa.int32()),
            "target": pa.array(target[order], pa.int32()),
            "value": pa.array(value[order], pa.float32()),
        },
        schema=layout.RANKING_SCHEMA,
    )
    return t, int((~nan).sum())


def overview_table(
    n_classes: int, n_strengths: int, original: np.ndarray, target: np.ndarray, success: np.ndarray
) -> pa.Table:
    """FORMAT's overview: per strength, one binary row of n_classes bytes per original."""
    rows_s, rows_o, rows_b = [], [], []
    for i in range(n_strengths):
        m = np.full((n_classes, n_classes), layout.OVERVIEW_MISSING, np.uint8)
        v = success[:, i] if len(success) else np.zeros(0, np.float32)
        ok = np.isfinite(v)
        m[original[ok], target[ok]] = np.rint(np.clip(v[ok], 0, 1) * layout.OVERVIEW_SCALE).astype(np.uint8)
        rows_s += [i] * n_classes
        rows_o += list(range(n_classes))
        rows_b += [m[o].tobytes() for o in range(n_classes)]
    return pa.table(
        {
            "strength": pa.array(rows_s, pa.int32()),
            "original": pa.array(rows_o, pa.int32()),
            "success": pa.array(rows_b, pa.binary()),
        },
        schema=layout.OVERVIEW_SCHEMA,
    )


def landing_view(original: np.ndarray, target: np.ndarray, success: np.ndarray, exploited: np.ndarray) -> dict | None:
    """The pair and strength the viewer opens without a URL (FORMAT: manifest ``landing``)."""
    if len(original) == 0:
        return None
    filled = np.where(np.isfinite(success), success, -1.0)
    good = filled >= 0.5
    has = good.any(axis=1)
    if has.any():
        cand = np.flatnonzero(has)
        best = cand[np.lexsort((target[cand], original[cand], -exploited[cand]))[0]]
        s = int(np.argmax(good[best]))
    else:
        best_val = filled.max(axis=1)
        cand = np.flatnonzero(best_val == best_val.max())
        best = cand[np.lexsort((target[cand], original[cand], -exploited[cand]))[0]]
        s = int(np.argmax(filled[best]))
    return {"original": int(original[best]), "target": int(target[best]), "strength": s + 1}


def write_global(store, agg: Aggregate, class_ids: Sequence[str], benign: dict[int, dict]) -> None:
    """Write pair_index partitions, rankings, overview, atlas and classes.parquet through ``store``."""
    for o in agg.originals():
        store.write_bytes(layout.pair_index_path(o), layout.table_to_parquet(agg.pair_index(o)))
    for key, (table, n_valid) in agg.rankings().items():
        store.write_bytes(
            layout.ranking_path(key),
            layout.table_to_parquet(
                table,
                page_index=True,
                data_page_size=RANKING_PAGE_BYTES,
                metadata={b"bluff.n_valid": str(n_valid).encode()},
            ),
        )
    ov = agg.overview()
    store.write_bytes(layout.OVERVIEW_PATH, layout.table_to_parquet(ov, row_group_size=agg.n_classes))
    store.write_bytes(layout.ATLAS_PATH, layout.table_to_parquet(agg.atlas()))
    store.write_bytes(layout.CLASSES_PATH, layout.table_to_parquet(agg.classes(class_ids, benign)))
