"""Activation patching (bluff_ray.engine.causal): exact in float64 on the digits net and on a hand-built
network whose target logit is carried by a single channel."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bluff_ray.engine.attack import AttackConfig, attack_grid
from bluff_ray.engine.causal import PATCH_IMAGES, Experiment, Patching, block_modules
from bluff_ray.run.data import DigitsSource
from bluff_ray.engine.models.digits import DIGITS_STRENGTHS, DigitsNet, digits_adapter
from bluff_ray.results.rows import causal_table

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
    patching = Patching(model, block_modules(model, adapter.model, adapter.blocks), adapter.layer_names,
                        [l.channels for l in adapter.layers], adv, x[rows], seed=0, batch_size=16)
    return adapter, patching, ok.sum(1).tolist()


@pytest.mark.parametrize("layer", [0, 2, 3])
def test_patching_every_channel_restores_the_benign_logits(attacked, layer):
    adapter, patching, _ = attacked
    n, c = patching.adversarial.shape[0], adapter.layers[layer].channels
    everything = Experiment({layer: torch.ones((n, c), dtype=torch.bool)})
    nothing = Experiment({layer: torch.zeros((n, c), dtype=torch.bool)})
    logits = patching.logits([everything, nothing])
    with torch.no_grad():
        benign = patching.model(patching.benign)
        adversarial = patching.model(patching.adversarial)
    torch.testing.assert_close(logits[0], benign, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(logits[1], adversarial, rtol=1e-10, atol=1e-10)
    # every attack was a success (prediction 8) on images the model classified correctly (3):
    assert (adversarial.argmax(1) == 8).all() and (benign.argmax(1) == 3).all()
    defused_all = (logits[0].argmax(1) != 8).double().mean().item()
    defused_none = (logits[1].argmax(1) != 8).double().mean().item()
    assert (defused_all, defused_none) == (1.0, 0.0)


def test_run_reports_per_layer_rows_controls_and_single_neuron_effects(attacked):
    adapter, patching, n_success = attacked
    names = adapter.layer_names
    # mixed3b: channels 0..3 exploited, 4..7 original, 8, 9 both; other layers nothing displayed
    displayed = [torch.tensor([], dtype=torch.long) for _ in names]
    displayed[1] = torch.tensor([4, 5, 6, 7, 8, 9, 0, 1, 2, 3])
    roles = ["original"] * 4 + ["both"] * 2 + ["exploited"] * 4
    s = len(n_success)
    vals = torch.rand(10, 2 + s, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    mask = torch.tensor([0] * 6 + [1] * 4)
    a = patching.run(8, displayed, roles, mask, vals, n_success)
    b = patching.run(8, displayed, roles, mask, vals, n_success)
    rows = causal_table(a.table).to_pylist()
    assert [r["layer"] for r in rows] == [*names, "all"]
    r = rows[1]
    assert (r["n_exploited"], r["n_random"], r["n_both"]) == (4, 4, 2)
    assert rows[0]["n_exploited"] == 0 and all(np.isnan(rows[0]["defused_exploited"]))
    assert rows[-1]["n_exploited"] == 4 and a.defused == tuple(rows[-1]["defused_exploited"])
    # the exploited set of mixed3b patched alone equals that layer's "all" row (the only layer)
    np.testing.assert_allclose(r["defused_exploited"], rows[-1]["defused_exploited"])
    same = lambda t: [[np.nan_to_num(np.array(v, float), nan=-7).tolist() if isinstance(v, list) else v
                       for v in row.values()] for row in t.to_pylist()]
    assert same(causal_table(a.table)) == same(causal_table(b.table)) and np.array_equal(a.effect, b.effect, equal_nan=True)  # seeded controls
    # effects: exploited neurons only; each is the defused fraction of patching that channel alone
    assert np.isnan(a.effect[:6]).all() and np.isfinite(a.effect[6:]).all()
    n = patching.adversarial.shape[0]
    seg = np.repeat(np.arange(s), n_success)
    for node, ch in zip(range(6, 10), (0, 1, 2, 3)):
        m = torch.zeros((n, adapter.layers[1].channels), dtype=torch.bool)
        m[:, ch] = True
        d = (patching.logits([Experiment({1: m})])[0].argmax(1) != 8).numpy()
        want = [d[seg == i][:PATCH_IMAGES // 2].mean() for i in range(s)]  # measured on the first images
        np.testing.assert_allclose(a.effect[node], want)


def _one_channel_net(channel: int, target: int, original: int):
    """A digits-shaped net whose target logit is mixed4b's channel ``channel`` (global average) and
    whose original logit is a constant: only that channel can carry an attack."""
    torch.manual_seed(0)
    net = DigitsNet().double().eval()
    x = torch.rand(256, 1, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    adapter = digits_adapter(net)
    with torch.no_grad():
        _, acts = adapter.forward_with_activations(x)
        gap = acts["mixed4b"].mean(dim=(2, 3))[:, channel]
        net.fc.weight.zero_()
        net.fc.bias.fill_(-1e3)
        net.fc.weight[target, channel] = 1.0
        net.fc.bias[target] = 0.0
        net.fc.bias[original] = float(gap.median())
    high, low = x[gap > gap.median()], x[gap < gap.median()]
    k = min(len(high), len(low))
    return adapter, high[:k], low[:k]


def test_single_channel_carrying_the_target_has_full_effect_and_others_none():
    channel, target, original = 17, 8, 3
    adapter, adversarial, benign = _one_channel_net(channel, target, original)
    model = adapter.attack_model()
    with torch.no_grad():
        assert (model(adversarial).argmax(1) == target).all() and (model(benign).argmax(1) == original).all()
    patching = Patching(model, block_modules(model, adapter.model, adapter.blocks), adapter.layer_names,
                        [l.channels for l in adapter.layers], adversarial, benign, seed=3)
    names = adapter.layer_names
    displayed = [torch.tensor([], dtype=torch.long) for _ in names]
    displayed[3] = torch.tensor([channel, 20, 31, 40])
    roles = ["exploited"] * 4
    n = adversarial.shape[0]
    vals = torch.zeros(4, 3, dtype=torch.float64)
    res = patching.run(target, displayed, roles, torch.ones(4, dtype=torch.long), vals, [n])
    assert res.effect[:, 0].tolist() == [1.0, 0.0, 0.0, 0.0]
    row = causal_table(res.table).to_pylist()[3]
    assert row["layer"] == "mixed4b" and row["defused_exploited"] == [1.0]
    assert res.defused == (1.0,)


def test_one_pass_with_branching_rows_equals_patching_each_experiment_alone(attacked):
    """All experiments share one forward pass (rows branch off at their first patched layer); each
    one's logits equal a forward pass that patches only it, with masks that differ per image."""
    adapter, patching, _ = attacked
    n = patching.adversarial.shape[0]
    g = torch.Generator().manual_seed(5)
    exps = []
    for layers in ([3], [1], [0, 2], [2], [1, 3]):
        exps.append(Experiment({li: torch.rand((n, adapter.layers[li].channels), generator=g) < 0.3 for li in layers}))
    together = patching.logits(exps)
    for j, e in enumerate(exps):
        torch.testing.assert_close(together[j], patching.logits([e])[0], rtol=1e-10, atol=1e-10)
