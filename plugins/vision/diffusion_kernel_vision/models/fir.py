"""Resampling with a finite-impulse-response (FIR) low-pass filter, as in StyleGAN2 (Karras et al.
2020, appendix B) and the NCSN++ score models (Song et al. 2021, appendix H): zero-insertion
upsampling or strided downsampling around a separable binomial filter, which avoids the aliasing
of nearest-neighbour resampling."""

from __future__ import annotations

import torch
from torch.nn import functional as F

BINOMIAL_4 = (1, 3, 3, 1)


def upfirdn2d(x: torch.Tensor, kernel: torch.Tensor, up: int = 1, down: int = 1,
              pad: tuple[int, int] = (0, 0)) -> torch.Tensor:
    """Upsample (zero insertion), pad (negative pads crop), filter with ``kernel`` (true
    convolution, i.e. flipped correlation), downsample (keep every ``down``-th pixel). Each
    channel is filtered on its own. (B, C, H, W) -> (B, C, H', W')."""
    batch, channels, height, width = x.shape
    x = x.reshape(batch * channels, 1, height, width)
    if up > 1:
        spread = x.new_zeros(batch * channels, 1, height * up, width * up)
        spread[:, :, ::up, ::up] = x
        x = spread
    x = F.pad(x, (pad[0], pad[1], pad[0], pad[1]))
    x = F.conv2d(x, torch.flip(kernel, [0, 1])[None, None])
    x = x[:, :, ::down, ::down]
    return x.reshape(batch, channels, x.shape[2], x.shape[3])


def _normalised_kernel(taps: tuple[int, ...], gain: float) -> torch.Tensor:
    kernel = torch.tensor(taps, dtype=torch.float32)
    kernel = torch.outer(kernel, kernel)
    return kernel / kernel.sum() * gain


def fir_upsample_2d(x: torch.Tensor, taps: tuple[int, ...] = BINOMIAL_4,
                    factor: int = 2) -> torch.Tensor:
    """Upsample by ``factor`` with the FIR filter ``taps`` (gain ``factor**2`` keeps the mean)."""
    kernel = _normalised_kernel(taps, factor ** 2).to(device=x.device, dtype=x.dtype)
    p = kernel.shape[0] - factor
    return upfirdn2d(x, kernel, up=factor, pad=((p + 1) // 2 + factor - 1, p // 2))


def fir_downsample_2d(x: torch.Tensor, taps: tuple[int, ...] = BINOMIAL_4,
                      factor: int = 2) -> torch.Tensor:
    """Downsample by ``factor`` after low-pass filtering with ``taps``."""
    kernel = _normalised_kernel(taps, 1.0).to(device=x.device, dtype=x.dtype)
    p = kernel.shape[0] - factor
    return upfirdn2d(x, kernel, down=factor, pad=((p + 1) // 2, p // 2))
