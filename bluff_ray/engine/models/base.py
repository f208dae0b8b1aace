"""One interface over every model bluff_ray can explain.

A model is explained through its *mixed* (Inception) blocks. Every block, in torchvision's
GoogLeNet and in the digits demo net alike, has the same four-branch layout, so influence,
importance and the pipeline need no model-specific code:

    branch1 = ConvUnit(1x1)                          -> channels [0, C0)
    branch2 = Sequential(ConvUnit(1x1 reduce), ConvUnit(kxk))  -> [C0, C0+C1)
    branch3 = Sequential(ConvUnit(1x1 reduce), ConvUnit(kxk))  -> [C0+C1, C0+C1+C2)
    branch4 = Sequential(MaxPool2d(3, 1, 1), ConvUnit(1x1))     -> [.., C)

where ConvUnit is torchvision's ``BasicConv2d`` (conv without bias -> BatchNorm -> ReLU). The block
output (post-ReLU, branches concatenated in that order) is the layer's activation. The input of
block i is ``input_pool(i)`` applied to the output of block i-1 (identity inside a stage, the
model's max-pool between stages).

Input space: every adapter's ``model`` takes float tensors N x C x H x W with pixel values in
[0, 1] (RGB for ImageNet models, one grey channel for digits). Normalisation is inside ``model``,
so attack strengths (eps) are always measured in [0, 1] pixel space.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

# Branch names in concatenation order; used in docs, Parquet and the viewer.
BRANCHES = ("1x1", "3x3", "5x5", "pool")


@dataclass(frozen=True)
class LayerInfo:
    """Static description of one mixed layer."""

    name: str  # e.g. "mixed3a"
    channels: int  # total output channels of the block
    branch_sizes: tuple[int, int, int, int]  # output channels per branch, in BRANCHES order
    bottleneck_sizes: tuple[int, int]  # reduce channels of the 3x3 and 5x5 branches

    def branch_of(self, channel: int) -> int:
        """Index (0..3) of the branch that produces ``channel``."""
        start = 0
        for b, size in enumerate(self.branch_sizes):
            if channel < start + size:
                return b
            start += size
        raise IndexError(f"{self.name} has {self.channels} channels, got {channel}")

    def branch_offset(self, branch: int) -> int:
        return sum(self.branch_sizes[:branch])


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """An eval-mode deep copy of ``model`` in which every ``conv -> bn`` unit (modules with a
    ``conv`` Conv2d and a ``bn`` BatchNorm2d attribute, like torchvision's ``BasicConv2d``) has the
    BatchNorm folded into the conv's weight and bias and replaced by ``nn.Identity``."""
    import copy

    from torch.nn.utils.fusion import fuse_conv_bn_eval

    folded = copy.deepcopy(model).eval()
    for unit in folded.modules():
        conv, bn = getattr(unit, "conv", None), getattr(unit, "bn", None)
        if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
            unit.conv = fuse_conv_bn_eval(conv, bn)
            unit.bn = nn.Identity()
    for p in folded.parameters():
        p.requires_grad_(False)
    return folded


@dataclass
class ModelAdapter:
    """A classifier plus what bluff_ray needs to explain it.

    Attributes:
        name: short model id recorded in manifest.json ("googlenet", "digits").
        model: nn.Module mapping [0,1] images (N,C,H,W) to logits; eval mode.
        blocks: the mixed blocks in forward order (each with branch1..branch4 as above).
        layers: LayerInfo for each block, same order.
        input_pools: per block, the module applied to the previous block's output to form this
            block's input (nn.Identity() inside a stage); entry 0 is unused (its input is the stem).
        class_names: human-readable names, index = class id = logit index.
        class_ids: stable ids (ImageNet wnids for ImageNet models; "0".."9" for digits).
        input_shape: (C, H, W) of the model input.
        input_space: one sentence for manifest.json describing the eps space.
        load_image: turns a PIL image into a (C,H,W) float tensor in [0,1] at ``input_shape``
            (resize + centre crop for ImageNet); used by the ImageFolder loader.
        metadata: free-form facts recorded in manifest.json (weights source, accuracy, ...).
    """

    name: str
    model: nn.Module
    blocks: list[nn.Module]
    layers: list[LayerInfo]
    input_pools: list[nn.Module]
    class_names: list[str]
    class_ids: list[str]
    input_shape: tuple[int, int, int]
    input_space: str
    load_image: Callable[..., torch.Tensor]
    metadata: dict = field(default_factory=dict)
    _attack_model: nn.Module | None = field(default=None, init=False, repr=False, compare=False)
    _variants: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    @property
    def layer_names(self) -> list[str]:
        return [l.name for l in self.layers]

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> ModelAdapter:
        if dtype is None:
            self.model.to(device)
        else:
            self.model.to(device=device, dtype=dtype)
        self._attack_model = None
        self._variants = {}
        return self

    def attack_model(self, compiled: bool = False, step: str = "reference", bf16: bool = False) -> nn.Module:
        """The classifier as the attack's hot loop wants it, built once: an eval-mode copy with each
        conv unit's BatchNorm folded into its conv and channels_last weights.

        Why: PGD runs 50 forward+backward passes per sample; folding removes BatchNorm's backward
        and channels_last removes layout copies (measured ~1.5x on the digits net on one CPU
        thread, and the layout GPUs want). The function is the same up to float rounding; the
        explanation code (importance, influence) keeps using ``model`` with its BatchNorms.
        ``compiled``: the same model through ``torch.compile`` (built once; the pipeline asks for
        it only on CUDA, with ``attack.compile``).

        ``step="fast"`` (``attack.step``): a copy whose max-pools keep no int64 indices for the
        backward (:mod:`bluff_ray.engine.maxpool`; same values and gradients), and with ``bf16``
        on CUDA, bf16 weights (cast once here, instead of autocast casting them every step; the
        attack casts its input). ``step="lean"``: the same, and each conv unit keeps a 1-byte ReLU
        mask instead of its input (:mod:`bluff_ray.engine.conv_relu`), each pool its winners
        (1 byte per output): about 1 byte per activation in all. ``bf16`` is ignored for the
        reference step (autocast does it) and on the CPU. Each variant is built once.
        """
        if self._attack_model is None:
            self._attack_model = fold_batchnorm(self.model).to(memory_format=torch.channels_last)
        from bluff_ray.engine.attack import STEPS

        if step not in STEPS:
            raise ValueError(f"unknown attack step {step!r}; valid: {', '.join(STEPS)}")
        half = step != "reference" and bf16 and self.device.type == "cuda"
        key = (step, half)
        if key not in self._variants:
            if step == "reference":
                self._variants[key] = self._attack_model
            else:
                import copy

                from bluff_ray.engine.conv_relu import swap_conv_units
                from bluff_ray.engine.maxpool import swap_max_pools

                fast = copy.deepcopy(self._attack_model)
                swap_max_pools(fast, save="winners" if step == "lean" else "input")
                if step == "lean":
                    swap_conv_units(fast)
                self._variants[key] = fast.to(torch.bfloat16) if half else fast
        model = self._variants[key]
        if not compiled:
            return model
        if (key, "compiled") not in self._variants:  # one static shape (the attack pads its last batch)
            self._variants[(key, "compiled")] = torch.compile(model, dynamic=False)
        return self._variants[(key, "compiled")]

    def forward_with_activations(
        self, x: torch.Tensor, layers: Sequence[str] | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Logits and the post-ReLU output of each requested mixed layer (all by default)."""
        wanted = set(self.layer_names if layers is None else layers)
        acts: dict[str, torch.Tensor] = {}
        handles = []
        for info, block in zip(self.layers, self.blocks):
            if info.name in wanted:
                handles.append(
                    block.register_forward_hook(lambda _m, _i, out, name=info.name: acts.__setitem__(name, out))
                )
        try:
            logits = self.model(x)
        finally:
            for h in handles:
                h.remove()
        return logits, acts

    @torch.no_grad()
    def activations(
        self,
        images: torch.Tensor,
        layers: Sequence[str] | None = None,
        batch_size: int = 64,
        reduce: Callable[[str, torch.Tensor], Any] | None = None,
        logits: Callable[[torch.Tensor], torch.Tensor] | None = None,
        dtype: torch.dtype | None = None,
    ) -> tuple[torch.Tensor | None, dict[str, Any]]:
        """The one batched activation collector: runs the model over ``images`` (moved to the
        device, and to ``dtype`` if given) ``batch_size`` at a time, so only one batch of full
        activation maps is ever held, and returns (``logits(batch logits)`` concatenated over the
        batches, or None without ``logits``; {layer: ``reduce(layer, activation)`` concatenated
        over the batches}) for the requested layers (all by default). ``reduce`` (default: the
        maps themselves) may return a tensor or a tuple of tensors (then a tuple of
        concatenations). Zero images give empty results of the right shapes (one empty forward).
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if images.dim() != 4:
            raise ValueError(f"images must be [N,C,H,W], got shape {tuple(images.shape)}")
        names = [n for n in self.layer_names if layers is None or n in set(layers)]
        parts: dict[str, list[Any]] = {n: [] for n in names}
        heads: list[torch.Tensor] = []
        for start in range(0, max(1, images.shape[0]), batch_size):
            batch = images[start : start + batch_size].to(self.device, dtype)
            out, acts = self.forward_with_activations(batch, names)
            if logits is not None:
                heads.append(logits(out))
            for n in names:
                parts[n].append(acts[n] if reduce is None else reduce(n, acts[n]))

        def cat(chunks: list[Any]) -> Any:
            if isinstance(chunks[0], tuple):
                return tuple(torch.cat([c[i] for c in chunks]) for i in range(len(chunks[0])))
            return torch.cat(chunks)

        return (torch.cat(heads) if logits is not None else None), {n: cat(parts[n]) for n in names}
