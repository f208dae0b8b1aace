"""Activation patching: do the exploited neurons carry the attack, more than chance? (docs/FORMAT.md ``causal``)

Per image, the logit difference LD = z_original - z_target. Denoising patches a set of neurons of
the attacked image with their values on the same image before the attack and measures the
recovery R = (LD_patched - LD_adv) / (LD_clean - LD_adv) (0: no effect, 1: the benign logit gap
is back); noising patches the set's attacked values into the clean image, N = (LD_clean -
LD_noised) / (LD_clean - LD_adv).

Why the design is what it is (an independent review found the earlier "defused" numbers showed
nothing): the successful images of each strength are split in two; the exploited neurons are
selected on one half (:func:`select`) and patched on the other (held-out) half. Each set is
compared with a true null: ``draws`` sets of the same size drawn uniformly from the layer minus
the set (seeded by :func:`bluff_ray.engine.seeds.derive_seed`, so they do not depend on the batch
or the worker), and with a control matched on how much the attack moved each channel (median
||a_adv - a_clean||, nearest-neighbour draws). Dose-response curves patch the first k channels
of an order (exploited rank, |Δa| rank, random permutations) at k = 1, 2, 4, ... 32 and the whole
layer, at the strengths ``curves`` names (by default the one with the most held-out images: the
curves are the costly part). The "top original/target" set is a competing hypothesis, not a control.

Cost: all experiments that start at the same layer share one forward pass up to that layer; the
batch is expanded there (one copy per experiment) by a forward hook (:meth:`Patching.logits`).
Patching uses the attack model (BatchNorm folded), the function that decided the attack's success.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from bluff_ray.engine.importance import median, role_codes
from bluff_ray.engine.seeds import derive_seed

ALL = "all"
#: Null draws per set (and random orders per curve): the review standard is at least 16.
NULL_DRAWS = 16
#: Held-out images patched per strength at most (the first ones, in image order).
PATCH_IMAGES = 32
#: The patching of a pair may cost this share of its attack, in FLOPs (:func:`allocate_images`).
PATCH_BUDGET = 0.15
#: Dose-response points below the whole layer.
CURVE_K = (1, 2, 4, 8, 16, 32)
#: Candidates per channel of a matched draw: the channels nearest in |Δa| rank outside the set.
MATCH_POOL = 4
SETS = ("exploited", "exploited_union", "top_original_target", "top_delta")
ORDERS = ("exploited", "delta", "random")
#: Strengths with dose-response curves (``PathwayConfig.curves``): none, the one with the most
#: held-out images, or every strength with held-out images (a curve strength costs about 3x one
#: without: under the budget, fewer images per strength).
CURVES = ("none", "one", "every")


# --- the records the engine returns -------------------------------------------------------------
@dataclass
class CausalRows:
    """The pair's ``causal`` and ``causal_curve`` rows as columns (``results.rows`` makes the tables)."""

    target: int
    rows: dict[str, list] = field(default_factory=dict)
    curve: dict[str, list] = field(default_factory=dict)

    def add(self, table: str, **values) -> None:
        cols = getattr(self, table)
        for k, v in values.items():
            cols.setdefault(k, []).append(v)


@dataclass
class PatchResult:
    effect: dict[tuple[str, int], np.ndarray]  # (layer, channel) -> [S] single-neuron R (NaN: not measured)
    table: CausalRows
    defused: tuple[float, ...]  # per strength, the all-layer exploited set's defused share (NaN: none)


def block_modules(model: nn.Module, reference: nn.Module, blocks: Sequence[nn.Module]) -> list[nn.Module]:
    """The modules of ``model`` (a deep copy of ``reference``, e.g. the attack model) that
    correspond to ``blocks`` of ``reference``, found by their names."""
    names = {id(m): n for n, m in reference.named_modules()}
    mods = dict(model.named_modules())
    try:
        return [mods[names[id(b)]] for b in blocks]
    except KeyError:
        raise ValueError("the model does not have the adapter's mixed blocks (not a copy of adapter.model)") from None


@dataclass
class Experiment:
    """Channels to patch per layer index, as a bool mask [n_images, C] (or [C], every image) per layer."""

    masks: dict[int, torch.Tensor]


# --- statistics (pure functions, tested on their own) --------------------------------------------
def recovery(ld_patched: torch.Tensor, ld_clean: torch.Tensor, ld_adv: torch.Tensor) -> torch.Tensor:
    """R = (LD_patched - LD_adv) / (LD_clean - LD_adv); NaN where the gap is 0."""
    gap = ld_clean - ld_adv
    return torch.where(gap > 0, (ld_patched - ld_adv) / gap.clamp_min(1e-30), torch.full_like(gap, math.nan))


def null_summary(value: float, null: np.ndarray) -> dict[str, float]:
    """Mean, SD, 5/95 % quantiles of the null, the value's percentile in it (ties count half) and
    p = (1 + #{null >= value}) / (m + 1)."""
    null = np.asarray(null, np.float64)
    null = null[np.isfinite(null)]
    m = len(null)
    if m == 0 or not math.isfinite(value):
        return dict(mean=math.nan, sd=math.nan, q05=math.nan, q95=math.nan, percentile=math.nan, p=math.nan)
    below, ties = float((null < value).sum()), float((null == value).sum())
    return dict(
        mean=float(null.mean()),
        sd=float(null.std(ddof=1)) if m > 1 else 0.0,
        q05=float(np.quantile(null, 0.05)),
        q95=float(np.quantile(null, 0.95)),
        percentile=100.0 * (below + 0.5 * ties) / m,
        p=(1.0 + float((null >= value).sum())) / (m + 1),
    )


def curve_summary(ks: Sequence[int], r: Sequence[float], channels: int) -> tuple[float, float]:
    """(area under R vs log2 k from k=1 to the whole layer, divided by log2 C; k50: the smallest k,
    interpolated in log2 k, where R reaches 0.5)."""
    x, y = np.log2(np.asarray(ks, np.float64)), np.asarray(r, np.float64)
    if len(x) < 2 or not np.isfinite(y).all():
        return math.nan, math.nan
    auc = float(np.sum((y[1:] + y[:-1]) / 2 * np.diff(x)) / (x[-1] - x[0]))
    k50 = math.nan
    if y[0] >= 0.5:
        k50 = float(ks[0])
    else:
        for i in range(1, len(y)):
            if y[i] >= 0.5:
                f = (0.5 - y[i - 1]) / (y[i] - y[i - 1])
                k50 = float(2 ** (x[i - 1] + f * (x[i] - x[i - 1])))
                break
    return auc, k50


def split_images(n_success: Sequence[int], cap: int | None) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per strength, the rows (into the strength-by-strength batch) that select the neurons (even
    positions) and the held-out rows that are patched (odd positions, the first ``cap``)."""
    sel, held, start = [], [], 0
    for n in n_success:
        rows = np.arange(start, start + int(n))
        sel.append(rows[0::2])
        held.append(rows[1::2][:cap] if cap is not None else rows[1::2])
        start += int(n)
    return sel, held


@dataclass(frozen=True)
class Costs:
    """What a model's passes cost, in forward passes of one image (FLOPs, ``torch.utils.flop_counter``).

    ``rest[li]``: the network after mixed block ``li`` (what an experiment patching first at ``li``
    runs); ``step``: one attack step (forward + input gradient), about 2."""

    rest: tuple[float, ...]
    step: float


def measure_costs(model: nn.Module, blocks: Sequence[nn.Module], example: torch.Tensor) -> Costs:
    """:class:`Costs` of ``model`` counted on one image like ``example`` (a forward and an input
    gradient at batch 1: negligible next to a pair)."""
    from torch.utils.flop_counter import FlopCounterMode

    x = _layout(example[:1].detach())
    seen: dict[int, int] = {}

    def at(li: int):
        def hook(_m, _i, _o) -> None:
            seen.setdefault(li, fc.get_total_flops())

        return hook

    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        hooks = [b.register_forward_hook(at(li)) for li, b in enumerate(blocks)]
        try:
            model(x)
        finally:
            for h in hooks:
                h.remove()
    total = fc.get_total_flops()
    if total <= 0 or len(seen) != len(blocks):
        raise ValueError("cannot count the model's FLOPs per mixed block (no convolutions or blocks not run)")
    xg = x.clone().requires_grad_(True)
    with FlopCounterMode(display=False) as fc, torch.enable_grad():
        model(xg).float().sum().backward(inputs=[xg])
    return Costs(tuple(1.0 - seen[li] / total for li in range(len(blocks))), fc.get_total_flops() / total)


def allocate_images(costs: Sequence[float], available: Sequence[int], budget: float | None) -> list[int]:
    """Held-out images to patch per strength: the same number n at every strength (all it has where
    a strength has fewer), the largest n whose total ``sum(n_s * costs[s])`` fits ``budget``; at
    least one image per strength with held-out images even when that exceeds it. ``budget`` None:
    every available image."""
    if budget is None:
        return list(available)
    best = 1
    for n in range(2, max(available, default=0) + 1):
        if sum(min(a, n) * c for a, c in zip(available, costs)) > budget:
            break
        best = n
    return [min(a, best) for a in available]


def null_draw(seed: int, target: int, layer: int, strength: int, draw: int, outside: np.ndarray) -> np.ndarray:
    """A random order of the channels ``outside`` the set (its first n is a null set, its first
    k a point of the random dose-response curve); a function of the seed path only."""
    g = torch.Generator().manual_seed(derive_seed("causal-null", seed, target, layer, strength, draw))
    return outside[torch.randperm(len(outside), generator=g).numpy()]


def matched_draw(
    seed: int, target: int, layer: int, strength: int, draw: int, chosen: np.ndarray, delta: np.ndarray
) -> np.ndarray:
    """A set matched to ``chosen`` on |Δa|: for each of its channels, one of the MATCH_POOL channels
    outside the set nearest in |Δa| rank (not yet drawn), uniformly."""
    g = torch.Generator().manual_seed(derive_seed("causal-matched", seed, target, layer, strength, draw))
    order = np.argsort(-delta, kind="stable")
    rank = np.empty(len(delta), np.int64)
    rank[order] = np.arange(len(delta))
    free = np.ones(len(delta), bool)
    free[chosen] = False
    out = []
    for c in chosen:
        cand = np.flatnonzero(free)
        if len(cand) == 0:
            break
        near = cand[np.argsort(np.abs(rank[cand] - rank[c]), kind="stable")[:MATCH_POOL]]
        pick = int(near[int(torch.randint(len(near), (1,), generator=g))])
        out.append(pick)
        free[pick] = False
    return np.asarray(out, np.int64)


# --- selection on the first half -----------------------------------------------------------------
@dataclass
class LayerSelection:
    """One layer's sets per strength, chosen on the selection images only."""

    exploited: list[np.ndarray]  # per strength: exploited channels, in rank order
    union: np.ndarray  # over strengths
    top_ot: np.ndarray  # O ∪ T by max(original, target) importance, descending
    exploited_rank: list[np.ndarray]  # per strength: every channel, exploited criterion order
    delta: np.ndarray  # [S, C] median ||a_adv - a_clean|| per channel
    channels: int = 0


def select(
    layer_max: torch.Tensor,
    layer_delta: torch.Tensor,
    sel: Sequence[np.ndarray],
    imp_o: torch.Tensor,
    imp_t: torch.Tensor,
    k: int,
) -> LayerSelection:
    """Exploited neurons per strength (roles of FORMAT.md on the selection images), the orders."""
    c = imp_o.shape[0]
    s_count = len(sel)
    ia = torch.full((s_count, c), math.nan, dtype=torch.float64)
    delta = np.full((s_count, c), np.nan)
    for s, rows in enumerate(sel):
        if len(rows):
            idx = torch.as_tensor(rows)
            ia[s] = median(layer_max[idx].double(), dim=0)
            delta[s] = median(layer_delta[idx].double(), dim=0).numpy()
    io, it = imp_o.detach().double().cpu(), imp_t.detach().double().cpu()
    mask = role_codes(io, it, ia, k)[1].numpy()
    kk = min(k, c)
    o = np.argsort(-io.numpy(), kind="stable")[:kk]
    t = np.argsort(-it.numpy(), kind="stable")[:kk]
    ot = np.union1d(o, t)
    top_ot = ot[np.argsort(-np.maximum(io.numpy()[ot], it.numpy()[ot]), kind="stable")]
    in_ot = np.zeros(c, bool)
    in_ot[ot] = True
    exploited, ranks = [], []
    for s in range(s_count):
        a = np.nan_to_num(ia[s].numpy(), nan=-np.inf)
        rank = np.lexsort((np.arange(c), -a, in_ot))  # fresh channels first, by attacked importance
        ranks.append(rank)
        bit = (mask >> s) & 1
        exploited.append(np.array([ch for ch in rank if bit[ch]], np.int64))
    union = np.flatnonzero(mask > 0)
    return LayerSelection(exploited, union, top_ot, ranks, delta, c)


# --- the experiments -----------------------------------------------------------------------------
class Patching:
    """The patching experiments of one pair (``run``) over its successfully attacked images.

    ``adversarial``: those images, strength by strength (``n_success[s]`` rows for strength s);
    ``benign``: the same images before the attack (row for row); ``model``/``blocks``: the
    network the experiments run through and its mixed blocks; ``seed``: the pair's seed (null and
    matched draws are derived from it per target, layer, strength and draw).
    """

    def __init__(
        self,
        model: nn.Module,
        blocks: Sequence[nn.Module],
        layer_names: Sequence[str],
        channels: Sequence[int],
        adversarial: torch.Tensor,
        benign: torch.Tensor,
        seed: int,
        batch_size: int = 64,
        patch_images: int | None = PATCH_IMAGES,
        draws: int = NULL_DRAWS,
        curves: str = "one",
        costs: Costs | None = None,
        budget: float | None = None,
    ):
        if curves not in CURVES:
            raise ValueError(f"unknown curves {curves!r}; valid: {', '.join(CURVES)}")
        if adversarial.shape != benign.shape:
            raise ValueError(f"adversarial {tuple(adversarial.shape)} and benign {tuple(benign.shape)} images differ")
        if draws < 2:
            raise ValueError(f"draws must be >= 2, got {draws}")
        self.model, self.blocks, self.names = model, list(blocks), list(layer_names)
        self.channels = list(channels)
        self.adversarial, self.benign = adversarial, benign
        self.seed, self.batch_size = int(seed), int(batch_size)
        self.patch_images, self.draws, self.curves = patch_images, int(draws), curves
        if budget is not None and costs is None:
            raise ValueError("a patching budget needs the model's costs (measure_costs)")
        #: the pair's patching budget in forward passes of one image (None: no budget) and the costs
        self.costs, self.budget = costs, budget
        #: draws of the secondary controls (matched, noising null): half as many, at least 8 (cost)
        self.control_draws = max(8, self.draws // 2)

    def _subset(self, rows: np.ndarray) -> Patching:
        sub = torch.as_tensor(rows, device=self.adversarial.device, dtype=torch.long)
        return Patching(
            self.model,
            self.blocks,
            self.names,
            self.channels,
            self.adversarial[sub],
            self.benign[sub],
            self.seed,
            self.batch_size,
            None,
            self.draws,
            self.curves,
        )

    def run(
        self,
        original: int,
        target: int,
        imp_o: Sequence[torch.Tensor],
        imp_t: Sequence[torch.Tensor],
        n_success: Sequence[int],
        k: int,
    ) -> PatchResult:
        """Every experiment of the pair: select on one half, patch the other (module docstring)."""
        s_count = len(n_success)
        sel, held = split_images(n_success, self.patch_images)
        out = CausalRows(int(target))
        effect: dict[tuple[str, int], np.ndarray] = {}
        defused = [math.nan] * s_count
        if not any(len(h) for h in held):
            return PatchResult(effect, out, tuple(defused))
        picks = self._selection(sel, imp_o, imp_t, k)
        counts = [len(h) for h in held]
        curve_s = max(range(s_count), key=lambda s: (counts[s], s))
        plans = {
            s: self._plan_strength(s, picks, target, self.curves == "every" or (self.curves == "one" and s == curve_s))
            for s in range(s_count)
            if counts[s]
        }
        n_images = counts
        if self.budget is not None:
            per_image = [self._plan_cost(plans[s]) if s in plans else 0.0 for s in range(s_count)]
            left = self.budget - 2.0 * sum(len(r) for r in sel)  # the selection: 2 forward passes per image
            n_images = allocate_images(per_image, counts, left)
        for s, plan in plans.items():
            if not plan.exps:
                continue
            part = self._subset(held[s][: n_images[s]])
            base = part._baseline(original, target)
            defused[s] = part._execute(out, effect, s, plan, picks, base, original, target)
        return PatchResult(effect, out, tuple(defused))

    def _plan_cost(self, plan: _Plan) -> float:
        """Forward passes per held-out image of ``plan``: the baseline (clean, attacked), and per
        direction the source activations, the carrier rows and each experiment's rest of the network."""
        assert self.costs is not None
        cost = 2.0
        for noise in (False, True):
            firsts = [min(e.masks) for e, nz in plan.exps if nz == noise]
            if firsts:
                cost += 2.0 + sum(self.costs.rest[li] for li in firsts)
        return cost

    def _selection(self, sel, imp_o, imp_t, k) -> list[LayerSelection]:
        rows = np.concatenate(sel) if sel else np.zeros(0, np.int64)
        maxes, deltas = self._selection_stats(rows)
        pos = np.full(self.adversarial.shape[0], -1)
        pos[rows] = np.arange(len(rows))
        local = [pos[r] for r in sel]
        return [select(maxes[li], deltas[li], local, imp_o[li], imp_t[li], k) for li in range(len(self.names))]

    @torch.no_grad()
    def _selection_stats(self, rows: np.ndarray) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Per layer: spatial max of the attacked activations [n, C] and ||a_adv - a_clean|| [n, C]."""
        layers = list(range(len(self.names)))
        maxes: list[list[torch.Tensor]] = [[] for _ in layers]
        deltas: list[list[torch.Tensor]] = [[] for _ in layers]
        for lo in range(0, len(rows), self.batch_size):
            idx = torch.as_tensor(rows[lo : lo + self.batch_size], device=self.adversarial.device)
            adv = self._activations(self.adversarial[idx], layers)
            ben = self._activations(self.benign[idx], layers)
            for li in layers:
                maxes[li].append(adv[li].amax(dim=(2, 3)).cpu())
                deltas[li].append((adv[li] - ben[li]).flatten(2).norm(dim=2).cpu())
        empty = [torch.zeros((0, c)) for c in self.channels]
        return (
            [torch.cat(m) if m else e for m, e in zip(maxes, empty)],
            [torch.cat(d) if d else e for d, e in zip(deltas, empty)],
        )

    @torch.no_grad()
    def _baseline(self, original: int, target: int) -> dict[str, torch.Tensor]:
        clean, adv = self.model(_layout(self.benign)), self.model(_layout(self.adversarial))
        return {
            "clean": (clean[:, original] - clean[:, target]).double(),
            "adv": (adv[:, original] - adv[:, target]).double(),
        }

    def _plan_strength(self, s: int, picks: list[LayerSelection], target: int, curve: bool) -> _Plan:
        """Every experiment of strength ``s``: per layer with exploited neurons, then all layers."""
        plan = _Plan(self.channels)
        all_sets: dict[str, dict[int, np.ndarray]] = {}
        for li, pk in enumerate(picks):
            ex = pk.exploited[s]
            if len(ex) == 0:
                continue
            self._plan_layer(plan, li, s, pk, ex, target)
            for name, chans in self._sets(pk, s, ex).items():
                all_sets.setdefault(name, {})[li] = chans
            if curve:
                self._plan_curve(plan, li, s, pk, ex, target)
        if all_sets:
            self._plan_all(plan, s, all_sets, picks, target)
        return plan

    def _execute(self, out: CausalRows, effect, s: int, plan: _Plan, picks, base, original: int, target: int) -> float:
        """Runs ``plan`` on this Patching's (held-out) images; returns the all-layer defused share."""
        den = self.logits([e for e, noise in plan.exps if not noise])
        noi = (
            self.logits([e for e, noise in plan.exps if noise], noising=True) if any(n for _, n in plan.exps) else None
        )
        return self._record(out, effect, s, plan, den, noi, base, original, target, picks)

    # planning: each experiment gets a label; the numbers are read back by label in ``_record``
    def _sets(self, pk: LayerSelection, s: int, ex: np.ndarray) -> dict[str, np.ndarray]:
        n = len(ex)
        return {
            "exploited": ex,
            "exploited_union": pk.union,
            "top_original_target": pk.top_ot[:n],
            "top_delta": np.argsort(-np.nan_to_num(pk.delta[s], nan=-np.inf), kind="stable")[:n],
        }

    def _plan_layer(self, plan: _Plan, li: int, s: int, pk: LayerSelection, ex: np.ndarray, target: int) -> None:
        for name, chans in self._sets(pk, s, ex).items():
            plan.add((li, "set", name), {li: chans})
        outside = np.setdiff1d(np.arange(pk.channels), ex)
        delta = np.nan_to_num(pk.delta[s], nan=0.0)
        for j in range(self.draws):
            null = null_draw(self.seed, target, li, s, j, outside)[: len(ex)]
            plan.add((li, "null", j), {li: null})
            if j < self.control_draws:
                plan.add((li, "matched", j), {li: matched_draw(self.seed, target, li, s, j, ex, delta)})
                plan.add((li, "noise-null", j), {li: null}, noise=True)
        plan.add((li, "noise-set", "exploited"), {li: ex}, noise=True)
        for ch in ex:
            plan.add((li, "single", int(ch)), {li: np.array([ch])})

    def _plan_curve(self, plan: _Plan, li: int, s: int, pk: LayerSelection, ex: np.ndarray, target: int) -> None:
        c = pk.channels
        ks = [k for k in CURVE_K if k < c]
        outside = np.setdiff1d(np.arange(c), ex)
        orders = {
            "exploited": pk.exploited_rank[s],
            "delta": np.argsort(-np.nan_to_num(pk.delta[s], nan=-np.inf), kind="stable"),
        }
        for name, order in orders.items():
            for kk in ks:
                plan.add((li, "curve", name, kk), {li: order[:kk]})
        for j in range(self.draws):
            perm = null_draw(self.seed, target, li, s, j, outside)
            for kk in ks:
                if kk <= len(perm):
                    plan.add((li, "curve", "random", kk, j), {li: perm[:kk]})
        plan.add((li, "curve", "whole", c), {li: np.arange(c)})

    def _plan_all(self, plan: _Plan, s: int, sets: dict[str, dict[int, np.ndarray]], picks, target: int) -> None:
        for name, per_layer in sets.items():
            plan.add((ALL, "set", name), per_layer)
        ex = sets["exploited"]
        for j in range(self.draws):
            nulls = {
                li: null_draw(self.seed, target, li, s, j, np.setdiff1d(np.arange(picks[li].channels), e))[: len(e)]
                for li, e in ex.items()
            }
            plan.add((ALL, "null", j), nulls)
            if j < self.control_draws:
                plan.add((ALL, "noise-null", j), nulls, noise=True)
                plan.add(
                    (ALL, "matched", j),
                    {
                        li: matched_draw(self.seed, target, li, s, j, e, np.nan_to_num(picks[li].delta[s], nan=0.0))
                        for li, e in ex.items()
                    },
                )
        plan.add((ALL, "noise-set", "exploited"), ex, noise=True)

    def _record(
        self,
        out: CausalRows,
        effect,
        s: int,
        plan: _Plan,
        den: torch.Tensor,
        noi,
        base,
        original: int,
        target: int,
        picks: list[LayerSelection],
    ) -> float:
        """Rows of strength ``s`` (sets with their controls, single neurons, curves); returns the
        all-layer exploited set's defused share."""
        stats = self._stats(plan, den, noi, base, original, target)
        ld = {
            "n_images": int(base["clean"].shape[0]),
            "ld_clean": float(base["clean"].mean()),
            "ld_adv": float(base["adv"].mean()),
        }
        groups = sorted({lab[0] for lab in plan.index}, key=lambda g: (g == ALL, g if g != ALL else 0))
        all_defused = math.nan
        for g in groups:
            defused = self._record_sets(out, stats, plan, s, g, ld)
            if g == ALL:
                all_defused = defused
                continue
            n_img = int(ld["n_images"])
            for ch in picks[g].exploited[s]:
                single = stats[(g, "single", int(ch))]["mean"]
                effect.setdefault((self.names[g], int(ch)), np.full(len(picks[g].exploited), np.nan))[s] = single
            self._record_curve(out, stats, s, g, picks[g].channels, n_img)
            self._record_neurons(out, stats, s, g, picks[g].exploited[s], n_img, ld["ld_clean"], ld["ld_adv"])
        return all_defused

    @staticmethod
    def _stats(plan: _Plan, den: torch.Tensor, noi, base, original: int, target: int) -> dict[tuple, dict[str, float]]:
        """Per experiment label: mean and median R (N for noising), restored and defused shares;
        one read-back of the [experiments, images] recoveries and predictions."""
        ld_c, ld_a = base["clean"], base["adv"]
        parts_r, parts_p = [], []
        for logits, noise in ((den, False), (noi, True)):
            if logits is None or logits.shape[0] == 0:
                continue
            lg = logits.double()
            ld = lg[:, :, original] - lg[:, :, target]  # [E, n]
            parts_r.append(recovery(ld_c - (ld - ld_a), ld_c, ld_a) if noise else recovery(ld, ld_c, ld_a))
            parts_p.append(lg.argmax(dim=2))
        r_all = torch.cat(parts_r).cpu().numpy()  # denoising rows first, then noising
        p_all = torch.cat(parts_p).cpu().numpy()
        flags = [noise for _, noise in plan.exps]
        order = [i for i, nz in enumerate(flags) if not nz] + [i for i, nz in enumerate(flags) if nz]
        row_of = {i: row for row, i in enumerate(order)}  # experiment -> row of r_all / p_all
        with warnings.catch_warnings():  # an experiment whose images all have a zero gap: NaN
            warnings.simplefilter("ignore", RuntimeWarning)
            means, medians = np.nanmean(r_all, axis=1), np.nanmedian(r_all, axis=1)
        restored, defused = (p_all == original).mean(axis=1), (p_all != target).mean(axis=1)
        return {
            label: {
                "mean": float(means[row_of[i]]),
                "median": float(medians[row_of[i]]),
                "restored": float(restored[row_of[i]]),
                "defused": float(defused[row_of[i]]),
            }
            for label, i in plan.index.items()
        }

    def _record_sets(self, out: CausalRows, stats, plan: _Plan, s: int, g, ld: dict) -> float:
        """The set rows of one layer (or ``ALL``): the exploited set with its null, matched control
        and noising; the other sets without. Returns the exploited set's defused share."""
        null = np.array([stats[(g, "null", j)]["mean"] for j in range(self.draws)])
        matched = np.array([stats[(g, "matched", j)]["mean"] for j in range(self.control_draws)])
        noise_null = np.array([stats[(g, "noise-null", j)]["mean"] for j in range(self.control_draws)])
        defused = math.nan
        for name in SETS:
            st = stats.get((g, "set", name))
            if st is None:
                continue
            primary = name == "exploited"
            value = st["mean"] if primary else math.nan
            noised = stats[(g, "noise-set", "exploited")]["mean"] if primary else math.nan
            ns, ms, nz = null_summary(value, null), null_summary(value, matched), null_summary(noised, noise_null)
            out.add(
                "rows",
                strength=s,
                layer=ALL if g == ALL else self.names[g],
                set=name,
                n_neurons=self._set_size(plan, (g, "set", name)),
                recovery_mean=st["mean"],
                recovery_median=st["median"],
                restored=st["restored"],
                defused=st["defused"],
                **ld,
                draws=self.draws,
                **{f"null_{k}": v for k, v in ns.items()},
                matched_mean=ms["mean"],
                matched_q95=ms["q95"],
                matched_percentile=ms["percentile"],
                matched_p=ms["p"],
                noising=noised,
                noising_null_mean=nz["mean"],
                noising_null_q95=nz["q95"],
                noising_percentile=nz["percentile"],
                noising_p=nz["p"],
            )
            if primary:
                defused = st["defused"]
        return defused

    def _record_curve(self, out: CausalRows, stats, s: int, li: int, c: int, n_img: int) -> None:
        if (li, "curve", "whole", c) not in stats:
            return
        whole = stats[(li, "curve", "whole", c)]["mean"]
        ks = [k for k in CURVE_K if k < c]
        for name in ORDERS:
            got_k, means, lo, hi = [], [], [], []
            for kk in ks:
                if name == "random":
                    vals = np.array(
                        [
                            stats[(li, "curve", "random", kk, j)]["mean"]
                            for j in range(self.draws)
                            if (li, "curve", "random", kk, j) in stats
                        ]
                    )
                    if not len(vals):
                        continue
                    got_k.append(kk)
                    means.append(float(vals.mean()))
                    lo.append(float(np.quantile(vals, 0.05)))
                    hi.append(float(np.quantile(vals, 0.95)))
                else:
                    got_k.append(kk)
                    means.append(stats[(li, "curve", name, kk)]["mean"])
                    lo.append(math.nan)
                    hi.append(math.nan)
            got_k.append(c)
            means.append(whole)
            lo.append(whole if name == "random" else math.nan)
            hi.append(whole if name == "random" else math.nan)
            auc, k50 = curve_summary(got_k, means, c)
            out.add(
                "curve",
                strength=s,
                layer=self.names[li],
                order=name,
                k=[int(x) for x in got_k],
                recovery=means,
                q05=lo,
                q95=hi,
                auc=auc,
                k50=k50,
            )

    def _record_neurons(
        self, out: CausalRows, stats, s: int, li: int, exploited: np.ndarray, n_img: int, ld_clean: float, ld_adv: float
    ) -> None:
        """At a curve strength: each exploited neuron alone against single random channels of the
        layer minus the set (the random order's k = 1 draws), one row ``set = "neuron:<channel>"``."""
        null = np.array(
            [
                stats[(li, "curve", "random", 1, j)]["mean"]
                for j in range(self.draws)
                if (li, "curve", "random", 1, j) in stats
            ]
        )
        if not len(null):
            return
        for ch in exploited:
            st = stats[(li, "single", int(ch))]
            ns = null_summary(st["mean"], null)
            out.add(
                "rows",
                strength=s,
                layer=self.names[li],
                set=f"neuron:{int(ch)}",
                n_neurons=1,
                n_images=n_img,
                recovery_mean=st["mean"],
                recovery_median=st["median"],
                restored=st["restored"],
                defused=st["defused"],
                ld_clean=ld_clean,
                ld_adv=ld_adv,
                draws=len(null),
                null_mean=ns["mean"],
                null_sd=ns["sd"],
                null_q05=ns["q05"],
                null_q95=ns["q95"],
                null_percentile=ns["percentile"],
                null_p=ns["p"],
                matched_mean=math.nan,
                matched_q95=math.nan,
                matched_percentile=math.nan,
                matched_p=math.nan,
                noising=math.nan,
                noising_null_mean=math.nan,
                noising_null_q95=math.nan,
                noising_percentile=math.nan,
                noising_p=math.nan,
            )

    @staticmethod
    def _set_size(plan: _Plan, label) -> int:
        e = plan.exps[plan.index[label]][0]
        return int(sum(int(m.sum()) for m in e.masks.values()))

    # --- forward passes ---------------------------------------------------------------------------
    @torch.no_grad()
    def logits(self, experiments: Sequence[Experiment], noising: bool = False) -> torch.Tensor:
        """Logits [len(experiments), n, classes]: denoising patches each experiment's neurons of the
        adversarial images with their benign values; ``noising`` patches the benign images with the
        adversarial values.

        One forward pass per chunk of images: the batch runs unpatched ("carrier" rows) up to the
        first layer an experiment patches, where that experiment's rows branch off the carrier, so
        every layer's prefix is computed once and each experiment runs only the rest.
        """
        exps = list(experiments)
        if any(not e.masks for e in exps):
            raise ValueError("an experiment must patch at least one layer")
        base, source = (self.benign, self.adversarial) if noising else (self.adversarial, self.benign)
        n, m = base.shape[0], len(exps)
        order = sorted(range(m), key=lambda j: min(exps[j].masks))  # rows in the order they branch off
        by_first: dict[int, list[int]] = {}
        for j in order:
            by_first.setdefault(min(exps[j].masks), []).append(j)
        layers = sorted({li for e in exps for li in e.masks})
        step = max(1, self.batch_size // (m + 1))
        parts = []
        for lo in range(0, n, step):
            hi = min(n, lo + step)
            src = self._activations(source[lo:hi], layers)
            out = self._patched(base[lo:hi], src, exps, by_first, layers, lo, hi)
            c = hi - lo
            rows = out[: m * c].view(m, c, -1)
            back = torch.empty_like(rows)
            back[torch.as_tensor(order, device=rows.device)] = rows
            parts.append(back)
        return torch.cat(parts, dim=1) if parts else base.new_empty((m, 0, 0))

    def _activations(self, images: torch.Tensor, layers: Sequence[int]) -> dict[int, torch.Tensor]:
        acts: dict[int, torch.Tensor] = {}
        handles = [
            self.blocks[li].register_forward_hook(lambda _m, _i, o, li=li: acts.__setitem__(li, o)) for li in layers
        ]
        try:
            self.model(_layout(images))
        finally:
            for h in handles:
                h.remove()
        return acts

    def _patched(self, images, source, exps, by_first, layers, lo, hi) -> torch.Tensor:
        """The batch's forward pass with each experiment's rows branching off the carrier rows (the
        last ``hi - lo``) at its first layer. Each hook writes only the rows it patches, once, into
        one new channels_last batch: the rest of the network then runs as fast as the attack model
        (a default-layout batch took max-pool off its fast path: twice the FLOP-predicted time)."""
        c = hi - lo
        active: list[int] = []  # experiments whose rows are in the batch, before the carrier rows

        def masks_of(js, li, out):  # [len(js), c, C, 1, 1] bool
            m = torch.stack([_rows_of(exps[j].masks[li], lo, hi) for j in js]).to(out.device)
            return m.view(*m.shape, *([1] * (out.dim() - 2)))

        def branch(li):
            def hook(_mod, _inp, out):
                new = by_first.get(li, [])
                again = [k for k, j in enumerate(active) if li in exps[j].masks]  # the all-layer sets
                if not new and not again:
                    return out
                src, carrier = source[li].unsqueeze(0), out[-c:].unsqueeze(0)
                n_old = out.shape[0] - c
                total = out.shape[0] + len(new) * c
                fmt = torch.channels_last if out.dim() == 4 else torch.contiguous_format
                res = torch.empty((total, *out.shape[1:]), dtype=out.dtype, device=out.device, memory_format=fmt)
                res[:n_old] = out[:n_old]
                for k, m in zip(again, masks_of([active[k] for k in again], li, out) if again else []):
                    rows = res[k * c : (k + 1) * c]
                    rows.copy_(torch.where(m, src[0], rows))
                if new:
                    view = res[n_old : n_old + len(new) * c].view(len(new), c, *out.shape[1:])
                    torch.where(masks_of(new, li, out), src, carrier, out=view)
                    active.extend(new)
                res[-c:] = out[-c:]
                return res

            return hook

        handles = [self.blocks[li].register_forward_hook(branch(li)) for li in layers]
        try:
            return self.model(_layout(images))
        finally:
            for h in handles:
                h.remove()


class _Plan:
    """Experiments of one strength, with labels and direction (denoising/noising).

    Identical experiments under different labels run once (e.g. a null draw and the random order's
    point at the same k, or the exploited set and its order's prefix): ``index`` maps each label
    to its experiment."""

    def __init__(self, channels: Sequence[int]) -> None:
        self.channels = list(channels)
        self.index: dict[tuple, int] = {}
        self.exps: list[tuple[Experiment, bool]] = []
        self._seen: dict[tuple, int] = {}

    def add(self, label: tuple, chans: dict[int, np.ndarray], noise: bool = False) -> None:
        masks = {}
        for li, ch in sorted(chans.items()):
            m = torch.zeros(self.channels[li], dtype=torch.bool)
            m[torch.as_tensor(np.asarray(ch, np.int64))] = True
            masks[li] = m
        key = (noise, tuple((li, m.numpy().tobytes()) for li, m in masks.items()))
        if key not in self._seen:
            self._seen[key] = len(self.exps)
            self.exps.append((Experiment(masks), noise))
        self.index[label] = self._seen[key]


def _rows_of(m: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
    """The rows lo..hi of a [n, C] mask; a [C] mask holds for every image."""
    return m.expand(hi - lo, -1) if m.dim() == 1 else m[lo:hi]


def _layout(x: torch.Tensor) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x
