"""The 1-D U-Net of the diffusers format, shared by two families of published models:

- Dance Diffusion (Harmonai): unconditional audio waveforms, a v-objective over continuous
  t in [0, 1] with Gaussian Fourier features of t (Tancik et al. 2020) fed as extra input
  channels; residual/attention levels with FIR resampling (``dance_blocks``);
- Diffuser (Janner et al. 2022): trajectories of states and actions, a sinusoidal embedding of
  the integer timestep through an MLP, read by every temporal residual block
  (``temporal_blocks``); with ``ValueFunction`` out blocks, the value function that guides it.

Config fields and weight keys are those of diffusers' ``UNet1DModel`` (format 0.42.1), so its
checkpoints load unchanged and ours load there.
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from diffusion_kernel.errors import ConfigError, ModelInputError
from diffusion_kernel.modeling import ModelMixin
from diffusion_kernel.nn import (
    GaussianFourierProjection,
    ModelOutput,
    TimestepEmbedding,
    Timesteps,
)
from torch import nn

from . import unet_1d_blocks as blocks

# Configs written before diffusers 0.36 have no ``time_embedding_dim``: their Fourier embedding
# had 8 frequencies (16 channels) whatever the width (diffusers PR #12111 changed the default).
LEGACY_FOURIER_DIM = 16
TIME_EMBEDDING_DIM_SINCE = (0, 36)


@dataclass
class UNet1DOutput(ModelOutput):
    """``sample``: the model prediction (B, out_channels, T); (B, 1) for a value function."""

    sample: torch.Tensor


class UNet1DModel(ModelMixin):
    """A 1-D U-Net over (batch, channels, length). Call ``unet(sample, timestep).sample``."""

    def __init__(
        self,
        sample_size: int = 65536,
        sample_rate: int | None = None,
        in_channels: int = 2,
        out_channels: int = 2,
        extra_in_channels: int = 0,
        time_embedding_type: str = "fourier",
        time_embedding_dim: int | None = None,
        flip_sin_to_cos: bool = True,
        use_timestep_embedding: bool = False,
        freq_shift: float = 0.0,
        down_block_types: tuple[str, ...] = ("DownBlock1DNoSkip", "DownBlock1D",
                                             "AttnDownBlock1D"),
        up_block_types: tuple[str, ...] = ("AttnUpBlock1D", "UpBlock1D", "UpBlock1DNoSkip"),
        mid_block_type: str = "UNetMidBlock1D",
        out_block_type: str | None = None,
        block_out_channels: tuple[int, ...] = (32, 32, 64),
        act_fn: str | None = None,
        norm_num_groups: int = 8,
        layers_per_block: int = 1,
        downsample_each_block: bool = False,
    ):
        super().__init__()
        channels = list(block_out_channels)
        time_map_channels = self._build_time_embedding(channels[0])
        _check_config(self.config, time_map_channels)

        self.down_blocks = nn.ModuleList()
        output_channel = in_channels
        for i, block_type in enumerate(down_block_types):
            input_channel = output_channel + (extra_in_channels if i == 0 else 0)
            output_channel = channels[i]
            is_final = i == len(channels) - 1
            self.down_blocks.append(blocks.get_down_block(
                block_type, num_layers=layers_per_block, in_channels=input_channel,
                out_channels=output_channel, temb_channels=channels[0],
                add_downsample=not is_final or downsample_each_block))

        self.mid_block = blocks.get_mid_block(
            mid_block_type, num_layers=layers_per_block, channels=channels[-1],
            embed_dim=channels[0], add_downsample=downsample_each_block)

        self.up_blocks = nn.ModuleList()
        reversed_channels = channels[::-1]
        final_channels = out_channels if out_block_type is None else channels[0]
        output_channel = reversed_channels[0]
        for i, block_type in enumerate(up_block_types):
            prev_output_channel = output_channel
            output_channel = (reversed_channels[i + 1] if i < len(up_block_types) - 1
                              else final_channels)
            self.up_blocks.append(blocks.get_up_block(
                block_type, num_layers=layers_per_block, in_channels=prev_output_channel,
                out_channels=output_channel, temb_channels=channels[0],
                add_upsample=i != len(channels) - 1))

        groups_out = norm_num_groups if norm_num_groups is not None else min(channels[0] // 4, 32)
        self.out_block = blocks.get_out_block(
            out_block_type, num_groups_out=groups_out, embed_dim=channels[0],
            out_channels=out_channels, act_fn=act_fn, fc_dim=channels[-1] // 4)
        self._length_multiple = _length_multiple(self.config)

    def _build_time_embedding(self, first_channels: int) -> int:
        """``time_proj`` (and ``time_mlp``); returns the channels of the time-embedding map the
        first level reads (without ``use_timestep_embedding``)."""
        config = self.config
        if config.time_embedding_type == "fourier":
            dim = config.time_embedding_dim or 2 * first_channels
            if dim % 2:
                raise ConfigError(f"UNet1DModel: the Fourier time embedding has sin and cos "
                                  f"halves, so time_embedding_dim must be even, got {dim}")
            self.time_proj = GaussianFourierProjection(dim // 2, log=False,
                                                       flip_sin_to_cos=config.flip_sin_to_cos)
            features = dim
        elif config.time_embedding_type == "positional":
            self.time_proj = Timesteps(first_channels, config.flip_sin_to_cos, config.freq_shift)
            features = first_channels
        else:
            raise ConfigError(f"UNet1DModel: unknown time_embedding_type "
                              f"{config.time_embedding_type!r}; use 'fourier' or 'positional'")
        if config.use_timestep_embedding:
            if config.act_fn is None:
                raise ConfigError("UNet1DModel: use_timestep_embedding=True needs an act_fn for "
                                  "its MLP, e.g. act_fn='mish'")
            self.time_mlp = TimestepEmbedding(features, 4 * first_channels, act_fn=config.act_fn,
                                              out_dim=first_channels)
        return features

    @classmethod
    def from_config(cls, config=None, **overrides):
        """As ``ConfigMixin.from_config``; a config written before diffusers 0.36 without
        ``time_embedding_dim`` gets the 16-channel Fourier embedding its weights were made
        with (``time_proj.weight`` of 8 frequencies), and a warning."""
        if isinstance(config, str | os.PathLike):
            config = cls.load_config(config)
        if isinstance(config, Mapping) and "time_embedding_dim" not in overrides \
                and _is_legacy_fourier_config(config):
            warnings.warn(
                f"UNet1DModel: this config was written by diffusers "
                f"{config['_diffusers_version']}, before time_embedding_dim existed; reading it "
                f"as time_embedding_dim={LEGACY_FOURIER_DIM}, the embedding its weights have. "
                f"Save the model again to record it.", stacklevel=2)
            overrides["time_embedding_dim"] = LEGACY_FOURIER_DIM
        return super().from_config(config, **overrides)

    @property
    def sample_size(self) -> int:
        return self.config.sample_size

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor | float | int,
                return_dict: bool = True) -> UNet1DOutput | tuple[torch.Tensor]:
        """Predict from a noisy ``sample`` (B, in_channels, T) at ``timestep``: a number, a 0-d
        tensor, or a tensor of one or B values. A Python int is an integer timestep; a Python
        float keeps its fraction (diffusers truncates it to an integer, which for the
        continuous t of Dance Diffusion means t = 0). Returns ``UNet1DOutput(sample)``."""
        self._check_sample(sample)
        temb = self._time_embedding(sample, timestep)
        skips: tuple[torch.Tensor, ...] = ()
        for block in self.down_blocks:
            sample, states = block(sample, temb)
            skips += states
        sample = self.mid_block(sample, temb)
        for block in self.up_blocks:  # each level joins exactly one skip connection
            sample = block(sample, skips[-1:], temb)
            skips = skips[:-1]
        if self.out_block is not None:
            sample = self.out_block(sample, temb)
        sample = sample.contiguous()  # the temporal levels leave it channels-last
        if not return_dict:
            return (sample,)
        return UNet1DOutput(sample=sample)

    def _time_embedding(self, sample: torch.Tensor, timestep) -> torch.Tensor:
        """(B, C0) through the MLP with ``use_timestep_embedding``; otherwise the projection
        repeated along time: a (B, channels, T) map that the first level concatenates."""
        if not torch.is_tensor(timestep):
            dtype = torch.float32 if isinstance(timestep, float) else torch.long
            timestep = torch.tensor([timestep], dtype=dtype, device=sample.device)
        elif timestep.ndim == 0:
            timestep = timestep[None].to(sample.device)
        if timestep.ndim != 1 or timestep.shape[0] not in (1, sample.shape[0]):
            raise ModelInputError(f"UNet1DModel: timestep must be a number or hold 1 or "
                                  f"{sample.shape[0]} (batch size) values, got shape "
                                  f"{tuple(timestep.shape)}")
        embedding = self.time_proj(timestep)
        batch = sample.shape[0]
        if self.config.use_timestep_embedding:
            embedding = self.time_mlp(embedding.to(sample.dtype))
            return embedding.expand(batch, -1)
        embedding = embedding.to(sample.dtype)[:, :, None]
        return embedding.expand(batch, -1, sample.shape[2])

    def _check_sample(self, sample: torch.Tensor) -> None:
        channels = self.config.in_channels
        if sample.ndim != 3 or sample.shape[1] != channels:
            raise ModelInputError(
                f"UNet1DModel: sample must have shape (batch, {channels}, length) (in_channels="
                f"{channels} in the config), got {tuple(sample.shape)}")
        multiple = self._length_multiple
        if sample.shape[2] % multiple:
            raise ModelInputError(
                f"UNet1DModel: this U-Net halves the length {multiple.bit_length() - 1} times "
                f"and joins skip connections of equal length, so the sample length must be a "
                f"multiple of {multiple}, got {sample.shape[2]}; pad or crop")


def _is_legacy_fourier_config(config: Mapping) -> bool:
    version = re.match(r"(\d+)\.(\d+)", str(config.get("_diffusers_version", "")))
    return (version is not None and "time_embedding_dim" not in config
            and config.get("time_embedding_type", "fourier") == "fourier"
            and (int(version[1]), int(version[2])) < TIME_EMBEDDING_DIM_SINCE)


def _length_multiple(config) -> int:
    """2 ** (the halvings whose result is later doubled and joined with a skip connection)."""
    if not config.up_block_types:
        return 1
    halvings = sum(1 for i, name in enumerate(config.down_block_types)
                   if name in blocks.DANCE_DOWNSAMPLING
                   or (name == "DownResnetBlock1D"
                       and (i < len(config.block_out_channels) - 1
                            or config.downsample_each_block)))
    if config.mid_block_type == "UNetMidBlock1D":
        halvings += 1
    return 2**halvings


def _check_config(config, time_map_channels: int) -> None:
    """Every config that could not run fails here, with the fix (before any weights exist)."""
    channels = list(config.block_out_channels)
    downs, ups = list(config.down_block_types), list(config.up_block_types)
    for name in downs:
        blocks.check_block_type("down block type", name, tuple(blocks.DOWN_BLOCKS))
    for name in ups:
        blocks.check_block_type("up block type", name, tuple(blocks.UP_BLOCKS))
    blocks.check_block_type("mid_block_type", config.mid_block_type, blocks.MID_BLOCKS)
    blocks.check_block_type("out_block_type", config.out_block_type, blocks.OUT_BLOCKS)
    if len(channels) != len(downs) or len(ups) > len(downs):
        raise ConfigError(
            f"UNet1DModel: block_out_channels ({len(channels)}) needs one width per down block "
            f"({len(downs)}), and there can be at most as many up blocks ({len(ups)}) as down "
            f"blocks")
    used = set(downs + ups + [config.mid_block_type, config.out_block_type])
    temporal = sorted(n for n in used & blocks.TEMPORAL)
    if temporal and not config.use_timestep_embedding:
        raise ConfigError(f"UNet1DModel: {', '.join(temporal)} read the time embedding as a "
                          f"vector; set use_timestep_embedding=True (and an act_fn)")
    if config.out_block_type is not None and config.act_fn is None:
        raise ConfigError(f"UNet1DModel: out_block_type={config.out_block_type!r} needs an "
                          f"act_fn, e.g. act_fn='mish'")
    _check_time_map_reader(config, downs, time_map_channels)
    _check_widths(config, channels, downs, ups)


def _check_time_map_reader(config, downs: list[str], time_map_channels: int) -> None:
    """``DownBlock1DNoSkip`` concatenates the time-embedding map to its input."""
    for i, name in enumerate(downs):
        if name != "DownBlock1DNoSkip":
            continue
        if i > 0 or config.use_timestep_embedding:
            raise ConfigError("UNet1DModel: DownBlock1DNoSkip reads the time-embedding map as "
                              "extra input channels, so it must be the first down block and "
                              "use_timestep_embedding must be False")
        if config.extra_in_channels != time_map_channels:
            raise ConfigError(
                f"UNet1DModel: the first block gets the {time_map_channels}-channel time "
                f"embedding as extra input channels, but extra_in_channels is "
                f"{config.extra_in_channels}; set extra_in_channels={time_map_channels}, or "
                f"time_embedding_dim={config.extra_in_channels} (configs of Dance Diffusion "
                f"checkpoints written before diffusers 0.36 mean time_embedding_dim=16)")


def _check_widths(config, channels: list[int], downs: list[str], ups: list[str]) -> None:
    for i, name in enumerate(downs):
        if name == "AttnDownBlock1D":
            blocks.check_attention_width(f"down block {i} (AttnDownBlock1D)", channels[i])
        if name == "DownResnetBlock1D":
            blocks.check_group_width(f"down block {i}", channels[i], 8, "fixed by the format")
    if config.mid_block_type == "UNetMidBlock1D":
        blocks.check_attention_width("the mid block (UNetMidBlock1D)", channels[-1])
    if config.mid_block_type == "ValueFunctionMidBlock1D":
        blocks.check_group_width("the value function's mid block", channels[-1] // 4, 8,
                                 "a quarter of the last width, fixed by the format")
    final = config.out_channels if config.out_block_type is None else channels[0]
    for i, name in enumerate(ups):
        width = channels[::-1][i + 1] if i < len(ups) - 1 else final
        if name == "AttnUpBlock1D":
            blocks.check_attention_width(f"up block {i} (AttnUpBlock1D)", width)
        if name == "UpResnetBlock1D":
            blocks.check_group_width(f"up block {i}", width, 8, "fixed by the format")
    if config.out_block_type == "OutConv1DBlock":
        groups = config.norm_num_groups or min(channels[0] // 4, 32)
        blocks.check_group_width("the output block", channels[0], groups, "norm_num_groups")
