"""Feature visualisation: it must actually drive its neuron, reproducibly, with lucid's parameterisation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from bluff_ray.engine.featurevis import (
    COLOR_CORRELATION,
    FeatureVisConfig,
    channel_activations,
    preactivation_objective,
    render_channels,
    rfft2d_freqs,
    sample_affine,
    spectrum_scale,
    spectrum_to_image,
    to_valid_image,
    warp,
)

# Two channels per layer of the digits net (one per branch kind where possible).
NEURONS = [
    ("mixed3a", 3),
    ("mixed3a", 30),
    ("mixed3b", 10),
    ("mixed3b", 45),
    ("mixed4a", 5),
    ("mixed4a", 50),
    ("mixed4b", 20),
    ("mixed4b", 60),
]


@pytest.fixture(scope="module")
def rendered(digits):
    cfg = FeatureVisConfig(size=8, steps=128, seed=0)
    imgs, act = render_channels(digits, NEURONS, cfg)
    return cfg, imgs, act


def mean_act(adapter, images, neuron):
    """Mean over positions of the neuron's (post-ReLU) activation, for each image."""
    with torch.no_grad():
        _, acts = adapter.forward_with_activations(images, [neuron[0]])
    return acts[neuron[0]][:, neuron[1]].mean(dim=(1, 2))


def test_visualisation_beats_noise_and_other_neurons_visualisations(digits, rendered):
    _, imgs, act = rendered
    assert imgs.shape == (len(NEURONS), 1, 8, 8)
    assert float(imgs.min()) >= 0 and float(imgs.max()) <= 1
    g = torch.Generator().manual_seed(123)
    noise = torch.rand(16, 1, 8, 8, generator=g)
    for i, n in enumerate(NEURONS):
        own = mean_act(digits, imgs[i : i + 1], n).item()
        assert own > mean_act(digits, noise, n).max().item(), n  # beats 16 uniform-noise images
        others = [j for j, m in enumerate(NEURONS) if j != i]
        assert own > mean_act(digits, imgs[others], n).max().item(), n  # beats the other neurons' images
        assert own > 0
    # the returned activation is the spatial max on the final image
    _, mx = channel_activations(digits, imgs, NEURONS)
    assert torch.allclose(act, mx.detach(), atol=1e-5)


def test_deterministic_per_neuron_and_batch_independent(digits):
    """A neuron's picture depends on its seed, not on the other neurons of its batch. Checked in
    float64: in float32 another batch size rounds differently and 128 Adam steps amplify that."""
    import copy

    from bluff_ray.engine.models.digits import digits_adapter

    d64 = digits_adapter(copy.deepcopy(digits.model).double())
    neurons = [NEURONS[0], NEURONS[5], NEURONS[2]]
    imgs, _ = render_channels(d64, neurons, FeatureVisConfig(size=8, steps=128, seed=0, batch_size=8))
    small = FeatureVisConfig(size=8, steps=128, seed=0, batch_size=1)  # other batch split
    imgs2, _ = render_channels(d64, [NEURONS[5], NEURONS[0]], small)
    assert torch.allclose(imgs2[0], imgs[1], atol=1e-9)
    assert torch.allclose(imgs2[1], imgs[0], atol=1e-9)
    other_seed, _ = render_channels(d64, NEURONS[:1], FeatureVisConfig(size=8, steps=128, seed=1))
    assert (other_seed[0] - imgs[0]).abs().max() > 0.05


def test_render_leaves_the_model_alone(digits):
    before = {k: v.clone() for k, v in digits.model.state_dict().items()}
    render_channels(digits, NEURONS[:2], FeatureVisConfig(size=8, steps=3))
    for k, v in digits.model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert all(p.grad is None for p in digits.model.parameters())
    assert not digits.model.training


def test_bad_neurons_are_refused(digits):
    with pytest.raises(ValueError, match="unknown layer"):
        render_channels(digits, [("mixed9z", 0)], FeatureVisConfig(size=8, steps=1))
    with pytest.raises(ValueError, match="channels"):
        render_channels(digits, [("mixed3a", 40)], FeatureVisConfig(size=8, steps=1))
    with pytest.raises(ValueError):
        FeatureVisConfig(size=1)


def test_preactivation_objective_is_relu_consistent(digits):
    """Where the channel fires, leaky_relu(z) ~ relu(z) = the block's output (z taken from the BN)."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(len(NEURONS), 1, 8, 8, generator=g)
    with torch.no_grad():
        obj = preactivation_objective(digits, x, NEURONS, slope=0.0)
        means, _ = channel_activations(digits, x, NEURONS)
    assert torch.allclose(obj, means, atol=1e-5)


def test_fourier_parameterisation_matches_numpy():
    h, w = 6, 7
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.rfftfreq(w)[None, :]
    assert np.allclose(rfft2d_freqs(h, w).numpy(), np.sqrt(fx**2 + fy**2))
    scale = spectrum_scale(h, w)
    assert scale[0, 0] == pytest.approx(7.0)  # DC clamped to 1/max(h, w)
    assert scale[1, 1] == pytest.approx(1 / math.sqrt((1 / 6) ** 2 + (1 / 7) ** 2))
    # one coefficient -> a cosine, as numpy's inverse FFT (ortho) gives, /4 (lucid)
    spec = torch.zeros(1, 1, h, w // 2 + 1, 2)
    spec[0, 0, 1, 2, 0] = 1.0
    img = spectrum_to_image(spec, torch.ones(h, w // 2 + 1), h, w)[0, 0].numpy()
    ref = np.fft.irfft2(spec[0, 0, ..., 0].numpy() + 0j, s=(h, w), norm="ortho") / 4
    assert np.allclose(img, ref, atol=1e-6)


def test_colour_decorrelation_and_grey():
    assert COLOR_CORRELATION.norm(dim=0).max() == pytest.approx(1.0)
    x = torch.randn(2, 3, 4, 4)
    ref = torch.sigmoid(torch.einsum("dc,bchw->bdhw", COLOR_CORRELATION, x))
    assert torch.allclose(to_valid_image(x), ref, atol=1e-6)
    grey = torch.randn(2, 1, 4, 4)
    assert torch.allclose(to_valid_image(grey), torch.sigmoid(grey))
    with pytest.raises(ValueError):
        to_valid_image(torch.randn(1, 2, 4, 4))


def test_warp_identity_and_shift():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(1, 1, 8, 8, generator=g)
    eye = torch.tensor([[[1.0, 0, 0], [0, 1.0, 0]]])
    assert torch.allclose(warp(x, eye), x, atol=1e-6)
    shift = torch.tensor([[[1.0, 0, 2 / 8], [0, 1.0, 0]]])  # sample one pixel to the right
    out = warp(x, shift)
    assert torch.allclose(out[..., :-1], x[..., 1:], atol=1e-6)
    assert torch.allclose(out[..., -1], torch.full_like(out[..., -1], 0.5), atol=1e-6)  # grey outside
    cfg = FeatureVisConfig(size=8)
    a = sample_affine(torch.Generator().manual_seed(5), cfg)
    b = sample_affine(torch.Generator().manual_seed(5), cfg)
    assert torch.equal(a, b)
    det = float(a[0, 0] * a[1, 1] - a[0, 1] * a[1, 0])  # 1/scale^2 in [1/1.1^2, 1/0.9^2]
    assert 1 / 1.1**2 - 1e-6 <= det <= 1 / 0.9**2 + 1e-6
