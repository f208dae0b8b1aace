"""Feature visualisation of single channels (pure tensor code, any device).

The method is lucid's / lucent's (Olah et al., "Feature Visualization", Distill 2017), rewritten
here because lucent hard-codes ``cuda:0``, draws its transforms from numpy's global RNG (not
reproducible under a seed, not batch-independent) and assumes 3-channel ImageNet-normalised input,
while our adapters take [0, 1] images with normalisation inside the model and the digits net is a
one-channel 8x8 model.

- **Parameterisation**: the image is the inverse real FFT of a learned spectrum whose
  coefficients are scaled by ``1 / max(frequency, 1/size) ** decay_power`` (so every frequency
  is learned at a comparable rate), divided by lucid's constant 4.
- **Colour**: for RGB the three channels are decorrelated with lucid's ImageNet colour
  correlation matrix (square root of its SVD, column-norm normalised); one-channel (grey)
  models skip this step. A sigmoid maps the result into [0, 1], the adapters' input space.
- **Transforms** (robustness, as lucid's ``standard_transforms``): every step each image is
  jittered, scaled (0.9..1.1) and rotated (-10..10 degrees) by one random affine warp with
  grey (0.5) outside the image, then jittered again. Translations are fractions of the image
  size (lucid's 8 px and 4 px at 224 px) so tiny inputs (8x8 digits) get sub-pixel jitter.
- **Objective**: the mean over positions of the channel's activation in its mixed layer, Adam on
  the spectrum. The activation is ``relu(z)`` of the channel's pre-activation z (the BatchNorm
  output of the branch's last ``BasicConv2d``, see models/base.py); we optimise
  ``leaky_relu(z, 0.01)``, which has the same value wherever the channel fires but still has a
  gradient where it is silent. With the plain ReLU a channel that is zero on the grey starting
  image gets no gradient and stays blank forever (measured: 3 of 34 sampled digits channels).

Determinism: each neuron's initial spectrum and its per-step transforms come from a CPU
``torch.Generator`` seeded from ``(seed, layer, channel)``, so a neuron's image does not depend on
which other neurons share its batch or on which Ray actor renders it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from bluff_ray.engine.models.base import ModelAdapter
from bluff_ray.engine.seeds import derive_seed

# lucid.optvis.param.color: square root of the ImageNet colour covariance (SVD), per RGB channel.
_COLOR_CORRELATION_SVD_SQRT = torch.tensor(
    [[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]], dtype=torch.float32
)
COLOR_CORRELATION = _COLOR_CORRELATION_SVD_SQRT / _COLOR_CORRELATION_SVD_SQRT.norm(dim=0).max()


@dataclass(frozen=True)
class FeatureVisConfig:
    """How a channel is rendered.

    size: side of the square image the model sees (the adapter's input size for digits; 128 is
        the pipeline's default for 224-px ImageNet models, see ``assets.AssetConfig``).
    steps: Adam steps. lr: Adam learning rate on the spectrum (lucid's 0.05).
    decay_power: exponent of the 1/frequency spectrum scaling (lucid's 1).
    jitter1, jitter2: max translation before/after the warp, as a fraction of ``size``
        (lucid's 8 px and 4 px at 224 px).
    scale_range: min/max zoom. max_rotate_deg: max absolute rotation.
    batch_size: neurons optimised together (each with its own image; they do not interact).
    """

    size: int
    steps: int = 256
    lr: float = 0.05
    decay_power: float = 1.0
    jitter1: float = 8 / 224
    jitter2: float = 4 / 224
    scale_range: tuple[float, float] = (0.9, 1.1)
    max_rotate_deg: float = 10.0
    batch_size: int = 32
    seed: int = 0

    def __post_init__(self) -> None:
        if self.size < 2:
            raise ValueError(f"feature-vis size must be >= 2 px, got {self.size}")
        if self.steps < 0:
            raise ValueError(f"feature-vis steps must be >= 0, got {self.steps}")
        if self.batch_size < 1:
            raise ValueError(f"feature-vis batch_size must be >= 1, got {self.batch_size}")


def rfft2d_freqs(h: int, w: int) -> torch.Tensor:
    """Spatial frequency magnitude of each coefficient of ``torch.fft.rfft2`` on an h x w image."""
    fy = torch.fft.fftfreq(h)[:, None]
    fx = torch.fft.rfftfreq(w)[None, :]
    return torch.sqrt(fx * fx + fy * fy)


def spectrum_scale(h: int, w: int, decay_power: float = 1.0) -> torch.Tensor:
    """lucid's 1/f scaling of the learned spectrum, shape [h, w//2+1]."""
    freqs = rfft2d_freqs(h, w)
    return 1.0 / torch.clamp(freqs, min=1.0 / max(h, w)) ** decay_power


def spectrum_to_image(spectrum: torch.Tensor, scale: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Learned spectrum [B,C,h,w//2+1,2] (real, imag) -> unbounded image [B,C,h,w]."""
    coeffs = torch.view_as_complex(spectrum * scale[..., None])
    return torch.fft.irfft2(coeffs, s=(h, w), norm="ortho") / 4.0  # lucid's "magic" constant


def to_valid_image(x: torch.Tensor) -> torch.Tensor:
    """Unbounded image -> [0,1]; decorrelated colour for RGB, plain sigmoid for grey."""
    if x.shape[1] == 3:
        x = torch.einsum("bchw,dc->bdhw", x, COLOR_CORRELATION.to(x.device, x.dtype))
    elif x.shape[1] != 1:
        raise ValueError(f"feature vis supports 1 (grey) or 3 (RGB) channels, got {x.shape[1]}")
    return torch.sigmoid(x)


def neuron_seed(seed: int, layer: str, channel: int) -> int:
    """A stable 63-bit seed per neuron (independent of batch composition and process)."""
    return derive_seed("featurevis", seed, layer, channel)


def sample_affine(gen: torch.Generator, cfg: FeatureVisConfig) -> torch.Tensor:
    """One random jitter-scale-rotate-jitter warp as a 2x3 matrix in normalised coordinates.

    ``F.affine_grid`` maps output coordinates to input ones; all offsets are in [-1, 1] units,
    i.e. a fraction f of the image size is 2f.
    """
    u = torch.rand(6, generator=gen, dtype=torch.float64)
    t1 = (u[0:2] * 2 - 1) * 2 * cfg.jitter1
    lo, hi = cfg.scale_range
    s = lo + (hi - lo) * float(u[2])
    a = math.radians((float(u[3]) * 2 - 1) * cfg.max_rotate_deg)
    t2 = (u[4:6] * 2 - 1) * 2 * cfg.jitter2
    c, si = math.cos(a) / s, math.sin(a) / s
    tx, ty = float(t1[0] + t2[0]), float(t1[1] + t2[1])
    return torch.tensor([[c, -si, tx], [si, c, ty]], dtype=torch.float32)


def warp(images: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Apply per-image affine warps; pixels from outside the image are grey 0.5 (lucid's pad)."""
    grid = F.affine_grid(theta.to(images.device, images.dtype), list(images.shape), align_corners=False)
    return F.grid_sample(images - 0.5, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + 0.5


def _check_neurons(adapter: ModelAdapter, neurons: Sequence[tuple[str, int]]) -> None:
    sizes = {l.name: l.channels for l in adapter.layers}
    for layer, channel in neurons:
        if layer not in sizes:
            raise ValueError(f"unknown layer {layer!r}; {adapter.name} has {list(sizes)}")
        if not 0 <= int(channel) < sizes[layer]:
            raise ValueError(f"{layer} has {sizes[layer]} channels, got channel {channel}")


def channel_activations(
    adapter: ModelAdapter, images: torch.Tensor, neurons: Sequence[tuple[str, int]]
) -> tuple[torch.Tensor, torch.Tensor]:
    """For image b and neuron b: (mean, spatial max) of that channel's activation map, each [B]."""
    layers = sorted({l for l, _ in neurons})
    _, acts = adapter.forward_with_activations(images, layers)
    means, maxes = [], []
    for b, (layer, channel) in enumerate(neurons):
        fmap = acts[layer][b, int(channel)]
        means.append(fmap.mean())
        maxes.append(fmap.amax())
    return torch.stack(means), torch.stack(maxes)


def _last_unit(block: torch.nn.Module, branch: int) -> Any:
    """The BasicConv2d whose ReLU produces the channels of ``branch`` (0..3) of a mixed block."""
    b = getattr(block, f"branch{branch + 1}")
    return b[-1] if isinstance(b, torch.nn.Sequential) else b


def preactivation_objective(
    adapter: ModelAdapter, images: torch.Tensor, neurons: Sequence[tuple[str, int]], slope: float = 0.01
) -> torch.Tensor:
    """Per image b: mean over positions of leaky_relu(z) for neuron b's pre-activation z, [B]."""
    infos = {l.name: (i, l) for i, l in enumerate(adapter.layers)}
    wanted: dict[tuple[str, int], torch.nn.Module] = {}
    for layer, channel in neurons:
        i, info = infos[layer]
        wanted[(layer, info.branch_of(int(channel)))] = _last_unit(adapter.blocks[i], info.branch_of(int(channel))).bn
    captured: dict[tuple[str, int], torch.Tensor] = {}

    def hook(key):
        def fn(_m, _i, out):
            captured[key] = out
            return out.clone()  # BasicConv2d's ReLU is in-place: keep z intact for the objective

        return fn

    handles = [bn.register_forward_hook(hook(key)) for key, bn in wanted.items()]
    try:
        adapter.model(images)
    finally:
        for h in handles:
            h.remove()
    out = []
    for b, (layer, channel) in enumerate(neurons):
        info = infos[layer][1]
        br = info.branch_of(int(channel))
        z = captured[(layer, br)][b, int(channel) - info.branch_offset(br)]
        out.append(F.leaky_relu(z, slope).mean())
    return torch.stack(out)


def render_channels(
    adapter: ModelAdapter,
    neurons: Sequence[tuple[str, int]],
    cfg: FeatureVisConfig,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Feature visualisations of ``neurons`` ((layer, channel) pairs).

    Returns (images float[N, C, size, size] in [0,1] on the CPU, spatial-max activation float[N]
    of each neuron on its own final, untransformed image). The model's parameters are not
    modified (only the image spectrum is optimised); the model should be in eval mode.
    """
    _check_neurons(adapter, neurons)
    device = adapter.device  # the image lives where the model does (CPU demo or a GPU actor)
    dtype = next(adapter.model.parameters()).dtype
    c = adapter.input_shape[0]
    h = w = cfg.size
    scale = spectrum_scale(h, w, cfg.decay_power).to(device, dtype)
    out_imgs, out_act = [], []
    for start in range(0, len(neurons), cfg.batch_size):
        chunk = list(neurons[start : start + cfg.batch_size])
        gens = [torch.Generator().manual_seed(neuron_seed(cfg.seed, l, ch)) for l, ch in chunk]
        init = torch.stack([torch.randn(c, h, w // 2 + 1, 2, generator=g) * 0.01 for g in gens])
        spectrum = init.to(device, dtype).requires_grad_(True)
        opt = torch.optim.Adam([spectrum], lr=cfg.lr)
        for _ in range(cfg.steps):
            img = to_valid_image(spectrum_to_image(spectrum, scale, h, w))
            theta = torch.stack([sample_affine(g, cfg) for g in gens])
            means = preactivation_objective(adapter, warp(img, theta), chunk)
            # Neurons are independent (eval mode), so the sum keeps per-image gradients.
            # autograd.grad leaves the model's parameter .grad untouched (the adapter is shared).
            (spectrum.grad,) = torch.autograd.grad(-means.sum(), [spectrum])
            opt.step()
        with torch.no_grad():
            img = to_valid_image(spectrum_to_image(spectrum, scale, h, w))
            _, maxes = channel_activations(adapter, img, chunk)
        out_imgs.append(img.detach().float().cpu())
        out_act.append(maxes.detach().float().cpu())
    if not out_imgs:
        return torch.zeros(0, c, h, w), torch.zeros(0)
    return torch.cat(out_imgs), torch.cat(out_act)
