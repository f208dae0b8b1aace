"""The reduce's global files from an Aggregate fed unit by unit, against independent computations
(numpy, DuckDB) on made-up pair rows."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bluff_ray.results import layout
from bluff_ray.results.reduce import (
    Aggregate,
    LayerSpec,
    UnitAtlas,
    _ipc,
    landing_view,
    unit_atlas,
    write_global,
)
from bluff_ray.results.store import Store

S = 3
LAYERS = [LayerSpec("mixed3a", 4), LayerSpec("mixed3b", 6)]
NAMES = ["a", "b", "c", "d", "e"]


def pair_rows(targets, success, exploited, part=0):
    n = len(targets)
    return pa.table(
        {
            "target": pa.array(targets, pa.int32()),
            "n_images": pa.array([4] * n, pa.int32()),
            "n_success": pa.array(
                [[int(round(4 * v)) if not math.isnan(v) else 0 for v in s] for s in success], pa.list_(pa.int32())
            ),
            "success_rate": pa.array(success, pa.list_(pa.float32())),
            "n_nodes": pa.array([3] * n, pa.int32()),
            "n_edges": pa.array([2] * n, pa.int32()),
            "n_exploited": pa.array(exploited, pa.int32()),
            "defused": pa.array([[math.nan] * S] * n, pa.list_(pa.float32())),
            "row_group": pa.array(range(n), pa.int32()),
            "part": pa.array([part] * n, pa.int32()),
        },
        schema=layout.PAIRS_SCHEMA,
    )


def nodes(rows):
    """rows: (target, layer, channel, role, mask, effect list)."""
    return pa.table(
        {
            "target": pa.array([r[0] for r in rows], pa.int32()),
            "layer": [r[1] for r in rows],
            "channel": pa.array([r[2] for r in rows], pa.int32()),
            "role": [r[3] for r in rows],
            "exploited_mask": pa.array([r[4] for r in rows], pa.int32()),
            "effect": pa.array([r[5] for r in rows], pa.list_(pa.float32())),
        }
    )


NAN = [math.nan] * S


@pytest.fixture
def agg():
    a = Aggregate(NAMES, LAYERS, S)
    a.add_unit(
        0,
        0,
        pair_rows([1, 2], [[0.0, 0.5, 1.0], [0.25, 0.25, math.nan]], [2, 0]),
        nodes(
            [
                (1, "mixed3a", 1, "exploited", 0b011, [1.0, 0.5, math.nan]),
                (1, "mixed3b", 5, "exploited", 0b100, [math.nan, math.nan, 0.0]),
                (1, "mixed3a", 0, "original", 0, NAN),
                (2, "mixed3a", 0, "both", 0, NAN),
            ]
        ),
    )
    a.add_unit(
        0,
        1,
        pair_rows([3], [[0.0, 0.0, 0.75]], [1], part=1),
        nodes(
            [
                (3, "mixed3a", 1, "exploited", 0b100, [math.nan, math.nan, 1.0]),
            ]
        ),
    )
    a.add_unit(
        2,
        0,
        pair_rows([0, 4], [[1.0, 1.0, 1.0], [math.nan] * S], [1, 3]),
        nodes(
            [
                (0, "mixed3a", 1, "exploited", 0b001, [0.0, math.nan, math.nan]),
                (4, "mixed3b", 5, "exploited", 0b110, [math.nan, 0.5, 0.5]),
            ]
        ),
    )
    return a


def test_units_count_once_and_the_pair_index_is_sorted(agg):
    agg.add_unit(0, 1, pair_rows([3], [[0.0, 0.0, 0.75]], [1], part=1), None)  # a duplicate report
    assert agg.n_pairs == 5 and agg.units() == {(0, 0), (0, 1), (2, 0)}
    idx = agg.pair_index(0)
    assert idx.column("target").to_pylist() == [1, 2, 3] and idx.column("part").to_pylist() == [0, 0, 1]
    assert agg.pair_index(4).num_rows == 0


def test_rankings_sort_descending_with_nan_last_and_count_valid_rows(agg):
    r = agg.rankings()
    assert list(r) == layout.ranking_keys(S)
    t, n_valid = r["success-2"]
    rows = list(zip(t.column("original").to_pylist(), t.column("target").to_pylist(), t.column("value").to_pylist()))
    assert rows[:3] == [(0, 1, 1.0), (2, 0, 1.0), (0, 3, 0.75)] and n_valid == 3
    assert all(math.isnan(v) for *_, v in rows[3:]) and {(o, tg) for o, tg, _ in rows[3:]} == {(0, 2), (2, 4)}
    t, n_valid = r["exploited"]
    assert t.column("value").to_pylist() == [3, 2, 1, 1, 0] and n_valid == 5
    assert list(zip(t.column("original").to_pylist(), t.column("target").to_pylist()))[2:4] == [(0, 3), (2, 0)]


def test_overview_matrix_bytes(agg):
    ov = agg.overview()
    assert ov.num_rows == S * len(NAMES)
    for s in range(S):
        rows = ov.filter(pa.compute.equal(ov.column("strength"), s)).to_pylist()
        m = np.frombuffer(b"".join(r["success"] for r in rows), np.uint8).reshape(len(NAMES), len(NAMES))
        want = np.full((5, 5), 255)
        for o, t, v in [
            (0, 1, [0.0, 0.5, 1.0]),
            (0, 2, [0.25, 0.25, math.nan]),
            (0, 3, [0.0, 0.0, 0.75]),
            (2, 0, [1.0, 1.0, 1.0]),
        ]:
            if not math.isnan(v[s]):
                want[o, t] = round(254 * v[s])
        assert (m == want).all(), s


def test_classes_statistics(agg):
    t = agg.classes(["w0", "w1", "w2", "w3", "w4"], {0: {"n_images": 4, "n_correct": 3, "n_skipped": 1}})
    rows = t.to_pylist()
    assert [r["n_as_original"] for r in rows] == [3, 0, 2, 0, 0]
    assert [r["n_as_target"] for r in rows] == [1, 1, 1, 1, 1]
    np.testing.assert_allclose(
        rows[0]["success_as_original"],
        [np.mean([0, 0.25, 0]), np.mean([0.5, 0.25, 0]), np.mean([1.0, 0.75])],
        rtol=1e-6,
    )
    assert all(math.isnan(v) for v in rows[1]["success_as_original"])
    assert (rows[0]["n_images"], rows[0]["n_correct"], rows[0]["accuracy"]) == (4, 3, 0.75)
    assert math.isnan(rows[3]["accuracy"])


def test_atlas_counts_effects_and_top_classes(agg):
    rows = {(r["layer"], r["channel"]): r for r in agg.atlas().to_pylist()}
    assert len(rows) == 10
    n = rows[("mixed3a", 1)]
    assert (n["n_displayed"], n["n_exploited_any"], n["n_exploited"]) == (3, 3, [2, 1, 1])
    np.testing.assert_allclose(n["mean_effect"], [0.5, 0.5, 1.0])
    assert (n["top_originals"], n["top_original_counts"]) == ([0, 2], [2, 1])
    assert (n["top_targets"], n["top_target_counts"]) == ([0, 1, 3], [1, 1, 1])
    assert rows[("mixed3a", 0)]["n_displayed"] == 2 and rows[("mixed3a", 0)]["n_exploited_any"] == 0
    assert all(math.isnan(v) for v in rows[("mixed3a", 0)]["mean_effect"])


def test_unit_atlas_travels_in_parquet_metadata(agg):
    t = nodes([(1, "mixed3b", 2, "exploited", 0b101, [0.5, math.nan, 1.0]), (1, "mixed3a", 3, "target", 0, NAN)])
    atlas = unit_atlas(t, agg.offsets, S)
    data = layout.table_to_parquet(pair_rows([1], [[0.0] * S], [1]), metadata=atlas.metadata())
    back = UnitAtlas.from_metadata(pq.ParquetFile(pa.BufferReader(data)).schema_arrow.metadata)
    assert back is not None and back.effects is not None
    assert back.displayed.to_pylist() == [{"neuron": 3}, {"neuron": 4 + 2}]  # counted per neuron: no target
    assert back.exploited.to_pylist() == [{"target": 1, "neuron": 6, "exploited_mask": 5}]
    assert back.effects.column("neuron").to_pylist() == [6]
    assert np.array_equal(back.effects.column("effect")[0].as_py(), [0.5, math.nan, 1.0], equal_nan=True)
    assert UnitAtlas.from_metadata({}) is None
    # markers written before the compact table (one IPC stream per table) still read
    old = {b"bluff.displayed": _ipc(atlas.displayed), b"bluff.exploited": _ipc(atlas.exploited)}
    old_back = UnitAtlas.from_metadata(old)
    assert old_back is not None and old_back.displayed.equals(atlas.displayed)


GOOGLENET = [256, 480, 512, 512, 512, 528, 832, 832, 1024]  # the rehearsal model's nine mixed layers


def realistic_unit(rng, targets, strengths=10):
    """A unit at GoogLeNet widths: per pair 22 displayed channels per layer, 15 of them exploited
    with an effect at each strength they are exploited at, causal rows for those exploited at the
    middle strength (as the engine writes them)."""
    offsets = np.cumsum([0, *GOOGLENET[:-1]])
    shown = [
        np.concatenate([o + rng.choice(w, 22, replace=False) for o, w in zip(offsets, GOOGLENET)]) for _ in targets
    ]
    ex = [rng.choice(sh, 15, replace=False) for sh in shown]
    mask = rng.integers(1, 2**strengths, (len(targets), 15))
    bits = (mask[..., None] >> np.arange(strengths)) & 1
    eff = np.where(bits == 1, rng.normal(0, 0.2, bits.shape), np.nan).astype(np.float32).reshape(-1, strengths)
    tested = np.isfinite(eff[:, strengths // 2])
    ex_n = np.concatenate(ex).astype(np.int32)
    return UnitAtlas(
        pa.table(
            {"target": np.repeat(targets, 198).astype(np.int32), "neuron": np.concatenate(shown).astype(np.int32)}
        ),
        pa.table(
            {
                "target": np.repeat(targets, 15).astype(np.int32),
                "neuron": ex_n,
                "exploited_mask": mask.ravel().astype(np.int32),
            }
        ),
        pa.table({"neuron": ex_n, "effect": pa.array(list(eff), pa.list_(pa.float32()))}),
        pa.table(
            {
                "neuron": ex_n[tested],
                "recovery": rng.normal(0.2, 0.2, tested.sum()).astype(np.float32),
                "percentile": rng.uniform(0, 100, tested.sum()).astype(np.float32),
            }
        ),
    )


def _rows(t: pa.Table, keys: list[str]) -> list[tuple]:
    """A table's rows, sorted by ``keys`` (stable: rows with equal keys keep their order)."""
    rows = [tuple(r.values()) for r in t.select(keys + [c for c in t.column_names if c not in keys]).to_pylist()]
    return sorted(rows, key=lambda r: r[: len(keys)])


def test_a_realistic_units_marker_is_at_most_20_kb_and_decodes_to_the_same_contribution():
    rng = np.random.default_rng(7)
    targets = np.arange(20, 40)
    atlas = realistic_unit(rng, targets)
    pairs = pair_rows(list(targets), [[0.5] * S] * 20, [15] * 20)
    marker = layout.table_to_parquet(pairs, metadata=atlas.metadata(), metadata_in_schema=False)
    assert len(marker) <= 20_000
    back = UnitAtlas.from_metadata(pq.ParquetFile(pa.BufferReader(marker)).metadata.metadata)
    assert back is not None and back.effects is not None and back.tested is not None
    want_displayed = sorted(atlas.displayed.column("neuron").to_pylist())
    assert back.displayed.column("neuron").to_pylist() == want_displayed
    assert _rows(back.exploited, ["target", "neuron"]) == _rows(atlas.exploited, ["target", "neuron"])
    got_eff, want_eff = _rows(back.effects, ["neuron"]), _rows(atlas.effects, ["neuron"])
    assert [r[0] for r in got_eff] == [r[0] for r in want_eff]
    # float32 effects come back bit for bit (NaN where none was measured)
    assert np.array_equal(
        np.array([r[1] for r in got_eff], np.float32), np.array([r[1] for r in want_eff], np.float32), equal_nan=True
    )
    assert _rows(back.tested, ["neuron"]) == _rows(atlas.tested, ["neuron"])
    # the reduce fed from the marker writes the same atlas file as fed from the worker's result
    layers = [LayerSpec(f"l{i}", w) for i, w in enumerate(GOOGLENET)]
    live, resumed = (
        Aggregate([str(i) for i in range(50)], layers, 10),
        Aggregate([str(i) for i in range(50)], layers, 10),
    )
    live.add_unit(0, 1, pairs, atlas=atlas)
    resumed.add_unit(0, 1, pairs, atlas=back)
    assert live.displayed.sum() == 20 * 198 and live.exploited_any.sum() == 300
    assert layout.table_to_parquet(live.atlas()) == layout.table_to_parquet(resumed.atlas())


def test_landing_prefers_most_exploited_pair_with_half_success_at_its_weakest_such_strength():
    o, t = np.array([0, 0, 1]), np.array([1, 2, 0])
    s = np.array([[0.1, 0.6, 0.9], [0.0, 0.2, 1.0], [0.5, 0.5, 0.5]], np.float32)
    assert landing_view(o, t, s, np.array([5, 9, 5], np.float32)) == {"original": 0, "target": 2, "strength": 3}
    assert landing_view(o, t, s, np.array([5, 1, 5], np.float32)) == {"original": 0, "target": 1, "strength": 2}
    low = np.array([[0.1, 0.2, np.nan], [0.0, 0.3, 0.1]], np.float32)
    assert landing_view(o[:2], t[:2], low, np.array([0, 0], np.float32)) == {"original": 0, "target": 2, "strength": 2}
    assert landing_view(o[:0], t[:0], low[:0], np.zeros(0)) is None


def test_write_global_files_read_back(agg, tmp_path):
    import duckdb

    store = Store(str(tmp_path))
    write_global(store, agg, ["w0", "w1", "w2", "w3", "w4"], {})
    assert sorted(store.list("pair_index")) == [layout.pair_index_path(0), layout.pair_index_path(2)]
    want = (
        duckdb.connect()
        .execute(
            f"select original, target from read_parquet('{tmp_path}/pair_index/*/*.parquet', hive_partitioning=true) "
            "order by isnan(success_rate[2]), success_rate[2] desc, original, target"
        )
        .fetchall()
    )  # NaN last
    f = pq.ParquetFile(tmp_path / layout.ranking_path("success-1"))
    got = f.read().to_pylist()
    assert [(r["original"], r["target"]) for r in got][:3] == want[:3]
    assert f.schema_arrow.metadata[b"bluff.n_valid"] == b"4"
    assert f.metadata.num_row_groups == 1 and f.metadata.row_group(0).column(0).has_offset_index
    ov = pq.ParquetFile(tmp_path / layout.OVERVIEW_PATH)
    assert ov.metadata.num_row_groups == S
    assert pq.read_table(tmp_path / layout.CLASSES_PATH).schema.remove_metadata().equals(layout.CLASSES_SCHEMA)
    assert pq.read_table(tmp_path / layout.ATLAS_PATH).num_rows == 10
