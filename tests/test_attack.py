"""Targeted attacks: agreement with torchattacks, eps bounds, batching invariance, the grid, config errors.

All on the digits demo net over slices of its test split (cheap on a 2-core CPU).
"""

from __future__ import annotations

import os

import pytest
import torch
import torchattacks

from bluff_ray.engine.attack import AttackConfig, AttackGrid, attack, attack_grid, random_start
from bluff_ray.engine.models.digits import DIGITS_STRENGTHS, digits_split, train_digits

STEPS = 20  # fewer than the default 50 to keep CI fast; step eps/5 still travels 4 eps


@pytest.fixture(scope="module")
def digits_model(tmp_path_factory):
    # Shares the digits checkpoint with tests/test_models.py ($BLUFF_CACHE or the session base temp dir).
    cache = os.environ.get("BLUFF_CACHE") or tmp_path_factory.getbasetemp() / "bluff-digits-cache"
    return train_digits(seed=0, cache_dir=cache).model


@pytest.fixture(scope="module")
def digits_model64(digits_model):
    """The same net in float64: for claims of exact equality across batchings. In float32 two batch
    sizes may round differently, and a 3e-7 difference flips a max-pool argmax (seen on AMD CPUs)."""
    import copy

    return copy.deepcopy(digits_model).double()


@pytest.fixture(scope="module")
def batch():
    """60 correctly sized test images, each with a random wrong target class."""
    x, y = digits_split("test")
    x, y = x[:60], y[:60]
    g = torch.Generator().manual_seed(123)
    t = (y + 1 + torch.randint(0, 9, (len(y),), generator=g)) % 10
    return x, y, t


def _l2(d: torch.Tensor) -> torch.Tensor:
    return d.flatten(1).norm(dim=1)


def _success(model, adv, t) -> torch.Tensor:
    with torch.no_grad():
        return model(adv).argmax(1) == t


@pytest.fixture(scope="module")
def l2_runs(digits_model, batch):
    """Ours (all strengths in one batch) and torchattacks PGDL2 (one call per strength)."""
    x, _, t = batch
    strengths = (0.3, 0.6, 0.9)
    cfg = AttackConfig(strengths=strengths, steps=STEPS)
    n = len(x)
    xs, ts = x.repeat(len(strengths), 1, 1, 1), t.repeat(len(strengths))
    eps = torch.tensor(strengths).repeat_interleave(n)
    ours = attack(digits_model, xs, ts, eps, cfg, generator=torch.Generator().manual_seed(0)).view(
        len(strengths), n, 1, 8, 8
    )
    torch.manual_seed(0)  # torchattacks draws its random start from the global RNG
    theirs = []
    for e in strengths:
        atk = torchattacks.PGDL2(digits_model, eps=e, alpha=e * cfg.step_ratio, steps=STEPS, random_start=True)
        atk.set_mode_targeted_by_label(quiet=True)
        theirs.append(atk(x, t))
    return strengths, ours, torch.stack(theirs)


def test_pgd_l2_agrees_with_torchattacks(digits_model, batch, l2_runs):
    x, _, t = batch
    strengths, ours, theirs = l2_runs
    rates_o, rates_t = [], []
    for i, e in enumerate(strengths):
        so, st = _success(digits_model, ours[i], t), _success(digits_model, theirs[i], t)
        rates_o.append(so.float().mean().item())
        rates_t.append(st.float().mean().item())
        # success rates within 0.1 absolute (random starts differ, everything else is the same)
        assert abs(rates_o[-1] - rates_t[-1]) <= 0.1, (e, rates_o, rates_t)
        # mean perturbation norms within 10% relative
        no, nt = _l2(ours[i] - x).mean(), _l2(theirs[i] - x).mean()
        assert abs(no - nt) <= 0.1 * nt, (e, no.item(), nt.item())
    # the strengths were picked on the rise: the test is not vacuous
    assert rates_o[0] < 0.5 < rates_o[-1]
    assert rates_o == sorted(rates_o)


def test_pgd_l2_respects_eps_and_range(batch, l2_runs):
    x, _, _ = batch
    strengths, ours, theirs = l2_runs
    for i, e in enumerate(strengths):
        norms = _l2(ours[i] - x)
        assert (norms <= e + 1e-5).all(), norms.max()
        assert (norms > 0.5 * e).float().mean() > 0.9  # PGD uses its budget
        assert ours[i].min() >= 0 and ours[i].max() <= 1


def test_default_digits_strengths_span_low_to_high_success(digits_model, batch):
    """DIGITS_STRENGTHS documents a curve from <~20% to >~80% success at the default 50 steps."""
    x, _, t = batch
    x, t = x[:40], t[:40]
    lo, hi = DIGITS_STRENGTHS[0], DIGITS_STRENGTHS[-1]
    cfg = AttackConfig(strengths=(lo, hi))
    adv = attack(digits_model, torch.cat([x, x]), torch.cat([t, t]), torch.tensor([lo] * 40 + [hi] * 40), cfg)
    ok = _success(digits_model, adv, torch.cat([t, t])).view(2, 40).float().mean(1)
    assert ok[0] < 0.2 and ok[1] > 0.8, ok


@pytest.mark.parametrize("method", ["pgd_linf", "fgsm"])
def test_linf_methods_respect_eps_and_range(digits_model, batch, method):
    x, _, t = batch
    x, t = x[:24], t[:24]
    strengths = (0.05, 0.1, 0.3)
    cfg = AttackConfig(method=method, strengths=strengths, steps=10)
    eps = torch.tensor(strengths).repeat_interleave(len(x))
    xs = x.repeat(3, 1, 1, 1)
    adv = attack(digits_model, xs, t.repeat(3), eps, cfg, generator=torch.Generator().manual_seed(1))
    d = (adv - xs).flatten(1).abs().amax(1)
    assert (d <= eps + 1e-6).all()
    assert (d >= eps - 1e-6).float().mean() > 0.9  # the budget is used (up to clipping)
    assert adv.min() >= 0 and adv.max() <= 1
    rates = _success(digits_model, adv, t.repeat(3)).view(3, -1).float().mean(1)
    assert rates[-1] > rates[0]


def test_fgsm_equals_torchattacks_targeted_fgsm(digits_model, batch):
    x, _, t = batch
    cfg = AttackConfig(method="fgsm", strengths=(0.1,))
    ours = attack(digits_model, x, t, 0.1, cfg)
    atk = torchattacks.FGSM(digits_model, eps=0.1)
    atk.set_mode_targeted_by_label(quiet=True)
    theirs = atk(x, t)
    # one deterministic step: identical except where a gradient is ~0 (sign of a rounding error)
    assert (ours == theirs).float().mean() > 0.99
    torch.testing.assert_close(ours, theirs, atol=0.2 + 1e-6, rtol=0)


@pytest.mark.parametrize("method", ["pgd_l2", "pgd_linf"])
def test_batched_strengths_equal_one_loop_per_strength(digits_model64, batch, method):
    digits_model = digits_model64
    x, _, t = batch
    x, t = x[:12].double(), t[:12]
    strengths = (0.2, 0.5, 0.9) if method == "pgd_l2" else (0.02, 0.05, 0.1)
    cfg = AttackConfig(method=method, strengths=strengths, steps=8)
    z = random_start((3 * len(x), 1, 8, 8), method, torch.Generator().manual_seed(7)).double()
    eps = torch.tensor(strengths, dtype=torch.float64).repeat_interleave(len(x))
    batched = attack(digits_model, x.repeat(3, 1, 1, 1), t.repeat(3), eps, cfg, start=z)
    for i, e in enumerate(strengths):
        sl = slice(i * len(x), (i + 1) * len(x))
        looped = attack(digits_model, x, t, e, cfg, start=z[sl])
        torch.testing.assert_close(batched[sl], looped, atol=1e-10, rtol=0)


def test_same_generator_seed_same_result_and_no_param_grads(digits_model, batch):
    x, _, t = batch
    x, t = x[:10], t[:10]
    cfg = AttackConfig(strengths=(0.5,), steps=3)
    a = attack(digits_model, x, t, 0.5, cfg, generator=torch.Generator().manual_seed(5))
    b = attack(digits_model, x, t, 0.5, cfg, generator=torch.Generator().manual_seed(5))
    c = attack(digits_model, x, t, 0.5, cfg, generator=torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert not a.requires_grad
    assert all(p.grad is None for p in digits_model.parameters())
    assert not digits_model.training
    # no random start: deterministic without any generator
    cfg0 = AttackConfig(strengths=(0.5,), steps=3, random_start=False)
    assert torch.equal(attack(digits_model, x, t, 0.5, cfg0), attack(digits_model, x, t, 0.5, cfg0))


def test_attack_grid_layout_success_and_chunking(digits_model64, batch):
    digits_model = digits_model64
    x, _, _ = batch
    x = x[:5].double()
    targets = [3, 8]
    cfg = AttackConfig(strengths=(0.3, 0.9, 1.5), steps=6, random_start=False)
    done: list[int] = []
    grid = attack_grid(digits_model, x, targets, cfg, batch_size=7, progress=done.append)
    assert isinstance(grid, AttackGrid)
    assert grid.adv.shape == (2, 3, 5, 1, 8, 8) and grid.success.shape == (2, 3, 5)
    assert grid.adv.device.type == "cpu" and grid.success.dtype == torch.bool
    assert sum(done) == 30 and len(done) == 5  # ceil(30 / 7) batches
    assert grid.targets == (3, 8) and grid.strengths == cfg.strengths
    for ti, tgt in enumerate(targets):
        for si, e in enumerate(cfg.strengths):
            adv = grid.adv[ti, si]
            assert (_l2(adv - x) <= e + 1e-9).all()
            assert torch.equal(grid.success[ti, si], _success(digits_model, adv, torch.full((5,), tgt)))
    # batching changes nothing: every sample lands in its own slot with its own start
    whole = attack_grid(digits_model, x, targets, cfg, batch_size=1000)
    torch.testing.assert_close(whole.adv, grid.adv, atol=1e-10, rtol=0)
    assert torch.equal(whole.success, grid.success)
    assert not torch.equal(grid.adv[0], grid.adv[1])  # the two targets differ
    assert torch.equal(grid.n_success, grid.success.sum(-1))
    torch.testing.assert_close(grid.success_rate, grid.success.float().mean(-1))
    # success grows with strength on average
    assert grid.success_rate[:, -1].mean() >= grid.success_rate[:, 0].mean()


def test_attack_grid_is_reproducible_with_random_start_whatever_the_batch(digits_model64, batch):
    x, _, _ = batch
    x = x[:4].double()
    cfg = AttackConfig(strengths=(0.4, 0.8), steps=3, seed=11)
    a = attack_grid(digits_model64, x, [1], cfg, batch_size=3)
    b = attack_grid(digits_model64, x, [1], cfg, batch_size=3)
    c = attack_grid(digits_model64, x, [1], cfg, batch_size=8)
    assert torch.equal(a.adv, b.adv) and torch.equal(a.success, b.success)
    torch.testing.assert_close(a.adv, c.adv, atol=1e-10, rtol=0)  # random starts are per sample, not per batch
    d = attack_grid(digits_model64, x, [1], cfg, batch_size=3, seed=12)
    assert not torch.equal(a.adv, d.adv)


def test_bad_inputs_raise_clear_errors(digits_model, batch):
    for kwargs, msg in [
        ({"method": "cw"}, "unknown attack method"),
        ({"strengths": ()}, "must not be empty"),
        ({"strengths": (0.1, -0.2)}, "> 0"),
        ({"strengths": (0.0, 0.1)}, "> 0"),
        ({"strengths": (0.3, 0.2)}, "ascending"),
        ({"strengths": (0.1, 0.1)}, "ascending"),
        ({"strengths": (float("nan"),)}, "finite"),
        ({"steps": 0}, "steps"),
        ({"steps": 2.5}, "steps"),
        ({"step_ratio": 0.0}, "step_ratio"),
    ]:
        with pytest.raises(ValueError, match=msg):
            AttackConfig(**kwargs)
    assert AttackConfig(strengths=[0.1, 0.2]).strengths == (0.1, 0.2)  # lists are normalised
    x, _, t = batch
    cfg = AttackConfig()
    with pytest.raises(ValueError, match="one target and one eps"):
        attack(digits_model, x[:4], t[:3], 0.1, cfg)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        attack_grid(digits_model, x[:2] * 3, [1], cfg)
    with pytest.raises(ValueError, match="batch_size"):
        attack_grid(digits_model, x[:2], [1], cfg, batch_size=0)
