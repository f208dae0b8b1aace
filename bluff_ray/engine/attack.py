"""Targeted adversarial attacks, all strengths in one batched loop.

Every sample carries its own target class and its own strength ``eps``, so one PGD loop attacks
an image toward many targets at many strengths at once: the GPU sees one big batch
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

import logging
import math
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from bluff_ray.engine.seeds import derive_seed
from bluff_ray.engine.settings import check, setting

log = logging.getLogger("bluff_ray.engine.attack")

METHODS = ("pgd_l2", "pgd_linf", "fgsm")
#: Attack-step variants (``AttackConfig.step``); all run the same loop, only the model differs
#: (``ModelAdapter.attack_model(step=...)``): "reference" is the BatchNorm-folded channels_last
#: model under bf16 autocast on CUDA; "fast" swaps its max-pools for
#: :class:`~bluff_ray.engine.maxpool.MaxPool2dNoIndices` and, with ``bf16`` on CUDA, holds bf16
#: weights so a step casts only its input; "lean" is "fast" whose conv units keep a 1-byte ReLU
#: mask instead of their input (:mod:`~bluff_ray.engine.conv_relu`) and whose pools keep their
#: winners: about 1 byte per activation, so larger batches. Which one is the default is decided
#: on a GPU (``bench/gpu.py``; see BENCHMARKS.md).
STEPS = ("reference", "fast", "lean")
DEFAULT_STRENGTHS = tuple(round(0.05 * i, 2) for i in range(1, 11))


@dataclass(frozen=True)
class AttackConfig:
    """How to attack. ``strengths`` are eps values in [0,1] pixel space, ascending.

    ``bf16``: on CUDA, run forward/backward under ``torch.autocast(bfloat16)`` (speed; results
    differ slightly from fp32). Ignored on the CPU, which stays fp32. Inputs are channels_last
    on every device. ``compile``: on CUDA, the pipeline runs the attack through
    ``torch.compile`` with one static batch shape (ignored on the CPU, where it was slower).
    """

    method: str = setting(
        "pgd_l2", "attack: pgd_l2 (the paper's), pgd_linf or fgsm", choices=METHODS, what="attack method"
    )
    strengths: tuple[float, ...] = setting(
        DEFAULT_STRENGTHS, "eps values, ascending (a run sets them at the top level)"
    )
    # Bounds: no real run needs more than 10,000 PGD steps (the paper uses 50) or a step above 10 eps.
    steps: int = setting(50, "PGD iterations", ge=1, le=10_000)
    step_ratio: float = setting(
        0.2, "PGD step size as a fraction of eps (the paper: 1/5)", gt=0, le=10, allow_inf_nan=False
    )
    random_start: bool = setting(True, "start PGD from a random point in the eps ball")
    seed: int = setting(0, "random-start seed (a run derives it from its top-level seed)", ge=0, lt=2**63)
    bf16: bool = setting(
        False, "on CUDA, run the attack under bfloat16 autocast (faster, slightly different numbers; ignored on CPU)"
    )
    compile: bool = setting(
        False,
        "on CUDA, run the attack through torch.compile with one static batch shape (ignored on CPU)",
        identity=False,
    )
    step: str = setting(
        "reference",
        "how the attack model runs the step: 'reference' (autocast per step), "
        "'fast' (max-pools without saved indices, bf16 weights cast once on CUDA) or "
        "'lean' (fast, and about 1 byte kept per activation for the input gradient)",
        choices=STEPS,
        what="attack step",
    )
    cuda_graphs: bool = setting(
        False,
        "on CUDA, capture the fixed-shape forward + input-gradient step once per "
        "batch shape as a CUDA graph and replay it (same kernels, same numbers)",
        identity=False,
    )

    def __post_init__(self) -> None:
        if self.cuda_graphs and self.compile:
            raise ValueError("attack.cuda_graphs and attack.compile exclude each other (choose one)")
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
        check(self)  # types, bounds and choices declared on the fields


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


def _loss_grad(
    model: nn.Module,
    x: torch.Tensor,
    targets: torch.Tensor,
    amp: bool,
    cast: torch.dtype | None = None,
    captured: bool = False,
) -> torch.Tensor:
    """Gradient of the summed target cross-entropy w.r.t. the input only.

    Sum, not mean: the per-sample gradient must not shrink with the batch size (it is normalised
    per sample anyway, and a mean over 10^4 samples could underflow in bf16). ``cast``: the
    model's weight dtype when it differs from the input's (bf16 weights of the "fast" step): the
    input is cast once inside the graph, so the gradient comes back in the input's dtype.
    ``captured``: inside a CUDA-graph capture, where autocast's weight-cast cache must be off.
    """
    x = x.detach().requires_grad_(True)
    ctx = torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=not captured) if amp else nullcontext()
    with torch.enable_grad(), ctx:
        logits = model(x if cast is None else x.to(cast))
        loss = F.cross_entropy(logits.float(), targets, reduction="sum")
    (g,) = torch.autograd.grad(loss, x)
    return g


def _weight_dtype(model: nn.Module) -> torch.dtype | None:
    p = next(model.parameters(), None)
    return None if p is None else p.dtype


#: Captured CUDA graphs per model: {model: {(shape, dtype, amp, cast): (graph, x, targets, grad)}}.
_GRAPHS: weakref.WeakKeyDictionary[nn.Module, dict] = weakref.WeakKeyDictionary()


def _graphed_step(
    model: nn.Module, x: torch.Tensor, targets: torch.Tensor, amp: bool, cast: torch.dtype | None
) -> torch.Tensor:
    """``_loss_grad`` replayed from a CUDA graph captured once per (model, batch shape).

    The returned gradient is the graph's static output buffer: valid until the next call with the
    same shape (the loop consumes it before that).
    """
    cache = _GRAPHS.setdefault(model, {})
    key = (tuple(x.shape), x.dtype, tuple(x.stride()), amp, cast)
    if key not in cache:
        sx, st = x.detach().clone(), targets.clone()
        side = torch.cuda.Stream(device=x.device)
        side.wait_stream(torch.cuda.current_stream(x.device))
        with torch.cuda.stream(side):  # warm-up outside the capture (cuDNN plans, Triton builds)
            for _ in range(2):
                _loss_grad(model, sx, st, amp, cast, captured=True)
        torch.cuda.current_stream(x.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            sg = _loss_grad(model, sx, st, amp, cast, captured=True)
        cache[key] = (graph, sx, st, sg)
        log.info("captured a CUDA graph of the attack step for batch shape %s", tuple(x.shape))
    graph, sx, st, sg = cache[key]
    sx.copy_(x)
    st.copy_(targets)
    graph.replay()
    return sg


def make_step(
    model: nn.Module, cfg: AttackConfig, device: torch.device, dtype: torch.dtype = torch.float32
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The attack's step function ``(adv, targets) -> input gradient`` for ``model`` and ``cfg``.

    The loop is the same for every variant; only this function differs. A model with
    lower-precision weights than the input (the "fast" bf16 model) gets the input cast once per
    step; otherwise ``cfg.bf16`` on CUDA means autocast. ``cfg.cuda_graphs`` on CUDA replays a
    captured graph (ignored on the CPU, like ``compile``).
    """
    w = _weight_dtype(model)
    cast = w if w is not None and w != dtype and w in (torch.bfloat16, torch.float16) else None
    amp = cfg.bf16 and device.type == "cuda" and cast is None
    if cfg.cuda_graphs and device.type == "cuda":
        return lambda x, t: _graphed_step(model, x, t, amp, cast)
    return lambda x, t: _loss_grad(model, x, t, amp, cast)


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
        raise ValueError(
            f"need one target and one eps per image: images {b}, targets {tuple(targets.shape)}, eps {tuple(eps_t.shape)}"
        )
    if b == 0:
        return x.clone()
    if bool((eps_t < 0).any()):
        raise ValueError("eps must be >= 0")
    step = make_step(model, cfg, device, x.dtype)
    if x.dim() == 4:  # the layout convs want on CPUs and GPUs alike (see ModelAdapter.attack_model)
        x = x.contiguous(memory_format=torch.channels_last)
    was_training = model.training
    model.eval()
    try:
        eps_v = _per_sample(eps_t, x)
        if cfg.method == "fgsm":
            g = step(x, targets)
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
            g = step(adv, targets)
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


#: Random starts are drawn in blocks of this many samples, each from its own generator, so a
#: sample's start does not depend on the attack batch size (an out-of-memory retry with half the
#: batch, or another GPU's automatic batch size, gives the same numbers).
START_BLOCK = 256


def block_seed(seed: int, block: int) -> int:
    """Seed of start block ``block``: block 0 uses ``seed`` itself, later blocks a hash of both."""
    if block == 0:
        return int(seed)
    return derive_seed("start", seed, block)


class StartNoise:
    """Unit-scale random starts for samples ``[0, total)`` of one grid, on ``device``.

    Block b holds samples ``[b*START_BLOCK, (b+1)*START_BLOCK)`` and is drawn (``random_start``)
    from a generator on ``device`` seeded with ``block_seed(seed, b)``, so any batch boundaries
    give every sample the same start. The last block is kept, so consecutive batches draw each
    block once.
    """

    def __init__(
        self,
        seed: int,
        method: str,
        sample_shape: Sequence[int],
        total: int,
        device: torch.device | str = "cpu",
        block: int = START_BLOCK,
    ):
        self.seed, self.method, self.shape = int(seed), method, tuple(sample_shape)
        self.total, self.device, self.block = int(total), torch.device(device), int(block)
        self._cached: tuple[int, torch.Tensor] | None = None

    def _block(self, b: int) -> torch.Tensor:
        if self._cached is None or self._cached[0] != b:
            n = min(self.block, self.total - b * self.block)
            gen = torch.Generator(device=self.device).manual_seed(block_seed(self.seed, b))
            self._cached = (b, random_start((n, *self.shape), self.method, gen, self.device))
        return self._cached[1]

    def get(self, lo: int, hi: int) -> torch.Tensor:
        parts = []
        for b in range(lo // self.block, (hi - 1) // self.block + 1):
            z = self._block(b)
            start = max(lo, b * self.block) - b * self.block
            stop = min(hi, (b + 1) * self.block) - b * self.block
            parts.append(z[start:stop])
        return parts[0] if len(parts) == 1 else torch.cat(parts)


class PairStartNoise:
    """Random starts with one seed per target (samples are target-major, ``per_target`` each):
    target ``t``'s samples get the starts of ``StartNoise(seeds[t], ...)``, so a pair's attack does
    not depend on which other targets share its loop (a results root can grow by selections)."""

    def __init__(
        self,
        seeds: Sequence[int],
        method: str,
        sample_shape: Sequence[int],
        per_target: int,
        device: torch.device | str = "cpu",
    ):
        self.per_target = int(per_target)
        self.noises = [StartNoise(s, method, sample_shape, per_target, device) for s in seeds]

    def get(self, lo: int, hi: int) -> torch.Tensor:
        parts = []
        for t in range(lo // self.per_target, (hi - 1) // self.per_target + 1):
            base = t * self.per_target
            parts.append(self.noises[t].get(max(lo, base) - base, min(hi, base + self.per_target) - base))
        return parts[0] if len(parts) == 1 else torch.cat(parts)


@dataclass
class Batching:
    """The attack batch size an actor uses; halved (and kept halved) after an out-of-memory error."""

    size: int
    halvings: int = 0

    def __post_init__(self) -> None:
        if self.size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.size}")


@dataclass
class AttackGrid:
    """Every (target, strength, image) attack of one image set.

    ``adv``: [T,S,N,C,H,W] adversarial images; ``success``: bool [T,S,N], argmax(model(adv)) ==
    target (fp32 forward). Both stay on the attack's device.
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


def _check_grid_inputs(images: torch.Tensor, targets: Sequence[int]) -> tuple[int, ...]:
    if images.dim() != 4:
        raise ValueError(f"images must be (N, C, H, W), got shape {tuple(images.shape)}")
    targets = tuple(int(t) for t in targets)
    if any(t < 0 for t in targets):
        raise ValueError(f"targets must be class indices >= 0, got {targets}")
    if images.numel() and (images.min() < 0 or images.max() > 1):
        raise ValueError("images must be in [0, 1] (the adapters' input space)")
    return targets


def attack_stream(
    model: nn.Module,
    images: torch.Tensor,
    targets: Sequence[int],
    cfg: AttackConfig,
    batching: Batching | int = 512,
    seed: int | Sequence[int] | None = None,
    progress: Callable[[int], object] | None = None,
    pad: bool = False,
    verify: nn.Module | None = None,
) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
    """Attack every image toward every target at every strength; yield each target as soon as done.

    Samples are enumerated target-major, then strength, then image, and cut into batches of
    ``batching.size``; a batch mixes strengths and targets (per-sample eps), so all strengths
    share one loop. Yields ``(target index, adv [S,N,C,H,W], success bool [S,N])`` on the images'
    device, so a caller can summarise a pair and free its images while the next ones are attacked
    (memory: about one batch plus one target). Random starts come from :class:`StartNoise`
    seeded with ``seed`` (default ``cfg.seed``), so results do not depend on the batch size up to
    float rounding; a sequence of seeds (one per target, :class:`PairStartNoise`) also makes each
    target's results independent of the other targets in the loop. On an out-of-memory error the
    batch is halved (``batching`` remembers it) and
    the same samples are attacked again. ``pad`` pads the last batch to the full size (one static
    shape for a compiled model or a CUDA graph). ``verify``: the model whose prediction on the
    adversarial image decides success (default ``model``; e.g. the fp32 reference model when
    ``model`` is the bf16 "fast" one).
    """
    targets = _check_grid_inputs(images, targets)
    if not isinstance(batching, Batching):
        batching = Batching(int(batching))
    n, s_count, t_count = images.shape[0], len(cfg.strengths), len(targets)
    total = t_count * s_count * n
    if total == 0:
        for ti in range(t_count):
            yield (
                ti,
                images.new_empty((s_count, 0, *images.shape[1:])),
                torch.zeros((s_count, 0), dtype=torch.bool, device=images.device),
            )
        return
    device = images.device
    per_target = s_count * n
    noise = _start_noise(cfg, seed, images, t_count, per_target)
    tgt_all = torch.tensor(targets, dtype=torch.long, device=device)
    str_all = torch.tensor(cfg.strengths, dtype=images.dtype, device=device)
    pending_adv: list[torch.Tensor] = []  # attacked samples [done_to, lo), not yet yielded
    pending_ok: list[torch.Tensor] = []
    next_target, lo = 0, 0
    was_training = model.training
    model.eval()
    try:
        while lo < total:
            hi = min(lo + batching.size, total)
            try:
                a, ok = _attack_batch(
                    model,
                    images,
                    tgt_all,
                    str_all,
                    cfg,
                    noise,
                    lo,
                    hi,
                    n,
                    s_count,
                    batching.size if pad else None,
                    verify,
                )
            except torch.OutOfMemoryError:
                if batching.size == 1:
                    raise
                _halve(batching, device)
                continue
            pending_adv.append(a)
            pending_ok.append(ok)
            lo = hi
            if progress is not None:
                progress(len(a))
            while next_target < t_count and (next_target + 1) * per_target <= lo:
                all_adv, all_ok = torch.cat(pending_adv), torch.cat(pending_ok)
                yield (
                    next_target,
                    all_adv[:per_target].view(s_count, n, *images.shape[1:]),
                    all_ok[:per_target].view(s_count, n),
                )
                pending_adv, pending_ok = [all_adv[per_target:]], [all_ok[per_target:]]
                next_target += 1
    finally:
        model.train(was_training)


def _start_noise(
    cfg: AttackConfig, seed: int | Sequence[int] | None, images: torch.Tensor, t_count: int, per_target: int
) -> StartNoise | PairStartNoise | None:
    """The random starts of the grid: none (no random start, FGSM), one stream per target (a seed
    per target) or one stream for the whole grid."""
    if not (cfg.random_start and cfg.method != "fgsm"):
        return None
    if isinstance(seed, Sequence):
        if len(seed) != t_count:
            raise ValueError(f"{len(seed)} seeds for {t_count} targets")
        return PairStartNoise(seed, cfg.method, images.shape[1:], per_target, images.device)
    base = cfg.seed if seed is None else seed
    return StartNoise(base, cfg.method, images.shape[1:], t_count * per_target, images.device)


def _halve(batching: Batching, device: torch.device) -> None:
    """After an out-of-memory error: half the batch (kept for the rest of the run)."""
    batching.size //= 2
    batching.halvings += 1
    log.warning("out of memory: attack batch halved to %d samples; retrying", batching.size)
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _attack_batch(model, images, tgt_all, str_all, cfg, noise, lo, hi, n, s_count, pad_to, verify=None):
    idx = torch.arange(lo, hi, device=images.device)
    img_i, rest = idx % n, idx // n
    s_i, t_i = rest % s_count, rest // s_count
    x, tg, eps = images[img_i], tgt_all[t_i], str_all[s_i]
    start = noise.get(lo, hi).to(images.dtype) if noise is not None else None
    m = hi - lo
    if pad_to is not None and m < pad_to:  # repeat the first sample: one shape for a compiled model
        fill = pad_to - m
        x = torch.cat([x, x[:1].expand(fill, *x.shape[1:])])
        tg, eps = torch.cat([tg, tg[:1].expand(fill)]), torch.cat([eps, eps[:1].expand(fill)])
        if start is not None:
            start = torch.cat([start, start[:1].expand(fill, *start.shape[1:])])
    a = attack(model, x, tg, eps, cfg, start=start)
    check = model if verify is None else verify
    w = _weight_dtype(check)
    with torch.no_grad():
        pred = check(a.to(w) if w in (torch.bfloat16, torch.float16) else a).argmax(1)
    return a[:m], (pred == tg)[:m]


def attack_grid(
    model: nn.Module,
    images: torch.Tensor,
    targets: Sequence[int],
    cfg: AttackConfig,
    batch_size: int = 512,
    seed: int | None = None,
    progress: Callable[[int], object] | None = None,
) -> AttackGrid:
    """Every (target, strength, image) attack of ``images`` at once (:func:`attack_stream`, collected).

    Returns ``AttackGrid`` with ``adv`` [T,S,N,C,H,W] and ``success`` [T,S,N] on the images'
    device. Reproducible for the same seed whatever ``batch_size`` (up to float rounding).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    targets = _check_grid_inputs(images, targets)
    advs, oks = [], []
    for _, a, ok in attack_stream(model, images, targets, cfg, Batching(batch_size), seed, progress):
        advs.append(a)
        oks.append(ok)
    s_count, n = len(cfg.strengths), images.shape[0]
    adv = torch.stack(advs) if advs else images.new_empty((0, s_count, n, *images.shape[1:]))
    success = torch.stack(oks) if oks else torch.zeros((0, s_count, n), dtype=torch.bool, device=images.device)
    return AttackGrid(adv=adv, success=success, targets=targets, strengths=cfg.strengths)
