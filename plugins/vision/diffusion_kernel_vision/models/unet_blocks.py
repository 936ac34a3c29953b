"""The resolution levels of the 2D U-Nets and autoencoders: down blocks, mid blocks, up blocks.

A level is a stack of ``ResnetBlock2D`` (``resnets``), each optionally followed by an attention
layer (``attentions``), then a resampler (``downsamplers`` / ``upsamplers``). Three kinds of
attention exist in published checkpoints:

* none (``DownBlock2D``, ``UpBlock2D``, ``DownEncoderBlock2D``, ``UpDecoderBlock2D``);
* ``"self"``: a self-attention over the pixels with group norm and a residual connection
  (``AttnDownBlock2D``, ``AttnUpBlock2D``, the DDPM mid block, the autoencoder mid block);
* ``"cross"``: a spatial transformer attending to the conditioning tokens
  (``CrossAttnDownBlock2D``, ``CrossAttnUpBlock2D``, ``UNetMidBlock2DCrossAttn``).

The block type names of the diffusers format map to these three classes with the right options
(``get_down_block`` / ``get_up_block`` / ``get_mid_block``); the weight keys are the format's.
The NCSN++ "skip" block types build the blocks of ``unet_skip_blocks``; the GLIDE / unCLIP / IF
block types (resnet resampling, added key/value attention) those of ``unet_glide_blocks``.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusion_kernel.errors import ConfigError
from diffusion_kernel.nn import Attention, maybe_checkpoint
from torch import nn

from .freeu import freeu_concat
from .resnet import Downsample2D, ResnetBlock2D, Upsample2D
from .transformer_2d import Transformer2DModel
from .unet_glide_blocks import (
    GLIDE_DOWN_BLOCK_TYPES,
    GLIDE_MID_BLOCK_TYPES,
    GLIDE_UP_BLOCK_TYPES,
    glide_down_block,
    glide_mid_block,
    glide_up_block,
)
from .unet_skip_blocks import SKIP_DOWN_BLOCK_TYPES, SKIP_UP_BLOCK_TYPES, SkipDownBlock, SkipUpBlock

# Block type -> (attention kind, U-Net level: takes a time embedding and, going up, the skip
# connections; the autoencoder levels take neither).
DOWN_BLOCK_TYPES = {
    "DownBlock2D": (None, True),
    "AttnDownBlock2D": ("self", True),
    "CrossAttnDownBlock2D": ("cross", True),
    "DownEncoderBlock2D": (None, False),
    "AttnDownEncoderBlock2D": ("self", False),
}
UP_BLOCK_TYPES = {
    "UpBlock2D": (None, True),
    "AttnUpBlock2D": ("self", True),
    "CrossAttnUpBlock2D": ("cross", True),
    "UpDecoderBlock2D": (None, False),
    "AttnUpDecoderBlock2D": ("self", False),
}
MID_BLOCK_TYPES = ("UNetMidBlock2D", "UNetMidBlock2DCrossAttn")


def pixel_attention(channels: int, head_dim: int | None, groups: int | None, eps: float,
                    output_scale_factor: float = 1.0) -> Attention:
    """Self-attention over the pixels of a feature map, as in the DDPM U-Net (Ho et al. 2020,
    appendix B): group norm, ``channels // head_dim`` heads, residual connection."""
    head_dim = head_dim or channels
    return Attention(channels, heads=channels // head_dim, dim_head=head_dim, bias=True,
                     upcast_softmax=True, norm_num_groups=groups, eps=eps,
                     rescale_output_factor=output_scale_factor, residual_connection=True)


class _AttentionLevel(nn.Module):
    """What the three block classes share: how each attention layer is built and called."""

    def _make_attention(self, kind: str | None, channels: int, layer: int, options: dict) -> Any:
        if kind == "self":
            groups = options.get("attn_groups", options["resnet_groups"])
            return pixel_attention(channels, options.get("attention_head_dim"),
                                   groups, options["resnet_eps"],
                                   options.get("output_scale_factor", 1.0))
        if kind == "cross":
            heads = options.get("num_attention_heads") or 1
            layers = options.get("transformer_layers_per_block", 1)
            if not isinstance(layers, int):
                layers = layers[layer]
            return Transformer2DModel(
                heads, channels // heads, in_channels=channels, num_layers=layers,
                cross_attention_dim=options.get("cross_attention_dim"),
                norm_num_groups=options["resnet_groups"],
                use_linear_projection=options.get("use_linear_projection", False),
                only_cross_attention=options.get("only_cross_attention", False),
                upcast_attention=options.get("upcast_attention", False))
        return None

    def _attend(self, attention: nn.Module | None, hidden_states: torch.Tensor,
                context: dict) -> torch.Tensor:
        if attention is None:
            return hidden_states
        if self.attention_kind == "cross":
            return attention(hidden_states, context.get("encoder_hidden_states"),
                             context.get("attention_mask"), context.get("encoder_attention_mask"))
        return attention(hidden_states)

    @property
    def has_cross_attention(self) -> bool:
        return self.attention_kind == "cross"


def _resnet(in_channels: int, out_channels: int, temb_channels: int | None, options: dict,
            **extra) -> ResnetBlock2D:
    return ResnetBlock2D(in_channels=in_channels, out_channels=out_channels,
                         temb_channels=temb_channels, eps=options["resnet_eps"],
                         groups=options["resnet_groups"], dropout=options.get("dropout", 0.0),
                         time_embedding_norm=options.get("resnet_time_scale_shift", "default"),
                         non_linearity=options["resnet_act_fn"],
                         output_scale_factor=options.get("output_scale_factor", 1.0), **extra)


class UNetDownBlock(_AttentionLevel):
    """``num_layers`` resnets (each followed by attention of ``attention_kind``), then a 2x
    downsampler: a stride-2 conv, or with ``downsample_type="resnet"`` a downsampling resnet.

    ``forward`` returns the new hidden states and the tuple of every layer's output (the skip
    connections the up path consumes)."""

    def __init__(self, attention_kind: str | None, in_channels: int, out_channels: int,
                 temb_channels: int | None, num_layers: int = 1, add_downsample: bool = True,
                 downsample_padding: int = 1, downsample_type: str | None = "conv",
                 **options: Any):
        super().__init__()
        self.attention_kind = attention_kind
        self.gradient_checkpointing = False
        channels = [in_channels] + [out_channels] * (num_layers - 1)
        self.resnets = nn.ModuleList(_resnet(c, out_channels, temb_channels, options)
                                     for c in channels)
        if attention_kind is not None:
            self.attentions = nn.ModuleList(
                self._make_attention(attention_kind, out_channels, i, options)
                for i in range(num_layers))
        self.downsample_type = downsample_type if add_downsample else None
        if self.downsample_type == "conv":
            self.downsamplers = nn.ModuleList([Downsample2D(
                out_channels, use_conv=True, out_channels=out_channels,
                padding=downsample_padding)])
        elif self.downsample_type == "resnet":
            self.downsamplers = nn.ModuleList([
                _resnet(out_channels, out_channels, temb_channels, options, down=True)])
        elif self.downsample_type is None:
            self.downsamplers = None
        else:
            raise ConfigError(f"unknown downsample_type {downsample_type!r}; use 'conv' or "
                              f"'resnet'")

    def forward(self, hidden_states: torch.Tensor, temb: torch.Tensor | None = None,
                additional_residuals: torch.Tensor | None = None,
                **context: Any) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        attentions = self.attentions if self.attention_kind else [None] * len(self.resnets)
        output_states = ()
        for i, (resnet, attention) in enumerate(zip(self.resnets, attentions)):
            hidden_states = maybe_checkpoint(self, resnet, hidden_states, temb)
            hidden_states = self._attend(attention, hidden_states, context)
            if i == len(self.resnets) - 1 and additional_residuals is not None:
                hidden_states = hidden_states + additional_residuals  # T2I-adapter features
            output_states += (hidden_states,)
        if self.downsamplers is not None:
            for downsampler in self.downsamplers:
                if self.downsample_type == "resnet":
                    hidden_states = downsampler(hidden_states, temb)
                else:
                    hidden_states = downsampler(hidden_states)
            output_states += (hidden_states,)
        return hidden_states, output_states


class UNetUpBlock(_AttentionLevel):
    """``num_layers`` resnets (each followed by attention of ``attention_kind``), then a 2x
    upsampler.

    With ``with_skips`` (U-Net decoders) each resnet first concatenates the matching skip
    connection from the down path: the last ``num_layers`` of them, consumed from the end."""

    def __init__(self, attention_kind: str | None, in_channels: int, out_channels: int,
                 prev_output_channel: int, temb_channels: int | None, num_layers: int = 1,
                 add_upsample: bool = True, upsample_type: str | None = "conv",
                 with_skips: bool = True, **options: Any):
        super().__init__()
        self.attention_kind = attention_kind
        self.gradient_checkpointing = False
        self.freeu: tuple[float, float] | None = None  # (backbone, skip) scales: see freeu.py
        resnets = []
        for i in range(num_layers):
            resnet_in = prev_output_channel if i == 0 else out_channels
            if with_skips:
                resnet_in += in_channels if i == num_layers - 1 else out_channels
            resnets.append(_resnet(resnet_in, out_channels, temb_channels, options))
        self.resnets = nn.ModuleList(resnets)
        if attention_kind is not None:
            self.attentions = nn.ModuleList(
                self._make_attention(attention_kind, out_channels, i, options)
                for i in range(num_layers))
        self.upsample_type = upsample_type if add_upsample else None
        if self.upsample_type == "conv":
            self.upsamplers = nn.ModuleList([Upsample2D(out_channels, use_conv=True,
                                                        out_channels=out_channels)])
        elif self.upsample_type == "resnet":
            self.upsamplers = nn.ModuleList([
                _resnet(out_channels, out_channels, temb_channels, options, up=True)])
        elif self.upsample_type is None:
            self.upsamplers = None
        else:
            raise ConfigError(f"unknown upsample_type {upsample_type!r}; use 'conv' or 'resnet'")

    def forward(self, hidden_states: torch.Tensor,
                res_hidden_states_tuple: tuple[torch.Tensor, ...] = (),
                temb: torch.Tensor | None = None, upsample_size: tuple[int, int] | None = None,
                **context: Any) -> torch.Tensor:
        attentions = self.attentions if self.attention_kind else [None] * len(self.resnets)
        skips = list(res_hidden_states_tuple)
        for resnet, attention in zip(self.resnets, attentions):
            if skips and self.freeu is not None:
                hidden_states = freeu_concat(hidden_states, skips.pop(), *self.freeu)
            elif skips:
                hidden_states = torch.cat([hidden_states, skips.pop()], dim=1)
            hidden_states = maybe_checkpoint(self, resnet, hidden_states, temb)
            hidden_states = self._attend(attention, hidden_states, context)
        if self.upsamplers is not None:
            # The format's self-attention up block never passes the target size on.
            size = None if self.attention_kind == "self" else upsample_size
            for upsampler in self.upsamplers:
                if self.upsample_type == "resnet":
                    hidden_states = upsampler(hidden_states, temb)
                else:
                    hidden_states = upsampler(hidden_states, size)
        return hidden_states


class UNetMidBlock(_AttentionLevel):
    """The lowest resolution: a resnet, then ``num_layers`` x (attention, resnet)."""

    def __init__(self, attention_kind: str | None, in_channels: int, temb_channels: int | None,
                 num_layers: int = 1, attn_groups: int | None = None, **options: Any):
        super().__init__()
        self.attention_kind = attention_kind
        self.gradient_checkpointing = False
        if options.get("resnet_groups") is None:
            options["resnet_groups"] = min(in_channels // 4, 32)
        if attn_groups is None and options.get("resnet_time_scale_shift", "default") == "default":
            attn_groups = options["resnet_groups"]
        options["attn_groups"] = attn_groups
        self.resnets = nn.ModuleList(_resnet(in_channels, in_channels, temb_channels, options)
                                     for _ in range(num_layers + 1))
        self.attentions = nn.ModuleList(
            self._make_attention(attention_kind, in_channels, i, options)
            for i in range(num_layers))

    def forward(self, hidden_states: torch.Tensor, temb: torch.Tensor | None = None,
                **context: Any) -> torch.Tensor:
        hidden_states = self.resnets[0](hidden_states, temb)
        for attention, resnet in zip(self.attentions, self.resnets[1:]):
            hidden_states = self._attend(attention, hidden_states, context)
            hidden_states = maybe_checkpoint(self, resnet, hidden_states, temb)
        return hidden_states


def _block_kind(block_type: str, table: dict, role: str, *other_tables: dict
                ) -> tuple[str | None, bool]:
    name = block_type[len("UNetRes"):] if block_type.startswith("UNetRes") else block_type
    if name not in table:
        supported = sorted(name for t in (table, *other_tables) for name in t)
        raise ConfigError(f"unsupported {role} block type {block_type!r}; supported: "
                          f"{supported}")
    return table[name]


_SKIP_OPTIONS = ("resnet_eps", "resnet_act_fn", "dropout", "resnet_time_scale_shift",
                 "attention_head_dim")


def _skip_options(options: dict) -> dict:
    return {k: v for k, v in options.items() if k in _SKIP_OPTIONS}


def get_down_block(block_type: str, *, in_channels: int, out_channels: int,
                   temb_channels: int | None, num_layers: int, add_downsample: bool,
                   downsample_type: str | None = None, **options: Any
                   ) -> UNetDownBlock | SkipDownBlock:
    """The down block a config's ``down_block_types`` entry names."""
    if block_type in SKIP_DOWN_BLOCK_TYPES:
        return SkipDownBlock(SKIP_DOWN_BLOCK_TYPES[block_type], in_channels, out_channels,
                             temb_channels, num_layers, add_downsample, **_skip_options(options))
    if block_type in GLIDE_DOWN_BLOCK_TYPES:
        return glide_down_block(block_type, in_channels, out_channels, temb_channels,
                                num_layers, add_downsample, **options)
    kind, timed = _block_kind(block_type, DOWN_BLOCK_TYPES, "down", SKIP_DOWN_BLOCK_TYPES,
                              GLIDE_DOWN_BLOCK_TYPES)
    if kind == "cross" and options.get("cross_attention_dim") is None:
        raise ConfigError(f"{block_type} needs cross_attention_dim in the config")
    # Only the self-attention block of the format offers a resnet downsampler.
    downsample_type = (downsample_type or "conv") if kind == "self" and timed else "conv"
    return UNetDownBlock(kind, in_channels, out_channels, temb_channels if timed else None,
                         num_layers, add_downsample=add_downsample,
                         downsample_type=downsample_type, **options)


def get_up_block(block_type: str, *, in_channels: int, out_channels: int,
                 prev_output_channel: int, temb_channels: int | None, num_layers: int,
                 add_upsample: bool, upsample_type: str | None = None,
                 **options: Any) -> UNetUpBlock | SkipUpBlock:
    """The up block a config's ``up_block_types`` entry names."""
    if block_type in SKIP_UP_BLOCK_TYPES:
        return SkipUpBlock(SKIP_UP_BLOCK_TYPES[block_type], in_channels, prev_output_channel,
                           out_channels, temb_channels, num_layers, add_upsample,
                           **_skip_options(options))
    if block_type in GLIDE_UP_BLOCK_TYPES:
        return glide_up_block(block_type, in_channels, out_channels, prev_output_channel,
                              temb_channels, num_layers, add_upsample, **options)
    kind, timed = _block_kind(block_type, UP_BLOCK_TYPES, "up", SKIP_UP_BLOCK_TYPES,
                              GLIDE_UP_BLOCK_TYPES)
    if kind == "cross" and options.get("cross_attention_dim") is None:
        raise ConfigError(f"{block_type} needs cross_attention_dim in the config")
    upsample_type = (upsample_type or "conv") if kind == "self" and timed else "conv"
    return UNetUpBlock(kind, in_channels, out_channels, prev_output_channel,
                       temb_channels if timed else None, num_layers, add_upsample=add_upsample,
                       upsample_type=upsample_type, with_skips=timed, **options)


def get_mid_block(block_type: str | None, *, in_channels: int, temb_channels: int | None,
                  add_attention: bool = True, **options: Any) -> UNetMidBlock | None:
    """The mid block a config's ``mid_block_type`` names (``None``: no mid block).

    ``add_attention=False`` keeps the two resnets of ``UNetMidBlock2D`` without the attention
    between them; ``num_layers=0`` (how the conditional U-Net builds ``UNetMidBlock2D``) keeps
    a single resnet."""
    if block_type is None:
        return None
    if block_type in GLIDE_MID_BLOCK_TYPES:
        return glide_mid_block(block_type, in_channels, temb_channels, **options)
    if block_type not in MID_BLOCK_TYPES:
        raise ConfigError(f"unsupported mid block type {block_type!r}; supported: "
                          f"{[*MID_BLOCK_TYPES, *GLIDE_MID_BLOCK_TYPES]} or null")
    kind = "cross" if block_type == "UNetMidBlock2DCrossAttn" else "self"
    return UNetMidBlock(kind if add_attention else None, in_channels, temb_channels, **options)
