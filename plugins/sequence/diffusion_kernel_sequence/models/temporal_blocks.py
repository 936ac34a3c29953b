"""The levels of the temporal U-Net of Diffuser (Janner, Du, Tenenbaum & Levine 2022, "Planning
with Diffusion for Flexible Behavior Synthesis", appendix C) and of its value function: residual
blocks of two 5-tap convolutions with GroupNorm(8) and Mish, the time embedding added between
them, learned 2x resampling between levels.

Weight keys follow the diffusers format.
"""

from __future__ import annotations

import torch
from diffusion_kernel.errors import ModelInputError
from torch import nn

from . import layout
from .activations import Mish, get_activation
from .resampling import ConvDownsample1d, ConvTransposeUpsample1d

NORM_GROUPS = 8  # GroupNorm groups of every temporal residual block (fixed by the format)


class Conv1dBlock(nn.Module):
    """Conv1d -> GroupNorm -> Mish (keys ``conv1d``, ``group_norm``)."""

    def __init__(self, inp_channels: int, out_channels: int, kernel_size: int,
                 n_groups: int = NORM_GROUPS, activation: str = "mish"):
        super().__init__()
        self.conv1d = nn.Conv1d(inp_channels, out_channels, kernel_size,
                                padding=kernel_size // 2)
        self.group_norm = nn.GroupNorm(n_groups, out_channels)
        self.mish = get_activation(activation)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.run(layout.as_map(inputs)).squeeze(2)

    def run(self, x: torch.Tensor) -> torch.Tensor:
        """On a (B, C, 1, T) channels-last map (``layout``)."""
        if isinstance(self.mish, Mish) and x.dtype == torch.float32 \
                and self.conv1d.padding[0] < self.conv1d.kernel_size[0]:
            return layout.conv_norm_mish(self.conv1d, self.group_norm, x)
        return self.mish(layout.group_norm(self.group_norm, layout.conv_map(self.conv1d, x)))


class ResidualTemporalBlock1D(nn.Module):
    """Two ``Conv1dBlock`` with the projected time embedding ``Linear(mish(t))`` added after the
    first, plus the input (through a 1x1 convolution when the channel count changes)."""

    def __init__(self, inp_channels: int, out_channels: int, embed_dim: int,
                 kernel_size: int = 5, activation: str = "mish"):
        super().__init__()
        self.conv_in = Conv1dBlock(inp_channels, out_channels, kernel_size)
        self.conv_out = Conv1dBlock(out_channels, out_channels, kernel_size)
        self.time_emb_act = get_activation(activation)
        self.time_emb = nn.Linear(embed_dim, out_channels)
        self.residual_conv = (nn.Conv1d(inp_channels, out_channels, 1)
                              if inp_channels != out_channels else nn.Identity())

    def forward(self, inputs: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """``inputs`` (B, C_in, T), ``t`` (B, embed_dim) -> (B, C_out, T), channels-last
        (``layout``)."""
        x = layout.as_map(inputs)
        time = self.time_emb(self.time_emb_act(t))[:, :, None, None]
        # In place: each sum goes to a fresh map that no backward pass has saved (autograd's
        # version counters would refuse it otherwise); fewer maps, fewer page faults.
        hidden = self.conv_in.run(x).add_(time)
        hidden = self.conv_out.run(hidden)
        residual = (x if isinstance(self.residual_conv, nn.Identity)
                    else layout.conv_map(self.residual_conv, x))
        return hidden.add_(residual).squeeze(2)


def _resnets(in_channels: int, out_channels: int, embed_dim: int, num_layers: int):
    """One block from ``in_channels`` to ``out_channels``, then ``num_layers`` more."""
    return nn.ModuleList(
        [ResidualTemporalBlock1D(in_channels, out_channels, embed_dim=embed_dim)]
        + [ResidualTemporalBlock1D(out_channels, out_channels, embed_dim=embed_dim)
           for _ in range(num_layers)])


def _run(resnets: nn.ModuleList, hidden_states: torch.Tensor, temb: torch.Tensor):
    for resnet in resnets:
        hidden_states = resnet(hidden_states, temb)
    return hidden_states


class DownResnetBlock1D(nn.Module):
    """``1 + num_layers`` residual blocks, then (``add_downsample``) a stride-2 convolution.
    The skip connection is the state before downsampling."""

    def __init__(self, in_channels: int, out_channels: int | None = None, num_layers: int = 1,
                 temb_channels: int = 32, add_downsample: bool = True):
        super().__init__()
        out_channels = in_channels if out_channels is None else out_channels
        self.resnets = _resnets(in_channels, out_channels, temb_channels, num_layers)
        self.downsample = ConvDownsample1d(out_channels) if add_downsample else None

    def forward(self, hidden_states: torch.Tensor, temb: torch.Tensor | None = None):
        hidden_states = _run(self.resnets, hidden_states, temb)
        skip = hidden_states
        if self.downsample is not None:
            hidden_states = self.downsample(hidden_states)
        return hidden_states, (skip,)


class UpResnetBlock1D(nn.Module):
    """Join the skip connection, ``1 + num_layers`` residual blocks, then (``add_upsample``) a
    stride-2 transposed convolution."""

    def __init__(self, in_channels: int, out_channels: int | None = None, num_layers: int = 1,
                 temb_channels: int = 32, add_upsample: bool = True):
        super().__init__()
        out_channels = in_channels if out_channels is None else out_channels
        self.resnets = _resnets(2 * in_channels, out_channels, temb_channels, num_layers)
        self.upsample = ConvTransposeUpsample1d(out_channels) if add_upsample else None

    def forward(self, hidden_states: torch.Tensor,
                res_hidden_states_tuple: tuple[torch.Tensor, ...] | None = None,
                temb: torch.Tensor | None = None) -> torch.Tensor:
        if res_hidden_states_tuple is not None:
            hidden_states = layout.cat_channels(hidden_states, res_hidden_states_tuple[-1])
        hidden_states = _run(self.resnets, hidden_states, temb)
        if self.upsample is not None:
            hidden_states = self.upsample(hidden_states)
        return hidden_states


class MidResTemporalBlock1D(nn.Module):
    """The temporal U-Net's bottleneck: ``1 + num_layers`` residual blocks, then
    (``add_downsample``) a stride-2 convolution."""

    def __init__(self, in_channels: int, out_channels: int, embed_dim: int, num_layers: int = 1,
                 add_downsample: bool = False):
        super().__init__()
        self.resnets = _resnets(in_channels, out_channels, embed_dim, num_layers)
        self.downsample = ConvDownsample1d(out_channels) if add_downsample else None

    def forward(self, hidden_states: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        hidden_states = _run(self.resnets, hidden_states, temb)
        if self.downsample is not None:
            hidden_states = self.downsample(hidden_states)
        return hidden_states


class ValueFunctionMidBlock1D(nn.Module):
    """The value function's bottleneck: halve the channels and the length twice."""

    def __init__(self, in_channels: int, out_channels: int, embed_dim: int):
        super().__init__()
        self.res1 = ResidualTemporalBlock1D(in_channels, in_channels // 2, embed_dim=embed_dim)
        self.down1 = ConvDownsample1d(out_channels // 2)
        self.res2 = ResidualTemporalBlock1D(in_channels // 2, in_channels // 4,
                                            embed_dim=embed_dim)
        self.down2 = ConvDownsample1d(out_channels // 4)

    def forward(self, x: torch.Tensor, temb: torch.Tensor | None = None) -> torch.Tensor:
        return self.down2(self.res2(self.down1(self.res1(x, temb)), temb))


class OutConv1DBlock(nn.Module):
    """The temporal U-Net's output head: conv5 -> GroupNorm -> activation -> 1x1 conv."""

    def __init__(self, num_groups_out: int, out_channels: int, embed_dim: int, act_fn: str):
        super().__init__()
        self.final_conv1d_1 = nn.Conv1d(embed_dim, embed_dim, 5, padding=2)
        self.final_conv1d_gn = nn.GroupNorm(num_groups_out, embed_dim)
        self.final_conv1d_act = get_activation(act_fn)
        self.final_conv1d_2 = nn.Conv1d(embed_dim, out_channels, 1)

    def forward(self, hidden_states: torch.Tensor, temb: torch.Tensor | None = None):
        x = layout.conv_map(self.final_conv1d_1, layout.as_map(hidden_states))
        x = self.final_conv1d_act(layout.group_norm(self.final_conv1d_gn, x))
        return layout.conv_map(self.final_conv1d_2, x).squeeze(2)


class OutValueFunctionBlock(nn.Module):
    """The value head: the bottleneck's features (length 1) joined with the time embedding, then
    Linear -> activation -> Linear to one value per sample."""

    def __init__(self, fc_dim: int, embed_dim: int, act_fn: str = "mish"):
        super().__init__()
        self.fc_dim = fc_dim
        self.final_block = nn.ModuleList([nn.Linear(fc_dim + embed_dim, fc_dim // 2),
                                          get_activation(act_fn), nn.Linear(fc_dim // 2, 1)])

    def forward(self, hidden_states: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        if hidden_states.shape[1] * hidden_states.shape[2] != self.fc_dim:
            raise ModelInputError(
                f"the value function's bottleneck left {hidden_states.shape[2]} positions but its "
                f"head reads exactly 1; use a shorter sample (each level halves the length)")
        hidden_states = torch.cat((hidden_states.flatten(1), temb), dim=-1)
        for layer in self.final_block:
            hidden_states = layer(hidden_states)
        return hidden_states
