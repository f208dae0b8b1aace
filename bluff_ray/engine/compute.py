"""The engine's two entry points: one class's benign statistics, and one work unit of pairs.

Pure tensor code on any device (no Ray, no storage): the Ray actor, the tests, the benchmarks
and a notebook all call these same two functions.

- :func:`benign_stats`: one forward pass over a class's images gives which ones the model
  classifies correctly, the importance of every neuron (median of per-image spatial maxima) and
  the class's dataset-example candidates.
- :func:`compute_unit`: attack the original class's correctly classified images toward every
  target at every strength (one batched loop, :func:`attack.attack_stream`), and as soon as a
  target's attacks are done, summarise that pair (:func:`pathways.summarize_pair`) and then run
  its activation-patching experiments (:mod:`causal`), so adversarial images never pile up. The
  results are typed records; ``bluff_ray.results.rows`` turns them into the Arrow tables.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import torch

from bluff_ray.engine.attack import AttackConfig, Batching, attack_stream
from bluff_ray.engine.causal import Costs, Patching, PatchResult, block_modules, measure_costs
from bluff_ray.engine.importance import segment_median
from bluff_ray.engine.models.base import ModelAdapter
from bluff_ray.engine.pathways import PairSummary, PathwayConfig, importance_of, summarize_pair


@dataclass
class ClassData:
    """One class's benign images (all readable ones, in [0,1]) and the benign stage's results."""

    class_id: int
    images: torch.Tensor
    correct: torch.Tensor  # bool [N]: the model's prediction is class_id
    importance: dict[str, torch.Tensor] | None = None  # {layer: [C]}, over all images


@dataclass
class BenignStats:
    class_id: int
    n_images: int
    correct: np.ndarray  # bool [N]
    importance: dict[str, np.ndarray]  # {layer: float32 [C]}
    topk: pa.Table | None  # dataset-example candidates (patches.TOPK_SCHEMA)

    @property
    def n_correct(self) -> int:
        return int(self.correct.sum())

    @property
    def accuracy(self) -> float:
        return self.n_correct / self.n_images if self.n_images else math.nan


@torch.no_grad()
def benign_stats(
    adapter: ModelAdapter, images: torch.Tensor, class_id: int, n_examples: int = 0, batch_size: int = 256
) -> BenignStats:
    """Correctness, importance and (``n_examples`` > 0) example candidates of one class, one pass."""
    from bluff_ray.engine.patches import spatial_argmax, topk_rows, topk_table

    correct, maxima = adapter.activations(
        images,
        batch_size=batch_size,
        reduce=lambda _layer, act: spatial_argmax(act),
        logits=lambda out: out.argmax(1) == class_id,
    )
    importance, parts = {}, []
    for info in adapter.layers:
        vals, ys, xs = maxima[info.name]
        importance[info.name] = segment_median(vals, [vals.shape[0]])[0].float().cpu().numpy()
        if n_examples > 0 and vals.shape[0]:
            parts.append(topk_rows(info.name, vals.float().cpu(), ys.cpu(), xs.cpu(), class_id, n_examples))
    topk = topk_table(parts) if n_examples > 0 else None
    assert correct is not None  # logits= was given
    ok = correct.cpu().numpy()
    return BenignStats(int(class_id), int(images.shape[0]), ok, importance, topk)


@dataclass
class PairRecords:
    """One pair's results as typed columns: the pathway summary and (optional) its patching
    experiments. ``bluff_ray.results.rows`` turns them into the FORMAT.md tables."""

    summary: PairSummary
    patch: PatchResult | None = None


@dataclass
class UnitRecords:
    """One unit's pairs, in target order (the row-group order of the unit's files)."""

    pairs: list[PairRecords]
    targets: tuple[int, ...]
    part: int
    samples: int  # attacked (image, target, strength) samples
    timings: dict[str, float] = field(default_factory=dict)


def compute_unit(
    adapter: ModelAdapter,
    original: ClassData,
    targets: Sequence[ClassData],
    attack_cfg: AttackConfig,
    pathway_cfg: PathwayConfig,
    seed: int | Sequence[int],
    part: int = 0,
    batching: Batching | int = 512,
    progress: Callable[[int], object] | None = None,
) -> UnitRecords:
    """All pairs (original -> each target) of one work unit, as typed records
    (``results.rows.unit_tables`` makes the FORMAT.md rows).

    ``seed`` draws the attack's random starts (and the causal controls), so the unit's results do
    not depend on the batch size, the worker or a retry. A sequence (one seed per target, e.g.
    ``derive_seed("pair", ...)``) seeds each pair on its own, so a pair's results also do not depend
    on which other targets share the unit. Only ``original.correct`` images are
    attacked. The target order is the row-group order of the unit's files.
    """
    if original.images.dim() != 4 or original.images.shape[0] == 0:
        raise ValueError(f"class {original.class_id} has no images")
    for t in targets:
        if t.images.shape[0] == 0:
            raise ValueError(f"target class {t.class_id} has no images")
    if not isinstance(batching, Batching):
        batching = Batching(int(batching))
    device = adapter.device
    x_all = original.images.to(device)
    src = torch.nonzero(original.correct.to(device)).flatten()
    x_att = x_all[src]
    model = adapter.attack_model(
        compiled=attack_cfg.compile and device.type == "cuda", step=attack_cfg.step, bf16=attack_cfg.bf16
    )
    eager = adapter.attack_model()
    blocks = block_modules(eager, adapter.model, adapter.blocks) if pathway_cfg.causal else None
    costs = measure_costs(eager, blocks, x_att) if blocks is not None and x_att.shape[0] else None
    imp_o = original.importance
    timings = {"attack": 0.0, "summary": 0.0}
    records: list[PairRecords] = []
    n_att, s_count = x_att.shape[0], len(attack_cfg.strengths)
    t0 = time.perf_counter()
    stream = attack_stream(
        model,
        x_att,
        [t.class_id for t in targets],
        attack_cfg,
        batching,
        seed,
        progress,
        pad=(attack_cfg.compile or attack_cfg.cuda_graphs) and device.type == "cuda",
        verify=eager,
    )
    for ti, adv, ok in stream:
        t1 = time.perf_counter()
        timings["attack"] += t1 - t0
        target = targets[ti]
        counts = ok.sum(dim=1).cpu().tolist()
        flat = adv.reshape(s_count * n_att, *adv.shape[2:])[ok.reshape(-1)]
        summary = summarize_pair(
            adapter,
            original.class_id,
            target.class_id,
            x_all,
            target.images.to(device),
            flat,
            n_images=n_att,
            n_success=counts,
            strengths=attack_cfg.strengths,
            cfg=pathway_cfg,
            importance_original=imp_o,
            importance_target=target.importance,
        )
        patch = None
        if pathway_cfg.causal:  # a separate step after the summary, on the same attacked images
            t_p = time.perf_counter()
            patch = patch_pair(
                adapter,
                eager,
                blocks,
                original,
                target,
                x_att,
                flat,
                ok,
                counts,
                pathway_cfg,
                seed[ti] if isinstance(seed, Sequence) else seed,
                costs,
                1 if attack_cfg.method == "fgsm" else attack_cfg.steps,
            )
            timings["patching"] = timings.get("patching", 0.0) + time.perf_counter() - t_p
        records.append(PairRecords(summary, patch))
        del adv, ok, flat
        t0 = time.perf_counter()
        timings["summary"] += t0 - t1
    timings["attack"] += time.perf_counter() - t0
    return UnitRecords(records, tuple(t.class_id for t in targets), int(part), n_att * s_count * len(targets), timings)


def patch_pair(
    adapter: ModelAdapter,
    eager,
    blocks,
    original: ClassData,
    target: ClassData,
    x_att: torch.Tensor,
    flat: torch.Tensor,
    ok: torch.Tensor,
    counts: Sequence[int],
    cfg: PathwayConfig,
    seed: int,
    costs: Costs | None,
    steps: int,
) -> PatchResult:
    """The pair's activation-patching experiments (:mod:`causal`) on its successful attacks, within
    ``cfg.patch_budget`` of the pair's attack (``steps`` per image and strength) in FLOPs."""
    device = adapter.device
    n_att, s_count = x_att.shape[0], ok.shape[0]
    rows = torch.arange(n_att, device=device).expand(s_count, n_att)[ok]
    names = adapter.layer_names
    imp_o = original.importance or importance_of(adapter, original.images, cfg.batch_size)
    imp_t = target.importance or importance_of(adapter, target.images, cfg.batch_size)
    patching = Patching(
        eager,
        blocks,
        names,
        [l.channels for l in adapter.layers],
        flat,
        x_att[rows],
        seed=seed,
        batch_size=cfg.batch_size,
        patch_images=cfg.patch_images,
        draws=cfg.null_draws,
        curves=cfg.curves,
        costs=costs,
        budget=cfg.patch_budget * costs.step * n_att * s_count * steps if costs is not None else None,
    )
    return patching.run(
        original.class_id, target.class_id, [imp_o[n] for n in names], [imp_t[n] for n in names], counts, cfg.k
    )


def class_data(adapter: ModelAdapter, class_id: int, images: torch.Tensor, stats: BenignStats | None) -> ClassData:
    """A ClassData on the adapter's device from images and (optionally) the class's benign stats."""
    device = adapter.device
    dtype = next(adapter.model.parameters()).dtype
    if stats is None:
        stats = benign_stats(adapter, images, class_id)
    correct = torch.as_tensor(np.array(stats.correct, dtype=bool), device=device)
    if correct.shape[0] != images.shape[0]:
        raise ValueError(
            f"class {class_id}: {images.shape[0]} images but {correct.shape[0]} correctness flags "
            "(the image source changed since the benign stage)"
        )
    imp = {k: torch.as_tensor(np.array(v), device=device, dtype=dtype) for k, v in stats.importance.items()}
    return ClassData(int(class_id), images.to(device=device, dtype=dtype), correct, imp)


#: Caps of the automatic attack batch: CPUs gain nothing from huge batches; GPUs gain little beyond.
MAX_AUTO_BATCH = {"cpu": 2048, "cuda": 16384}
#: Fraction of the free memory the attack batch may use (the summary and patching need the rest).
MEMORY_FRACTION = 0.6
CPU_BUDGET_BYTES = 4 * 2**30


@dataclass(frozen=True)
class Footprint:
    """Bytes per attacked sample: what autograd keeps for the input gradient (``saved``) and the
    largest single activation (``largest``), in the attack model's dtype."""

    saved: int
    largest: int

    @property
    def reserve(self) -> int:
        """What an attack batch reserves per sample: the saved tensors plus the backward's working set
        of two largest activations (a layer's output and input gradients: the ~25 MB per sample
        measured for the reference step on an H200 is its ~22 MB saved plus ~1.75 of them), and at
        least 1.5x what is saved. The working set decides for the "lean" step, which saves little
        next to its largest activation; 1.5x for the others."""
        return max(int(1.5 * self.saved), self.saved + 2 * self.largest)


def sample_footprint(adapter: ModelAdapter, bf16: bool = False, step: str = "reference") -> Footprint:
    """Measured on one small forward pass of the attack model (``step``'s variant) on the adapter's
    device: a saved-tensors hook for what autograd keeps, forward hooks for the activations."""
    model = adapter.attack_model(step=step, bf16=bf16)
    device = adapter.device
    dtype = next(model.parameters()).dtype
    x = torch.rand(2, *adapter.input_shape, device=device, dtype=dtype).contiguous(memory_format=torch.channels_last)
    x.requires_grad_(True)
    seen: dict[int, int] = {}
    largest = [0]

    def pack(t: torch.Tensor):
        try:
            key = t.untyped_storage().data_ptr()
            seen[key] = max(seen.get(key, 0), t.untyped_storage().nbytes())
        except (RuntimeError, NotImplementedError):
            pass
        return t

    def output(_m, _i, o) -> None:
        if isinstance(o, torch.Tensor):
            largest[0] = max(largest[0], o.nbytes)

    hooks = [m.register_forward_hook(output) for m in model.modules()]  # containers too: ConvReLU calls no child
    amp = bf16 and device.type == "cuda"
    ctx = torch.autocast("cuda", dtype=torch.bfloat16) if amp else torch.autocast("cpu", enabled=False)
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), torch.enable_grad(), ctx:
            model(x).float().sum()
    finally:
        for h in hooks:
            h.remove()
    param_bytes = {p.untyped_storage().data_ptr() for p in model.parameters()}
    total = sum(v for k, v in seen.items() if k not in param_bytes)
    return Footprint(max(1, total // 2), max(1, largest[0] // 2))


def per_sample_bytes(adapter: ModelAdapter, bf16: bool = False, step: str = "reference") -> int:
    """Bytes autograd keeps per attacked sample (the tensors saved for the input gradient)."""
    return sample_footprint(adapter, bf16, step).saved


def auto_batch_size(adapter: ModelAdapter, bf16: bool = False, step: str = "reference") -> int:
    """An attack batch that fits the device: free memory (CUDA) or a fixed budget (CPU) divided by
    the measured per-sample footprint (``Footprint.reserve``), with room for the pair summaries;
    halved on OOM later."""
    device = adapter.device
    per = sample_footprint(adapter, bf16, step).reserve
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        budget = free * MEMORY_FRACTION
        cap = MAX_AUTO_BATCH["cuda"]
    else:
        budget = CPU_BUDGET_BYTES
        cap = MAX_AUTO_BATCH["cpu"]
    n = int(budget // per)
    if n >= 64:
        n -= n % 64
    return max(1, min(cap, n))
