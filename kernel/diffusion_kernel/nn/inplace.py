"""Residual additions and activations written into a tensor the layer has just made.

A block's output is usually ``conv(h) + residual``: the conv output is new, nothing else holds
it, and no backward pass needs it (convolution and linear layers save their inputs, not their
outputs). Adding in place saves a full-size allocation per residual (a 64x64 Stable Diffusion
feature map is 10 MB; fresh memory is also faulted in page by page), with identical numbers:
floating-point addition is commutative.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


def add_to_fresh(fresh: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """``fresh + other``, in ``fresh``'s memory when it can hold the result (same dtype as the
    promoted result, same shape as the broadcast one; under autocast the two may differ)."""
    if fresh.dtype == torch.promote_types(fresh.dtype, other.dtype) and (
            other.shape == fresh.shape or _broadcasts_to(other.shape, fresh.shape)):
        return fresh.add_(other)
    return fresh + other


def _broadcasts_to(shape: torch.Size, target: torch.Size) -> bool:
    # torch.broadcast_shapes would do, at 50 us a call: a tiny U-Net makes hundreds of these
    return len(shape) <= len(target) and all(
        n in (1, m) for n, m in zip(reversed(shape), reversed(target)))


# Activation module type -> its in-place function (the same kernel as the module's call).
_IN_PLACE = {
    nn.GELU: lambda module, x: torch._C._nn.gelu_(x, approximate=module.approximate),
    nn.SiLU: lambda module, x: F.silu(x, inplace=True),
    nn.Mish: lambda module, x: F.mish(x, inplace=True),
    nn.ReLU: lambda module, x: torch.relu_(x),
}


def activate_fresh(activation: nn.Module, fresh: torch.Tensor) -> torch.Tensor:
    """``activation(fresh)``, in ``fresh``'s memory when no gradient is being recorded (an
    activation's backward needs its input, which the in-place form overwrites) and the
    activation is one of the standard modules; otherwise the plain call."""
    if not torch.is_grad_enabled():
        in_place = _IN_PLACE.get(type(activation))
        if in_place is not None:
            return in_place(activation, fresh)
    return activation(fresh)
