"""PairSummary: assembled correctly from importance/roles/influence, and in the FORMAT.md schema."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from bluff_ray.engine.compute import PairRecords
from bluff_ray.engine.influence import layer_influence
from bluff_ray.engine.models.digits import DigitsNet, digits_adapter
from bluff_ray.engine.pathways import PathwayConfig, summarize_pair
from bluff_ray.results.layout import NODES_SCHEMA, PAIRS_SCHEMA, edges_schema
from bluff_ray.results.rows import ROW_GROUP_UNSET, pair_tables, unit_tables


def test_pathway_config_validation():
    assert PathwayConfig() == PathwayConfig(
        k=10,
        batch_size=64,
        min_edge_influence=0.0,
        causal=True,
        patch_images=32,
        patch_budget=0.15,
        null_draws=16,
        curves="one",
    )
    for bad in (
        dict(k=1),
        dict(k=0),
        dict(batch_size=0),
        dict(min_edge_influence=float("nan")),
        dict(patch_budget=0),
        dict(patch_budget=float("inf")),
        dict(curves="all"),
    ):
        with pytest.raises(ValueError):
            PathwayConfig(**bad)


# ---------------------------------------------------------------------------------------------
# summarize_pair against an independent, unbatched computation (random net, fast).


@pytest.fixture(scope="module")
def random_pair():
    torch.manual_seed(0)
    adapter = digits_adapter(DigitsNet())
    gen = torch.Generator().manual_seed(1)
    orig, targ = torch.rand(7, 1, 8, 8, generator=gen), torch.rand(6, 1, 8, 8, generator=gen)
    attacked = [
        orig[:0],
        (orig[:3] + 0.3 * torch.rand(3, 1, 8, 8, generator=gen)).clamp(0, 1),
        torch.rand(4, 1, 8, 8, generator=gen),
    ]
    strengths = (0.5, 1.0, 1.5)
    cfg = PathwayConfig(k=6, batch_size=4)
    summary = summarize_pair(
        adapter, 3, 8, orig, targ, attacked, n_images=7, n_success=[0, 3, 4], strengths=strengths, cfg=cfg
    )
    return adapter, [orig, targ, *attacked], cfg, summary


def _np_importance(adapter, images):
    with torch.no_grad():
        _, acts = adapter.forward_with_activations(images)
    return {k: np.median(v.amax(dim=(2, 3)).numpy(), axis=0) for k, v in acts.items()}, acts


def _np_topk(values: np.ndarray, k: int) -> set[int]:
    order = np.lexsort((np.arange(len(values)), -values))  # descending value, then ascending channel
    return set(order[:k].tolist())


def test_nodes_importance_and_roles_match_independent_computation(random_pair):
    adapter, conds, cfg, s = random_pair
    imps = [_np_importance(adapter, c)[0] if len(c) else None for c in conds]
    k = cfg.k
    roles_order = ("original", "both", "target", "exploited")
    node_key = [(adapter.layer_names.index(n.layer), roles_order.index(n.role), n.channel) for n in s.nodes]
    assert node_key == sorted(node_key) and len(set(node_key)) == len(node_key)  # FORMAT.md node order
    for layer in adapter.layer_names:
        nodes = [n for n in s.nodes if n.layer == layer]
        got = {n.channel: n.role for n in nodes}
        o, t = _np_topk(imps[0][layer], k), _np_topk(imps[1][layer], k)
        assert {c for c, r in got.items() if r == "both"} == o & t
        assert {c for c, r in got.items() if r == "original"} == o - t
        assert {c for c, r in got.items() if r == "target"} == t - o
        exploited = set()
        for imp in imps[2:]:
            if imp is None:
                continue
            ranked = [c for c in np.lexsort((np.arange(len(imp[layer])), -imp[layer]))[:k] if c not in o | t]
            exploited |= set(int(c) for c in ranked[: k // 2])
        assert {c for c, r in got.items() if r == "exploited"} == exploited
        for n in nodes:
            np.testing.assert_allclose(n.importance_original, imps[0][layer][n.channel], rtol=1e-6)
            np.testing.assert_allclose(n.importance_target, imps[1][layer][n.channel], rtol=1e-6)
            assert np.isnan(n.importance_attacked[0])  # no successful image at the first strength
            for si in (1, 2):
                np.testing.assert_allclose(n.importance_attacked[si], imps[2 + si][layer][n.channel], rtol=1e-6)
            np.testing.assert_allclose(
                n.excitation[1:], np.array(n.importance_attacked[1:]) - n.importance_original, rtol=1e-6
            )
    assert s.n_exploited > 0  # random attacked images do reach other neurons
    assert s.excitation.shape == (len(s.nodes), 3)


def test_edges_match_unbatched_influence_medians(random_pair):
    adapter, conds, cfg, s = random_pair
    names = adapter.layer_names
    displayed = {l: [n.channel for n in s.nodes if n.layer == l] for l in names}
    acts = [_np_importance(adapter, c)[1] if len(c) else None for c in conds]
    got = {(e.src_layer, e.src_channel, e.dst_layer, e.dst_channel): e for e in s.edges}
    expected_keys = set()
    for q in range(1, len(names)):
        src, dst = displayed[names[q - 1]], displayed[names[q]]
        meds = []
        for a in acts:
            if a is None:
                meds.append(np.full((len(dst), len(src)), np.nan))
            else:
                r = layer_influence(adapter, q, a[names[q - 1]], torch.tensor(src), torch.tensor(dst), batch_size=1000)
                meds.append(np.median(r.numpy(), axis=0))
        meds = np.stack(meds, axis=-1)  # [dst, src, conditions]
        for d, j in enumerate(dst):
            for i_, i in enumerate(src):
                key = (names[q - 1], i, names[q], j)
                vals = meds[d, i_]
                if np.nanmax(vals) > cfg.min_edge_influence:
                    expected_keys.add(key)
                    e = got[key]
                    np.testing.assert_allclose(
                        [e.influence_original, e.influence_target, *e.influence_attacked], vals, rtol=1e-5, atol=1e-7
                    )
    assert set(got) == expected_keys  # exactly the edges positive in some condition
    pos = {(n.layer, n.channel): i for i, n in enumerate(s.nodes)}
    edge_key = [
        (names.index(e.dst_layer), pos[(e.dst_layer, e.dst_channel)], pos[(e.src_layer, e.src_channel)])
        for e in s.edges
    ]
    assert edge_key == sorted(edge_key)  # FORMAT.md edge order
    assert len(s.edges) > 0


def _nan_safe(value):
    if isinstance(value, float) and np.isnan(value):
        return "NaN"
    if isinstance(value, list):
        return [_nan_safe(v) for v in value]
    if isinstance(value, dict):
        return {k: _nan_safe(v) for k, v in value.items()}
    return value


def test_pair_tables_and_parquet_round_trip(random_pair, tmp_path):
    _, _, _, s = random_pair
    t = pair_tables(PairRecords(s))
    assert (
        t["pairs"].schema == PAIRS_SCHEMA
        and t["nodes"].schema == NODES_SCHEMA
        and t["edges"].schema == edges_schema(len(s.strengths))
    )
    assert t["pairs"].num_rows == 1 and t["nodes"].num_rows == len(s.nodes) and t["edges"].num_rows == len(s.edges)
    row = t["pairs"].to_pylist()[0]
    assert row["target"] == 8 and row["n_images"] == 7 and row["n_success"] == [0, 3, 4]
    np.testing.assert_allclose(row["success_rate"], [0, 3 / 7, 4 / 7], rtol=1e-6)
    assert row["n_nodes"] == len(s.nodes) and row["n_edges"] == len(s.edges)
    assert row["n_exploited"] == sum(r == "exploited" for r in t["nodes"].column("role").to_pylist())
    assert row["row_group"] == ROW_GROUP_UNSET and row["part"] == ROW_GROUP_UNSET
    assert all(np.isnan(row["defused"]))  # no patching experiments were asked for
    assert t["causal"].num_rows == 0
    assert set(t["nodes"].column("target").to_pylist()) == {8} == set(t["edges"].column("target").to_pylist())
    for name, table in t.items():
        if name == "causal":
            continue
        pq.write_table(table, tmp_path / f"{name}.parquet")
        back = pq.read_table(tmp_path / f"{name}.parquet")
        assert back.schema == table.schema
        assert _nan_safe(back.to_pylist()) == _nan_safe(table.to_pylist())  # NaN != NaN in .equals


def test_summarize_pair_refuses_inconsistent_inputs(random_pair):
    adapter, conds, cfg, _ = random_pair
    orig, targ = conds[0], conds[1]
    with pytest.raises(ValueError, match="per strength"):
        summarize_pair(adapter, 3, 8, orig, targ, [orig[:1]], n_images=7, n_success=[1, 2], strengths=[0.5], cfg=cfg)
    with pytest.raises(ValueError, match="n_success"):
        summarize_pair(adapter, 3, 8, orig, targ, [orig[:2]], n_images=7, n_success=[1], strengths=[0.5], cfg=cfg)
    with pytest.raises(ValueError, match="target_images"):
        summarize_pair(adapter, 3, 8, orig, targ[:0], [], n_images=7, n_success=[], strengths=[], cfg=cfg)


# ---------------------------------------------------------------------------------------------
# A real pair: the trained digits model, the real attack, default strengths.


def test_digit_pair_end_to_end():
    """engine.compute_unit on one real digit pair: the attack works, the roles and edges make sense."""
    from bluff_ray.engine.attack import AttackConfig
    from bluff_ray.engine.compute import class_data, compute_unit
    from bluff_ray.engine.models import load_model
    from bluff_ray.engine.models.digits import digits_split

    adapter = load_model("digits")
    strengths = tuple(adapter.metadata["default_strengths"])
    x, y = digits_split("test")
    original, target = 3, 8
    orig, targ = x[y == original][:12], x[y == target][:12]
    cfg = AttackConfig(method="pgd_l2", strengths=strengths, steps=20)
    unit = unit_tables(
        compute_unit(
            adapter,
            class_data(adapter, original, orig, None),
            [class_data(adapter, target, targ, None)],
            cfg,
            PathwayConfig(k=10, batch_size=64),
            seed=0,
        )
    )
    row = unit.pairs.to_pylist()[0]
    assert row["n_images"] == 12 and len(row["n_success"]) == len(strengths)  # all 12 are classified correctly
    rates = row["success_rate"]
    assert rates[-1] > rates[0] and rates[-1] >= 0.5, rates
    assert all(b >= a - 0.2 for a, b in zip(rates, rates[1:])), rates  # rises with eps (PGD noise aside)
    nodes, edges = unit.nodes.to_pylist(), unit.edges.to_pylist()
    exploited = [n for n in nodes if n["role"] == "exploited"]
    assert exploited, "no exploited neuron at any strength"
    assert all(n["exploited_mask"] > 0 for n in exploited)
    assert all(n["exploited_mask"] == 0 for n in nodes if n["role"] != "exploited")
    # Every exploited neuron is in the top-k of some successful attacked condition and beats its
    # original importance there: the attack really switched it on.
    excitation = [
        np.nanmax(np.array(n["importance_attacked"], dtype=float) - n["importance_original"]) for n in exploited
    ]
    assert max(excitation) > 0
    layer_idx = {l: i for i, l in enumerate(adapter.layer_names)}
    shown = {(n["layer"], n["channel"]) for n in nodes}
    for e in edges:
        assert (e["src_layer"], e["src_channel"]) in shown and (e["dst_layer"], e["dst_channel"]) in shown
        assert layer_idx[e["dst_layer"]] == layer_idx[e["src_layer"]] + 1
        vals = [v for k, v in e.items() if k.startswith("influence_")]  # original, target, each strength
        assert max(np.nan_to_num(np.array(vals, dtype=float), nan=-1)) > 0
    assert row["n_nodes"] == len(nodes) and row["n_edges"] == len(edges) > 0
    assert row["n_exploited"] == len(exploited)
    # Nodes per layer: the union of the roles, at least k (O) and at most 2k + k/2 per strength.
    for layer in adapter.layer_names:
        n_layer = sum(n["layer"] == layer for n in nodes)
        assert 10 <= n_layer <= 20 + 5 * len(strengths)
    # the patching experiments ran on held-out images: rows per (strength, layer or "all", set), each
    # with its null; curves at one strength; single-neuron recoveries for some displayed nodes
    causal = unit.causal.to_pylist()
    sets = {r["set"] for r in causal}
    assert {"exploited", "exploited_union", "top_original_target", "top_delta"} <= sets
    assert all(
        x.startswith("neuron:") for x in sets - {"exploited", "exploited_union", "top_original_target", "top_delta"}
    )
    assert {r["layer"] for r in causal} <= {*adapter.layer_names, "all"} and any(r["layer"] == "all" for r in causal)
    for r in causal:
        assert 1 <= r["recovery"][0] <= (row["n_success"][r["strength"]] // 2)  # held-out images only
        if r["set"] == "exploited":
            assert r["null_stats"][6] == 16 and 0 < r["null_stats"][5] <= 1  # draws, p
    curves = unit.causal_curve.to_pylist()
    assert len({c["strength"] for c in curves}) == 1 and {c["order"] for c in curves} == {
        "exploited",
        "delta",
        "random",
    }
    assert any(np.isfinite(n["effect"]).any() for n in nodes)
