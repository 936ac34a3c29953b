"""Training latents from a frozen VAE, each image encoded once.

The VAE does not train, so encoding an image again gives the same posterior: the first use of an
image (and of its mirror image, with random flips) encodes it and keeps the posterior's mean and
standard deviation; later epochs skip the VAE. Each use still draws a fresh latent,
``(mean + std * eps - shift) * scaling_factor``, as ``vae.encode(x).latent_dist.sample()`` does in
diffusers' training scripts, with ``eps`` from the sample's own keyed generator.
"""

from __future__ import annotations

import torch

from .captioned_images import ImageSet

ENCODE_BATCH = 8


class LatentCache:
    """The VAE posterior of each ``(image index, flipped)`` pair, made on first use."""

    def __init__(self, vae, images: ImageSet, resolution: int):
        self.vae, self.images, self.resolution = vae, images, resolution
        self._moments: dict[tuple[int, bool], tuple[torch.Tensor, torch.Tensor]] = {}
        config = vae.config
        factor = 2 ** (len(config.block_out_channels) - 1)
        self.shape = (config.latent_channels, resolution // factor, resolution // factor)
        self.scaling_factor = config.scaling_factor
        self.shift_factor = getattr(config, "shift_factor", None) or 0.0

    def sample(self, keys: list[tuple[int, bool]], eps: torch.Tensor) -> torch.Tensor:
        """Latents (len(keys), C, h, w) for these images, drawn with the standard normal ``eps``."""
        missing = [k for k in dict.fromkeys(keys) if k not in self._moments]
        for start in range(0, len(missing), ENCODE_BATCH):
            self._encode(missing[start:start + ENCODE_BATCH])
        mean = torch.stack([self._moments[k][0] for k in keys])
        std = torch.stack([self._moments[k][1] for k in keys])
        latents = mean + std * eps.to(mean.device, mean.dtype)
        return (latents - self.shift_factor) * self.scaling_factor

    @torch.no_grad()
    def _encode(self, keys: list[tuple[int, bool]]) -> None:
        device, dtype = self.vae.device, self.vae.dtype
        pixels = torch.stack([self.images.pixels(i, self.resolution, flip) for i, flip in keys])
        posterior = self.vae.encode(pixels.to(device, dtype)).latent_dist
        for key, mean, std in zip(keys, posterior.mean.float(), posterior.std.float()):
            self._moments[key] = (mean, std)
