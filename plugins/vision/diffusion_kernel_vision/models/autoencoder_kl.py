"""The KL-regularised autoencoder of latent diffusion (Rombach et al. 2022, sec. 3.1): encodes an
image to a diagonal Gaussian over a latent 8x (for SD) smaller, decodes latents back to images.

Config fields and weight keys are those of the diffusers ``AutoencoderKL``. Memory features:
``enable_slicing`` (one batch element at a time) and ``enable_tiling`` (overlapping tiles whose
seams are blended linearly, the format's tiling with a 25 % overlap).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusion_kernel.config_checks import PositiveInt
from diffusion_kernel.modeling import ModelMixin
from diffusion_kernel.nn import AttentionSlicingMixin, ModelOutput
from torch import nn

from ..loaders.single_file import FromOriginalModelMixin
from .checks import check_feature_map
from .tiling import tiled
from .unet_keys import rename_legacy_attention_keys
from .vae_blocks import Decoder, DecoderOutput, DiagonalGaussianDistribution, Encoder


@dataclass
class AutoencoderKLOutput(ModelOutput):
    """``latent_dist``: the posterior over latents; ``.sample(generator)`` or ``.mode()``."""

    latent_dist: DiagonalGaussianDistribution


class AutoencoderKL(ModelMixin, AttentionSlicingMixin, FromOriginalModelMixin):
    """``vae.encode(images).latent_dist.sample(generator)`` -> latents (multiply by
    ``vae.config.scaling_factor`` for diffusion); ``vae.decode(latents).sample`` -> images in
    [-1, 1] (divide the diffusion latents by ``scaling_factor`` first)."""

    _supports_gradient_checkpointing = True
    _single_file_component = "vae"  # from_single_file reads this part of a checkpoint

    def __init__(
        self,
        in_channels: PositiveInt = 3,
        out_channels: PositiveInt = 3,
        down_block_types: tuple[str, ...] = ("DownEncoderBlock2D",),
        up_block_types: tuple[str, ...] = ("UpDecoderBlock2D",),
        block_out_channels: tuple[PositiveInt, ...] = (64,),
        layers_per_block: PositiveInt = 1,
        act_fn: str = "silu",
        latent_channels: PositiveInt = 4,
        norm_num_groups: PositiveInt = 32,
        sample_size: int = 32,
        scaling_factor: float = 0.18215,
        shift_factor: float | None = None,
        latents_mean: tuple[float, ...] | None = None,
        latents_std: tuple[float, ...] | None = None,
        force_upcast: bool = True,
        use_quant_conv: bool = True,
        use_post_quant_conv: bool = True,
        mid_block_add_attention: bool = True,
    ):
        super().__init__()
        self.encoder = Encoder(in_channels, latent_channels, down_block_types, block_out_channels,
                               layers_per_block, norm_num_groups, act_fn, double_z=True,
                               mid_block_add_attention=mid_block_add_attention)
        self.decoder = Decoder(latent_channels, out_channels, up_block_types, block_out_channels,
                               layers_per_block, norm_num_groups, act_fn,
                               mid_block_add_attention=mid_block_add_attention)
        self.quant_conv = (nn.Conv2d(2 * latent_channels, 2 * latent_channels, 1)
                           if use_quant_conv else None)
        self.post_quant_conv = (nn.Conv2d(latent_channels, latent_channels, 1)
                                if use_post_quant_conv else None)
        self.use_slicing = False
        self.use_tiling = False
        size = sample_size[0] if isinstance(sample_size, list | tuple) else sample_size
        self.tile_sample_min_size = size
        self.tile_latent_min_size = int(size / 2 ** (len(block_out_channels) - 1))
        self.tile_overlap_factor = 0.25

    @classmethod
    def _rename_checkpoint_keys(cls, sources):
        return rename_legacy_attention_keys(sources)

    # Memory features ---------------------------------------------------------------------------
    def enable_slicing(self) -> None:
        """Encode and decode one batch element at a time (same results, less memory)."""
        self.use_slicing = True

    def disable_slicing(self) -> None:
        self.use_slicing = False

    def enable_tiling(self) -> None:
        """Encode/decode inputs larger than ``sample_size`` in overlapping tiles blended at the
        seams: memory independent of image size; results close to, not equal to, untiled."""
        self.use_tiling = True

    def disable_tiling(self) -> None:
        self.use_tiling = False

    # Encoding ----------------------------------------------------------------------------------
    def encode(self, x: torch.Tensor, return_dict: bool = True
               ) -> AutoencoderKLOutput | tuple[DiagonalGaussianDistribution]:
        """Images (B, C, H, W) in [-1, 1] -> ``AutoencoderKLOutput(latent_dist)``."""
        check_feature_map("AutoencoderKL", "encode input", x, self.config.in_channels,
                          "in_channels")
        if self.use_slicing and x.shape[0] > 1:
            moments = torch.cat([self._encode(part) for part in x.split(1)])
        else:
            moments = self._encode(x)
        posterior = DiagonalGaussianDistribution(moments)
        if not return_dict:
            return (posterior,)
        return AutoencoderKLOutput(latent_dist=posterior)

    def _encode(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_tiling and max(x.shape[-2:]) > self.tile_sample_min_size:
            return tiled(self._encode_tile, x, self.tile_sample_min_size,
                         self.tile_latent_min_size, self.tile_overlap_factor)
        return self._encode_tile(x)

    def _encode_tile(self, x: torch.Tensor) -> torch.Tensor:
        moments = self.encoder(x)
        return self.quant_conv(moments) if self.quant_conv is not None else moments

    # Decoding ----------------------------------------------------------------------------------
    def decode(self, z: torch.Tensor, return_dict: bool = True, generator=None
               ) -> DecoderOutput | tuple[torch.Tensor]:
        """Latents (B, latent_channels, h, w) -> ``DecoderOutput(sample)``, images in ~[-1, 1].
        (``generator`` is accepted for interface compatibility; decoding is deterministic.)"""
        check_feature_map("AutoencoderKL", "latents", z, self.config.latent_channels,
                          "latent_channels")
        if self.use_slicing and z.shape[0] > 1:
            decoded = torch.cat([self._decode(part) for part in z.split(1)])
        else:
            decoded = self._decode(z)
        if not return_dict:
            return (decoded,)
        return DecoderOutput(sample=decoded)

    def _decode(self, z: torch.Tensor) -> torch.Tensor:
        if self.use_tiling and max(z.shape[-2:]) > self.tile_latent_min_size:
            return tiled(self._decode_tile, z, self.tile_latent_min_size,
                         self.tile_sample_min_size, self.tile_overlap_factor)
        return self._decode_tile(z)

    def _decode_tile(self, z: torch.Tensor) -> torch.Tensor:
        if self.post_quant_conv is not None:
            z = self.post_quant_conv(z)
        return self.decoder(z)

    def forward(self, sample: torch.Tensor, sample_posterior: bool = False,
                return_dict: bool = True, generator: torch.Generator | None = None
                ) -> DecoderOutput | tuple[torch.Tensor]:
        """Reconstruct: encode, take the posterior mode (or a sample), decode."""
        posterior = self.encode(sample).latent_dist
        z = posterior.sample(generator) if sample_posterior else posterior.mode()
        decoded = self.decode(z).sample
        if not return_dict:
            return (decoded,)
        return DecoderOutput(sample=decoded)
