"""Median, importance and roles against numpy and hand-worked answers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bluff_ray.engine.importance import (
    importance,
    median,
    ranked_channels,
    roles,
    spatial_max,
    spatial_max_activations,
)


@pytest.mark.parametrize("n", [1, 2, 3, 4, 7, 10])
@pytest.mark.parametrize("dim", [0, 1, -1])
def test_median_equals_numpy(n, dim):
    gen = torch.Generator().manual_seed(n)
    shape = [3, 4, 5]
    shape[dim] = n
    x = torch.randn(*shape, generator=gen, dtype=torch.float64)
    np.testing.assert_allclose(median(x, dim=dim).numpy(), np.median(x.numpy(), axis=dim), rtol=0, atol=0)


def test_median_even_count_averages_unlike_torch_median():
    x = torch.tensor([[1.0, 10.0], [3.0, 20.0], [7.0, 0.0], [2.0, 4.0]])
    assert median(x, 0).tolist() == [2.5, 7.0]  # sorted columns: 1,2,3,7 and 0,4,10,20
    assert torch.median(x, 0).values.tolist() == [2.0, 4.0]  # the lower middle, which we avoid
    assert median(torch.tensor([5, 1], dtype=torch.int64)).item() == 3.0


def test_median_empty_and_nan():
    empty = median(torch.empty(0, 3))
    assert empty.shape == (3,) and torch.isnan(empty).all()
    x = torch.tensor([[1.0, 2.0], [float("nan"), 3.0], [0.0, 4.0]])
    got = median(x, 0)
    want = np.median(x.numpy(), axis=0)
    assert np.isnan(got[0].item()) and np.isnan(want[0])
    assert got[1].item() == want[1] == 3.0


def test_spatial_max_and_importance_on_hand_made_maps():
    act = torch.zeros(3, 2, 2, 2)
    act[0, 0, 1, 1], act[1, 0, 0, 0], act[2, 0, 0, 1] = 5.0, 1.0, 3.0
    act[:, 1] = torch.tensor([[0.5, 0.0], [0.0, 0.25]])  # channel 1: max 0.5 in every image
    act[1, 1, 1, 0] = 9.0
    assert spatial_max(act).tolist() == [[5.0, 0.5], [1.0, 9.0], [3.0, 0.5]]
    imp = importance({"l": act, "m": act[:2]})
    assert imp["l"].tolist() == [3.0, 0.5]
    assert imp["m"].tolist() == [3.0, 4.75]  # two images: averages (5+1)/2 and (0.5+9)/2
    with pytest.raises(ValueError, match=r"\[N,C,H,W\]"):
        spatial_max(torch.zeros(2, 3))


def test_ranked_channels_ties_go_to_lower_channel():
    assert ranked_channels(torch.tensor([1.0, 3.0, 3.0, 2.0, 3.0])) == [1, 2, 4, 3, 0]
    with pytest.raises(ValueError, match="NaN"):
        ranked_channels(torch.tensor([1.0, float("nan")]))


def _acts_with_medians(values: list[float]) -> torch.Tensor:
    """Two images whose per-channel spatial maxima are v and v+2, so the median is v+1."""
    v = torch.tensor(values)
    act = torch.zeros(2, len(values), 3, 3)
    act[0, :, 2, 1] = v
    act[1, :, 0, 2] = v + 2
    return act


def test_roles_hand_made_example():
    # Layer "a", 10 channels, k=4 (exploited takes the first 2 per strength).
    # O = {0,1,2,3}; T = {4,3,2,5}  -> both {2,3}, original {0,1}, target {4,5}.
    orig = {"a": _acts_with_medians([8, 7, 6, 5, 0, 0, 0, 0, 0, 0]), "b": _acts_with_medians([1, 2, 3])}
    targ = {"a": _acts_with_medians([0, 0, 6, 7, 8, 5, 0, 0, 0, 0]), "b": _acts_with_medians([3, 2, 1])}
    # Strength 0: top-4 attacked = 6,7,8,9 (all new) -> first two by importance: 6, 7.
    s0 = {"a": _acts_with_medians([0, 0, 0, 0, 0, 0, 9, 8, 7, 1]), "b": _acts_with_medians([0, 0, 0])}
    # Strength 3: top-4 = 4 (target), then 7, 8, 9 tied at 2 -> new ones in order 7, 8, 9 -> 7, 8.
    s3 = {"a": _acts_with_medians([0, 0, 0, 0, 9, 0, 0, 2, 2, 2]), "b": _acts_with_medians([5, 0, 0])}
    imp_o, imp_t = importance(orig), importance(targ)
    no_success = {"a": torch.full((10,), float("nan")), "b": torch.full((3,), float("nan"))}
    got = roles(imp_o, imp_t, [importance(s0), None, no_success, importance(s3)], k=4)
    assert got["a"] == {
        0: "original",
        1: "original",
        2: "both",
        3: "both",
        4: "target",
        5: "target",
        6: "exploited",
        7: "exploited",
        8: "exploited",
    }  # 9 is in the top-4 at both strengths but never among the first k/2 new ones
    assert list(got["a"]) == [0, 1, 2, 3, 4, 5, 6, 7, 8]  # role order, then channel
    # Layer "b" has fewer channels than k: everything is in O and T, so nothing can be exploited.
    assert got["b"] == {0: "both", 1: "both", 2: "both"}


def test_roles_exploited_only_from_given_strengths_and_k_respected():
    imp_o = {"a": torch.tensor([5.0, 4, 3, 0, 0, 0])}
    imp_t = {"a": torch.tensor([0.0, 0, 3, 4, 5, 0])}
    att = {"a": torch.tensor([0.0, 0, 0, 0, 1, 2])}
    assert roles(imp_o, imp_t, [], k=2) == {"a": {0: "original", 1: "original", 4: "target", 3: "target"}}
    # k=2: O={0,1}, T={4,3}; attacked top-2 = {5,4} -> new {5}, first k//2=1 -> 5.
    assert roles(imp_o, imp_t, [att], k=2)["a"][5] == "exploited"
    # k=3: O={0,1,2}, T={4,3,2}; attacked top-3 = {5,4,0} -> new {5} -> 5; 2 is both.
    assert roles(imp_o, imp_t, [att], k=3)["a"] == {
        0: "original",
        1: "original",
        2: "both",
        3: "target",
        4: "target",
        5: "exploited",
    }
    with pytest.raises(ValueError, match="k must be"):
        roles(imp_o, imp_t, [], k=0)
    with pytest.raises(ValueError, match="shape"):
        roles(imp_o, {"a": torch.zeros(5)}, [], k=2)


def test_spatial_max_activations_batches_and_matches_forward():
    from bluff_ray.engine.models.digits import DigitsNet, digits_adapter

    torch.manual_seed(0)
    adapter = digits_adapter(DigitsNet())
    x = torch.rand(7, 1, 8, 8)
    got = spatial_max_activations(adapter, x, batch_size=3)
    with torch.no_grad():
        _, acts = adapter.forward_with_activations(x)
    assert list(got) == adapter.layer_names
    for name in adapter.layer_names:
        torch.testing.assert_close(got[name], acts[name].amax(dim=(2, 3)))
    empty = spatial_max_activations(adapter, x[:0])
    assert empty["mixed3a"].shape == (0, 40)
