"""Targeted adversarial attacks, all strengths in one batched loop.

Every sample carries its own target class and its own strength ``eps``, so one PGD loop attacks
an image toward many targets at many strengths at once (DESIGN §2): the GPU sees one big batch
instead of ten small ones, and there is a single code path for CPU and GPU.

Space: ``eps`` is measured on the model's input, pixels in [0, 1] (adapters put normalisation
inside the model); every adversarial image is clipped to [0, 1].

Methods:
- ``pgd_l2`` (the paper's): random start uniform in the L2 ball as in torchattacks ``PGDL2``
  (gaussian direction, radius U(0,1) * eps), step ``alpha * g / ||g||_2`` with
  ``alpha = eps * step_ratio``, projection on to the L2 ball of radius eps, clip to [0, 1].
- ``pgd_linf``: uniform start in [-eps, eps], signed-gradient step, clamp to the eps box and [0, 1].
- ``fgsm``: the fast gradient sign method, an L-inf attack with ONE step of size eps and no random
  start: ``x - eps * sign(grad CE(model(x), target))``, clipped. ``steps``/``random_start`` are ignored.

The loss is the cross-entropy toward the target, minimised. Gradients are taken with
``torch.autograd.grad`` with respect to the input only, so nothing accumulates in the model.
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

METHODS = ("pgd_l2", "pgd_linf", "fgsm")
DEFAULT_STRENGTHS = tuple(round(0.05 * i, 2) for i in range(1, 11))


@dataclass(frozen=True)
class AttackConfig:
    """How to attack. ``strengths`` are eps values in [0,1] pixel space, ascending.

    ``bf16``: on CUDA, run forward/backward under ``torch.autocast(bfloat16)`` (speed; results
    differ slightly from fp32). Ignored on the CPU, which stays fp32. Inputs are channels_last
    on every device.
    """

    method: str = "pgd_l2"
    strengths: tuple[float, ...] = DEFAULT_STRENGTHS
    steps: int = 50
    step_ratio: float = 0.2  # step = eps * ratio (the paper: eps / 5)
    random_start: bool = True
    seed: int = 0
    bf16: bool = False

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"unknown attack method {self.method!r}; valid: {', '.join(METHODS)}")
        try:
            strengths = tuple(float(s) for s in self.strengths)
        except (TypeError, ValueError):
            raise ValueError(f"strengths must be a sequence of numbers, got {self.strengths!r}") from None
        if not strengths:
            raise ValueError("strengths must not be empty")
        if not all(math.isfinite(s) and s > 0 for s in strengths):
            raise ValueError(f"strengths must be finite and > 0, got {strengths}")
        if any(b <= a for a, b in zip(strengths, strengths[1:])):
            raise ValueError(f"strengths must be strictly ascending, got {strengths}")
        object.__setattr__(self, "strengths", strengths)
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 1:
            raise ValueError(f"steps must be an integer >= 1, got {self.steps!r}")
        if not (math.isfinite(self.step_ratio) and self.step_ratio > 0):
            raise ValueError(f"step_ratio must be > 0, got {self.step_ratio!r}")


def random_start(
    shape: Sequence[int], method: str, generator: torch.Generator | None = None, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """Unit-scale random start for ``shape`` (B, ...); ``attack`` multiplies it by each sample's eps.

    L2: gaussian direction times a radius U(0,1) (torchattacks PGDL2's start). L-inf: U(-1, 1).
    Drawn on the generator's device (CPU by default) and moved to ``device``.
    """
    gen_dev = generator.device if generator is not None else torch.device("cpu")
    if method == "pgd_l2":
        z = torch.randn(tuple(shape), generator=generator, device=gen_dev)
        r = torch.rand(shape[0], generator=generator, device=gen_dev)
        norms = z.flatten(1).norm(dim=1).clamp_min(1e-12)
        z = z * (r / norms).view(-1, *([1] * (len(shape) - 1)))
    elif method == "pgd_linf":
        z = torch.rand(tuple(shape), generator=generator, device=gen_dev) * 2 - 1
    else:
        raise ValueError(f"no random start for method {method!r}")
    return z.to(device)


def _loss_grad(model: nn.Module, x: torch.Tensor, targets: torch.Tensor, amp: bool) -> torch.Tensor:
    """Gradient of the summed target cross-entropy w.r.t. the input only.

    Sum, not mean: the per-sample gradient must not shrink with the batch size (it is normalised
    per sample anyway, and a mean over 10^4 samples could underflow in bf16).
    """
    x = x.detach().requires_grad_(True)
    ctx = torch.autocast("cuda", dtype=torch.bfloat16) if amp else nullcontext()
    with torch.enable_grad(), ctx:
        logits = model(x)
        loss = F.cross_entropy(logits.float(), targets, reduction="sum")
    (g,) = torch.autograd.grad(loss, x)
    return g


def _per_sample(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return v.view(-1, *([1] * (x.dim() - 1)))


def attack(
    model: nn.Module,
    images: torch.Tensor,
    targets: torch.Tensor,
    eps: torch.Tensor | float,
    cfg: AttackConfig,
    generator: torch.Generator | None = None,
    start: torch.Tensor | None = None,
) -> torch.Tensor:
    """Targeted attack of ``images`` (B,C,H,W in [0,1]) toward ``targets`` (long[B]) at ``eps`` (float[B] or scalar).

    One loop for the whole batch. ``generator`` draws the random start (default: a CPU generator
    seeded with ``cfg.seed``); ``start`` overrides it with a unit-scale start from
    :func:`random_start` (used to check that batching strengths changes nothing). Returns the
    detached adversarial images, same device/dtype as ``images``. The model is used in eval mode.
    """
    if images.dim() < 2:
        raise ValueError(f"images must be batched (B, C, H, W), got shape {tuple(images.shape)}")
    x = images.detach()
    b, device = x.shape[0], x.device
    targets = torch.as_tensor(targets, dtype=torch.long).to(device)
    eps_t = torch.as_tensor(eps, dtype=x.dtype).to(device)
    if eps_t.dim() == 0:
        eps_t = eps_t.expand(b)
    if targets.shape != (b,) or eps_t.shape != (b,):
        raise ValueError(f"need one target and one eps per image: images {b}, targets {tuple(targets.shape)}, eps {tuple(eps_t.shape)}")
    if b == 0:
        return x.clone()
    if bool((eps_t < 0).any()):
        raise ValueError("eps must be >= 0")
    amp = cfg.bf16 and device.type == "cuda"
    if x.dim() == 4:  # the layout convs want on CPUs and GPUs alike (see ModelAdapter.attack_model)
        x = x.contiguous(memory_format=torch.channels_last)
    was_training = model.training
    model.eval()
    try:
        eps_v = _per_sample(eps_t, x)
        if cfg.method == "fgsm":
            g = _loss_grad(model, x, targets, amp)
            return (x - eps_v * g.sign()).clamp(0, 1).detach()

        if start is not None:
            adv = (x + eps_v * start.to(device=device, dtype=x.dtype)).clamp(0, 1)
        elif cfg.random_start:
            if generator is None:
                generator = torch.Generator().manual_seed(cfg.seed)
            z = random_start(x.shape, cfg.method, generator, device).to(x.dtype)
            adv = (x + eps_v * z).clamp(0, 1)
        else:
            adv = x.clone()
        alpha = eps_v * cfg.step_ratio
        for _ in range(cfg.steps):
            g = _loss_grad(model, adv, targets, amp)
            if cfg.method == "pgd_l2":
                gn = _per_sample(g.flatten(1).norm(dim=1), x) + 1e-10
                adv = adv - alpha * g / gn
                delta = adv - x
                dn = _per_sample(delta.flatten(1).norm(dim=1), x)
                delta = delta * torch.where(dn > eps_v, eps_v / dn.clamp_min(1e-12), torch.ones_like(dn))
            else:  # pgd_linf
                adv = adv - alpha * g.sign()
                delta = torch.maximum(torch.minimum(adv - x, eps_v), -eps_v)
            adv = (x + delta).clamp(0, 1).detach()
        return adv
    finally:
        model.train(was_training)


@dataclass
class AttackGrid:
    """Every (target, strength, image) attack of one image set.

    ``adv``: [T,S,N,C,H,W] adversarial images (on ``adv_device``, CPU by default so that large
    grids do not hold GPU memory); ``success``: bool [T,S,N], argmax(model(adv)) == target.
    """

    adv: torch.Tensor
    success: torch.Tensor
    targets: tuple[int, ...] = field(default=())
    strengths: tuple[float, ...] = field(default=())

    @property
    def n_success(self) -> torch.Tensor:
        """long [T,S]: successfully attacked images per (target, strength)."""
        return self.success.sum(-1)

    @property
    def success_rate(self) -> torch.Tensor:
        """float [T,S]: fraction of images attacked successfully (NaN when there are no images)."""
        n = self.success.shape[-1]
        return self.n_success.float() / n if n else torch.full(self.success.shape[:-1], float("nan"))


def attack_grid(
    model: nn.Module,
    images: torch.Tensor,
    targets: Sequence[int],
    cfg: AttackConfig,
    batch_size: int = 512,
    generator: torch.Generator | None = None,
    progress: Callable[[int], object] | None = None,
    adv_device: torch.device | str | None = "cpu",
) -> AttackGrid:
    """Attack every image toward every target at every ``cfg.strengths``, ``batch_size`` samples at a time.

    Samples are enumerated target-major, then strength, then image, and cut into chunks of
    ``batch_size``; a chunk mixes strengths and targets (per-sample eps), so all strengths share
    one loop. The random start comes from ``generator`` (default: CPU, seeded with ``cfg.seed``),
    drawn chunk by chunk: results are reproducible for the same seed and ``batch_size``.
    ``progress(n)`` is called with the number of samples finished after each chunk (e.g.
    ``tqdm.update``). ``adv_device=None`` keeps the adversarial images on the images' device.
    """
    if images.dim() != 4:
        raise ValueError(f"images must be (N, C, H, W), got shape {tuple(images.shape)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    targets = tuple(int(t) for t in targets)
    if any(t < 0 for t in targets):
        raise ValueError(f"targets must be class indices >= 0, got {targets}")
    if images.numel() and (images.min() < 0 or images.max() > 1):
        raise ValueError("images must be in [0, 1] (the adapters' input space)")
    n, s_count, t_count = images.shape[0], len(cfg.strengths), len(targets)
    device = images.device
    out_dev = device if adv_device is None else torch.device(adv_device)
    if generator is None:
        generator = torch.Generator().manual_seed(cfg.seed)
    total = t_count * s_count * n
    adv = torch.empty((total, *images.shape[1:]), dtype=images.dtype, device=out_dev)
    success = torch.zeros(total, dtype=torch.bool)
    tgt_all = torch.tensor(targets, dtype=torch.long)
    str_all = torch.tensor(cfg.strengths, dtype=images.dtype)
    was_training = model.training
    model.eval()
    try:
        _run_chunks(model, images, tgt_all, str_all, cfg, batch_size, generator, progress, adv, success)
    finally:
        model.train(was_training)
    shape = (t_count, s_count, n)
    return AttackGrid(
        adv=adv.view(*shape, *images.shape[1:]),
        success=success.view(shape),
        targets=targets,
        strengths=cfg.strengths,
    )


def _run_chunks(model, images, tgt_all, str_all, cfg, batch_size, generator, progress, adv, success) -> None:
    n, s_count = images.shape[0], len(str_all)
    device, out_dev, total = images.device, adv.device, adv.shape[0]
    for lo in range(0, total, batch_size):
        idx = torch.arange(lo, min(lo + batch_size, total))
        img_i, rest = idx % n, idx // n
        s_i, t_i = rest % s_count, rest // s_count
        x = images[img_i.to(device)]
        tg = tgt_all[t_i].to(device)
        a = attack(model, x, tg, str_all[s_i].to(device), cfg, generator=generator)
        with torch.no_grad():
            pred = model(a).argmax(1)
        success[idx] = (pred == tg).cpu()
        adv[idx.to(out_dev)] = a.to(out_dev)
        if progress is not None:
            progress(len(idx))
