"""How ``diffusion-kernel generate`` saves images: one PNG grid of all samples, or a folder with
one PNG per sample plus ``grid.png``."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from diffusion_kernel.outputs import OutputWriter

from .grid import make_grid


class ImageWriter(OutputWriter):
    """Writes a pipeline's ``images`` (PIL images, or an ``"np"`` / ``"pt"`` output in [0, 1]) as
    PNG files."""

    suffixes = (".png",)
    sample_suffix = ".png"
    extras = ("grid.png",)
    description = "images"

    def samples(self, value: Any) -> Sequence[Any]:
        if isinstance(value, list | tuple):
            return list(value)
        import numpy as np
        import torch
        from diffusion_kernel.errors import PipelineError

        from .processing.image_processor import VaeImageProcessor

        if isinstance(value, torch.Tensor):
            value = VaeImageProcessor.pt_to_numpy(value)
        if not isinstance(value, np.ndarray):
            raise PipelineError(f"images must be PIL images, an array or a tensor, got "
                                f"{type(value).__name__}")
        return VaeImageProcessor.numpy_to_pil(value)

    def write_file(self, samples: Sequence[Any], path: Path) -> None:
        make_grid(list(samples)).save(path, format="PNG")

    def write_sample(self, sample: Any, path: Path) -> None:
        sample.save(path, format="PNG")

    def write_extras(self, samples: Sequence[Any], folder: Path) -> None:
        from diffusion_kernel.outputs import OutputPlan, write_output

        write_output(self, list(samples), OutputPlan(folder / "grid.png", folder=False))
