"""WAV files with the standard library (``wave``): 16-bit PCM, mono or stereo, in and out.

Samples are float32 in [-1, 1] shaped (channels, samples), as pipelines give them (``.audios[i]``)
and take them. Writing clips to [-1, 1], rounds to 16 bits and replaces the file atomically.
"""

from __future__ import annotations

import io
import os
import wave
from pathlib import Path

import numpy as np
from diffusion_kernel.errors import PipelineError
from diffusion_kernel.hub import atomic_write_bytes

FULL_SCALE = 32767  # 16-bit PCM: [-1, 1] -> [-32767, 32767] (symmetric)


def read_wav(path: str | os.PathLike) -> tuple[np.ndarray, int]:
    """(audio (channels, samples) float32, sample rate) of a 16-bit PCM WAV file."""
    try:
        with wave.open(os.fspath(path), "rb") as file:
            width, channels = file.getsampwidth(), file.getnchannels()
            rate, frames = file.getframerate(), file.readframes(file.getnframes())
    except (wave.Error, EOFError) as exc:
        raise PipelineError(f"{os.fspath(path)} is not a PCM WAV file this reader takes "
                            f"({exc}); convert it to 16-bit PCM WAV (e.g. sox in.ext -b 16 "
                            f"out.wav)") from exc
    if width != 2:
        raise PipelineError(f"{os.fspath(path)} has {8 * width}-bit samples; only 16-bit PCM is "
                            f"read: convert it (e.g. sox in.wav -b 16 out.wav)")
    samples = np.frombuffer(frames, dtype="<i2")
    audio = samples.reshape(-1, channels).T.astype(np.float32) / FULL_SCALE
    return np.clip(audio, -1.0, 1.0), rate


def write_wav(path: str | os.PathLike, audio: np.ndarray, sample_rate: int) -> Path:
    """Write ``audio`` ((channels, samples) or (samples,), values in [-1, 1]) as 16-bit PCM."""
    audio = np.asarray(audio, dtype=np.float32)
    if audio.ndim == 1:
        audio = audio[None]
    if audio.ndim != 2 or audio.shape[0] not in (1, 2):
        raise PipelineError(f"a WAV file holds mono or stereo audio (channels, samples); got "
                            f"shape {audio.shape}")
    if not isinstance(sample_rate, int | np.integer) or sample_rate <= 0:
        raise PipelineError(f"sample_rate must be a positive integer (Hz), got {sample_rate!r}")
    pcm = np.round(np.clip(audio, -1.0, 1.0) * FULL_SCALE).astype("<i2")
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as file:
        file.setnchannels(audio.shape[0])
        file.setsampwidth(2)
        file.setframerate(int(sample_rate))
        file.writeframes(pcm.T.tobytes())
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, buffer.getvalue())
    return path
