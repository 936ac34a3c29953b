"""Audio <-> mel-spectrogram images, the processor of Audio Diffusion (Robert Dargavel Smith's
"audio-diffusion"), with the config (``mel_config.json``) and methods of the diffusers ``Mel``.

An image is ``y_res`` mel bins (rows, lowest frequency first) by ``x_res`` frames (columns) of
8-bit grey levels: the power in decibels below the slice's loudest bin, ``top_db`` dB mapped to
0..255 (``byte = (dB + top_db) * 255 / top_db``, rounded). A slice covers ``x_res * hop_length
- 1`` samples, so it has exactly ``x_res`` centred frames. The inverse undoes the byte mapping,
inverts the mel filterbank (non-negative least squares) and recovers a phase with Griffin-Lim;
the phases start from a seeded generator, so the same image gives the same audio.
"""

from __future__ import annotations

import os

import numpy as np
import torch
from diffusion_kernel.errors import ConfigError, PipelineError
from diffusion_kernel.processing import ProcessorMixin

from ..wav import read_wav
from . import spectral


class Mel(ProcessorMixin):
    """``Mel(x_res, y_res, sample_rate, n_fft, hop_length, top_db, n_iter)``:
    ``load_audio(audio_file or raw_audio)``, ``audio_slice_to_image(i)`` (a PIL "L" image),
    ``image_to_audio(image)`` (a float32 numpy waveform)."""

    config_name = "mel_config.json"

    def __init__(self, x_res: int = 256, y_res: int = 256, sample_rate: int = 22050,
                 n_fft: int = 2048, hop_length: int = 512, top_db: int = 80, n_iter: int = 32):
        if not 0 < hop_length < n_fft:
            raise ConfigError(f"Mel: hop_length ({hop_length}) must be positive and below n_fft "
                              f"({n_fft}): the Griffin-Lim inverse needs overlapping frames "
                              f"(e.g. hop_length={n_fft // 4})")
        self.hop_length = hop_length
        self.sr = sample_rate
        self.n_fft = n_fft
        self.top_db = top_db
        self.n_iter = n_iter
        self.set_resolution(x_res, y_res)
        self.audio: np.ndarray | None = None

    def set_resolution(self, x_res: int, y_res: int) -> None:
        """Frames (``x_res``) and mel bins (``y_res``) of an image."""
        self.x_res, self.y_res = x_res, y_res
        self.n_mels = y_res
        self.slice_size = x_res * self.hop_length - 1

    # -- audio in ---------------------------------------------------------------------------------
    def load_audio(self, audio_file: str | os.PathLike | None = None,
                   raw_audio: np.ndarray | None = None) -> None:
        """Take a mono waveform at ``sample_rate``: a 16-bit PCM WAV file (stereo is averaged)
        or samples in [-1, 1]. Shorter than one slice: padded with silence."""
        if audio_file is not None:
            audio, rate = read_wav(audio_file)
            if rate != self.sr:
                raise PipelineError(
                    f"{os.fspath(audio_file)} has sample rate {rate} Hz, the mel config "
                    f"{self.sr} Hz; resample it to {self.sr} Hz first (e.g. "
                    f"sox in.wav -r {self.sr} out.wav)")
            audio = audio.mean(axis=0)
        elif raw_audio is not None:
            audio = np.asarray(raw_audio, dtype=np.float32)
            if audio.ndim != 1:
                raise PipelineError(f"raw_audio must be a mono waveform (samples,), got shape "
                                    f"{audio.shape}; average the channels first")
        else:
            raise PipelineError("load_audio needs audio_file or raw_audio")
        source = os.fspath(audio_file) if audio_file is not None else "raw_audio"
        if audio.size == 0:
            raise PipelineError(f"{source} holds no samples; pass audio with sound in it")
        if not np.any(audio):
            raise PipelineError(f"{source} is silent (every sample is 0): its spectrogram has no "
                                f"loudest bin to measure decibels from; pass audio with sound")
        if len(audio) < self.x_res * self.hop_length:
            audio = np.pad(audio, (0, self.x_res * self.hop_length - len(audio)))
        self.audio = audio

    def get_number_of_slices(self) -> int:
        return len(self._loaded()) // self.slice_size

    def get_audio_slice(self, slice: int = 0) -> np.ndarray:
        count = self.get_number_of_slices()
        if not 0 <= slice < count:
            raise PipelineError(f"slice {slice} does not exist: the loaded audio has {count} "
                                f"slice(s) of {self.slice_size} samples")
        return self._loaded()[self.slice_size * slice: self.slice_size * (slice + 1)]

    def get_sample_rate(self) -> int:
        return self.sr

    def _loaded(self) -> np.ndarray:
        if self.audio is None:
            raise PipelineError("no audio loaded: call load_audio(audio_file=...) first")
        return self.audio

    # -- conversions ------------------------------------------------------------------------------
    def audio_slice_to_image(self, slice: int):
        """The ``y_res`` x ``x_res`` grey image of one slice of the loaded audio."""
        from PIL import Image

        return Image.fromarray(self.audio_to_bytes(self.get_audio_slice(slice)))

    def audio_to_bytes(self, audio: np.ndarray | torch.Tensor) -> np.ndarray:
        """uint8 mel images (..., y_res, frames) of waveforms (..., samples)."""
        audio = torch.as_tensor(np.asarray(audio, dtype=np.float32))
        power = spectral.mel_power_spectrogram(audio, self.sr, self.n_fft, self.hop_length,
                                               self.n_mels)
        db = spectral.power_to_db(power, self.top_db)
        scaled = ((db + self.top_db) * (255 / self.top_db)).clamp(0, 255) + 0.5
        return scaled.to(torch.uint8).numpy()

    def image_to_audio(self, image, generator: torch.Generator | None = None) -> np.ndarray:
        """A waveform (float32, ``hop_length * (x_res - 1)`` samples) for a grey image (PIL or a
        uint8 array); Griffin-Lim's initial phases come from ``generator`` (default: seed 0)."""
        return self.bytes_to_audio(np.asarray(image, dtype=np.uint8), generator)

    def bytes_to_audio(self, image: np.ndarray, generator: torch.Generator | None = None):
        """Waveforms (..., samples) for uint8 mel images (..., y_res, frames)."""
        db = torch.from_numpy(image.astype(np.float32)) * (self.top_db / 255) - self.top_db
        power = torch.pow(10.0, db / 10)
        magnitude = spectral.mel_to_magnitude(power, self.sr, self.n_fft)
        generator = generator or torch.Generator().manual_seed(0)
        audio = spectral.griffin_lim(magnitude, self.n_fft, self.hop_length, self.n_iter,
                                     generator=generator)
        return audio.float().numpy()

    # -- the processor contract -------------------------------------------------------------------
    def preprocess(self, audio: np.ndarray, **kwargs) -> np.ndarray:
        return self.audio_to_bytes(audio)

    def postprocess(self, image: np.ndarray, **kwargs) -> np.ndarray:
        return self.bytes_to_audio(image, kwargs.get("generator"))
