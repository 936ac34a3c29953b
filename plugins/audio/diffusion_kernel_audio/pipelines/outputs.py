"""What the audio pipelines return (the fields of the diffusers format's outputs)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from diffusion_kernel.pipelines import PipelineOutput


@dataclass
class AudioPipelineOutput(PipelineOutput):
    """``audios``: float32 numpy array (batch, channels, samples) in [-1, 1]."""

    audios: np.ndarray


@dataclass
class AudioDiffusionPipelineOutput(PipelineOutput):
    """``audios`` (batch, 1, samples) float32 and ``images``: the mel spectrograms as PIL "L"
    images, one per sample."""

    audios: np.ndarray
    images: list[Any]
