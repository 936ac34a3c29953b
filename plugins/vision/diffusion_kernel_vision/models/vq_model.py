"""The VQ-regularised autoencoder of latent diffusion (Rombach et al. 2022, sec. 3.1; VQGAN,
Esser et al. 2021): the encoder's latent is snapped to the nearest entry of a learned codebook
before decoding. Config fields and weight keys are those of the diffusers ``VQModel``."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusion_kernel.errors import ConfigError
from diffusion_kernel.modeling import ModelMixin
from diffusion_kernel.nn import AttentionSlicingMixin, ModelOutput
from torch import nn

from .checks import check_feature_map
from .unet_keys import rename_legacy_attention_keys
from .vae_blocks import Decoder, DecoderOutput, Encoder, VectorQuantizer


@dataclass
class VQEncoderOutput(ModelOutput):
    """``latents``: the encoder output before quantisation (B, vq_embed_dim, h, w)."""

    latents: torch.Tensor


class VQModel(ModelMixin, AttentionSlicingMixin):
    """``vq.encode(images).latents`` -> unquantised latents; ``vq.decode(latents).sample`` ->
    images (the latents are quantised first unless ``force_not_quantize``)."""

    _supports_gradient_checkpointing = True

    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 3,
        down_block_types: tuple[str, ...] = ("DownEncoderBlock2D",),
        up_block_types: tuple[str, ...] = ("UpDecoderBlock2D",),
        block_out_channels: tuple[int, ...] = (64,),
        layers_per_block: int = 1,
        act_fn: str = "silu",
        latent_channels: int = 3,
        sample_size: int = 32,
        num_vq_embeddings: int = 256,
        norm_num_groups: int = 32,
        vq_embed_dim: int | None = None,
        scaling_factor: float = 0.18215,
        norm_type: str = "group",
        mid_block_add_attention: bool = True,
        lookup_from_codebook: bool = False,
        force_upcast: bool = False,
    ):
        super().__init__()
        if norm_type != "group":
            raise ConfigError(f"VQModel: norm_type={norm_type!r} (MoVQ spatial norm) is not "
                              f"supported here; use 'group'")
        vq_embed_dim = vq_embed_dim or latent_channels
        self.encoder = Encoder(in_channels, latent_channels, down_block_types, block_out_channels,
                               layers_per_block, norm_num_groups, act_fn, double_z=False,
                               mid_block_add_attention=mid_block_add_attention)
        self.quant_conv = nn.Conv2d(latent_channels, vq_embed_dim, 1)
        self.quantize = VectorQuantizer(num_vq_embeddings, vq_embed_dim, beta=0.25)
        self.post_quant_conv = nn.Conv2d(vq_embed_dim, latent_channels, 1)
        self.decoder = Decoder(latent_channels, out_channels, up_block_types, block_out_channels,
                               layers_per_block, norm_num_groups, act_fn,
                               mid_block_add_attention=mid_block_add_attention)

    @classmethod
    def _rename_checkpoint_keys(cls, sources):
        return rename_legacy_attention_keys(sources)

    def encode(self, x: torch.Tensor, return_dict: bool = True
               ) -> VQEncoderOutput | tuple[torch.Tensor]:
        """Images (B, C, H, W) -> ``VQEncoderOutput(latents)`` (not yet quantised)."""
        check_feature_map("VQModel", "encode input", x, self.config.in_channels, "in_channels")
        latents = self.quant_conv(self.encoder(x))
        if not return_dict:
            return (latents,)
        return VQEncoderOutput(latents=latents)

    def decode(self, h: torch.Tensor, force_not_quantize: bool = False, return_dict: bool = True,
               shape: tuple[int, ...] | None = None) -> DecoderOutput | tuple[torch.Tensor, ...]:
        """Latents -> ``DecoderOutput(sample, commit_loss)``.

        By default ``h`` is quantised to its nearest codebook entries first. With
        ``force_not_quantize``: ``h`` is decoded as given, or, when the config sets
        ``lookup_from_codebook``, ``h`` holds codebook indices and ``shape`` (B, h, w, C) says
        how to lay the looked-up vectors out."""
        if not force_not_quantize:
            quant, commit_loss, _ = self.quantize(h)
        else:
            quant = (self.quantize.get_codebook_entry(h, shape)
                     if self.config.lookup_from_codebook else h)
            commit_loss = torch.zeros(h.shape[0], device=h.device, dtype=self.dtype)
        decoded = self.decoder(self.post_quant_conv(quant))
        if not return_dict:
            return decoded, commit_loss
        return DecoderOutput(sample=decoded, commit_loss=commit_loss)

    def forward(self, sample: torch.Tensor, return_dict: bool = True
                ) -> DecoderOutput | tuple[torch.Tensor, ...]:
        """Reconstruct: encode, quantise, decode."""
        decoded = self.decode(self.encode(sample).latents)
        if not return_dict:
            return decoded.sample, decoded.commit_loss
        return decoded
