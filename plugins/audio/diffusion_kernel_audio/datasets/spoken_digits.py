"""Spoken digits ("zero" ... "nine"), rendered offline with eSpeak NG: the training data of the
shipped mel-spectrogram model and of the classifier that judges it.

A voice is an English accent with a voice variant (timbre), e.g. ``en-gb-scotland+m3``; every
clip also varies the speaking rate and the pitch. The variants are split in two disjoint sets:
``"train"`` voices for the generative model, ``"heldout"`` voices (never heard in training) for
the judge. Clips are resampled to 11,025 Hz, trimmed of silence and placed ``ONSET_SECONDS``
into a window of one mel slice, so each clip is one mel image.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from .espeak import SAMPLE_RATE, espeak

DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
ACCENTS = ("en-us", "en", "en-gb-scotland", "en-gb-x-rp", "en-029", "en-gb-x-gbclan",
           "en-gb-x-gbcwmd", "en-us-nyc")
TRAIN_VARIANTS = ("m1", "m2", "m3", "m4", "m5", "m6", "f1", "f2", "f3", "klatt", "klatt2",
                  "Andy", "Denis", "Gene", "Lee", "aunty", "belinda", "david")
HELDOUT_VARIANTS = ("m7", "m8", "f4", "f5", "klatt3", "Michael")
RATES = (140, 175)  # words per minute
PITCHES = (35, 50, 65)
ONSET_SECONDS = 0.03


@dataclass
class SpokenDigits:
    """``audio`` (N, samples) float32 in [-1, 1] at ``sample_rate``; ``labels`` (N,) digits;
    ``voices`` (N,) voice names; ``rates``, ``pitches`` (N,)."""

    audio: np.ndarray
    labels: np.ndarray
    voices: np.ndarray
    rates: np.ndarray
    pitches: np.ndarray
    sample_rate: int


def halfband_decimate(audio: np.ndarray) -> np.ndarray:
    """Halve the sample rate: a 63-tap Hamming-windowed-sinc low-pass at 0.45 of the new
    Nyquist frequency, then every second sample."""
    taps = np.arange(63) - 31
    cutoff = 0.45 * 0.5  # of the input's sample rate
    kernel = 2 * cutoff * np.sinc(2 * cutoff * taps) * np.hamming(63)
    return np.convolve(audio, kernel / kernel.sum(), mode="same")[::2]


def place(audio: np.ndarray, sample_rate: int, length: int, threshold: float = 0.02) -> np.ndarray:
    """Trim leading and trailing silence (frames of 10 ms below ``threshold`` of the loudest
    frame's RMS) and put the speech ``ONSET_SECONDS`` into a window of ``length`` samples."""
    frame = sample_rate // 100
    frames = audio[: len(audio) // frame * frame].reshape(-1, frame)
    rms = np.sqrt((frames**2).mean(axis=1))
    loud = np.nonzero(rms > threshold * rms.max())[0]
    speech = audio[loud[0] * frame: (loud[-1] + 1) * frame]
    onset = int(ONSET_SECONDS * sample_rate)
    window = np.zeros(length, dtype=np.float32)
    speech = speech[: length - onset]
    window[onset: onset + len(speech)] = speech
    return window


def spoken_digits(split: str = "train", length: int = 8191, decimate: bool = True,
                  rates=RATES, pitches=PITCHES) -> SpokenDigits:
    """Every digit by every voice of ``split`` ("train" or "heldout") at every rate and pitch,
    as windows of ``length`` samples (11,025 Hz with ``decimate``, else 22,050 Hz), peak
    normalised to 0.9."""
    variants = {"train": TRAIN_VARIANTS, "heldout": HELDOUT_VARIANTS}[split]
    synth = espeak()
    rate_hz = SAMPLE_RATE // 2 if decimate else SAMPLE_RATE
    rows = []
    for accent, variant, (label, word), rate, pitch in itertools.product(
            ACCENTS, variants, enumerate(DIGITS), rates, pitches):
        voice = f"{accent}+{variant}"
        audio = synth.say(word, voice, rate=rate, pitch=pitch).astype(np.float32) / 32768
        if decimate:
            audio = halfband_decimate(audio)
        clip = place(audio, rate_hz, length)
        rows.append((0.9 * clip / np.abs(clip).max(), label, voice, rate, pitch))
    audio, labels, voices, rate_values, pitch_values = zip(*rows)
    return SpokenDigits(np.stack(audio).astype(np.float32), np.array(labels), np.array(voices),
                        np.array(rate_values), np.array(pitch_values), rate_hz)
