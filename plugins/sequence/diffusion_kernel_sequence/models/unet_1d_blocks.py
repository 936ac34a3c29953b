"""Block type names of the diffusers format -> the 1-D U-Net levels, and the config checks that
turn a level that could not run into a ``ConfigError`` naming the fix.

Two families share the format:

- Dance Diffusion (``DownBlock1DNoSkip``, ``DownBlock1D``, ``AttnDownBlock1D``,
  ``UNetMidBlock1D``, ``AttnUpBlock1D``, ``UpBlock1D``, ``UpBlock1DNoSkip``): the time embedding
  is a map of extra input channels, read once by ``DownBlock1DNoSkip``;
- Diffuser's temporal U-Net and value function (``DownResnetBlock1D``,
  ``MidResTemporalBlock1D``, ``UpResnetBlock1D``, ``ValueFunctionMidBlock1D``, out blocks
  ``OutConv1DBlock`` and ``ValueFunction``): every residual block reads the time embedding as a
  vector, so they need ``use_timestep_embedding=True``.
"""

from __future__ import annotations

from diffusion_kernel.errors import ConfigError
from torch import nn

from . import dance_blocks as dance
from . import temporal_blocks as temporal

DOWN_BLOCKS = {"DownResnetBlock1D": temporal.DownResnetBlock1D, "DownBlock1D": dance.DownBlock1D,
               "AttnDownBlock1D": dance.AttnDownBlock1D,
               "DownBlock1DNoSkip": dance.DownBlock1DNoSkip}
UP_BLOCKS = {"UpResnetBlock1D": temporal.UpResnetBlock1D, "UpBlock1D": dance.UpBlock1D,
             "AttnUpBlock1D": dance.AttnUpBlock1D, "UpBlock1DNoSkip": dance.UpBlock1DNoSkip}
MID_BLOCKS = ("MidResTemporalBlock1D", "ValueFunctionMidBlock1D", "UNetMidBlock1D")
OUT_BLOCKS = (None, "OutConv1DBlock", "ValueFunction")
TEMPORAL = {"DownResnetBlock1D", "UpResnetBlock1D", "MidResTemporalBlock1D",
            "ValueFunctionMidBlock1D", "ValueFunction"}  # read the time embedding as a vector
# Dance Diffusion levels that halve the length whatever ``add_downsample`` says
DANCE_DOWNSAMPLING = {"DownBlock1D", "AttnDownBlock1D"}


def check_block_type(kind: str, name: str | None, valid) -> None:
    if name not in valid:
        shown = ", ".join("null" if v is None else repr(v) for v in valid)
        raise ConfigError(f"UNet1DModel: unknown {kind} {name!r}; use one of {shown}")


def check_attention_width(where: str, channels: int) -> None:
    """Dance Diffusion attention has ``channels // 32`` heads that split the channels evenly."""
    heads = channels // dance.HEAD_CHANNELS
    if heads == 0 or channels % heads:
        fix = (f"at least {dance.HEAD_CHANNELS}" if heads == 0
               else f"a multiple of {heads} (or of {dance.HEAD_CHANNELS})")
        raise ConfigError(
            f"UNet1DModel: the attention in {where} has {channels} channels, which gives "
            f"{heads} heads of {dance.HEAD_CHANNELS}-channel width "
            f"{'(none)' if heads == 0 else 'that do not divide them'}; give that level "
            f"{fix} channels in block_out_channels, or use the block type without attention")


def check_group_width(where: str, channels: int, groups: int, field: str) -> None:
    if channels % groups:
        raise ConfigError(
            f"UNet1DModel: {where} normalises {channels} channels in {groups} groups ({field}); "
            f"use a channel count divisible by {groups} in block_out_channels")


def get_down_block(block_type: str, num_layers: int, in_channels: int, out_channels: int,
                   temb_channels: int, add_downsample: bool) -> nn.Module:
    if block_type == "DownResnetBlock1D":
        return temporal.DownResnetBlock1D(in_channels, out_channels, num_layers=num_layers,
                                          temb_channels=temb_channels,
                                          add_downsample=add_downsample)
    return DOWN_BLOCKS[block_type](out_channels=out_channels, in_channels=in_channels)


def get_up_block(block_type: str, num_layers: int, in_channels: int, out_channels: int,
                 temb_channels: int, add_upsample: bool) -> nn.Module:
    if block_type == "UpResnetBlock1D":
        return temporal.UpResnetBlock1D(in_channels, out_channels, num_layers=num_layers,
                                        temb_channels=temb_channels, add_upsample=add_upsample)
    return UP_BLOCKS[block_type](in_channels=in_channels, out_channels=out_channels)


def get_mid_block(block_type: str, num_layers: int, channels: int, embed_dim: int,
                  add_downsample: bool) -> nn.Module:
    if block_type == "MidResTemporalBlock1D":
        return temporal.MidResTemporalBlock1D(channels, channels, embed_dim,
                                              num_layers=num_layers,
                                              add_downsample=add_downsample)
    if block_type == "ValueFunctionMidBlock1D":
        return temporal.ValueFunctionMidBlock1D(channels, channels, embed_dim)
    return dance.UNetMidBlock1D(mid_channels=channels, in_channels=channels,
                                out_channels=channels)


def get_out_block(block_type: str | None, num_groups_out: int, embed_dim: int,
                  out_channels: int, act_fn: str, fc_dim: int) -> nn.Module | None:
    if block_type == "OutConv1DBlock":
        return temporal.OutConv1DBlock(num_groups_out, out_channels, embed_dim, act_fn)
    if block_type == "ValueFunction":
        return temporal.OutValueFunctionBlock(fc_dim, embed_dim, act_fn)
    return None
