"""FreeU (Si et al. 2023, "FreeU: Free Lunch in Diffusion U-Net"): re-weigh, at sampling time and
without training, what the decoder's two lowest-resolution stages take from the backbone and
from the skip connections.

The backbone features carry the denoising (low-frequency, structural) signal; the skip features
mostly high-frequency detail, which can drown it. FreeU strengthens the first half of the
backbone channels by ``b`` (Sec. 3.2, the backbone factor) and damps the lowest frequencies of
the skip features by ``s`` (Eq. 4-6: FFT, scale a small box around zero frequency, inverse FFT).
"""

from __future__ import annotations

import torch


def freeu_concat(hidden_states: torch.Tensor, skip: torch.Tensor, backbone_scale: float,
                 skip_scale: float) -> torch.Tensor:
    """``cat([hidden_states, skip])`` of an up block's resnet input, with the first half of the
    backbone channels scaled by ``backbone_scale`` and the skip features' low frequencies by
    ``skip_scale``. Nothing is written in place, so gradients flow as usual."""
    half = hidden_states.shape[1] // 2
    return torch.cat([hidden_states[:, :half] * backbone_scale, hidden_states[:, half:],
                      low_frequencies_scaled(skip, skip_scale)], dim=1)


def low_frequencies_scaled(x: torch.Tensor, scale: float, radius: int = 1) -> torch.Tensor:
    """``x`` with its 2D Fourier coefficients in the box of ``radius`` around zero frequency
    (frequencies -radius .. radius-1 on each axis, the paper's threshold 1: a 2x2 box) multiplied
    by ``scale``, then the real part of the inverse transform kept, as the paper's code does: a
    frequency in the box whose mirror (-k) is not moves half way. Computed in float32 at least
    (half-precision FFTs are not available for every size and device), returned in ``x``'s
    dtype."""
    work = x if x.dtype in (torch.float32, torch.float64) else x.float()
    height, width = work.shape[-2:]
    mask = torch.ones(height, width, dtype=work.dtype, device=work.device)
    rows = _around_zero(height, radius)
    mask[rows[:, None], _around_zero(width, radius)[None, :]] = scale
    spectrum = torch.fft.fftn(work, dim=(-2, -1)) * mask
    return torch.fft.ifftn(spectrum, dim=(-2, -1)).real.to(x.dtype)


def _around_zero(size: int, radius: int) -> torch.Tensor:
    # Unshifted FFT order: frequency f >= 0 sits at index f, f < 0 at size + f.
    frequencies = range(-radius, radius) if size > 1 else range(0, 1)
    return torch.tensor(sorted({f % size for f in frequencies}))
