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

from dataclasses import dataclass, field
from typing import Callable, Sequence

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

    @property
    def layer_names(self) -> list[str]:
        return [l.name for l in self.layers]

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def to(self, device: torch.device | str) -> "ModelAdapter":
        self.model.to(device)
        return self

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
                    block.register_forward_hook(
                        lambda _m, _i, out, name=info.name: acts.__setitem__(name, out)
                    )
                )
        try:
            logits = self.model(x)
        finally:
            for h in handles:
                h.remove()
        return logits, acts
