"""Activation patching (bluff_ray.engine.causal): the recovery metric, the null control, dose-response
curves and noising, exact in float64 on the digits net and on hand-built networks whose target
logit is carried by one channel or spread evenly over all of them."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from bluff_ray.engine.attack import AttackConfig, attack_grid
from bluff_ray.engine.causal import (
    Experiment,
    Patching,
    allocate_images,
    block_modules,
    curve_summary,
    measure_costs,
    null_draw,
    null_summary,
    recovery,
    split_images,
)
from bluff_ray.engine.models.digits import DIGITS_STRENGTHS, DigitsNet, digits_adapter
from bluff_ray.results.rows import causal_curve_table, causal_table
from bluff_ray.run.data import DigitsSource
from test_engine import FIXTURE


@pytest.fixture(scope="module")
def attacked():
    """The digits net in float64, 12 images of 3 attacked toward 8; the successful ones."""
    net = DigitsNet.empty()
    net.load_state_dict(torch.load(FIXTURE / "digits_weights.pt", weights_only=True))
    adapter = digits_adapter(net.double().eval())
    x = DigitsSource().class_images(3, 12)[0].double()
    cfg = AttackConfig(strengths=DIGITS_STRENGTHS[-3:], steps=10)
    grid = attack_grid(adapter.attack_model(), x, [8], cfg, seed=0)
    ok = grid.success[0]
    adv = grid.adv[0][ok]
    rows = torch.arange(x.shape[0]).expand(ok.shape)[ok]
    assert len(adv) >= 6  # the test is not vacuous
    model = adapter.attack_model()
    patching = Patching(
        model,
        block_modules(model, adapter.model, adapter.blocks),
        adapter.layer_names,
        [l.channels for l in adapter.layers],
        adv,
        x[rows],
        seed=0,
        batch_size=16,
    )
    return adapter, patching, ok.sum(1).tolist()


def _ld(logits, original=3, target=8):
    return logits[..., original] - logits[..., target]


@pytest.mark.parametrize("layer", [0, 2, 3])
def test_patching_every_channel_recovers_all_and_none_nothing_both_directions(attacked, layer):
    """R = 1 when every channel is patched, 0 when none is; noising every channel gives N = 1."""
    adapter, patching, _ = attacked
    n, c = patching.adversarial.shape[0], adapter.layers[layer].channels
    everything = Experiment({layer: torch.ones((n, c), dtype=torch.bool)})
    nothing = Experiment({layer: torch.zeros(c, dtype=torch.bool)})
    den = patching.logits([everything, nothing])
    noi = patching.logits([everything, nothing], noising=True)
    with torch.no_grad():
        clean, adv = patching.model(patching.benign), patching.model(patching.adversarial)
    torch.testing.assert_close(den[0], clean, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(den[1], adv, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(noi[0], adv, rtol=1e-10, atol=1e-10)
    ld_c, ld_a = _ld(clean), _ld(adv)
    assert (ld_c > 0).all() and (ld_a < 0).all()  # classified 3 before, 8 after the attack
    np.testing.assert_allclose(recovery(_ld(den[0]), ld_c, ld_a).numpy(), 1.0, atol=1e-9)
    np.testing.assert_allclose(recovery(_ld(den[1]), ld_c, ld_a).numpy(), 0.0, atol=1e-9)
    noised = (ld_c - _ld(noi[0])) / (ld_c - ld_a)
    np.testing.assert_allclose(noised.numpy(), 1.0, atol=1e-9)


def test_one_pass_with_branching_rows_equals_patching_each_experiment_alone(attacked):
    """All experiments share one forward pass (rows branch off at their first patched layer); each
    one's logits equal a forward pass that patches only it, with masks that differ per image."""
    adapter, patching, _ = attacked
    n = patching.adversarial.shape[0]
    g = torch.Generator().manual_seed(5)
    exps = []
    for layers in ([3], [1], [0, 2], [2], [1, 3]):
        exps.append(Experiment({li: torch.rand((n, adapter.layers[li].channels), generator=g) < 0.3 for li in layers}))
    for noising in (False, True):
        together = patching.logits(exps, noising=noising)
        for j, e in enumerate(exps):
            torch.testing.assert_close(together[j], patching.logits([e], noising=noising)[0], rtol=1e-10, atol=1e-10)


def test_statistics_against_hand_computation():
    null = np.array([0.1, 0.2, 0.2, 0.3])
    s = null_summary(0.2, null)
    assert s["percentile"] == pytest.approx(100 * (1 + 0.5 * 2) / 4)
    assert s["p"] == pytest.approx((1 + 3) / 5)  # 0.2, 0.2, 0.3 are >= 0.2
    assert s["mean"] == pytest.approx(0.2) and s["sd"] == pytest.approx(np.std(null, ddof=1))
    assert null_summary(1.0, null)["percentile"] == 100 and null_summary(1.0, null)["p"] == pytest.approx(1 / 5)
    auc, k50 = curve_summary([1, 2, 4], [0.0, 0.5, 1.0], 4)
    assert auc == pytest.approx(0.5) and k50 == pytest.approx(2.0)
    assert curve_summary([1, 2, 4], [1.0, 1.0, 1.0], 4) == (pytest.approx(1.0), 1.0)
    sel, held = split_images([5, 0, 3], cap=None)
    assert [list(x) for x in sel] == [[0, 2, 4], [], [5, 7]] and [list(x) for x in held] == [[1, 3], [], [6]]
    assert [list(x) for x in split_images([5], cap=1)[1]] == [[1]]


def test_null_draws_exclude_the_set_and_are_the_same_in_another_process():
    outside = np.setdiff1d(np.arange(64), [3, 17, 40])
    draws = [null_draw(123, 8, 2, 4, j, outside) for j in range(32)]
    assert all(len(d) == len(outside) and not set(d) & {3, 17, 40} for d in draws)
    assert len({tuple(d[:3]) for d in draws}) > 16  # different draws differ
    code = (
        "import json, numpy as np; from bluff_ray.engine.causal import null_draw; "
        "o = np.setdiff1d(np.arange(64), [3, 17, 40]); "
        "print(json.dumps([null_draw(123, 8, 2, 4, j, o).tolist() for j in range(32)]))"
    )
    other = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    assert other == [d.tolist() for d in draws]


def _hand_built(weights_of, trained: bool = False):
    """A digits-shaped float64 net whose target logit (8) is ``weights_of(gap_adv - gap_clean)`` . GAP
    of mixed4b and whose original logit (3) is a constant. Untrained: random images as attacked/clean
    pairs; trained (every mixed4b channel moves): digits 8 as "attacked", digits 3 as clean."""
    if trained:
        net = DigitsNet.empty()
        net.load_state_dict(torch.load(FIXTURE / "digits_weights.pt", weights_only=True))
        net = net.double().eval()
        src = DigitsSource()
        clean, adv = src.class_images(3, 24)[0].double(), src.class_images(8, 24)[0].double()
    else:
        torch.manual_seed(0)
        net = DigitsNet().double().eval()
        g = torch.Generator().manual_seed(0)
        clean = torch.rand(24, 1, 8, 8, dtype=torch.float64, generator=g)
        adv = (clean + 0.5 * torch.rand(24, 1, 8, 8, dtype=torch.float64, generator=g)).clamp(0, 1)
    adapter = digits_adapter(net)
    with torch.no_grad():
        gap_c = adapter.forward_with_activations(clean)[1]["mixed4b"].mean(dim=(2, 3))
        gap_a = adapter.forward_with_activations(adv)[1]["mixed4b"].mean(dim=(2, 3))
        w = weights_of(gap_a - gap_c)
        net.fc.weight.zero_()
        net.fc.bias.fill_(-1e3)
        net.fc.weight[8] = w
        net.fc.bias[8] = 0.0
        net.fc.bias[3] = float(((gap_a + gap_c) / 2 @ w).median())
    model = adapter.attack_model()
    patching = Patching(
        model,
        block_modules(model, adapter.model, adapter.blocks),
        adapter.layer_names,
        [l.channels for l in adapter.layers],
        adv,
        clean,
        seed=7,
        batch_size=64,
        patch_images=None,
    )
    return adapter, patching


def _run(adapter, patching, fresh: int | None):
    """``run`` with benign importances that put every mixed4b channel but ``fresh`` in O ∪ T (k = C - 1)."""
    c = adapter.layers[-1].channels
    imp = [torch.arange(l.channels, 0, -1, dtype=torch.float64) for l in adapter.layers]
    if fresh is not None:
        imp[-1] = torch.ones(c, dtype=torch.float64)
        imp[-1][fresh] = 0.0
    res = patching.run(3, 8, imp, imp, [patching.adversarial.shape[0]], k=c - 1)
    rows = causal_table(res.table).to_pylist()
    curve = causal_curve_table(res.table).to_pylist()
    return res, rows, curve


def test_one_channel_carrying_the_target_logit_recovers_everything():
    channel = 17

    def weights(delta):
        w = torch.zeros(delta.shape[1], dtype=torch.float64)
        w[channel] = 1.0 / delta[:, channel].mean()
        return w

    adapter, patching = _hand_built(weights)
    res, rows, curve = _run(adapter, patching, fresh=channel)
    row = next(r for r in rows if r["layer"] == "mixed4b" and r["set"] == "exploited")
    assert row["n_neurons"] == 1
    recovery_mean, null = (
        row["recovery"][1],
        dict(zip(("mean", "sd", "q05", "q95", "percentile", "p", "draws"), row["null_stats"])),
    )
    assert recovery_mean == pytest.approx(1.0, abs=1e-9)
    assert null["mean"] == pytest.approx(0.0, abs=1e-9)  # no other channel moves the logits
    assert null["percentile"] == 100.0 and null["p"] == pytest.approx(1 / (null["draws"] + 1))
    assert row["noising"][0] == pytest.approx(1.0, abs=1e-9)  # N: the attacked channel alone breaks the clean run
    ex = next(c for c in curve if c["layer"] == "mixed4b" and c["order"] == "exploited")
    assert ex["k"][0] == 1 and ex["recovery"][0] == pytest.approx(1.0, abs=1e-9)
    assert ex["recovery"][-1] == pytest.approx(1.0, abs=1e-9) and ex["k"][-1] == 64
    assert res.effect[("mixed4b", channel)][0] == pytest.approx(1.0, abs=1e-9)
    neuron = next(r for r in rows if r["set"] == f"neuron:{channel}")  # alone, against single random channels
    assert neuron["recovery"][1] == pytest.approx(1.0, abs=1e-9) and neuron["null_stats"][4] == 100.0


def test_target_logit_spread_evenly_puts_the_exploited_curve_inside_the_null_band():
    def weights(delta):  # every channel moves the target logit by the same amount on average
        return 1.0 / delta.mean(dim=0)

    adapter, patching = _hand_built(weights, trained=True)
    with torch.no_grad():  # the construction is sound: every channel moved
        d = adapter.forward_with_activations(patching.adversarial)[1]["mixed4b"].mean(
            dim=(2, 3)
        ) - adapter.forward_with_activations(patching.benign)[1]["mixed4b"].mean(dim=(2, 3))
    assert (d.mean(0).abs() > 1e-2).all()
    _, rows, curve = _run(adapter, patching, fresh=None)
    by = {c["order"]: c for c in curve if c["layer"] == "mixed4b"}
    ex, rnd = by["exploited"], by["random"]
    assert ex["k"] == rnd["k"] == [1, 2, 4, 8, 16, 32, 64]
    for k, r, lo, hi in zip(ex["k"], ex["recovery"], rnd["q05"], rnd["q95"]):
        assert lo - 1e-9 <= r <= hi + 1e-9, (k, r, lo, hi)
    row = next(r for r in rows if r["layer"] == "mixed4b" and r["set"] == "exploited")
    assert 5 <= row["null_stats"][4] <= 95  # percentile: no more than chance


def _with(patching: Patching, **kw) -> Patching:
    """The same experiments' Patching (images, model, seed, draws, curves) with ``kw`` replaced."""
    args = dict(seed=patching.seed, batch_size=patching.batch_size, draws=patching.draws, curves=patching.curves)
    args.update(kw)
    return Patching(
        patching.model,
        patching.blocks,
        patching.names,
        patching.channels,
        patching.adversarial,
        patching.benign,
        **args,
    )


def test_run_is_seeded_and_does_not_depend_on_the_batch_size(attacked):
    adapter, patching, n_success = attacked
    imp = [torch.linspace(1, 0, l.channels, dtype=torch.float64) for l in adapter.layers]
    other = _with(patching, batch_size=3)
    a = patching.run(3, 8, imp, imp, n_success, k=10)
    b = other.run(3, 8, imp, imp, n_success, k=10)
    ta, tb = causal_table(a.table), causal_table(b.table)
    assert ta.num_rows > 0 and ta.column("set").to_pylist() == tb.column("set").to_pylist()
    for col in ("recovery", "null_stats", "matched", "noising"):
        np.testing.assert_allclose(
            np.array(ta.column(col).to_pylist(), float),
            np.array(tb.column(col).to_pylist(), float),
            rtol=1e-9,
            atol=1e-12,
        )
    # the held-out images are patched, the others selected: each strength's row counts the odd half
    rows = ta.to_pylist()
    for r in rows:
        assert r["recovery"][0] == len(range(1, n_success[r["strength"]], 2))
    assert {r["layer"] for r in rows} <= {*adapter.layer_names, "all"}


def test_atlas_ranks_neurons_by_their_measured_effect_and_null_percentile():
    """reduce: the atlas's mean recovery and null percentile of a neuron are the means over the
    pairs' ``neuron:<channel>`` rows; effects come from every node that has one."""
    import pyarrow as pa

    from bluff_ray.results import layout
    from bluff_ray.results.reduce import Aggregate, LayerSpec, UnitAtlas, unit_atlas

    layers = [LayerSpec("mixed3a", 4), LayerSpec("mixed3b", 6)]
    agg = Aggregate(["a", "b", "c"], layers, 2)
    nan = float("nan")
    for part, (targets, tested) in enumerate(
        (([1, 2], [(1, "mixed3b", 2, 0.5, 100.0), (2, "mixed3b", 2, 0.1, 50.0)]), ([1], [(1, "mixed3a", 0, -0.1, 0.0)]))
    ):
        nodes = pa.table(
            {
                "target": pa.array(targets, pa.int32()),
                "layer": ["mixed3b"] * len(targets),
                "channel": pa.array([2] * len(targets), pa.int32()),
                "role": ["original"] * len(targets),
                "exploited_mask": pa.array([0] * len(targets), pa.int32()),
                "effect": [[0.4, nan]] * len(targets),
            }
        )
        causal = pa.Table.from_pylist(
            [
                dict(
                    target=t,
                    strength=1,
                    layer=layer,
                    set=f"neuron:{ch}",
                    n_neurons=1,
                    recovery=[4, r, r, 0, 0, 1, -1],
                    null_stats=[0, 0, 0, 0, p, 0.1, 16],
                    matched=[nan] * 4,
                    noising=[nan] * 5,
                )
                for t, layer, ch, r, p in tested
            ],
            schema=layout.CAUSAL_SCHEMA,
        )
        atlas = unit_atlas(nodes, agg.offsets, 2, causal)
        pairs = pa.Table.from_pylist(
            [
                dict(
                    target=t,
                    n_images=4,
                    n_success=[1, 2],
                    success_rate=[0.25, 0.5],
                    n_nodes=1,
                    n_edges=0,
                    n_exploited=0,
                    defused=[nan, 0.0],
                    row_group=i,
                    part=part,
                )
                for i, t in enumerate(targets)
            ],
            schema=layout.PAIRS_SCHEMA,
        )
        agg.add_unit(0, part, pairs, atlas=UnitAtlas.from_metadata(atlas.metadata()))  # as it travels in the marker
    rows = {(r["layer"], r["channel"]): r for r in agg.atlas().to_pylist()}
    b2, a0 = rows[("mixed3b", 2)], rows[("mixed3a", 0)]
    assert b2["n_tested"] == 2 and b2["mean_recovery"] == pytest.approx(0.3) and b2["null_percentile"] == 75.0
    assert a0["n_tested"] == 1 and a0["mean_recovery"] == pytest.approx(-0.1) and a0["null_percentile"] == 0.0
    assert b2["mean_effect"][0] == pytest.approx(0.4) and np.isnan(b2["mean_effect"][1])  # any node with an effect
    assert rows[("mixed3a", 1)]["n_tested"] == 0 and np.isnan(rows[("mixed3a", 1)]["mean_recovery"])


def _tables(res):
    return causal_table(res.table).to_pylist(), causal_curve_table(res.table).to_pylist()


def _key(r):
    return (r["strength"], r["layer"], r.get("set", r.get("order")))


def _assert_same_rows(a: list[dict], b: list[dict]) -> None:
    """Rows equal key for key; floats to 1e-9 (float64: another experiment count chunks the batch
    differently), NaN where NaN."""
    assert sorted(map(_key, a)) == sorted(map(_key, b))
    other = {_key(r): r for r in b}
    for ra in a:
        rb = other[_key(ra)]
        for col, va in ra.items():
            if isinstance(va, list) and any(isinstance(v, float) for v in va):
                np.testing.assert_allclose(va, rb[col], rtol=1e-9, atol=1e-12, err_msg=f"{_key(ra)} {col}")
            elif isinstance(va, float):
                np.testing.assert_allclose(va, rb[col], rtol=1e-9, atol=1e-12, err_msg=f"{_key(ra)} {col}")
            else:
                assert va == rb[col], (_key(ra), col)


def test_curves_at_every_strength_equal_the_one_strength_curves_and_leave_the_sets_alone(attacked):
    """``curves``: "every" adds the curves (and single-neuron rows) of the other strengths without
    changing any number of "one"; "none" keeps exactly the set rows."""
    adapter, patching, n_success = attacked
    imp = [torch.linspace(1, 0, l.channels, dtype=torch.float64) for l in adapter.layers]
    rows = {}
    for mode in ("none", "one", "every"):
        rows[mode] = _tables(_with(patching, curves=mode).run(3, 8, imp, imp, n_success, k=10))
    held = [s for s, n in enumerate(n_success) if n >= 2]
    assert len(held) >= 2  # the test is not vacuous: several strengths have held-out images
    one_s = {r["strength"] for r in rows["one"][1]}
    assert len(one_s) == 1
    assert {r["strength"] for r in rows["every"][1]} == set(held)
    assert rows["none"][1] == []
    sets = {m: [r for r in rows[m][0] if not r["set"].startswith("neuron:")] for m in rows}
    _assert_same_rows(sets["none"], sets["one"])
    _assert_same_rows(sets["one"], sets["every"])
    # the same draws (seeded per strength) and the same images
    _assert_same_rows(rows["one"][1], [r for r in rows["every"][1] if r["strength"] in one_s])
    neurons = {m: {r["strength"] for r in rows[m][0] if r["set"].startswith("neuron:")} for m in rows}
    assert neurons["none"] == set() and neurons["one"] == one_s and len(neurons["every"]) > 1
    with pytest.raises(ValueError, match="unknown curves 'all'"):
        _with(patching, curves="all")


def test_identical_experiments_run_once_and_give_the_numbers_of_separate_runs(attacked, monkeypatch):
    """A null draw and the random order's point of the same size are one experiment: the plan runs
    it once, and every row equals the rows of a plan that runs each label separately."""
    adapter, patching, n_success = attacked
    imp = [torch.linspace(1, 0, l.channels, dtype=torch.float64) for l in adapter.layers]
    seen = []
    logits = Patching.logits

    def counting(self, experiments, noising=False):
        seen.append(len(experiments))
        return logits(self, experiments, noising)

    monkeypatch.setattr(Patching, "logits", counting)
    merged = _tables(patching.run(3, 8, imp, imp, n_success, k=4))  # exploited sets of <= 2: k = 1, 2 of the curves
    ran_merged = sum(seen)
    seen.clear()

    from bluff_ray.engine import causal

    def add_each(self, label, chans, noise=False):  # the plan without merging
        masks = {}
        for li, ch in chans.items():
            m = torch.zeros(self.channels[li], dtype=torch.bool)
            m[torch.as_tensor(np.asarray(ch, np.int64))] = True
            masks[li] = m
        self.index[label] = len(self.exps)
        self.exps.append((Experiment(masks), noise))

    monkeypatch.setattr(causal._Plan, "add", add_each)
    separate = _tables(patching.run(3, 8, imp, imp, n_success, k=4))
    assert ran_merged < sum(seen)  # some experiments were shared
    for a, b in zip(merged, separate):
        assert [_key(r) for r in a] == [_key(r) for r in b]
        _assert_same_rows(a, b)


def test_allocate_images_by_hand():
    # n = 4: 4 * 10 + 2 * 30 = 100 fits; n = 5: 110 does not
    assert allocate_images([10, 30, 0], [5, 2, 0], 100) == [4, 2, 0]
    assert allocate_images([10, 30, 0], [5, 2, 0], 99.9) == [3, 2, 0]
    assert allocate_images([10, 30, 0], [5, 2, 0], 5) == [1, 1, 0]  # at least one image per strength
    assert allocate_images([10, 30, 0], [5, 2, 0], None) == [5, 2, 0]
    assert allocate_images([10, 30], [5, 2], 1e9) == [5, 2]


def test_the_budget_bounds_the_counted_flops_and_changes_no_number(attacked, monkeypatch):
    """With a budget the run patches as many held-out images per strength as fit; its FLOPs, counted
    by torch's FlopCounterMode over the whole run, are what the cost model predicts and within the
    budget; and its rows are those of a run without budget capped at the same number of images."""
    from torch.utils.flop_counter import FlopCounterMode

    adapter, patching, n_success = attacked
    imp = [torch.linspace(1, 0, l.channels, dtype=torch.float64) for l in adapter.layers]
    costs = measure_costs(patching.model, patching.blocks, patching.benign[:1])
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        patching.model(patching.benign[:1].contiguous(memory_format=torch.channels_last))
    forward = fc.get_total_flops()
    n_sel = sum((n + 1) // 2 for n in n_success)
    held = [n // 2 for n in n_success]
    assert max(held) >= 3  # the budget below can cut a strength's held-out images
    plan_costs = []
    cost_of = Patching._plan_cost

    def recording(self, plan):
        plan_costs.append(cost_of(self, plan))
        return plan_costs[-1]

    monkeypatch.setattr(Patching, "_plan_cost", recording)
    per_image = None
    for n_target in (1, 2):
        full = _with(patching, costs=costs, budget=1e12)  # every held-out image: read the plans' costs
        plan_costs.clear()
        full.run(3, 8, imp, imp, n_success, k=10)
        per_image = list(plan_costs)
        budget = 2.0 * n_sel + sum(min(h, n_target) * c for h, c in zip([h for h in held if h], per_image)) + 0.5
        limited = _with(patching, costs=costs, budget=budget)
        with FlopCounterMode(display=False) as fc:
            res = limited.run(3, 8, imp, imp, n_success, k=10)
        rows, curves = _tables(res)
        got = {r["strength"]: int(r["recovery"][0]) for r in rows}
        assert got == {s: min(h, n_target) for s, h in enumerate(held) if h and s in got} and got
        predicted = 2.0 * n_sel + sum(min(h, n_target) * c for h, c in zip([h for h in held if h], per_image))
        assert fc.get_total_flops() / forward == pytest.approx(predicted, rel=1e-9)
        assert fc.get_total_flops() / forward <= budget
        capped = _with(patching, patch_images=n_target)  # no budget: the first n_target held-out images
        monkeypatch.setattr(Patching, "_plan_cost", cost_of)
        c_rows, c_curves = _tables(capped.run(3, 8, imp, imp, n_success, k=10))
        monkeypatch.setattr(Patching, "_plan_cost", recording)
        _assert_same_rows(rows, c_rows)
        _assert_same_rows(curves, c_curves)
