"""The resolution levels of GLIDE's text U-Net (Nichol et al. 2021, "GLIDE", sec. 2.3 and appendix
A; built on the ADM U-Net of Dhariwal & Nichol 2021), which the unCLIP decoder (Ramesh et al.
2022) and DeepFloyd IF (Imagen's cascade, Saharia et al. 2022) keep:

* resampling is done by residual blocks ("BigGAN residual blocks for up- and downsampling",
  Dhariwal & Nichol 2021, sec. 3): a level ends in a ``ResnetBlock2D`` with ``down=True`` /
  ``up=True`` instead of a strided or interpolating convolution;
* attention is ``AddedKVAttention``: self-attention over the pixels whose keys and values also
  hold the projected text tokens (no separate cross-attention layer, no spatial transformer).

Block types of the diffusers format: ``ResnetDownsampleBlock2D`` / ``ResnetUpsampleBlock2D`` (no
attention), ``SimpleCrossAttnDownBlock2D`` / ``SimpleCrossAttnUpBlock2D`` (a resnet then an
attention per layer) and ``UNetMidBlock2DSimpleCrossAttn`` (resnet, then attention + resnet).
Weight keys are the format's (``resnets``, ``attentions``, ``downsamplers.0`` /
``upsamplers.0`` being resnets).
"""

from __future__ import annotations

from typing import Any

import torch
from diffusion_kernel.errors import ConfigError
from diffusion_kernel.nn import maybe_checkpoint
from torch import nn

from .attention_added_kv import AddedKVAttention
from .resnet import ResnetBlock2D

# Block type -> whether its layers attend to the text.
GLIDE_DOWN_BLOCK_TYPES = {"ResnetDownsampleBlock2D": False, "SimpleCrossAttnDownBlock2D": True}
GLIDE_UP_BLOCK_TYPES = {"ResnetUpsampleBlock2D": False, "SimpleCrossAttnUpBlock2D": True}
GLIDE_MID_BLOCK_TYPES = ("UNetMidBlock2DSimpleCrossAttn",)


class _GlideLevel(nn.Module):
    """What the three levels share: how their resnets and attention layers are built and run."""

    def _setup(self, with_attention: bool, temb_channels: int | None, options: dict) -> None:
        self.with_attention = with_attention
        self.temb_channels = temb_channels
        self.options = options
        self.gradient_checkpointing = False

    @property
    def has_cross_attention(self) -> bool:
        return self.with_attention

    def _resnet(self, in_channels: int, out_channels: int, **resample: bool) -> ResnetBlock2D:
        o = self.options
        return ResnetBlock2D(in_channels=in_channels, out_channels=out_channels,
                             temb_channels=self.temb_channels, eps=o["resnet_eps"],
                             groups=o["resnet_groups"], dropout=o.get("dropout", 0.0),
                             time_embedding_norm=o.get("resnet_time_scale_shift", "default"),
                             non_linearity=o["resnet_act_fn"],
                             output_scale_factor=o.get("output_scale_factor", 1.0),
                             skip_time_act=o.get("skip_time_act", False), **resample)

    def _attention(self, channels: int) -> AddedKVAttention:
        o = self.options
        return AddedKVAttention(channels, o["attention_head_dim"], o["cross_attention_dim"],
                                norm_num_groups=o["resnet_groups"],
                                only_cross_attention=o.get("only_cross_attention", False),
                                cross_attention_norm=o.get("cross_attention_norm"))

    def _attend(self, layer: int, hidden_states: torch.Tensor, context: dict) -> torch.Tensor:
        if not self.with_attention:
            return hidden_states
        # The format's masking rule: an attention_mask wins (the unCLIP decoder passes its text
        # mask that way); otherwise the text mask, encoder_attention_mask.
        mask = context.get("attention_mask")
        if mask is None:
            mask = context.get("encoder_attention_mask")
        return self.attentions[layer](hidden_states, context.get("encoder_hidden_states"), mask)


class GlideDownBlock(_GlideLevel):
    """``num_layers`` x (resnet, attention if ``with_attention``), then a downsampling resnet.
    ``forward`` returns the hidden states and every layer's output (the skip connections)."""

    def __init__(self, with_attention: bool, in_channels: int, out_channels: int,
                 temb_channels: int | None, num_layers: int = 1, add_downsample: bool = True,
                 **options: Any):
        super().__init__()
        self._setup(with_attention, temb_channels, options)
        self.resnets = nn.ModuleList(self._resnet(in_channels if i == 0 else out_channels,
                                                  out_channels) for i in range(num_layers))
        if with_attention:
            self.attentions = nn.ModuleList(self._attention(out_channels)
                                            for _ in range(num_layers))
        self.downsamplers = (nn.ModuleList([self._resnet(out_channels, out_channels, down=True)])
                             if add_downsample else None)

    def forward(self, hidden_states: torch.Tensor, temb: torch.Tensor | None = None,
                additional_residuals: torch.Tensor | None = None,
                **context: Any) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        output_states = ()
        for i, resnet in enumerate(self.resnets):
            hidden_states = maybe_checkpoint(self, resnet, hidden_states, temb)
            hidden_states = self._attend(i, hidden_states, context)
            if i == len(self.resnets) - 1 and additional_residuals is not None:
                hidden_states = hidden_states + additional_residuals  # T2I-adapter features
            output_states += (hidden_states,)
        if self.downsamplers is not None:
            hidden_states = self.downsamplers[0](hidden_states, temb)
            output_states += (hidden_states,)
        return hidden_states, output_states


class GlideUpBlock(_GlideLevel):
    """``num_layers`` x (concatenate a skip connection, resnet, attention if
    ``with_attention``), then an upsampling resnet."""

    def __init__(self, with_attention: bool, in_channels: int, out_channels: int,
                 prev_output_channel: int, temb_channels: int | None, num_layers: int = 1,
                 add_upsample: bool = True, **options: Any):
        super().__init__()
        self._setup(with_attention, temb_channels, options)
        resnets = []
        for i in range(num_layers):
            resnet_in = prev_output_channel if i == 0 else out_channels
            skip = in_channels if i == num_layers - 1 else out_channels
            resnets.append(self._resnet(resnet_in + skip, out_channels))
        self.resnets = nn.ModuleList(resnets)
        if with_attention:
            self.attentions = nn.ModuleList(self._attention(out_channels)
                                            for _ in range(num_layers))
        self.upsamplers = (nn.ModuleList([self._resnet(out_channels, out_channels, up=True)])
                           if add_upsample else None)

    def forward(self, hidden_states: torch.Tensor,
                res_hidden_states_tuple: tuple[torch.Tensor, ...] = (),
                temb: torch.Tensor | None = None, upsample_size: tuple[int, int] | None = None,
                **context: Any) -> torch.Tensor:
        # upsample_size is not used: a resnet upsampler always doubles the size (as in the format)
        skips = list(res_hidden_states_tuple)
        for i, resnet in enumerate(self.resnets):
            hidden_states = torch.cat([hidden_states, skips.pop()], dim=1)
            hidden_states = maybe_checkpoint(self, resnet, hidden_states, temb)
            hidden_states = self._attend(i, hidden_states, context)
        if self.upsamplers is not None:
            hidden_states = self.upsamplers[0](hidden_states, temb)
        return hidden_states


class GlideMidBlock(_GlideLevel):
    """The lowest resolution: a resnet, then ``num_layers`` x (attention, resnet)."""

    def __init__(self, in_channels: int, temb_channels: int | None, num_layers: int = 1,
                 **options: Any):
        super().__init__()
        if options.get("resnet_groups") is None:
            options["resnet_groups"] = min(in_channels // 4, 32)
        self._setup(True, temb_channels, options)
        self.resnets = nn.ModuleList(self._resnet(in_channels, in_channels)
                                     for _ in range(num_layers + 1))
        self.attentions = nn.ModuleList(self._attention(in_channels) for _ in range(num_layers))

    def forward(self, hidden_states: torch.Tensor, temb: torch.Tensor | None = None,
                **context: Any) -> torch.Tensor:
        hidden_states = self.resnets[0](hidden_states, temb)
        for i, resnet in enumerate(self.resnets[1:]):
            hidden_states = self._attend(i, hidden_states, context)
            hidden_states = maybe_checkpoint(self, resnet, hidden_states, temb)
        return hidden_states


def _glide_options(block_type: str, with_attention: bool, options: dict,
                   output_scale_factor: float) -> dict:
    """The options a GLIDE level takes, from what the U-Nets pass to every block builder."""
    picked = {k: options.get(k) for k in ("resnet_eps", "resnet_act_fn", "resnet_groups")}
    picked.update(dropout=options.get("dropout", 0.0),
                  resnet_time_scale_shift=options.get("resnet_time_scale_shift", "default"),
                  skip_time_act=options.get("resnet_skip_time_act", False),
                  output_scale_factor=output_scale_factor)
    if with_attention:
        if options.get("cross_attention_dim") is None:
            raise ConfigError(f"{block_type} needs cross_attention_dim in the config (the text "
                              f"width its attention layers project)")
        picked.update(cross_attention_dim=options["cross_attention_dim"],
                      attention_head_dim=options.get("attention_head_dim"),
                      only_cross_attention=options.get("only_cross_attention", False),
                      cross_attention_norm=options.get("cross_attention_norm"))
    return picked


def glide_down_block(block_type: str, in_channels: int, out_channels: int,
                     temb_channels: int | None, num_layers: int, add_downsample: bool,
                     **options: Any) -> GlideDownBlock:
    with_attention = GLIDE_DOWN_BLOCK_TYPES[block_type]
    return GlideDownBlock(with_attention, in_channels, out_channels, temb_channels, num_layers,
                          add_downsample, **_glide_options(
                              block_type, with_attention, options,
                              options.get("resnet_out_scale_factor", 1.0)))


def glide_up_block(block_type: str, in_channels: int, out_channels: int,
                   prev_output_channel: int, temb_channels: int | None, num_layers: int,
                   add_upsample: bool, **options: Any) -> GlideUpBlock:
    with_attention = GLIDE_UP_BLOCK_TYPES[block_type]
    return GlideUpBlock(with_attention, in_channels, out_channels, prev_output_channel,
                        temb_channels, num_layers, add_upsample, **_glide_options(
                            block_type, with_attention, options,
                            options.get("resnet_out_scale_factor", 1.0)))


def glide_mid_block(block_type: str, in_channels: int, temb_channels: int | None,
                    **options: Any) -> GlideMidBlock:
    # The mid block scales its resnets by mid_block_scale_factor, not resnet_out_scale_factor.
    picked = _glide_options(block_type, True, options, options.get("output_scale_factor", 1.0))
    return GlideMidBlock(in_channels, temb_channels, **picked)
