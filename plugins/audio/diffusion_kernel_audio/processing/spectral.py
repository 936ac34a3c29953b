"""Spectrogram arithmetic in torch, the definitions librosa (and so the diffusers ``Mel``) uses:

- ``mel_filterbank``: triangular filters evenly spaced on the Slaney mel scale (linear below
  1 kHz at 200/3 Hz per mel, logarithmic above, Slaney 1998, "Auditory Toolbox"), each scaled
  to unit area (``norm="slaney"``: 2 / (f_right - f_left));
- ``mel_power_spectrogram``: |STFT|^2 with a periodic Hann window, frames centred on
  multiples of the hop (the signal zero-padded by n_fft / 2 at both ends), through the filters;
- ``power_to_db``: 10 log10(max(S, amin)) relative to the loudest bin, floored ``top_db`` below;
- ``mel_to_magnitude``: the non-negative least-squares inverse of the filterbank;
- ``griffin_lim``: phase retrieval by alternating projections (Griffin & Lim 1984) with the
  momentum of Perraudin, Balazs & Sondergaard 2013 ("fast Griffin-Lim", alpha = 0.99).
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch

F_SP = 200.0 / 3  # Hz per mel below the break
MIN_LOG_HZ = 1000.0  # the break between the linear and logarithmic parts
MIN_LOG_MEL = MIN_LOG_HZ / F_SP
LOG_STEP = math.log(6.4) / 27.0  # 27 mels per factor 6.4 in frequency above the break


def hz_to_mel(hz: np.ndarray) -> np.ndarray:
    hz = np.asarray(hz, dtype=np.float64)
    linear = hz / F_SP
    logarithmic = MIN_LOG_MEL + np.log(np.maximum(hz, MIN_LOG_HZ) / MIN_LOG_HZ) / LOG_STEP
    return np.where(hz >= MIN_LOG_HZ, logarithmic, linear)


def mel_to_hz(mel: np.ndarray) -> np.ndarray:
    mel = np.asarray(mel, dtype=np.float64)
    linear = F_SP * mel
    logarithmic = MIN_LOG_HZ * np.exp(LOG_STEP * (np.maximum(mel, MIN_LOG_MEL) - MIN_LOG_MEL))
    return np.where(mel >= MIN_LOG_MEL, logarithmic, linear)


@functools.lru_cache(maxsize=16)
def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int, fmin: float = 0.0,
                   fmax: float | None = None) -> torch.Tensor:
    """(n_mels, 1 + n_fft // 2) float32 weights: row m is the m-th triangular filter."""
    fmax = sample_rate / 2 if fmax is None else fmax
    fft_hz = np.linspace(0, sample_rate / 2, 1 + n_fft // 2)
    edges = mel_to_hz(np.linspace(hz_to_mel(fmin), hz_to_mel(fmax), n_mels + 2))
    widths = np.diff(edges)
    ramps = edges[:, None] - fft_hz[None, :]
    rising = -ramps[:-2] / widths[:-1, None]
    falling = ramps[2:] / widths[1:, None]
    weights = np.maximum(0, np.minimum(rising, falling))
    weights *= (2.0 / (edges[2:] - edges[:-2]))[:, None]  # unit area per filter
    return torch.from_numpy(weights.astype(np.float32))


def _window(n_fft: int, like: torch.Tensor) -> torch.Tensor:
    return torch.hann_window(n_fft, periodic=True, dtype=like.real.dtype, device=like.device)


def stft(audio: torch.Tensor, n_fft: int, hop_length: int) -> torch.Tensor:
    """Complex (..., 1 + n_fft // 2, frames) spectrum of centred, zero-padded frames."""
    return torch.stft(audio, n_fft, hop_length, window=_window(n_fft, audio), center=True,
                      pad_mode="constant", return_complex=True)


def istft(spectrum: torch.Tensor, n_fft: int, hop_length: int,
          length: int | None = None) -> torch.Tensor:
    return torch.istft(spectrum, n_fft, hop_length, window=_window(n_fft, spectrum), center=True,
                       length=length)


def mel_power_spectrogram(audio: torch.Tensor, sample_rate: int, n_fft: int, hop_length: int,
                          n_mels: int) -> torch.Tensor:
    """(..., n_mels, frames) mel-weighted power |STFT|^2, frames = 1 + len // hop."""
    power = stft(audio, n_fft, hop_length).abs().square()
    filters = mel_filterbank(sample_rate, n_fft, n_mels).to(power)
    return filters @ power


def power_to_db(power: torch.Tensor, top_db: float, amin: float = 1e-10) -> torch.Tensor:
    """Decibels relative to the loudest bin of each spectrogram (the last two dimensions), at
    most ``top_db`` below it."""
    db = 10.0 * torch.log10(power.clamp(min=amin))
    loudest = db.amax(dim=(-2, -1), keepdim=True)
    return torch.maximum(db - loudest, torch.full_like(db, -float(top_db)))


def mel_to_magnitude(mel_power: torch.Tensor, sample_rate: int, n_fft: int,
                     iterations: int = 30) -> torch.Tensor:
    """The STFT magnitude whose mel power is ``mel_power`` in the least-squares sense with
    non-negative power: projected gradient steps (FISTA, Beck & Teboulle 2009) on
    ||F p - m||^2 from the clipped pseudo-inverse, then the square root."""
    filters = mel_filterbank(sample_rate, n_fft, mel_power.shape[-2]).to(mel_power)
    power = (torch.linalg.pinv(filters) @ mel_power).clamp(min=0)
    step = 1.0 / torch.linalg.matrix_norm(filters, ord=2) ** 2  # 1 / Lipschitz constant
    momentum_point, previous, t = power, power, 1.0
    for _ in range(iterations):
        gradient = filters.T @ (filters @ momentum_point - mel_power)
        power = (momentum_point - step * gradient).clamp(min=0)
        t_next = (1 + math.sqrt(1 + 4 * t * t)) / 2
        momentum_point = power + ((t - 1) / t_next) * (power - previous)
        previous, t = power, t_next
    return power.sqrt()


def griffin_lim(magnitude: torch.Tensor, n_fft: int, hop_length: int, n_iter: int = 32,
                momentum: float = 0.99, generator: torch.Generator | None = None,
                length: int | None = None) -> torch.Tensor:
    """A waveform whose STFT magnitude is close to ``magnitude`` (..., 1 + n_fft // 2, frames),
    from random initial phases drawn with ``generator``."""
    phase = torch.rand(magnitude.shape, generator=generator, dtype=magnitude.dtype)
    angles = torch.polar(torch.ones_like(phase), 2 * math.pi * phase).to(magnitude.device)
    rebuilt = torch.zeros_like(angles)
    for _ in range(n_iter):
        previous = rebuilt
        rebuilt = stft(istft(magnitude * angles, n_fft, hop_length, length), n_fft, hop_length)
        angles = rebuilt - (momentum / (1 + momentum)) * previous
        angles = angles / (angles.abs() + 1e-16)
    return istft(magnitude * angles, n_fft, hop_length, length)
