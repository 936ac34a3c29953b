"""The pieces of the latent-diffusion autoencoders (Rombach et al. 2022, sec. 3.1 and appendix G;
Esser et al. 2021, VQGAN): the convolutional encoder and decoder, the diagonal Gaussian posterior
of the KL-regularised autoencoder, and the vector quantiser of the VQ-regularised one
(van den Oord et al. 2017, VQ-VAE). Weight keys follow the diffusers format."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusion_kernel.errors import ConfigError, ModelInputError
from diffusion_kernel.nn import ModelOutput, maybe_checkpoint
from diffusion_kernel.noise import randn
from torch import nn

from .unet_blocks import get_down_block, get_mid_block, get_up_block


@dataclass
class DecoderOutput(ModelOutput):
    """``sample``: the decoded image batch (B, C, H, W); ``commit_loss``: the VQ commitment loss
    (VQ models only)."""

    sample: torch.Tensor
    commit_loss: torch.Tensor | None = None


class Encoder(nn.Module):
    """Image -> latent moments: conv, down blocks (no time input), mid block with self-attention,
    GroupNorm, SiLU, conv to ``2 * out_channels`` (mean and log-variance) with ``double_z``."""

    def __init__(self, in_channels: int = 3, out_channels: int = 3,
                 down_block_types: tuple[str, ...] = ("DownEncoderBlock2D",),
                 block_out_channels: tuple[int, ...] = (64,), layers_per_block: int = 2,
                 norm_num_groups: int = 32, act_fn: str = "silu", double_z: bool = True,
                 mid_block_add_attention: bool = True):
        super().__init__()
        self.gradient_checkpointing = False
        self.conv_in = nn.Conv2d(in_channels, block_out_channels[0], 3, padding=1)
        common = dict(resnet_eps=1e-6, resnet_act_fn=act_fn, resnet_groups=norm_num_groups)
        self.down_blocks = nn.ModuleList()
        out_channel = block_out_channels[0]
        for i, block_type in enumerate(down_block_types):
            in_channel, out_channel = out_channel, block_out_channels[i]
            self.down_blocks.append(get_down_block(
                block_type, in_channels=in_channel, out_channels=out_channel, temb_channels=None,
                num_layers=layers_per_block, add_downsample=i < len(block_out_channels) - 1,
                downsample_padding=0, attention_head_dim=out_channel, **common))
        self.mid_block = get_mid_block(
            "UNetMidBlock2D", in_channels=block_out_channels[-1], temb_channels=None,
            attention_head_dim=block_out_channels[-1], add_attention=mid_block_add_attention,
            **common)
        self.conv_norm_out = nn.GroupNorm(norm_num_groups, block_out_channels[-1], eps=1e-6)
        self.conv_act = nn.SiLU()
        self.conv_out = nn.Conv2d(block_out_channels[-1],
                                  2 * out_channels if double_z else out_channels, 3, padding=1)

    def forward(self, sample: torch.Tensor) -> torch.Tensor:
        sample = self.conv_in(sample)
        for block in self.down_blocks:
            sample = maybe_checkpoint(self, lambda x, b=block: b(x)[0], sample)
        sample = maybe_checkpoint(self, self.mid_block, sample)
        return self.conv_out(self.conv_act(self.conv_norm_out(sample)))


class Decoder(nn.Module):
    """Latent -> image: conv, mid block with self-attention, up blocks, GroupNorm, SiLU, conv."""

    def __init__(self, in_channels: int = 3, out_channels: int = 3,
                 up_block_types: tuple[str, ...] = ("UpDecoderBlock2D",),
                 block_out_channels: tuple[int, ...] = (64,), layers_per_block: int = 2,
                 norm_num_groups: int = 32, act_fn: str = "silu", norm_type: str = "group",
                 mid_block_add_attention: bool = True):
        super().__init__()
        if norm_type != "group":
            raise ConfigError(f"decoder norm_type {norm_type!r} (MoVQ spatial norm) is not "
                              f"supported here; use 'group'")
        self.gradient_checkpointing = False
        self.conv_in = nn.Conv2d(in_channels, block_out_channels[-1], 3, padding=1)
        common = dict(resnet_eps=1e-6, resnet_act_fn=act_fn, resnet_groups=norm_num_groups)
        self.mid_block = get_mid_block(
            "UNetMidBlock2D", in_channels=block_out_channels[-1], temb_channels=None,
            attention_head_dim=block_out_channels[-1], add_attention=mid_block_add_attention,
            **common)
        self.up_blocks = nn.ModuleList()
        reversed_channels = list(reversed(block_out_channels))
        out_channel = reversed_channels[0]
        for i, block_type in enumerate(up_block_types):
            prev_channel, out_channel = out_channel, reversed_channels[i]
            self.up_blocks.append(get_up_block(
                block_type, in_channels=prev_channel, out_channels=out_channel,
                prev_output_channel=prev_channel, temb_channels=None,
                num_layers=layers_per_block + 1, add_upsample=i < len(block_out_channels) - 1,
                attention_head_dim=out_channel, **common))
        self.conv_norm_out = nn.GroupNorm(norm_num_groups, block_out_channels[0], eps=1e-6)
        self.conv_act = nn.SiLU()
        self.conv_out = nn.Conv2d(block_out_channels[0], out_channels, 3, padding=1)

    def forward(self, sample: torch.Tensor) -> torch.Tensor:
        sample = self.conv_in(sample)
        sample = maybe_checkpoint(self, self.mid_block, sample)
        for block in self.up_blocks:
            sample = maybe_checkpoint(self, block, sample)
        return self.conv_out(self.conv_act(self.conv_norm_out(sample)))


class DiagonalGaussianDistribution:
    """The KL autoencoder's posterior q(z|x) = N(mean, diag(exp(logvar))), from the encoder's
    moments (B, 2C, h, w); log-variance clamped to [-30, 20] as in the LDM code."""

    def __init__(self, parameters: torch.Tensor, deterministic: bool = False):
        self.parameters = parameters
        self.mean, logvar = torch.chunk(parameters, 2, dim=1)
        self.logvar = torch.clamp(logvar, -30.0, 20.0)
        self.deterministic = deterministic
        if deterministic:
            self.std = self.var = torch.zeros_like(self.mean)
        else:
            self.std = torch.exp(0.5 * self.logvar)
            self.var = torch.exp(self.logvar)

    def sample(self, generator: torch.Generator | list[torch.Generator] | None = None
               ) -> torch.Tensor:
        """``mean + std * eps``; a list of generators draws each batch element's noise from its
        own generator (results independent of batch composition)."""
        return self.mean + self.std * _randn(self.mean, generator)

    def mode(self) -> torch.Tensor:
        return self.mean

    def kl(self, other: DiagonalGaussianDistribution | None = None) -> torch.Tensor:
        """KL(q || other), or KL(q || N(0, I)), summed over (C, h, w); shape (B,)."""
        if self.deterministic:
            return torch.zeros(self.mean.shape[0], device=self.mean.device)
        if other is None:
            terms = self.mean.pow(2) + self.var - 1.0 - self.logvar
        else:
            terms = ((self.mean - other.mean).pow(2) / other.var + self.var / other.var - 1.0
                     - self.logvar + other.logvar)
        return 0.5 * terms.sum(dim=[1, 2, 3])

    def nll(self, sample: torch.Tensor, dims: tuple[int, ...] = (1, 2, 3)) -> torch.Tensor:
        """Negative log-likelihood of ``sample`` under q, summed over ``dims``."""
        if self.deterministic:
            return torch.zeros(sample.shape[0], device=sample.device)
        log_two_pi = torch.log(torch.tensor(2.0 * torch.pi, dtype=sample.dtype))
        return 0.5 * (log_two_pi + self.logvar + (sample - self.mean).pow(2) / self.var).sum(
            dim=list(dims))


def _randn(like: torch.Tensor, generator) -> torch.Tensor:
    """Standard normal noise shaped like ``like``; one generator per batch element if a list."""
    if isinstance(generator, list | tuple) and len(generator) != like.shape[0]:
        raise ModelInputError(f"got {len(generator)} generators for a batch of "
                              f"{like.shape[0]}; pass one per batch element, or a single "
                              f"generator")
    return randn(like.shape, generator, like.device, like.dtype)


class VectorQuantizer(nn.Module):
    """Nearest-codebook-entry quantisation (van den Oord et al. 2017, eq. 1-3) with the
    straight-through gradient; ``embedding`` is the (n_e, dim) codebook.

    The paper's loss is ``||sg[z] - z_q||^2 + beta ||z - sg[z_q]||^2`` (codebook + beta x
    commitment); ``legacy`` keeps the VQGAN code's swapped weighting (beta on the codebook term),
    which published checkpoints were trained with.
    """

    def __init__(self, n_e: int, vq_embed_dim: int, beta: float = 0.25, legacy: bool = True):
        super().__init__()
        self.n_e, self.vq_embed_dim, self.beta, self.legacy = n_e, vq_embed_dim, beta, legacy
        self.embedding = nn.Embedding(n_e, vq_embed_dim)
        nn.init.uniform_(self.embedding.weight, -1.0 / n_e, 1.0 / n_e)

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, tuple]:
        """(B, C, h, w) -> (quantised z, loss, (None, None, codebook indices (B*h*w,))); the
        ``None`` places are the format's perplexity and one-hot encodings, not computed."""
        z = z.permute(0, 2, 3, 1).contiguous()
        flat = z.view(-1, self.vq_embed_dim)
        indices = torch.argmin(torch.cdist(flat, self.embedding.weight), dim=1)
        z_q = self.embedding(indices).view(z.shape)
        commitment = torch.mean((z_q.detach() - z) ** 2)  # pulls the encoder to the codebook
        codebook = torch.mean((z_q - z.detach()) ** 2)  # pulls the codebook to the encoder
        loss = (commitment + self.beta * codebook if self.legacy
                else self.beta * commitment + codebook)
        z_q = z + (z_q - z).detach()  # straight-through estimator
        return z_q.permute(0, 3, 1, 2).contiguous(), loss, (None, None, indices)

    def get_codebook_entry(self, indices: torch.Tensor, shape: tuple[int, ...] | None
                           ) -> torch.Tensor:
        """Codebook vectors for ``indices``; with ``shape`` (B, h, w, C) as a (B, C, h, w) map."""
        z_q = self.embedding(indices)
        if shape is not None:
            z_q = z_q.view(shape).permute(0, 3, 1, 2).contiguous()
        return z_q
