"""The residual block of the DDPM / LDM U-Nets (Ho et al. 2020, appendix B; He et al. 2016) and
the 2x down- and upsampling layers between resolutions. Weight keys follow the diffusers format."""

from __future__ import annotations

from functools import partial

import torch
from diffusion_kernel.errors import ConfigError
from diffusion_kernel.nn import activate_fresh, add_to_fresh, get_activation
from torch import nn
from torch.nn import functional as F

from .fir import fir_downsample_2d, fir_upsample_2d


class Downsample2D(nn.Module):
    """Halve the resolution: a stride-2 3x3 conv (``use_conv``) or 2x2 average pooling.

    ``padding=0`` pads one pixel on the right and bottom only (the LDM autoencoder's layout)."""

    def __init__(self, channels: int, use_conv: bool = False, out_channels: int | None = None,
                 padding: int = 1, kernel_size: int = 3):
        super().__init__()
        self.channels = channels
        self.out_channels = out_channels or channels
        self.use_conv = use_conv
        self.padding = padding
        if use_conv:
            self.conv = nn.Conv2d(channels, self.out_channels, kernel_size, stride=2,
                                  padding=padding)
        else:
            if self.out_channels != channels:
                raise ConfigError("Downsample2D without conv cannot change the channel count")
            self.conv = nn.AvgPool2d(kernel_size=2, stride=2)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if self.use_conv and self.padding == 0:
            hidden_states = F.pad(hidden_states, (0, 1, 0, 1))
        return self.conv(hidden_states)


class Upsample2D(nn.Module):
    """Double the resolution (or reach ``output_size``) by nearest-neighbour interpolation,
    followed by a 3x3 conv when ``use_conv``."""

    def __init__(self, channels: int, use_conv: bool = False, out_channels: int | None = None,
                 kernel_size: int = 3, padding: int = 1):
        super().__init__()
        self.channels = channels
        self.out_channels = out_channels or channels
        self.use_conv = use_conv
        self.conv = (nn.Conv2d(channels, self.out_channels, kernel_size, padding=padding)
                     if use_conv else None)

    def forward(self, hidden_states: torch.Tensor,
                output_size: tuple[int, int] | None = None) -> torch.Tensor:
        if output_size is None:
            hidden_states = F.interpolate(hidden_states, scale_factor=2.0, mode="nearest")
        else:
            hidden_states = F.interpolate(hidden_states, size=output_size, mode="nearest")
        if self.conv is not None:
            hidden_states = self.conv(hidden_states)
        return hidden_states


class ResnetBlock2D(nn.Module):
    """GroupNorm -> act -> conv -> (+ time embedding) -> GroupNorm -> act -> dropout -> conv, plus a
    (1x1-projected when channels change) shortcut, divided by ``output_scale_factor``.

    ``time_embedding_norm="scale_shift"`` applies the time embedding as ``h * (1 + s) + b`` after
    the second norm (Dhariwal & Nichol 2021, "adaptive group norm", sec. 3); ``temb_channels=None``
    builds a block without time input (autoencoders). ``up``/``down`` resample inside the block:
    nearest/average pooling by default, FIR filtering with ``kernel="fir"`` (NCSN++), nearest /
    2x2 average pooling functions with ``kernel="sde_vp"``.
    """

    def __init__(
        self,
        *,
        in_channels: int,
        out_channels: int | None = None,
        conv_shortcut: bool = False,
        dropout: float = 0.0,
        temb_channels: int | None = 512,
        groups: int = 32,
        groups_out: int | None = None,
        eps: float = 1e-6,
        non_linearity: str = "swish",
        skip_time_act: bool = False,
        time_embedding_norm: str = "default",
        output_scale_factor: float = 1.0,
        use_in_shortcut: bool | None = None,
        kernel: str | None = None,
        up: bool = False,
        down: bool = False,
        conv_shortcut_bias: bool = True,
        conv_2d_out_channels: int | None = None,
    ):
        super().__init__()
        if time_embedding_norm not in ("default", "scale_shift"):
            raise ConfigError(f"unsupported resnet time_embedding_norm {time_embedding_norm!r}; "
                              f"use 'default' or 'scale_shift'")
        out_channels = out_channels or in_channels
        conv_2d_out_channels = conv_2d_out_channels or out_channels
        self.in_channels, self.out_channels = in_channels, out_channels
        self.time_embedding_norm = time_embedding_norm
        self.skip_time_act = skip_time_act
        self.output_scale_factor = output_scale_factor

        self.norm1 = nn.GroupNorm(groups, in_channels, eps=eps)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        if temb_channels is None:
            self.time_emb_proj = None
        else:
            scale_shift = time_embedding_norm == "scale_shift"
            proj_channels = 2 * out_channels if scale_shift else out_channels
            self.time_emb_proj = nn.Linear(temb_channels, proj_channels)
        self.norm2 = nn.GroupNorm(groups_out or groups, out_channels, eps=eps)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, conv_2d_out_channels, 3, padding=1)
        self.nonlinearity = get_activation(non_linearity)
        self.upsample = self.downsample = None
        if up:
            self.upsample = {"fir": fir_upsample_2d,
                             "sde_vp": partial(F.interpolate, scale_factor=2.0, mode="nearest")
                             }.get(kernel) or Upsample2D(in_channels)
        elif down:
            self.downsample = {"fir": fir_downsample_2d,
                               "sde_vp": partial(F.avg_pool2d, kernel_size=2, stride=2)
                               }.get(kernel) or Downsample2D(in_channels)
        if use_in_shortcut is None:
            use_in_shortcut = in_channels != conv_2d_out_channels
        self.conv_shortcut = (nn.Conv2d(in_channels, conv_2d_out_channels, 1,
                                        bias=conv_shortcut_bias)
                              if use_in_shortcut else None)

    def forward(self, input_tensor: torch.Tensor, temb: torch.Tensor | None = None) -> torch.Tensor:
        # Without gradients the elementwise steps write into the map the previous step just
        # made (the same kernels on the same values: identical numbers, fewer allocations).
        in_place = not torch.is_grad_enabled()
        hidden_states = activate_fresh(self.nonlinearity, self.norm1(input_tensor))
        if self.upsample is not None:
            input_tensor = self.upsample(input_tensor)
            hidden_states = self.upsample(hidden_states)
        elif self.downsample is not None:
            input_tensor = self.downsample(input_tensor)
            hidden_states = self.downsample(hidden_states)
        hidden_states = self.conv1(hidden_states)

        if self.time_emb_proj is not None and temb is not None:
            if not self.skip_time_act:
                temb = self.nonlinearity(temb)
            temb = self.time_emb_proj(temb)[:, :, None, None]
        else:
            temb = None
        if self.time_embedding_norm == "scale_shift":
            if temb is None:
                raise ConfigError("a resnet block with time_embedding_norm='scale_shift' needs a "
                                  "time embedding")
            scale, shift = temb.chunk(2, dim=1)
            hidden_states = self.norm2(hidden_states)
            hidden_states = hidden_states.mul_(1 + scale).add_(shift) if in_place else \
                hidden_states * (1 + scale) + shift
        else:
            if temb is not None:
                hidden_states = add_to_fresh(hidden_states, temb)  # conv1's new output
            hidden_states = self.norm2(hidden_states)
        hidden_states = activate_fresh(self.nonlinearity, hidden_states)
        if self.training:  # dropout; a no-op call in eval mode
            hidden_states = self.dropout(hidden_states)
        hidden_states = self.conv2(hidden_states)

        if self.conv_shortcut is not None:
            input_tensor = self.conv_shortcut(input_tensor)
        output = add_to_fresh(hidden_states, input_tensor)  # conv2's new output
        if self.output_scale_factor != 1.0:  # x / 1.0 == x: skip a full pass over the map
            output = output.div_(self.output_scale_factor) if in_place else \
                output / self.output_scale_factor
        return output
