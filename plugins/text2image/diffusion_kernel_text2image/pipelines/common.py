"""What the text2image pipelines share: argument checks (prompts, embeddings, generators, output
types, callbacks), the scheduler's optional step arguments, classifier-free guidance, and turning
image tensors into the requested output.

Classifier-free guidance (Ho & Salimans 2022, eq. 6): the model sees the unconditional and the
conditional batch in one call; the prediction is ``uncond + w (cond - uncond)``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from diffusion_kernel.errors import PipelineError
from diffusion_kernel.noise import Generators
from diffusion_kernel.noise import randn as _draw
from diffusion_kernel.prompts import check_prompts, is_prompt  # noqa: F401 (re-exported)
from diffusion_kernel.sampling_loop import sample_of, step_kwargs  # noqa: F401 (re-exported)

IMAGE_OUTPUT_TYPES = ("pil", "np", "pt")


def check_output_type(output_type: str, allowed: Sequence[str] = IMAGE_OUTPUT_TYPES) -> None:
    if output_type not in allowed:
        raise PipelineError(f"unknown output_type {output_type!r}; choose one of "
                            f"{', '.join(map(repr, allowed))}")


def check_generators(generator: Generators, batch_size: int) -> None:
    """A list of generators must hold one generator per image of the batch."""
    if isinstance(generator, list | tuple) and len(generator) != batch_size:
        raise PipelineError(f"got {len(generator)} generators for {batch_size} images (prompts x "
                            f"num_images_per_prompt); pass one generator per image, or a single "
                            f"one")


def check_steps(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise PipelineError(f"{name} must be a positive int, got {value!r}")


def randn(shape: Sequence[int], generator: Generators, device: Any,
          dtype: torch.dtype | None) -> torch.Tensor:
    """The kernel's per-image-generator Gaussian draw, after checking the generator count."""
    check_generators(generator, shape[0])
    return _draw(shape, generator, device, dtype)


def check_callbacks(pipe: Any, callback: Callable | None, callback_steps: int,
                    tensor_inputs: Sequence[str]) -> None:
    if callback is not None and (isinstance(callback_steps, bool) or not isinstance(
            callback_steps, int) or callback_steps < 1):
        raise PipelineError(f"callback_steps must be a positive int, got {callback_steps!r}")
    pipe.check_callback_inputs(tensor_inputs)




def guided(prediction: torch.Tensor, scale: float, channels: int | None = None) -> torch.Tensor:
    """Classifier-free guidance over a batch [unconditional; conditional]. With ``channels``,
    only the first ``channels`` (the noise) are guided; the rest (a learned variance) come from
    the conditional half, as the format's learned-variance pipelines do."""
    uncond, cond = prediction.chunk(2)
    if channels is None or channels == prediction.shape[1]:
        return uncond + scale * (cond - uncond)
    eps = uncond[:, :channels] + scale * (cond[:, :channels] - uncond[:, :channels])
    return torch.cat([eps, cond[:, channels:]], dim=1)


def to_output(images: torch.Tensor, output_type: str) -> Any:
    """(N, C, H, W) images in [0, 1] -> ``"pt"`` (as is), ``"np"`` ((N, H, W, C) float32 array)
    or ``"pil"`` (a list of 8-bit images, rounded)."""
    if output_type == "pt":
        return images
    array = images.detach().cpu().permute(0, 2, 3, 1).float().numpy()
    if output_type == "np":
        return array
    import PIL.Image

    pixels = (array * 255).round().astype("uint8")
    if pixels.shape[-1] == 1:
        return [PIL.Image.fromarray(p[..., 0]) for p in pixels]  # 2-D uint8: mode "L"
    return [PIL.Image.fromarray(p) for p in pixels]
