"""What the audio pipelines return (the fields of the diffusers format's outputs)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from diffusion_kernel.pipelines import PipelineOutput


@dataclass
class AudioPipelineOutput(PipelineOutput):
    """``audios``: float32 numpy array (batch, channels, samples) in [-1, 1]; ``sample_rate``
    in Hz (not in the diffusers format's output; what a WAV file needs)."""

    audios: np.ndarray
    sample_rate: int | None = None


@dataclass
class AudioDiffusionPipelineOutput(PipelineOutput):
    """``audios`` (batch, 1, samples) float32 and ``images``: the mel spectrograms as PIL "L"
    images, one per sample; ``sample_rate`` in Hz."""

    audios: np.ndarray
    images: list[Any]
    sample_rate: int | None = None
