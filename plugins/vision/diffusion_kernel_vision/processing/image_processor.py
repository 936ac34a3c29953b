"""Images in and out of a VAE: PIL / numpy / torch to a normalised (N, C, H, W) tensor, and back.

Conventions (the diffusers ``VaeImageProcessor`` format): numpy images are (N, H, W, C) floats in
[0, 1]; torch images are (N, C, H, W) floats in [0, 1]; the VAE sees [-1, 1]. Sizes are rounded
down to a multiple of ``vae_scale_factor`` so the latent grid is whole. A tensor whose channel count
is ``vae_latent_channels`` is taken to be latents already and passed through untouched.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F
from diffusion_kernel.errors import ConfigError, PipelineError
from diffusion_kernel.processing import ProcessorMixin

_RESAMPLE = {
    "nearest": PIL.Image.Resampling.NEAREST,
    "linear": PIL.Image.Resampling.BILINEAR,
    "bilinear": PIL.Image.Resampling.BILINEAR,
    "bicubic": PIL.Image.Resampling.BICUBIC,
    "lanczos": PIL.Image.Resampling.LANCZOS,
}
OUTPUT_TYPES = ("pil", "np", "pt", "latent")


class VaeImageProcessor(ProcessorMixin):
    """Pre- and post-processing of images for a VAE.

    ``do_resize`` rounds sizes down to a multiple of ``vae_scale_factor`` (or resizes to the
    ``height``/``width`` given to ``preprocess``); ``do_normalize`` maps [0, 1] to [-1, 1];
    ``do_binarize`` maps values to 0/1 at 0.5 (masks); ``do_convert_rgb`` /
    ``do_convert_grayscale`` convert PIL inputs.
    """

    config_name = "config.json"

    def __init__(
        self,
        do_resize: bool = True,
        vae_scale_factor: int = 8,
        vae_latent_channels: int = 4,
        resample: str = "lanczos",
        reducing_gap: int | None = None,
        do_normalize: bool = True,
        do_binarize: bool = False,
        do_convert_rgb: bool = False,
        do_convert_grayscale: bool = False,
    ):
        if do_convert_rgb and do_convert_grayscale:
            raise ConfigError("VaeImageProcessor: do_convert_rgb and do_convert_grayscale cannot "
                              "both be True; keep the one you need")
        if resample not in _RESAMPLE:
            raise ConfigError(f"VaeImageProcessor: unknown resample {resample!r}; valid values "
                              f"are {', '.join(map(repr, _RESAMPLE))}")

    # Conversions between the three formats -------------------------------------------------
    @staticmethod
    def numpy_to_pil(images: np.ndarray) -> list[PIL.Image.Image]:
        """(N, H, W, C) or (H, W, C) floats in [0, 1] -> list of PIL images (rounded to uint8)."""
        if images.ndim == 3:
            images = images[None]
        images = (images * 255).round().astype("uint8")
        if images.shape[-1] == 1:
            return [PIL.Image.fromarray(im[..., 0], mode="L") for im in images]
        return [PIL.Image.fromarray(im) for im in images]

    @staticmethod
    def pil_to_numpy(images: PIL.Image.Image | Sequence[PIL.Image.Image]) -> np.ndarray:
        """PIL image(s) -> (N, H, W, C) (or (N, H, W) for grayscale) float32 in [0, 1]."""
        if isinstance(images, PIL.Image.Image):
            images = [images]
        return np.stack([np.asarray(im).astype(np.float32) / 255.0 for im in images])

    @staticmethod
    def numpy_to_pt(images: np.ndarray) -> torch.Tensor:
        """(N, H, W, C) -> (N, C, H, W); a channel-less (N, H, W) array gets one channel."""
        if images.ndim == 3:
            images = images[..., None]
        return torch.from_numpy(images.transpose(0, 3, 1, 2))

    @staticmethod
    def pt_to_numpy(images: torch.Tensor) -> np.ndarray:
        """(N, C, H, W) tensor -> (N, H, W, C) float32 array on the CPU."""
        return images.cpu().permute(0, 2, 3, 1).float().numpy()

    @staticmethod
    def normalize(images: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
        """[0, 1] -> [-1, 1]."""
        return 2.0 * images - 1.0

    @staticmethod
    def denormalize(images: torch.Tensor) -> torch.Tensor:
        """[-1, 1] -> [0, 1], clamped."""
        return (images * 0.5 + 0.5).clamp(0, 1)

    @staticmethod
    def binarize(images: torch.Tensor) -> torch.Tensor:
        """Values below 0.5 become 0, the others 1 (a mask: 1 = repaint, 0 = keep)."""
        return (images >= 0.5).to(images.dtype)

    # Sizes -----------------------------------------------------------------------------------
    def get_default_height_width(self, image: Any, height: int | None = None,
                                 width: int | None = None) -> tuple[int, int]:
        """The image's size (unless given), rounded down to a multiple of ``vae_scale_factor``."""
        if isinstance(image, PIL.Image.Image):
            size = (image.height, image.width)
        elif isinstance(image, torch.Tensor):
            size = tuple(image.shape[2:4])
        else:
            size = tuple(image.shape[1:3])
        height = size[0] if height is None else height
        width = size[1] if width is None else width
        factor = self.config.vae_scale_factor
        return height - height % factor, width - width % factor

    def resize(self, image: Any, height: int, width: int) -> Any:
        """Resize a PIL image (with ``resample``), or a (N, C, H, W) tensor / (N, H, W, C) array
        (nearest-neighbour interpolation, as the reference does)."""
        if isinstance(image, PIL.Image.Image):
            return image.resize((width, height), resample=_RESAMPLE[self.config.resample],
                                reducing_gap=self.config.reducing_gap)
        if isinstance(image, np.ndarray):
            return self.pt_to_numpy(F.interpolate(self.numpy_to_pt(image), size=(height, width)))
        return F.interpolate(image, size=(height, width))

    # Public API --------------------------------------------------------------------------------
    def preprocess(self, image: Any, height: int | None = None, width: int | None = None,
                   **kwargs: Any) -> torch.Tensor:
        """Image(s) -> a float (N, C, H, W) tensor ready for the VAE.

        ``image``: a PIL image, a (H, W, C) / (N, H, W, C) numpy array in [0, 1], a (C, H, W) /
        (N, C, H, W) tensor in [0, 1], or a list of those. ``height``/``width`` resize to that size
        (default: the input's, rounded down to a multiple of ``vae_scale_factor``).
        """
        if kwargs.get("resize_mode", "default") != "default" or kwargs.get("crops_coords"):
            raise PipelineError("VaeImageProcessor.preprocess supports only resize_mode='default' "
                                "without crops_coords; crop or pad the image before passing it")
        images = self._as_list(image)
        first = images[0]
        if isinstance(first, PIL.Image.Image):
            tensor = self._pil_to_tensor(images, height, width)
        else:
            if isinstance(first, np.ndarray):
                batch = [self.numpy_to_pt(a if a.ndim == 4 else a[None]) for a in images]
            else:
                batch = [t if t.ndim == 4 else t[None] for t in images]
            tensor = batch[0] if len(batch) == 1 else torch.cat(batch, dim=0)
            if tensor.shape[1] == self.config.vae_latent_channels:
                return tensor  # latents already
            if self.config.do_resize:
                tensor = self.resize(tensor, *self.get_default_height_width(tensor, height, width))
        if self.config.do_normalize:
            if tensor.min() < 0:
                raise PipelineError(
                    f"image values must lie in [0, 1] (found a minimum of "
                    f"{float(tensor.min()):.3g}); for an image in [-1, 1] pass (image + 1) / 2")
            tensor = self.normalize(tensor)
        if self.config.do_binarize:
            tensor = self.binarize(tensor)
        return tensor

    def postprocess(self, image: torch.Tensor, output_type: str = "pil",
                    do_denormalize: Sequence[bool] | None = None) -> Any:
        """A (N, C, H, W) tensor in [-1, 1] -> ``output_type``: ``"pil"`` (list of images),
        ``"np"`` ((N, H, W, C) array in [0, 1]), ``"pt"`` ((N, C, H, W) in [0, 1]) or ``"latent"``
        (returned unchanged). ``do_denormalize`` picks per image whether to map to [0, 1]."""
        check_output_type(output_type)
        if not isinstance(image, torch.Tensor):
            raise PipelineError(f"postprocess takes a torch tensor (N, C, H, W), got "
                                f"{type(image).__name__}")
        if output_type == "latent":
            return image
        if do_denormalize is None:
            if self.config.do_normalize:
                image = self.denormalize(image)
        elif all(do_denormalize):
            image = self.denormalize(image)
        else:
            image = torch.stack([self.denormalize(im) if d else im
                                 for im, d in zip(image, do_denormalize)])
        if output_type == "pt":
            return image
        array = self.pt_to_numpy(image)
        return array if output_type == "np" else self.numpy_to_pil(array)

    # Helpers ---------------------------------------------------------------------------------
    def _as_list(self, image: Any) -> list:
        images = image if isinstance(image, list | tuple) else [image]
        if not images:
            raise PipelineError("no image given; pass a PIL image, a numpy array or a tensor")
        kinds = {_kind_of(im) for im in images}
        if None in kinds or len(kinds) > 1:
            raise PipelineError(
                f"image must be a PIL image, a numpy array (H, W, C) / (N, H, W, C), a torch "
                f"tensor (C, H, W) / (N, C, H, W), or a list of one of those kinds; got "
                f"{sorted({type(im).__name__ for im in images})}")
        if self.config.do_convert_grayscale:
            images = [self._add_gray_channel(im) for im in images]
        else:
            images = [im[None] if isinstance(im, torch.Tensor) and im.ndim == 2 else
                      im[..., None] if isinstance(im, np.ndarray) and im.ndim == 2 else im
                      for im in images]
        return images

    @staticmethod
    def _add_gray_channel(image: Any) -> Any:
        """Masks often come without a channel axis: (H, W) or (N, H, W); give them one."""
        if isinstance(image, torch.Tensor) and image.ndim in (2, 3):
            return image[None] if image.ndim == 2 else image.unsqueeze(1)
        if isinstance(image, np.ndarray) and image.ndim in (2, 3):
            if image.ndim == 2:
                return image[..., None]
            return image[None] if image.shape[-1] == 1 else image[..., None]
        return image

    def _pil_to_tensor(self, images: list[PIL.Image.Image], height: int | None,
                       width: int | None) -> torch.Tensor:
        if self.config.do_resize:
            size = self.get_default_height_width(images[0], height, width)
            images = [self.resize(im, *size) for im in images]
        if self.config.do_convert_rgb:
            images = [im.convert("RGB") for im in images]
        elif self.config.do_convert_grayscale:
            images = [im.convert("L") for im in images]
        return self.numpy_to_pt(self.pil_to_numpy(images))


def _kind_of(image: Any) -> str | None:
    if isinstance(image, PIL.Image.Image):
        return "pil"
    if isinstance(image, np.ndarray | torch.Tensor) and image.ndim in (2, 3, 4):
        return type(image).__name__
    return None


def check_output_type(output_type: str) -> None:
    """Raise a ``PipelineError`` for an unknown ``output_type``."""
    if output_type not in OUTPUT_TYPES:
        raise PipelineError(f"unknown output_type {output_type!r}; choose one of "
                            f"{', '.join(map(repr, OUTPUT_TYPES))}")
