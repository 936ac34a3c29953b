"""The unconditional U-Net of DDPM (Ho et al. 2020, appendix B) and of the LDM unconditional
models: residual blocks with self-attention at chosen resolutions, a sinusoidal (or learned)
timestep embedding, optional class conditioning.

Config fields and weight keys are those of the diffusers ``UNet2DModel``, so its checkpoints load
unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusion_kernel.config_checks import Annotated, PositiveFloat, PositiveInt, Range
from diffusion_kernel.errors import ConfigError, ModelInputError
from diffusion_kernel.modeling import ModelMixin
from diffusion_kernel.nn import (
    AttentionSlicingMixin,
    GaussianFourierProjection,
    ModelOutput,
    TimestepEmbedding,
    Timesteps,
    activate_fresh,
)
from torch import nn

from .checks import check_feature_map
from .unet_blocks import get_down_block, get_mid_block, get_up_block
from .unet_embeddings import class_embedding, timestep_batch
from .unet_keys import rename_legacy_attention_keys


@dataclass
class UNet2DOutput(ModelOutput):
    """``sample``: the model prediction, shaped like the input sample."""

    sample: torch.Tensor


class UNet2DModel(ModelMixin, AttentionSlicingMixin):
    """Unconditional (or class-conditional) 2D U-Net. Call ``unet(sample, timestep).sample``."""

    _supports_gradient_checkpointing = True

    def __init__(
        self,
        sample_size: int | tuple[int, int] | None = None,
        in_channels: PositiveInt = 3,
        out_channels: PositiveInt = 3,
        center_input_sample: bool = False,
        time_embedding_type: str = "positional",
        time_embedding_dim: int | None = None,
        freq_shift: int = 0,
        flip_sin_to_cos: bool = True,
        down_block_types: tuple[str, ...] = ("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D",
                                             "AttnDownBlock2D"),
        mid_block_type: str | None = "UNetMidBlock2D",
        up_block_types: tuple[str, ...] = ("AttnUpBlock2D", "AttnUpBlock2D", "AttnUpBlock2D",
                                           "UpBlock2D"),
        block_out_channels: tuple[PositiveInt, ...] = (224, 448, 672, 896),
        layers_per_block: PositiveInt = 2,
        mid_block_scale_factor: float = 1,
        downsample_padding: int = 1,
        downsample_type: str = "conv",
        upsample_type: str = "conv",
        dropout: Annotated[float, Range(ge=0, lt=1)] = 0.0,
        act_fn: str = "silu",
        attention_head_dim: PositiveInt | None = 8,
        norm_num_groups: PositiveInt | None = 32,
        attn_norm_num_groups: int | None = None,
        norm_eps: PositiveFloat = 1e-5,
        resnet_time_scale_shift: str = "default",
        add_attention: bool = True,
        class_embed_type: str | None = None,
        num_class_embeds: int | None = None,
        num_train_timesteps: PositiveInt | None = None,
    ):
        super().__init__()
        n_blocks = len(down_block_types)
        if len(up_block_types) != n_blocks or len(block_out_channels) != n_blocks:
            raise ConfigError(
                f"UNet2DModel: down_block_types ({n_blocks}), up_block_types "
                f"({len(up_block_types)}) and block_out_channels ({len(block_out_channels)}) "
                f"must have the same length")
        if time_embedding_type not in ("positional", "learned", "fourier"):
            raise ConfigError(f"UNet2DModel: unknown time_embedding_type "
                              f"{time_embedding_type!r}; use 'positional', 'fourier' or 'learned'")
        if time_embedding_type == "learned" and num_train_timesteps is None:
            raise ConfigError("UNet2DModel: time_embedding_type='learned' needs "
                              "num_train_timesteps")
        if class_embed_type not in (None, "timestep", "identity"):
            raise ConfigError(f"UNet2DModel: unknown class_embed_type {class_embed_type!r}; use "
                              f"null, 'timestep' or 'identity'")
        time_embed_dim = time_embedding_dim or block_out_channels[0] * 4

        self.conv_in = nn.Conv2d(in_channels, block_out_channels[0], 3, padding=1)
        timestep_input_dim = block_out_channels[0]
        if time_embedding_type == "positional":
            self.time_proj = Timesteps(block_out_channels[0], flip_sin_to_cos, freq_shift)
        elif time_embedding_type == "fourier":  # of log(sigma), NCSN++ (score SDE, VE)
            self.time_proj = GaussianFourierProjection(block_out_channels[0], scale=16)
            timestep_input_dim = 2 * block_out_channels[0]
        else:  # one learned vector per training timestep
            self.time_proj = nn.Embedding(num_train_timesteps, block_out_channels[0])
        self.time_embedding = TimestepEmbedding(timestep_input_dim, time_embed_dim)
        self.class_embedding = class_embedding(class_embed_type, num_class_embeds,
                                               timestep_input_dim, time_embed_dim)

        common = dict(temb_channels=time_embed_dim, resnet_eps=norm_eps, resnet_act_fn=act_fn,
                      resnet_groups=norm_num_groups, dropout=dropout,
                      resnet_time_scale_shift=resnet_time_scale_shift)
        self.down_blocks = nn.ModuleList()
        out_channel = block_out_channels[0]
        for i, block_type in enumerate(down_block_types):
            in_channel, out_channel = out_channel, block_out_channels[i]
            self.down_blocks.append(get_down_block(
                block_type, in_channels=in_channel, out_channels=out_channel,
                num_layers=layers_per_block, add_downsample=i < n_blocks - 1,
                downsample_padding=downsample_padding, downsample_type=downsample_type,
                attention_head_dim=attention_head_dim or out_channel, **common))

        if mid_block_type not in (None, "UNetMidBlock2D"):
            raise ConfigError(f"UNet2DModel: unsupported mid_block_type {mid_block_type!r}; "
                              f"use 'UNetMidBlock2D' or null")
        self.mid_block = get_mid_block(
            mid_block_type, in_channels=block_out_channels[-1], add_attention=add_attention,
            output_scale_factor=mid_block_scale_factor, attn_groups=attn_norm_num_groups,
            attention_head_dim=attention_head_dim or block_out_channels[-1], **common)

        self.up_blocks = nn.ModuleList()
        reversed_channels = list(reversed(block_out_channels))
        out_channel = reversed_channels[0]
        for i, block_type in enumerate(up_block_types):
            prev_channel, out_channel = out_channel, reversed_channels[i]
            self.up_blocks.append(get_up_block(
                block_type, in_channels=reversed_channels[min(i + 1, n_blocks - 1)],
                out_channels=out_channel, prev_output_channel=prev_channel,
                num_layers=layers_per_block + 1, add_upsample=i < n_blocks - 1,
                upsample_type=upsample_type,
                attention_head_dim=attention_head_dim or out_channel, **common))

        groups_out = norm_num_groups or min(block_out_channels[0] // 4, 32)
        self.conv_norm_out = nn.GroupNorm(groups_out, block_out_channels[0], eps=norm_eps)
        self.conv_act = nn.SiLU()
        self.conv_out = nn.Conv2d(block_out_channels[0], out_channels, 3, padding=1)

    @classmethod
    def _rename_checkpoint_keys(cls, sources):
        return rename_legacy_attention_keys(sources)

    @property
    def sample_size(self):
        return self.config.sample_size

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor | float | int,
                class_labels: torch.Tensor | None = None,
                return_dict: bool = True) -> UNet2DOutput | tuple[torch.Tensor]:
        """Predict from a noisy ``sample`` (B, C, H, W) at ``timestep`` (a number, or a tensor of
        one or B values; Python numbers are taken as integers, as the format does);
        ``class_labels`` (B,) for a class-conditional model. Returns ``UNet2DOutput(sample)``."""
        check_feature_map("UNet2DModel", "sample", sample, self.config.in_channels,
                          "in_channels")
        if self.config.center_input_sample:
            sample = 2 * sample - 1.0
        timesteps = timestep_batch(timestep, sample, number_dtype=torch.long)
        emb = self.time_embedding(self.time_proj(timesteps).to(self.dtype))
        if self.class_embedding is not None:
            if class_labels is None:
                raise ModelInputError("this UNet is class-conditional: pass class_labels")
            if self.config.class_embed_type == "timestep":
                class_labels = self.time_proj(class_labels)
            emb = emb + self.class_embedding(class_labels).to(self.dtype)
        elif class_labels is not None:
            raise ModelInputError("this UNet has no class embedding; do not pass class_labels")

        image = sample  # the NCSN++ skip blocks also carry a path in image space
        sample = self.conv_in(sample)
        skips = (sample,)
        for block in self.down_blocks:
            if getattr(block, "uses_skip_sample", False):
                sample, states, image = block(sample, emb, image)
            else:
                sample, states = block(sample, emb)
            skips += states
        if self.mid_block is not None:
            sample = self.mid_block(sample, emb)
        image = None
        for block in self.up_blocks:
            block_skips, skips = skips[-len(block.resnets):], skips[:-len(block.resnets)]
            if getattr(block, "uses_skip_sample", False):
                sample, image = block(sample, block_skips, emb, image)
            else:
                sample = block(sample, block_skips, emb)
        sample = self.conv_out(activate_fresh(self.conv_act, self.conv_norm_out(sample)))
        if image is not None:
            sample = sample + image
        if self.config.time_embedding_type == "fourier":
            # NCSN++ outputs the score times sigma: divide by sigma (Song et al. 2021, app. H).
            sample = sample / timesteps.reshape(-1, *([1] * (sample.ndim - 1)))
        if not return_dict:
            return (sample,)
        return UNet2DOutput(sample=sample)
