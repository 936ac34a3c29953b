"""Activations of the 1-D U-Nets by config name: the kernel's, except a faster Mish.

Mish (Misra 2019, "Mish: A Self Regularized Non-Monotonic Activation Function") is
x tanh(softplus(x)). With s = sigmoid(x), e^x = s / (1 - s) and 1 + e^x = 1 / (1 - s), so

    tanh(ln(1 + e^x)) = (1 - (1 - s)^2) / (1 + (1 - s)^2) = t / (1 - t),   t = s - s^2 / 2,

and Mish is x t / (1 - t): a sigmoid (torch's is about 3x faster than its exp on a CPU),
one fused multiply-add, a subtraction, a division and a product, half the time of the form
through the exponential and a fifth of torch's ``mish`` kernel here. t lies in [0, 1/2], so
nothing overflows and no clamp is needed; for small s, t = s (1 - s / 2) keeps its relative
precision (Mish(x) ~ x e^x as x -> -inf).

The derivative (for the value guidance's input gradient and for training) is

    Mish'(x) = T + x s (1 - T^2),   T = tanh(softplus(x)) = t / (1 - t),

(d tanh(u) = 1 - tanh^2 u, d softplus = sigmoid): six elementwise passes from s and T, where
the autograd graph of the closed form above would take about twenty and torch's fused
``mish_backward`` evaluates tanh and softplus again. ``Mish`` saves s and T for it; the fused
conv -> GroupNorm -> Mish of ``layout`` recomputes them rather than keep two more maps alive.
Half and bfloat16 inputs are computed in float32 and rounded.
"""

from __future__ import annotations

import torch
from diffusion_kernel.nn import get_activation as kernel_activation
from torch import nn


def tanh_softplus(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(sigmoid(x), tanh(softplus(x))) by the identity of the module docstring (float32)."""
    s = torch.sigmoid(x)
    t = torch.addcmul(s, s, s, value=-0.5)
    return s, t.div_(torch.rsub(t, 1))


def mish_(x: torch.Tensor) -> torch.Tensor:
    """Mish of a float32 tensor that nothing else needs, computed in its place (no autograd)."""
    return x.mul_(tanh_softplus(x)[1])


def mish_grad(grad: torch.Tensor, x: torch.Tensor, s: torch.Tensor,
              tanh_sp: torch.Tensor) -> torch.Tensor:
    """grad * Mish'(x) from the forward pass's ``tanh_softplus(x)`` (module docstring)."""
    slope = torch.mul(tanh_sp, tanh_sp).neg_().add_(1)
    return slope.mul_(s).mul_(x).add_(tanh_sp).mul_(grad)


class _MishFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        s, tanh_sp = tanh_softplus(x)
        ctx.save_for_backward(x, s, tanh_sp)
        return x * tanh_sp

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return mish_grad(grad, *ctx.saved_tensors)


class Mish(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype in (torch.float16, torch.bfloat16):  # the identity in float32, then rounded
            return self(x.float()).to(x.dtype)
        if torch.is_grad_enabled() and x.requires_grad:
            return _MishFunction.apply(x)
        return tanh_softplus(x)[1].mul_(x)  # inference: in place on the fresh factor


def get_activation(name: str) -> nn.Module:
    """A fresh activation module for a config name (``"mish"``, ``"silu"``, ``"swish"``...)."""
    return Mish() if name.lower() == "mish" else kernel_activation(name)
