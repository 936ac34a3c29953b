"""Channels-last feature maps for the temporal 1-D U-Net (Diffuser's) and its value function.

A (B, C, T) map of these levels lies in memory as (B, T, C): strides (T C, 1, C). oneDNN, which
runs torch's CPU convolutions, convolves such a map as it lies when it sees it as the
channels-last 4-D view (B, C, 1, T), where a (B, C, T) map is reordered into its blocked layout
and back around every convolution: at the temporal U-Net's sizes (T <= 64, C <= 256, batch 64)
the channels-last convolutions take 0.6-0.85x the time of the (B, C, T) ones, 0.77x summed over
the value function's 24 shapes (measured one thread; two of them, the 256-channel stride-2 and
1x1 convolutions at T = 4, are 1.1-1.4x). Elementwise operations keep the layout, GroupNorm has a
channels-last kernel, so only convolutions, GroupNorm and concatenation need the 4-D view.

The weights stay the format's (O, C, K) parameters (same keys, shapes and values), but oneDNN
wants them channels-last too, (O, 1, K, C) in memory, and would copy them at every call (7 % of
the convolution time): ``conv`` lays each weight out so once, in place of its data (strides
(K C, 1, C); ``state_dict``, saving, loading and optimisers work as before; a weight loaded
later in the plain layout is laid out again at its next call).

torch's channels-last GroupNorm computes each group's variance as E[x^2] - E[x]^2, which loses
the precision of a group whose mean is large against its spread (a map of offset 10 and spread
0.5: errors of 1e-3 where the (B, C, T) kernel errs by 1e-5). GroupNorm does not change when a
constant is taken from each group, so ``_centre`` first subtracts each group's first value (at
the first position, per sample): the variance is then computed about a point within the group's
spread, and the result is more precise than the (B, C, T) kernel's (1e-6 in that example).

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

from .activations import mish_, mish_grad, tanh_softplus


def channels_last(x: torch.Tensor) -> torch.Tensor:
    """``x`` (B, C, T) with channels-last strides, copied only when it is not so already."""
    if x.stride(1) == 1 or x.shape[1] == 1:
        return x
    return x.unsqueeze(2).contiguous(memory_format=torch.channels_last).squeeze(2)


def as_map(x: torch.Tensor) -> torch.Tensor:
    """``x`` (B, C, T) as the channels-last (B, C, 1, T) map (a view when it lies so)."""
    return channels_last(x).unsqueeze(2)


def conv_weight(module: nn.Conv1d | nn.ConvTranspose1d) -> torch.Tensor:
    """The module's weight as a channels-last (O, C, 1, K) view, laid out so (in place of its
    data, same values) at the first call."""
    weight = module.weight
    if weight.stride(1) != 1 and weight.shape[1] > 1:
        with torch.no_grad():
            weight.data = channels_last(weight.data)
    return weight.unsqueeze(2)


def _needs_grad(x: torch.Tensor, *params: torch.Tensor | None) -> bool:
    return torch.is_grad_enabled() and (
        x.requires_grad or any(p is not None and p.requires_grad for p in params))


def conv_map(module: nn.Conv1d | nn.ConvTranspose1d, x: torch.Tensor) -> torch.Tensor:
    """``module`` (a ``Conv1d`` or ``ConvTranspose1d``, groups 1, dilation 1) on a map."""
    weight = conv_weight(module)
    if isinstance(module, nn.ConvTranspose1d):
        return F.conv_transpose2d(x, weight, module.bias, (1, module.stride[0]),
                                  (0, module.padding[0]), (0, module.output_padding[0]))
    if module.stride[0] == 1 and module.padding[0] < weight.shape[-1] \
            and _needs_grad(x, weight, module.bias):
        flipped = _flipped(module, weight) if x.requires_grad else None
        return _SameConv.apply(x, weight, module.bias, module.padding[0], flipped)
    return F.conv2d(x, weight, module.bias, (1, module.stride[0]), (0, module.padding[0]))


def conv(module: nn.Conv1d | nn.ConvTranspose1d, x: torch.Tensor) -> torch.Tensor:
    """``module`` on ``x`` (B, C, T); the result is channels-last."""
    return conv_map(module, as_map(x)).squeeze(2)


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
        return (*_same_conv_grads(grad, x, weight, flipped, ctx.padding, ctx.has_bias,
                                  ctx.needs_input_grad[:3]), None, None)


def _same_conv_grads(grad, x, weight, flipped, padding: int, has_bias: bool, need
                     ) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """The gradients (input, weight, bias) of a stride-1 convolution on channels-last maps, each
    only where ``need`` asks: the input's as the forward convolution with ``flipped`` (module
    docstring), the weight's and bias's from torch's ``convolution_backward``."""
    grad_x = grad_weight = grad_bias = None
    if need[0]:
        grad_x = F.conv2d(grad, flipped, None, 1, (0, weight.shape[-1] - 1 - padding))
    if need[1] or need[2]:
        _, grad_weight, grad_bias = torch.ops.aten.convolution_backward(
            grad, x, weight, [weight.shape[0]] if has_bias else None, [1, 1], [0, padding],
            [1, 1], False, [0, 0], 1, [False, need[1], need[2]])
    return grad_x, grad_weight, grad_bias


def conv_norm_mish(conv: nn.Conv1d, norm: nn.GroupNorm, x: torch.Tensor) -> torch.Tensor:
    """Mish(GroupNorm(conv(x))) on a map, with one autograd node (``_ConvNormMish``) when a
    gradient is needed."""
    weight = conv_weight(conv)
    padding = conv.padding[0]
    if not _needs_grad(x, weight, conv.bias, norm.weight, norm.bias):
        hidden = _centre(F.conv2d(x, weight, conv.bias, 1, (0, padding)), norm.num_groups,
                         in_place=True)
        return mish_(torch.group_norm(hidden, norm.num_groups, norm.weight, norm.bias, norm.eps))
    flipped = _flipped(conv, weight) if x.requires_grad else None
    return _ConvNormMish.apply(x, weight, conv.bias, norm.weight, norm.bias, flipped, padding,
                               norm.num_groups, norm.eps)


class _ConvNormMish(torch.autograd.Function):
    """conv (stride 1) -> GroupNorm -> Mish on channels-last maps, its backward written out:
    Mish' (``activations``), torch's GroupNorm backward, the input gradient as the forward
    convolution with ``flipped`` (module docstring). One node where autograd would record
    about ten (the views of the 4-D layout included): at batch 64 and horizon 64 that
    bookkeeping costs as much as the arithmetic."""

    @staticmethod
    def forward(ctx, x, weight, bias, gamma, beta, flipped, padding: int, groups: int,
                eps: float):
        hidden = _centre(F.conv2d(x, weight, bias, 1, (0, padding)), groups, in_place=True)
        batch, channels, _, length = hidden.shape
        normed, mean, rstd = torch.ops.aten.native_group_norm(
            hidden, gamma, beta, batch, channels, length, groups, eps)
        # Saved: the input and the convolution's output, less than torch's own nodes would keep;
        # GroupNorm's output and Mish's factors are recomputed in the backward pass (one affine
        # pass, four elementwise passes). Every saved map is memory that glibc hands back to the
        # system after the backward pass and that faults in again at the next call: saving
        # Mish's factors as well doubled the page faults and was 7 % slower, not saving
        # GroupNorm's output halved them and is 5-10 % faster (value function, batch 64,
        # horizon 64, measured alternating).
        ctx.save_for_backward(x, weight, flipped, hidden, mean, rstd, gamma, beta)
        ctx.padding, ctx.groups, ctx.has_bias = padding, groups, bias is not None
        return tanh_softplus(normed)[1].mul_(normed)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        x, weight, flipped, hidden, mean, rstd, gamma, beta = ctx.saved_tensors
        need = ctx.needs_input_grad
        normed = _group_norm_output(hidden, mean, rstd, gamma, beta, ctx.groups)
        grad = mish_grad(grad, normed, *tanh_softplus(normed)).contiguous(
            memory_format=torch.channels_last)
        batch, channels, _, length = hidden.shape
        grad, grad_gamma, grad_beta = torch.ops.aten.native_group_norm_backward(
            grad, hidden, mean, rstd, gamma, batch, channels, length, ctx.groups,
            [True, need[3], need[4]])
        grad = grad.contiguous(memory_format=torch.channels_last)
        grad_x, grad_weight, grad_bias = _same_conv_grads(grad, x, weight, flipped, ctx.padding,
                                                          ctx.has_bias, need[:3])
        return (grad_x, grad_weight, grad_bias, grad_gamma, grad_beta, None, None, None,
                None)


def _group_norm_output(hidden, mean, rstd, gamma, beta, groups: int) -> torch.Tensor:
    """GroupNorm's output again from its input and statistics (B, G): hidden * a + b with
    a = rstd * gamma and b = beta - mean * a per sample and channel, the kernel's own formula."""
    batch, channels = hidden.shape[:2]
    per = channels // groups
    scale = rstd.view(batch, groups, 1).expand(batch, groups, per)
    if gamma is not None:
        scale = scale * gamma.view(1, groups, per)
    scale = scale.reshape(batch, channels)
    shift = mean.view(batch, groups, 1).expand(batch, groups, per).reshape(batch, channels)
    shift = (-shift * scale) if beta is None else torch.addcmul(beta, shift, scale, value=-1)
    return torch.addcmul(shift[:, :, None, None], hidden, scale[:, :, None, None])


def _centre(x: torch.Tensor, groups: int, in_place: bool = False) -> torch.Tensor:
    """A map less each sample's and group's first value (module docstring); the shift carries
    no gradient (GroupNorm's output does not depend on it)."""
    batch, channels = x.shape[:2]
    first = x.detach()[:, ::channels // groups, 0, 0]  # (B, G)
    # one value per channel: the subtraction then runs along the channels, contiguous here
    # (repeat_interleave copies: with one channel per group a view of x would change under sub_)
    shift = first.repeat_interleave(channels // groups, dim=1)[:, :, None, None]
    return x.sub_(shift) if in_place else x - shift


def group_norm(module: nn.GroupNorm, x: torch.Tensor) -> torch.Tensor:
    """``module`` on a map, keeping the layout."""
    return F.group_norm(_centre(x, module.num_groups), module.num_groups, module.weight,
                        module.bias, module.eps)


def cat_channels(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(a, b) joined along the channels, channels-last."""
    return torch.cat((channels_last(a).unsqueeze(2), channels_last(b).unsqueeze(2)),
                     dim=1).squeeze(2)
