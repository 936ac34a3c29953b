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
    else:
        out = F.conv2d(x, weight, module.bias, (1, module.stride[0]), (0, module.padding[0]))
    return out.squeeze(2)


def group_norm(module: nn.GroupNorm, x: torch.Tensor) -> torch.Tensor:
    """``module`` on a channels-last ``x`` (B, C, T), keeping the layout."""
    return F.group_norm(x.unsqueeze(2), module.num_groups, module.weight, module.bias,
                        module.eps).squeeze(2)


def cat_channels(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(a, b) joined along the channels, channels-last."""
    return torch.cat((channels_last(a).unsqueeze(2), channels_last(b).unsqueeze(2)),
                     dim=1).squeeze(2)
