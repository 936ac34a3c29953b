"""How ``diffusion-kernel generate`` saves audio: a folder with one 16-bit WAV per sample, or one
WAV file holding every sample in turn, a quarter second of silence between them."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from diffusion_kernel.errors import PipelineError
from diffusion_kernel.outputs import OutputWriter

from .wav import write_wav

GAP_SECONDS = 0.25


class WavWriter(OutputWriter):
    """Writes a pipeline's ``audios`` (batch, channels, samples) at its output's
    ``sample_rate``."""

    suffixes = (".wav",)
    sample_suffix = ".wav"
    description = "audio clips"

    def select(self, output: Any, field: str) -> Any:
        rate = getattr(output, "sample_rate", None)
        if rate is None:
            raise PipelineError(f"{type(output).__name__} gives no sample_rate, so its audios "
                                f"cannot be written as WAV files")
        return getattr(output, field), int(rate)

    def samples(self, value: Any) -> Sequence[Any]:
        audios, rate = value
        return [(np.asarray(audio), rate) for audio in audios]

    def write_sample(self, sample: Any, path: Path) -> None:
        audio, rate = sample
        write_wav(path, audio, rate)

    def write_file(self, samples: Sequence[Any], path: Path) -> None:
        rate = samples[0][1]
        gap = np.zeros((samples[0][0].shape[0], int(GAP_SECONDS * rate)), dtype=np.float32)
        pieces = [piece for audio, _ in samples for piece in (audio, gap)][:-1]
        write_wav(path, np.concatenate(pieces, axis=1), rate)
