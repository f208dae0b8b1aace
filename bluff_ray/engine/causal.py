"""Activation patching: do the exploited neurons carry the attack? (docs/FORMAT.md ``causal/``)

For the images a pair's attack turned into the target at a strength, replace the activations of
a set of neurons by those of the same image before the attack, run the rest of the network, and
count the images whose prediction is no longer the target ("defused"). Sets per layer: the pair's
exploited neurons, a same-size random control from the layer's other displayed neurons (seeded),
the layer's top ``both`` neurons at that strength, each exploited neuron alone; and the exploited
(and control) sets of every layer at once.

Why it is cheap enough to run for every pair (the bench target is 10 % of the attack): all
experiments that start at the same layer share one forward pass up to that layer; the batch is
expanded there (one copy per experiment) by a forward hook, so only the rest of the network runs
once per experiment. Patching uses the attack model (BatchNorm folded), the same function that
decided the attack's success, so patching nothing changes no prediction.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torch import nn

from bluff_ray.engine.seeds import derive_seed

ALL = "all"
#: Patching is measured on at most this many successfully attacked images per strength (the first
#: ones, in image order; ``pathways.patch_images``), single neurons on half as many: one experiment
#: per exploited neuron would otherwise dominate the cost (bench/causal.py). Exploited and control
#: sets use the same images, so their comparison is paired.
PATCH_IMAGES = 16


@dataclass
class CausalRows:
    """The pair's ``causal`` rows as columns (FORMAT.md; ``results.rows`` makes the Arrow table)."""

    target: int
    layer: list[str]
    n_exploited: list[int]
    n_random: list[int]
    n_both: list[int]
    defused_exploited: list[list[float]]
    defused_random: list[list[float]]
    defused_both: list[list[float]]


@dataclass
class PatchResult:
    effect: np.ndarray  # [n_nodes, S] single-neuron defused fraction (NaN: not exploited / no success)
    table: CausalRows  # the pair's causal rows
    defused: tuple[float, ...]  # the "all" row's defused_exploited


def control_seed(seed: int, target: int, layer: int, strength: int) -> int:
    return derive_seed("control", seed, target, layer, strength)


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
    """Channels to patch per layer index, as a bool mask [n_images, C] per patched layer."""

    masks: dict[int, torch.Tensor]


class Patching:
    """The patching experiments of one pair (``run``) over its successfully attacked images.

    ``adversarial``: those images, strength by strength (``n_success[s]`` rows for strength s);
    ``benign``: the same images before the attack (row for row); ``model``/``blocks``: the
    network the experiments run through and its mixed blocks; ``seed``: the unit's seed (the
    random controls are seeded per target, layer and strength).
    """

    def __init__(self, model: nn.Module, blocks: Sequence[nn.Module], layer_names: Sequence[str],
                 channels: Sequence[int], adversarial: torch.Tensor, benign: torch.Tensor, seed: int,
                 batch_size: int = 64, patch_images: int | None = PATCH_IMAGES, single_images: int | None = None):
        if adversarial.shape != benign.shape:
            raise ValueError(f"adversarial {tuple(adversarial.shape)} and benign {tuple(benign.shape)} images differ")
        self.model, self.blocks, self.names = model, list(blocks), list(layer_names)
        self.channels = list(channels)
        self.adversarial, self.benign = adversarial, benign
        self.seed, self.batch_size = int(seed), int(batch_size)
        self.patch_images = patch_images
        self.single_images = single_images or max(1, (patch_images or PATCH_IMAGES) // 2)

    def _subset(self, rows: np.ndarray) -> "Patching":
        sub = torch.as_tensor(rows, device=self.adversarial.device, dtype=torch.long)
        return Patching(self.model, self.blocks, self.names, self.channels, self.adversarial[sub], self.benign[sub],
                        self.seed, self.batch_size, patch_images=None, single_images=self.single_images)

    # --- the experiments --------------------------------------------------------------------------
    def run(self, target: int, displayed: Sequence[torch.Tensor], node_role: Sequence[str],
            node_mask: torch.Tensor, node_vals: torch.Tensor, n_success: Sequence[int]) -> PatchResult:
        """Every experiment of the pair; see the module docstring and FORMAT.md ``causal``."""
        s_count = len(n_success)
        cap = self.patch_images
        if cap is not None and max(n_success, default=0) > cap:  # the first ``cap`` images per strength
            seg_all = np.repeat(np.arange(s_count), list(n_success))
            rows = np.concatenate([np.flatnonzero(seg_all == s)[:cap] for s in range(s_count)])
            capped = [min(int(v), cap) for v in n_success]
            return self._subset(rows).run(target, displayed, node_role, node_mask, node_vals, capped)
        n = self.adversarial.shape[0]
        device = self.adversarial.device
        seg = torch.repeat_interleave(torch.arange(s_count, device=device),
                                      torch.as_tensor(list(n_success), device=device))
        seg_h = np.repeat(np.arange(s_count), list(n_success))
        roles = np.asarray(node_role, dtype=object)
        starts = np.cumsum([0] + [len(d) for d in displayed])
        groups: list[tuple[int, list[Experiment], list[tuple]]] = []  # (first layer, experiments, labels)
        all_sets: dict[str, dict[int, torch.Tensor]] = {"exploited": {}, "random": {}, "both": {}}
        counts: dict[int, tuple[int, int, int]] = {}
        singles: list[int] = []  # node index of each single-neuron experiment, in order
        single_exps: list[Experiment] = []
        # single neurons: the first ``single_images`` successful images of each strength
        sub_rows = np.concatenate([np.flatnonzero(seg_h == s)[:self.single_images] for s in range(s_count)]) \
            if n else np.zeros(0, np.int64)
        for li, chans in enumerate(displayed):
            r = roles[starts[li]: starts[li + 1]]
            ch = chans.numpy()
            exploited = ch[r == "exploited"]
            n_ex = len(exploited)
            others = ch[r != "exploited"]
            both_pos = np.flatnonzero(r == "both")
            n_rand, n_both = min(n_ex, len(others)), min(n_ex, len(both_pos))
            counts[li] = (n_ex, n_rand, n_both)
            if n_ex == 0 or n == 0:
                continue
            c = self.channels[li]
            ex_mask = torch.zeros((n, c), dtype=torch.bool, device=device)
            ex_mask[:, torch.as_tensor(exploited, device=device)] = True
            rand_mask = torch.zeros_like(ex_mask)
            for s in range(s_count):
                rows = np.flatnonzero(seg_h == s)
                if len(rows) == 0 or n_rand == 0:
                    continue
                g = torch.Generator().manual_seed(control_seed(self.seed, target, li, s))
                pick = others[torch.randperm(len(others), generator=g)[:n_rand].numpy()]
                rand_mask[torch.as_tensor(rows, device=device)[:, None], torch.as_tensor(pick, device=device)[None, :]] = True
            both_mask = torch.zeros_like(ex_mask)
            if n_both:
                # per strength, the n_both "both" neurons with the highest attacked importance
                vals = node_vals[torch.as_tensor(starts[li] + both_pos, device=device), 2:]  # [nb, S]
                order = torch.sort(torch.nan_to_num(vals, nan=float("-inf")), dim=0, descending=True,
                                   stable=True).indices[:n_both]  # [n_both, S]
                both_ch = torch.as_tensor(ch[both_pos], device=device)[order]  # [n_both, S]
                per_image = both_ch.T[seg]  # [n, n_both]
                both_mask.scatter_(1, per_image, True)
            exps = [Experiment({li: ex_mask}), Experiment({li: rand_mask}), Experiment({li: both_mask})]
            labels = [("layer", li, "exploited"), ("layer", li, "random"), ("layer", li, "both")]
            groups.append((li, exps, labels))
            for node in np.flatnonzero(r == "exploited"):
                m = torch.zeros((len(sub_rows), c), dtype=torch.bool, device=device)
                m[:, int(ch[node])] = True
                single_exps.append(Experiment({li: m}))
                singles.append(int(starts[li] + node))
            all_sets["exploited"][li], all_sets["random"][li], all_sets["both"][li] = ex_mask, rand_mask, both_mask
        if all_sets["exploited"]:
            first = min(all_sets["exploited"])
            groups.append((first, [Experiment(all_sets[k]) for k in ("exploited", "random", "both")],
                           [("all", -1, k) for k in ("exploited", "random", "both")]))

        fractions: dict[tuple, torch.Tensor] = {}
        if groups:
            defused = self._defused(target, groups)  # per group: [n_exp, n] bool
            for (_, _, labels), d in zip(groups, defused):
                frac = _segment_mean(d.to(torch.float64), seg, s_count)  # [n_exp, S]
                for label, f in zip(labels, frac):
                    fractions[label] = f
        if single_exps:
            sub = torch.as_tensor(sub_rows, device=device)
            d = self._subset(sub_rows).logits(single_exps).argmax(-1) != target
            frac = _segment_mean(d.to(torch.float64), seg[sub], s_count)
            for node, f in zip(singles, frac):
                fractions[("single", -1, node)] = f
        keys = list(fractions)
        values = torch.stack([fractions[k] for k in keys]).cpu().numpy() if keys else np.zeros((0, s_count))
        got = dict(zip(keys, values))
        nan = np.full(s_count, np.nan)

        rows = CausalRows(int(target), [], [], [], [], [], [], [])
        for li, name in enumerate(self.names):
            n_ex, n_rand, n_both = counts.get(li, (0, 0, 0))
            self._row(rows, target, name, n_ex, n_rand, n_both,
                      got.get(("layer", li, "exploited"), nan), got.get(("layer", li, "random"), nan) if n_rand else nan,
                      got.get(("layer", li, "both"), nan) if n_both else nan)
        tot = [sum(counts.get(li, (0, 0, 0))[j] for li in range(len(self.names))) for j in range(3)]
        all_ex = got.get(("all", -1, "exploited"), nan)
        self._row(rows, target, ALL, *tot, all_ex, got.get(("all", -1, "random"), nan) if tot[1] else nan,
                  got.get(("all", -1, "both"), nan) if tot[2] else nan)
        effect = np.full((len(node_role), s_count), np.nan, np.float32)
        for node in singles:
            effect[node] = got[("single", -1, node)]
        return PatchResult(effect=effect, table=rows, defused=tuple(float(x) for x in all_ex))

    @staticmethod
    def _row(rows, target, layer, n_ex, n_rand, n_both, ex, rand, both) -> None:
        rows.layer.append(layer)
        rows.n_exploited.append(int(n_ex))
        rows.n_random.append(int(n_rand))
        rows.n_both.append(int(n_both))
        rows.defused_exploited.append([float(x) for x in ex])
        rows.defused_random.append([float(x) for x in rand])
        rows.defused_both.append([float(x) for x in both])

    # --- forward passes ---------------------------------------------------------------------------
    @torch.no_grad()
    def logits(self, experiments: Sequence[Experiment]) -> torch.Tensor:
        """Logits [len(experiments), n, classes] of the adversarial images with each experiment's
        neurons patched to their benign values.

        One forward pass per chunk of images: the batch runs unpatched ("carrier" rows) up to the
        first layer an experiment patches, where that experiment's rows branch off the carrier, so
        every layer's prefix is computed once and each experiment runs only the rest.
        """
        exps = list(experiments)
        if any(not e.masks for e in exps):
            raise ValueError("an experiment must patch at least one layer")
        n, m = self.adversarial.shape[0], len(exps)
        order = sorted(range(m), key=lambda j: min(exps[j].masks))  # rows in the order they branch off
        by_first: dict[int, list[int]] = {}
        for j in order:
            by_first.setdefault(min(exps[j].masks), []).append(j)
        layers = sorted({li for e in exps for li in e.masks})
        step = max(1, self.batch_size // (m + 1))
        parts = []
        for lo in range(0, n, step):
            hi = min(n, lo + step)
            benign = self._activations(self.benign[lo:hi], layers)
            out = self._patched(self.adversarial[lo:hi], benign, exps, by_first, layers, lo, hi)
            c = hi - lo
            rows = out[: m * c].view(m, c, -1)
            back = torch.empty_like(rows)
            back[torch.as_tensor(order, device=rows.device)] = rows
            parts.append(back)
        return torch.cat(parts, dim=1) if parts else self.adversarial.new_empty((m, 0, 0))

    def _defused(self, target: int, groups) -> list[torch.Tensor]:
        exps = [e for _, g, _ in groups for e in g]
        pred = self.logits(exps).argmax(-1) != target
        out, i = [], 0
        for _, g, _ in groups:
            out.append(pred[i: i + len(g)])
            i += len(g)
        return out

    def _activations(self, images: torch.Tensor, layers: Sequence[int]) -> dict[int, torch.Tensor]:
        acts: dict[int, torch.Tensor] = {}
        handles = [self.blocks[li].register_forward_hook(lambda _m, _i, o, li=li: acts.__setitem__(li, o))
                   for li in layers]
        try:
            self.model(_layout(images))
        finally:
            for h in handles:
                h.remove()
        return acts

    def _patched(self, images, benign, exps, by_first, layers, lo, hi) -> torch.Tensor:
        c = hi - lo
        active: list[int] = []  # experiments whose rows are in the batch, before the carrier rows

        def hook(li):
            def branch(_mod, _inp, out):
                new = by_first.get(li, [])
                carrier = out[-c:]
                rows = torch.cat([out[:-c], carrier.repeat(len(new), *([1] * (out.dim() - 1)))]) if new else out[:-c]
                active.extend(new)
                masks = [exps[j].masks.get(li) for j in active]
                if not any(x is not None for x in masks):
                    return out
                like = next(x for x in masks if x is not None)
                mask = torch.cat([(x if x is not None else torch.zeros_like(like))[lo:hi] for x in masks])
                k = len(active)
                ben = benign[li].repeat(k, *([1] * (out.dim() - 1)))
                rows = torch.where(mask.view(k * c, -1, *([1] * (out.dim() - 2))), ben, rows)
                return torch.cat([rows, carrier])
            return branch

        handles = [self.blocks[li].register_forward_hook(hook(li)) for li in layers]
        try:
            return self.model(_layout(images))
        finally:
            for h in handles:
                h.remove()


def _layout(x: torch.Tensor) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x


def _segment_mean(values: torch.Tensor, seg: torch.Tensor, n_seg: int) -> torch.Tensor:
    """[m, n] values, seg [n] segment ids -> [m, n_seg] means (NaN for an empty segment)."""
    total = torch.zeros((values.shape[0], n_seg), dtype=values.dtype, device=values.device)
    total.index_add_(1, seg, values)
    count = torch.bincount(seg, minlength=n_seg).to(values.dtype)
    return torch.where(count > 0, total / count.clamp_min(1), torch.full_like(total, math.nan))
