"""Channels-last feature maps for the temporal 1-D U-Net (Diffuser's) and its value function.

A (B, C, T) map of these levels lies in memory as (B, T, C): strides (T C, 1, C). oneDNN, which
runs torch's CPU convolutions, convolves such a map as it lies when it sees it as the
channels-last 4-D view (B, C, 1, T), where a (B, C, T) map is reordered into its blocked layout
and back around every convolution: at the temporal U-Net's sizes (T <= 64, C <= 256, batch 64)
that costs 10-30 % of each convolution. Elementwise operations keep the layout, GroupNorm has a
channels-last kernel, so only convolutions, GroupNorm and concatenation need the 4-D view.

The weights stay the format's (O, C, K) parameters (same keys, shapes and values), but oneDNN
wants them channels-last too, (O, 1, K, C) in memory, and would copy them at every call (7 % of
the convolution time): ``conv`` lays each weight out so once, in place of its data (strides
(K C, 1, C); ``state_dict``, saving, loading and optimisers work as before; a weight loaded
later in the plain layout is laid out again at its next call).

The gradient with respect to the input of a stride-1 convolution (the value guidance's
gradient, and training) is itself a stride-1 convolution, of the output gradient with the
kernel flipped in time and its two channel axes swapped, padded by K - 1 - p: oneDNN runs that
forward convolution about 1.5-2x faster than its own backward-data pass at these sizes, so
``conv`` computes it so (``_SameConv``); weight and bias gradients, when asked for, come from
torch's ``convolution_backward``.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


def channels_last(x: torch.Tensor) -> torch.Tensor:
    """``x`` (B, C, T) with channels-last strides, copied only when it is not so already."""
    if x.stride(1) == 1 or x.shape[1] == 1:
        return x
    return x.unsqueeze(2).contiguous(memory_format=torch.channels_last).squeeze(2)


def conv(module: nn.Conv1d | nn.ConvTranspose1d, x: torch.Tensor) -> torch.Tensor:
    """``module`` (a ``Conv1d`` or ``ConvTranspose1d``, groups 1, dilation 1) on ``x``
    (B, C, T); the result is channels-last."""
    x = channels_last(x).unsqueeze(2)
    weight = module.weight
    if weight.stride(1) != 1 and weight.shape[1] > 1:
        with torch.no_grad():  # once per weight: the same values, channels-last
            weight.data = channels_last(weight.data)
    weight = weight.unsqueeze(2)
    if isinstance(module, nn.ConvTranspose1d):
        out = F.conv_transpose2d(x, weight, module.bias, (1, module.stride[0]),
                                 (0, module.padding[0]), (0, module.output_padding[0]))
    elif module.stride[0] == 1 and torch.is_grad_enabled() and (
            x.requires_grad or weight.requires_grad):
        flipped = _flipped(module, weight) if x.requires_grad else None
        out = _SameConv.apply(x, weight, module.bias, module.padding[0], flipped)
    else:
        out = F.conv2d(x, weight, module.bias, (1, module.stride[0]), (0, module.padding[0]))
    return out.squeeze(2)


def _flipped(module: nn.Conv1d, weight: torch.Tensor) -> torch.Tensor:
    """The kernel of the input gradient, (C, O, 1, K) channels-last: ``weight`` (O, C, 1, K)
    flipped in time, channel axes swapped. Kept on the module while the weight is unchanged
    (a planner's guidance asks for it 60 times per decision)."""
    key = (weight.data_ptr(), weight._version)
    cached = getattr(module, "_flipped_kernel", None)
    if cached is None or cached[0] != key:
        with torch.no_grad():
            kernel = weight.detach().transpose(0, 1).flip(-1).contiguous(
                memory_format=torch.channels_last)
        cached = (key, kernel)
        object.__setattr__(module, "_flipped_kernel", cached)  # not a buffer: no state-dict key
    return cached[1]


class _SameConv(torch.autograd.Function):
    """A stride-1 convolution of channels-last (B, C, 1, T) maps whose input gradient is the
    forward convolution of the module docstring (with ``flipped``, given when the input needs
    its gradient)."""

    @staticmethod
    def forward(ctx, x, weight, bias, padding: int, flipped):
        ctx.save_for_backward(x, weight, flipped)
        ctx.padding, ctx.has_bias = padding, bias is not None
        return F.conv2d(x, weight, bias, 1, (0, padding))

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        x, weight, flipped = ctx.saved_tensors
        grad = grad.contiguous(memory_format=torch.channels_last)
        grad_x = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_x = F.conv2d(grad, flipped, None, 1, (0, weight.shape[-1] - 1 - ctx.padding))
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
            _, grad_weight, grad_bias = torch.ops.aten.convolution_backward(
                grad, x, weight, [weight.shape[0]] if ctx.has_bias else None, [1, 1],
                [0, ctx.padding], [1, 1], False, [0, 0], 1,
                [False, ctx.needs_input_grad[1], ctx.needs_input_grad[2]])
        return grad_x, grad_weight, grad_bias, None, None


def group_norm(module: nn.GroupNorm, x: torch.Tensor) -> torch.Tensor:
    """``module`` on a channels-last ``x`` (B, C, T), keeping the layout."""
    return F.group_norm(x.unsqueeze(2), module.num_groups, module.weight, module.bias,
                        module.eps).squeeze(2)


def cat_channels(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(a, b) joined along the channels, channels-last."""
    return torch.cat((channels_last(a).unsqueeze(2), channels_last(b).unsqueeze(2)),
                     dim=1).squeeze(2)
