"""Deterministic test signals (formulas and a seeded numpy RandomState, so every machine makes
the same samples): the inputs of the recorded mel fixtures and of the Mel tests."""

import numpy as np


def chirp(samples: int, sample_rate: int) -> np.ndarray:
    """A linear sweep from 100 Hz up to 40 % of the sample rate under a Hann envelope."""
    t = np.arange(samples) / sample_rate
    sweep = 100 + (0.4 * sample_rate - 100) * t / t[-1] / 2
    return (0.5 * np.sin(2 * np.pi * sweep * t) * np.hanning(samples)).astype(np.float32)


def tone_in_noise(samples: int, sample_rate: int) -> np.ndarray:
    """220 Hz with four overtones (amplitudes 1/k), plus white noise 40 dB down."""
    t = np.arange(samples) / sample_rate
    tone = sum(np.sin(2 * np.pi * 220 * k * t) / k for k in range(1, 6)) / 2.5
    noise = np.random.RandomState(0).standard_normal(samples) * 0.01
    return (0.6 * tone + noise).astype(np.float32)


def clicks(samples: int, sample_rate: int) -> np.ndarray:
    """Decaying noise bursts every 0.1 s (percussive, broadband)."""
    rng = np.random.RandomState(1)
    out = np.zeros(samples, dtype=np.float32)
    period = int(0.1 * sample_rate)
    decay = np.exp(-np.arange(period) / (0.01 * sample_rate))
    for start in range(0, samples - period, period):
        out[start:start + period] += (0.8 * rng.standard_normal(period) * decay)
    return np.clip(out, -1, 1)


SIGNALS = {"chirp": chirp, "tone_in_noise": tone_in_noise, "clicks": clicks}
# mel configs: diffusers' default (256 x 256 at 22,050 Hz) and two small ones
MEL_CONFIGS = {
    "default": {},
    "small_16k": dict(x_res=64, y_res=64, sample_rate=16000, n_fft=1024, hop_length=256,
                      top_db=60),
    "spoken_digits": dict(x_res=32, y_res=32, sample_rate=11025, n_fft=512, hop_length=256,
                          top_db=80),
}
