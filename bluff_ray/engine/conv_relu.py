"""Conv + ReLU units that keep one byte per activation for the input gradient.

Why: an attack needs only the gradient with respect to the input image, never the weights', yet
autograd's convolution keeps its whole input (for a weight gradient nobody asks for) and ReLU keeps
its whole output: together most of the bytes a GoogLeNet PGD sample holds between forward and
backward. The input gradient of ``relu(conv(x))`` needs only the weights and where the ReLU
passed: this unit keeps a bool per output (1 byte instead of 2 or 4) and nothing of its input.

The same function and the same gradient as torchvision's ``BasicConv2d`` (after BatchNorm
folding, ``bn`` is ``nn.Identity``): the forward calls the same ``F.conv2d`` and in-place ReLU;
the backward is ReLU's (``threshold_backward``: zero where the output is ``<= 0``, so a NaN output
passes its gradient) followed by the very ``aten.convolution_backward`` call autograd makes, with
only the input gradient requested and an uninitialised tensor of the input's shape and strides
standing in for the input (the input gradient never reads its values; its shape and memory format
choose the kernel). Float64 gradients are therefore bitwise equal (``tests/test_fast_step.py``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# The stand-in for the input in the backward: its values are never read (tests fill it with NaN).
placeholder = torch.empty_strided


class _ConvReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding, dilation, groups):
        if torch.is_autocast_enabled(x.device.type):
            raise RuntimeError(
                "ConvReLU runs without autocast: cast the model's weights instead (the 'lean' step does)"
            )
        y = torch.relu_(F.conv2d(x, weight, bias, stride, padding, dilation, groups))
        ctx.save_for_backward(weight, y <= 0)
        ctx.input = (x.shape, x.stride(), x.dtype, x.device)
        ctx.conv = (bias is not None, stride, padding, dilation, groups)
        return y

    @staticmethod
    def backward(ctx, g):
        weight, dead = ctx.saved_tensors
        if not ctx.needs_input_grad[0]:
            return None, None, None, None, None, None, None
        shape, strides, dtype, device = ctx.input
        has_bias, stride, padding, dilation, groups = ctx.conv
        gz = torch.where(dead, torch.zeros((), dtype=g.dtype, device=g.device), g)
        gx = torch.ops.aten.convolution_backward(
            gz,
            placeholder(shape, strides, dtype=dtype, device=device),
            weight,
            [weight.shape[0]] if has_bias else None,
            list(stride),
            list(padding),
            list(dilation),
            False,
            [0] * len(stride),
            groups,
            [True, False, False],
        )[0]
        return gx, None, None, None, None, None, None


class ConvReLU(nn.Module):
    """``relu(conv(x))`` keeping a bool mask, not the input, for the input gradient. Holds the
    conv (``self.conv``), so code that reads a unit's conv keeps working."""

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            raise ValueError(f"ConvReLU needs numeric zero padding, got {conv.padding_mode!r} {conv.padding!r}")
        self.conv = conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.conv
        return _ConvReLU.apply(x, c.weight, c.bias, c.stride, c.padding, c.dilation, c.groups)


def swap_conv_units(module: nn.Module) -> int:
    """Replace, in place, every torchvision ``BasicConv2d`` under ``module`` whose BatchNorm was
    folded away (``bn`` is ``nn.Identity``) by a :class:`ConvReLU`; returns how many."""
    from torchvision.models.googlenet import BasicConv2d

    count = 0
    for name, child in list(module.named_children()):
        if isinstance(child, BasicConv2d):
            if not isinstance(child.bn, nn.Identity):
                raise ValueError(f"{name}: fold the BatchNorm into the conv first (models.base.fold_batchnorm)")
            setattr(module, name, ConvReLU(child.conv))
            count += 1
        else:
            count += swap_conv_units(child)
    return count
