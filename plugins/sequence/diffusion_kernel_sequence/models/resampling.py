"""2x down- and upsampling of 1-D feature maps, the two kinds published 1-D U-Nets use.

- Dance Diffusion (Harmonai, after Crowson's v-diffusion audio models) resamples with a fixed,
  symmetric FIR low-pass filter applied to each channel on its own: reflect padding, then a
  stride-2 convolution (down) or a stride-2 transposed convolution with the filter doubled (up).
  The filter taps are a persistent buffer (key ``kernel``), so they are in the checkpoint.
- The temporal U-Net of Diffuser (Janner et al. 2022) learns its resampling: a stride-2 3-tap
  convolution down, a stride-2 4-tap transposed convolution up (key ``conv``).

Each channel is filtered on its own, so the FIR layers run as depthwise (grouped) convolutions:
the reference builds a dense (C, C, K) weight that is zero off the diagonal, C times the work.
"""

from __future__ import annotations

import torch
from diffusion_kernel.errors import ConfigError
from torch import nn
from torch.nn import functional as F

from . import layout

# Low-pass taps for a factor-2 resampler: linear (triangle), Keys cubic (a = -0.5) and Lanczos-3,
# each sampled at the half-integer offsets of the finer grid and summing to 1.
FIR_KERNELS = {
    "linear": [1 / 8, 3 / 8, 3 / 8, 1 / 8],
    "cubic": [-0.01171875, -0.03515625, 0.11328125, 0.43359375,
              0.43359375, 0.11328125, -0.03515625, -0.01171875],
    "lanczos3": [0.003689131001010537, 0.015056144446134567, -0.03399861603975296,
                 -0.066637322306633, 0.13550527393817902, 0.44638532400131226,
                 0.44638532400131226, 0.13550527393817902, -0.066637322306633,
                 -0.03399861603975296, 0.015056144446134567, 0.003689131001010537],
}


def _fir_taps(kernel: str) -> torch.Tensor:
    if kernel not in FIR_KERNELS:
        raise ConfigError(f"unknown FIR kernel {kernel!r}; use one of {sorted(FIR_KERNELS)}")
    return torch.tensor(FIR_KERNELS[kernel])


def _depthwise(taps: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """The (C, 1, K) weight that filters each of ``like``'s C channels with ``taps``."""
    return taps.to(like)[None, None, :].expand(like.shape[1], 1, -1)


class FIRDownsample1d(nn.Module):
    """Halve the length: low-pass filter each channel, keep every second sample."""

    def __init__(self, kernel: str = "linear", pad_mode: str = "reflect"):
        super().__init__()
        self.pad_mode = pad_mode
        taps = _fir_taps(kernel)
        self.pad = taps.shape[0] // 2 - 1
        self.register_buffer("kernel", taps)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        hidden_states = F.pad(hidden_states, (self.pad,) * 2, self.pad_mode)
        weight = _depthwise(self.kernel, hidden_states)
        return F.conv1d(hidden_states, weight, stride=2, groups=hidden_states.shape[1])


class FIRUpsample1d(nn.Module):
    """Double the length: zero-stuff and low-pass filter each channel (the taps doubled, so the
    interpolated signal keeps its level)."""

    def __init__(self, kernel: str = "linear", pad_mode: str = "reflect"):
        super().__init__()
        self.pad_mode = pad_mode
        taps = _fir_taps(kernel) * 2
        self.pad = taps.shape[0] // 2 - 1
        self.register_buffer("kernel", taps)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        hidden_states = F.pad(hidden_states, ((self.pad + 1) // 2,) * 2, self.pad_mode)
        weight = _depthwise(self.kernel, hidden_states)
        return F.conv_transpose1d(hidden_states, weight, stride=2, padding=self.pad * 2 + 1,
                                  groups=hidden_states.shape[1])


class ConvDownsample1d(nn.Module):
    """Halve the length with a learned stride-2, 3-tap convolution (key ``conv``); the result
    is channels-last (``layout``)."""

    def __init__(self, channels: int, padding: int = 1):
        super().__init__()
        self.conv = nn.Conv1d(channels, channels, 3, stride=2, padding=padding)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return layout.conv(self.conv, hidden_states)


class ConvTransposeUpsample1d(nn.Module):
    """Double the length with a learned stride-2, 4-tap transposed convolution (key ``conv``);
    the result is channels-last (``layout``)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.ConvTranspose1d(channels, channels, 4, 2, 1)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return layout.conv(self.conv, hidden_states)
