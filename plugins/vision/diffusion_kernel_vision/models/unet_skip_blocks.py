"""The down and up blocks of the NCSN++ score network (Song et al. 2021, "Score-Based Generative
Modeling through SDEs", appendix H; the diffusers ``SkipDownBlock2D`` / ``AttnSkipDownBlock2D`` /
``SkipUpBlock2D`` / ``AttnSkipUpBlock2D``).

Besides the usual U-Net path they carry a second, image-space path: going down, the input image
is FIR-downsampled at each level and added (through a 1x1 conv) to the features ("input skip");
going up, each level adds its own 3-channel output to the FIR-upsampled image from the level
below ("output skip"), and that image is added to the network's output. Resampling inside the
blocks uses FIR resnets; residual outputs are scaled by 1/sqrt(2).
"""

from __future__ import annotations

import math

import torch
from diffusion_kernel.nn import Attention
from torch import nn

from .fir import fir_downsample_2d, fir_upsample_2d
from .resnet import ResnetBlock2D

SKIP_DOWN_BLOCK_TYPES = {"SkipDownBlock2D": False, "AttnSkipDownBlock2D": True}
SKIP_UP_BLOCK_TYPES = {"SkipUpBlock2D": False, "AttnSkipUpBlock2D": True}


def _groups(channels: int) -> int:
    return min(channels // 4, 32)


def _attention(channels: int, head_dim: int | None, eps: float, scale: float) -> Attention:
    head_dim = head_dim or channels
    return Attention(channels, heads=channels // head_dim, dim_head=head_dim, bias=True,
                     upcast_softmax=True, norm_num_groups=32, eps=eps,
                     rescale_output_factor=scale, residual_connection=True)


class SkipDownBlock(nn.Module):
    """Resnets (each followed by self-attention when ``with_attention``), then a FIR
    downsampling resnet plus the downsampled input image through ``skip_conv``.

    ``forward`` returns (hidden states, skip connections, downsampled image)."""

    uses_skip_sample = True

    def __init__(self, with_attention: bool, in_channels: int, out_channels: int,
                 temb_channels: int, num_layers: int = 1, add_downsample: bool = True,
                 resnet_eps: float = 1e-6, resnet_act_fn: str = "swish", dropout: float = 0.0,
                 resnet_time_scale_shift: str = "default", attention_head_dim: int | None = None,
                 output_scale_factor: float = math.sqrt(2.0)):
        super().__init__()
        resnet = dict(temb_channels=temb_channels, eps=resnet_eps, dropout=dropout,
                      time_embedding_norm=resnet_time_scale_shift, non_linearity=resnet_act_fn,
                      output_scale_factor=output_scale_factor)
        channels = [in_channels] + [out_channels] * (num_layers - 1)
        self.resnets = nn.ModuleList(
            ResnetBlock2D(in_channels=c, out_channels=out_channels, groups=_groups(c),
                          groups_out=_groups(out_channels), **resnet) for c in channels)
        self.attentions = nn.ModuleList(
            _attention(out_channels, attention_head_dim, resnet_eps, output_scale_factor)
            for _ in range(num_layers)) if with_attention else None
        if add_downsample:
            self.resnet_down = ResnetBlock2D(in_channels=out_channels, out_channels=out_channels,
                                             groups=_groups(out_channels), use_in_shortcut=True,
                                             down=True, kernel="fir", **resnet)
            self.skip_conv = nn.Conv2d(3, out_channels, 1)
        else:
            self.resnet_down = self.skip_conv = None

    def forward(self, hidden_states: torch.Tensor, temb: torch.Tensor,
                skip_sample: torch.Tensor) -> tuple[torch.Tensor, tuple, torch.Tensor]:
        output_states = ()
        attentions = self.attentions if self.attentions is not None else [None] * len(
            self.resnets)
        for resnet, attention in zip(self.resnets, attentions):
            hidden_states = resnet(hidden_states, temb)
            if attention is not None:
                hidden_states = attention(hidden_states)
            output_states += (hidden_states,)
        if self.resnet_down is not None:
            hidden_states = self.resnet_down(hidden_states, temb)
            skip_sample = fir_downsample_2d(skip_sample)
            hidden_states = self.skip_conv(skip_sample) + hidden_states
            output_states += (hidden_states,)
        return hidden_states, output_states, skip_sample


class SkipUpBlock(nn.Module):
    """Resnets over the concatenated skip connections (then one self-attention when
    ``with_attention``); the image from the level below is FIR-upsampled and this level's
    3-channel image (GroupNorm, SiLU, 3x3 ``skip_conv``) added to it; a FIR upsampling resnet
    follows.

    ``forward`` returns (hidden states, image)."""

    uses_skip_sample = True

    def __init__(self, with_attention: bool, in_channels: int, prev_output_channel: int,
                 out_channels: int, temb_channels: int, num_layers: int = 1,
                 add_upsample: bool = True, resnet_eps: float = 1e-6,
                 resnet_act_fn: str = "swish", dropout: float = 0.0,
                 resnet_time_scale_shift: str = "default", attention_head_dim: int | None = None,
                 output_scale_factor: float = math.sqrt(2.0)):
        super().__init__()
        resnet = dict(temb_channels=temb_channels, eps=resnet_eps, dropout=dropout,
                      time_embedding_norm=resnet_time_scale_shift, non_linearity=resnet_act_fn,
                      output_scale_factor=output_scale_factor)
        resnets = []
        for i in range(num_layers):
            resnet_in = prev_output_channel if i == 0 else out_channels
            skip = in_channels if i == num_layers - 1 else out_channels
            # The format's attention variant computes the first norm's groups as
            # min(resnet_in + skip // 4, 32) (operator precedence); checkpoints depend on it.
            groups = (min(resnet_in + skip // 4, 32) if with_attention
                      else _groups(resnet_in + skip))
            resnets.append(ResnetBlock2D(in_channels=resnet_in + skip, out_channels=out_channels,
                                         groups=groups, groups_out=_groups(out_channels),
                                         **resnet))
        self.resnets = nn.ModuleList(resnets)
        self.attentions = nn.ModuleList([_attention(
            out_channels, attention_head_dim, resnet_eps, output_scale_factor)]
        ) if with_attention else None
        if add_upsample:
            self.resnet_up = ResnetBlock2D(in_channels=out_channels, out_channels=out_channels,
                                           groups=_groups(out_channels),
                                           groups_out=_groups(out_channels),
                                           use_in_shortcut=True, up=True, kernel="fir", **resnet)
            self.skip_conv = nn.Conv2d(out_channels, 3, 3, padding=1)
            self.skip_norm = nn.GroupNorm(_groups(out_channels), out_channels, eps=resnet_eps)
            self.act = nn.SiLU()
        else:
            self.resnet_up = self.skip_conv = self.skip_norm = self.act = None

    def forward(self, hidden_states: torch.Tensor, res_hidden_states_tuple: tuple,
                temb: torch.Tensor, skip_sample: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        skips = list(res_hidden_states_tuple)
        for resnet in self.resnets:
            hidden_states = resnet(torch.cat([hidden_states, skips.pop()], dim=1), temb)
        if self.attentions is not None:
            hidden_states = self.attentions[0](hidden_states)
        skip_sample = fir_upsample_2d(skip_sample) if skip_sample is not None else 0
        if self.resnet_up is not None:
            image = self.skip_conv(self.act(self.skip_norm(hidden_states)))
            skip_sample = skip_sample + image
            hidden_states = self.resnet_up(hidden_states, temb)
        return hidden_states, skip_sample
