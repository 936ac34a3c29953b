"""The conditional U-Net of latent diffusion / Stable Diffusion 1.x and 2.x (Rombach et al. 2022,
sec. 3.3): predicts the noise (or velocity) in a latent from the timestep and conditioning tokens
(text encoder states) that its spatial transformers cross-attend to.

Config fields and weight keys are those of the diffusers ``UNet2DConditionModel``, so its
checkpoints load unchanged. Note the format's naming quirk: ``attention_head_dim`` holds the
number of attention heads per block (SD 1.x: 8; SD 2.x: ``[5, 10, 20, 20]``); the head size is
``channels // heads``. The GLIDE-style levels (``ResnetDownsampleBlock2D``,
``SimpleCrossAttn*Block2D``, ``UNetMidBlock2DSimpleCrossAttn``: DeepFloyd IF, the unCLIP decoder)
read it as the head size, as the format does.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from diffusion_kernel.config_checks import Annotated, PositiveFloat, PositiveInt, Range
from diffusion_kernel.errors import ConfigError, ModelInputError
from diffusion_kernel.modeling import ModelMixin
from diffusion_kernel.nn import (
    AttentionSlicingMixin,
    ModelOutput,
    TimestepEmbedding,
    Timesteps,
    activate_fresh,
    get_activation,
)
from diffusion_kernel.nn.lora import scales_lora
from torch import nn

from ..loaders.single_file import FromOriginalModelMixin
from .attention_added_kv import CROSS_ATTENTION_NORMS, AddedKVAttention
from .checks import check_feature_map, check_tokens
from .conditioning_cache import ConditioningCache, reused
from .text_time_embedding import TextTimeEmbedding
from .unet_blocks import get_down_block, get_mid_block, get_up_block
from .unet_embeddings import class_embedding, timestep_batch
from .unet_keys import rename_legacy_attention_keys

_SUPPORTED = {
    "time_embedding_type": ("positional",),
    "addition_embed_type": (None, "text_time", "text"),
    "encoder_hid_dim_type": (None, "text_proj"),
    "attention_type": ("default",),
    "resnet_time_scale_shift": ("default", "scale_shift"),
    "class_embed_type": (None, "timestep", "identity", "projection", "simple_projection"),
    "cross_attention_norm": CROSS_ATTENTION_NORMS,
}


@dataclass
class UNet2DConditionOutput(ModelOutput):
    """``sample``: the model prediction, shaped like the input sample."""

    sample: torch.Tensor


class UNet2DConditionModel(ModelMixin, AttentionSlicingMixin, FromOriginalModelMixin):
    """Conditional 2D U-Net. Call ``unet(sample, timestep, encoder_hidden_states).sample``."""

    _supports_gradient_checkpointing = True
    _single_file_component = "unet"  # from_single_file reads this part of a checkpoint

    def __init__(
        self,
        sample_size: int | tuple[int, int] | None = None,
        in_channels: PositiveInt = 4,
        out_channels: PositiveInt = 4,
        center_input_sample: bool = False,
        flip_sin_to_cos: bool = True,
        freq_shift: int = 0,
        down_block_types: tuple[str, ...] = ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                                             "CrossAttnDownBlock2D", "DownBlock2D"),
        mid_block_type: str | None = "UNetMidBlock2DCrossAttn",
        up_block_types: tuple[str, ...] = ("UpBlock2D", "CrossAttnUpBlock2D",
                                           "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        only_cross_attention: bool | tuple[bool, ...] = False,
        block_out_channels: tuple[PositiveInt, ...] = (320, 640, 1280, 1280),
        layers_per_block: PositiveInt | tuple[PositiveInt, ...] = 2,
        downsample_padding: int = 1,
        mid_block_scale_factor: float = 1,
        dropout: Annotated[float, Range(ge=0, lt=1)] = 0.0,
        act_fn: str = "silu",
        norm_num_groups: PositiveInt | None = 32,
        norm_eps: PositiveFloat = 1e-5,
        cross_attention_dim: int | tuple[int, ...] = 1280,
        transformer_layers_per_block: int | tuple = 1,
        reverse_transformer_layers_per_block: tuple | None = None,
        encoder_hid_dim: int | None = None,
        encoder_hid_dim_type: str | None = None,
        attention_head_dim: int | tuple[int, ...] = 8,
        num_attention_heads: int | tuple[int, ...] | None = None,
        dual_cross_attention: bool = False,
        use_linear_projection: bool = False,
        class_embed_type: str | None = None,
        addition_embed_type: str | None = None,
        addition_time_embed_dim: int | None = None,
        num_class_embeds: int | None = None,
        upcast_attention: bool = False,
        resnet_time_scale_shift: str = "default",
        resnet_skip_time_act: bool = False,
        resnet_out_scale_factor: float = 1.0,
        time_embedding_type: str = "positional",
        time_embedding_dim: int | None = None,
        time_embedding_act_fn: str | None = None,
        timestep_post_act: str | None = None,
        time_cond_proj_dim: int | None = None,
        conv_in_kernel: int = 3,
        conv_out_kernel: int = 3,
        projection_class_embeddings_input_dim: int | None = None,
        attention_type: str = "default",
        class_embeddings_concat: bool = False,
        mid_block_only_cross_attention: bool | None = None,
        cross_attention_norm: str | None = None,
        addition_embed_type_num_heads: int = 64,
    ):
        super().__init__()
        self._check_config()
        n_blocks = len(down_block_types)
        # The format's misnomer: without num_attention_heads, attention_head_dim is the head count.
        heads = _per_block(num_attention_heads or attention_head_dim, n_blocks)
        head_dims = _per_block(attention_head_dim, n_blocks)
        cross_dims = _per_block(cross_attention_dim, n_blocks)
        layers = _per_block(layers_per_block, n_blocks)
        transformer_layers = _per_block(transformer_layers_per_block, n_blocks)
        only_cross = _per_block(only_cross_attention, n_blocks)
        if mid_block_only_cross_attention is None:
            mid_block_only_cross_attention = (only_cross_attention
                                              if isinstance(only_cross_attention, bool) else False)

        self.conv_in = nn.Conv2d(in_channels, block_out_channels[0], conv_in_kernel,
                                 padding=(conv_in_kernel - 1) // 2)

        # Timestep embedding: sinusoidal features, then an MLP (DDPM appendix B).
        time_embed_dim = time_embedding_dim or block_out_channels[0] * 4
        self.time_proj = Timesteps(block_out_channels[0], flip_sin_to_cos, freq_shift)
        self.time_embedding = TimestepEmbedding(block_out_channels[0], time_embed_dim,
                                                act_fn=act_fn, post_act_fn=timestep_post_act,
                                                cond_proj_dim=time_cond_proj_dim)
        if encoder_hid_dim is not None:  # "text_proj": project the text states to cross_dim
            self.encoder_hid_proj = nn.Linear(encoder_hid_dim, cross_attention_dim)
        else:
            self.encoder_hid_proj = None
        self.class_embedding = class_embedding(
            class_embed_type, num_class_embeds, block_out_channels[0], time_embed_dim, act_fn,
            projection_class_embeddings_input_dim)
        if addition_embed_type == "text_time":  # SDXL: pooled text + size/crop conditioning
            self.add_time_proj = Timesteps(addition_time_embed_dim, flip_sin_to_cos, freq_shift)
            self.add_embedding = TimestepEmbedding(projection_class_embeddings_input_dim,
                                                   time_embed_dim)
        elif addition_embed_type == "text":  # DeepFloyd IF: attention-pooled text states
            self.add_embedding = TextTimeEmbedding(encoder_hid_dim or cross_attention_dim,
                                                   time_embed_dim, addition_embed_type_num_heads)
        self.time_embed_act = (get_activation(time_embedding_act_fn)
                               if time_embedding_act_fn is not None else None)
        blocks_temb = time_embed_dim * 2 if class_embeddings_concat else time_embed_dim

        common = dict(temb_channels=blocks_temb, resnet_eps=norm_eps, resnet_act_fn=act_fn,
                      resnet_groups=norm_num_groups, dropout=dropout,
                      use_linear_projection=use_linear_projection,
                      upcast_attention=upcast_attention,
                      resnet_time_scale_shift=resnet_time_scale_shift,
                      # read by the GLIDE-style levels only, as in the format
                      resnet_skip_time_act=resnet_skip_time_act,
                      resnet_out_scale_factor=resnet_out_scale_factor,
                      cross_attention_norm=cross_attention_norm)
        self.down_blocks = nn.ModuleList()
        out_channel = block_out_channels[0]
        for i, block_type in enumerate(down_block_types):
            in_channel, out_channel = out_channel, block_out_channels[i]
            self.down_blocks.append(get_down_block(
                block_type, in_channels=in_channel, out_channels=out_channel,
                num_layers=layers[i], add_downsample=i < n_blocks - 1,
                downsample_padding=downsample_padding,
                transformer_layers_per_block=transformer_layers[i],
                cross_attention_dim=cross_dims[i], num_attention_heads=heads[i],
                attention_head_dim=head_dims[i] or out_channel,
                only_cross_attention=only_cross[i], **common))

        mid_options = dict(common, in_channels=block_out_channels[-1],
                           output_scale_factor=mid_block_scale_factor)
        if mid_block_type == "UNetMidBlock2DCrossAttn":
            mid_options.update(transformer_layers_per_block=transformer_layers[-1],
                               num_attention_heads=heads[-1], cross_attention_dim=cross_dims[-1])
        elif mid_block_type == "UNetMidBlock2D":  # a single resnet in this model
            mid_options.update(num_layers=0, add_attention=False)
        elif mid_block_type == "UNetMidBlock2DSimpleCrossAttn":  # head size, not head count
            mid_options.update(cross_attention_dim=cross_dims[-1],
                               attention_head_dim=head_dims[-1],
                               only_cross_attention=mid_block_only_cross_attention)
        self.mid_block = get_mid_block(mid_block_type, **mid_options)

        self.up_blocks = nn.ModuleList()
        reversed_channels = list(reversed(block_out_channels))
        reversed_transformer_layers = (list(reverse_transformer_layers_per_block)
                                       if reverse_transformer_layers_per_block is not None
                                       else list(reversed(transformer_layers)))
        out_channel = reversed_channels[0]
        for i, block_type in enumerate(up_block_types):
            prev_channel, out_channel = out_channel, reversed_channels[i]
            in_channel = reversed_channels[min(i + 1, n_blocks - 1)]
            self.up_blocks.append(get_up_block(
                block_type, in_channels=in_channel, out_channels=out_channel,
                prev_output_channel=prev_channel, num_layers=list(reversed(layers))[i] + 1,
                add_upsample=i < n_blocks - 1,
                transformer_layers_per_block=reversed_transformer_layers[i],
                cross_attention_dim=list(reversed(cross_dims))[i],
                num_attention_heads=list(reversed(heads))[i],
                # The format indexes this one without reversing (it only affects AttnUpBlock2D).
                attention_head_dim=head_dims[i] or out_channel,
                only_cross_attention=list(reversed(only_cross))[i], **common))
        self.num_upsamplers = n_blocks - 1

        if norm_num_groups is not None:
            self.conv_norm_out = nn.GroupNorm(norm_num_groups, block_out_channels[0],
                                              eps=norm_eps)
            self.conv_act = get_activation(act_fn)
        else:
            self.conv_norm_out = self.conv_act = None
        self.conv_out = nn.Conv2d(block_out_channels[0], out_channels, conv_out_kernel,
                                  padding=(conv_out_kernel - 1) // 2)
        self._conditioning_cache: ConditioningCache | None = None
        self._added_kv_layer_list: list[AddedKVAttention] | None = None

    @contextlib.contextmanager
    def reuse_conditioning(self) -> Iterator[None]:
        """Inside the block, calls without gradients reuse what an earlier call computed from the
        same ``encoder_hidden_states``, masks and ``class_labels`` (the same tensor objects,
        unmodified): the projected text tokens, the text keys and values of the GLIDE-style
        attention layers, the pooled-text and class embeddings, the additive masks. A sampling
        loop passes them unchanged at every step (the pipelines here open this block around
        their loops); the outputs are the ones a fresh call gives."""
        previous = self._conditioning_cache
        cache = ConditioningCache()
        layers = self._added_kv_layers()
        self._conditioning_cache = cache
        for layer in layers:
            layer.conditioning_cache = cache
        try:
            yield
        finally:
            self._conditioning_cache = previous
            for layer in layers:
                layer.conditioning_cache = previous

    def _added_kv_layers(self) -> list[AddedKVAttention]:
        # Walking every module costs ~1 ms: a loop enters this block twice per pipeline call.
        # A layer swapped in later is missed (it then computes its text keys at every step).
        if self._added_kv_layer_list is None:
            self._added_kv_layer_list = [m for m in self.modules()
                                         if isinstance(m, AddedKVAttention)]
        return self._added_kv_layer_list

    def _check_config(self) -> None:
        c = self.config
        for field, allowed in _SUPPORTED.items():
            if c[field] not in allowed:
                raise ConfigError(f"UNet2DConditionModel: {field}={c[field]!r} is not supported "
                                  f"here; supported values: {list(allowed)}")
        if c.dual_cross_attention:
            raise ConfigError("UNet2DConditionModel: dual_cross_attention is not supported")
        if c.num_attention_heads is not None:
            raise ConfigError(
                "UNet2DConditionModel: set the number of heads with attention_head_dim (the "
                "format's name for it, e.g. [5, 10, 20, 20] for Stable Diffusion 2), not "
                "num_attention_heads, which the reference implementation rejects")
        n = len(c.down_block_types)
        if len(c.up_block_types) != n or len(c.block_out_channels) != n:
            raise ConfigError(
                f"UNet2DConditionModel: down_block_types ({len(c.down_block_types)}), "
                f"up_block_types ({len(c.up_block_types)}) and block_out_channels "
                f"({len(c.block_out_channels)}) must have the same length")
        for field in ("only_cross_attention", "attention_head_dim", "cross_attention_dim",
                      "layers_per_block", "transformer_layers_per_block"):
            value = c[field]
            if isinstance(value, tuple) and len(value) != n:
                raise ConfigError(f"UNet2DConditionModel: {field} has {len(value)} entries for "
                                  f"{n} blocks; give one per block or a single value")
        if c.encoder_hid_dim_type is not None and c.encoder_hid_dim is None:
            raise ConfigError("UNet2DConditionModel: encoder_hid_dim_type needs encoder_hid_dim")
        if c.class_embed_type in ("projection", "simple_projection") and \
                c.projection_class_embeddings_input_dim is None:
            raise ConfigError(f"UNet2DConditionModel: class_embed_type={c.class_embed_type!r} "
                              f"needs projection_class_embeddings_input_dim")
        if c.addition_embed_type == "text" and c.encoder_hid_dim is None and \
                not isinstance(c.cross_attention_dim, int):
            raise ConfigError("UNet2DConditionModel: addition_embed_type='text' pools the text "
                              "states: give one cross_attention_dim (or encoder_hid_dim)")
        if c.addition_embed_type == "text_time" and (
                c.addition_time_embed_dim is None or
                c.projection_class_embeddings_input_dim is None):
            raise ConfigError("UNet2DConditionModel: addition_embed_type='text_time' needs "
                              "addition_time_embed_dim and projection_class_embeddings_input_dim")
        if isinstance(c.transformer_layers_per_block, tuple) and \
                any(isinstance(x, tuple) for x in c.transformer_layers_per_block) and \
                c.reverse_transformer_layers_per_block is None:
            raise ConfigError("UNet2DConditionModel: per-layer transformer_layers_per_block "
                              "needs reverse_transformer_layers_per_block")

    @classmethod
    def _rename_checkpoint_keys(cls, sources):
        return rename_legacy_attention_keys(sources)

    @property
    def sample_size(self):
        return self.config.sample_size

    def enable_freeu(self, s1: float, s2: float, b1: float, b2: float) -> None:
        """FreeU (Si et al. 2023) at sampling time: the two lowest-resolution decoder stages scale
        the first half of their backbone channels by ``b1`` / ``b2`` and the low frequencies of
        their skip features by ``s1`` / ``s2`` (the authors suggest b1=1.5, b2=1.6, s1=0.9,
        s2=0.2 for SD 1.x; b1=1.4, b2=1.6 for SD 2.x). Up blocks without cross-attention or with
        it take part, as in the diffusers format; weights and config are unchanged."""
        scales = {"s1": s1, "s2": s2, "b1": b1, "b2": b2}
        bad = {k: v for k, v in scales.items()
               if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v)}
        if bad:
            raise ModelInputError(f"enable_freeu takes finite numbers, got {bad}")
        self.disable_freeu()
        for block, (b, s) in zip(self.up_blocks, ((b1, s1), (b2, s2))):  # the two lowest stages
            if getattr(block, "attention_kind", "self") in (None, "cross"):
                block.freeu = (float(b), float(s))

    def disable_freeu(self) -> None:
        """Back to the plain decoder."""
        for block in self.up_blocks:
            if hasattr(block, "freeu"):
                block.freeu = None

    @scales_lora
    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float | int,
        encoder_hidden_states: torch.Tensor,
        class_labels: torch.Tensor | None = None,
        timestep_cond: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        cross_attention_kwargs: dict[str, Any] | None = None,
        added_cond_kwargs: dict[str, torch.Tensor] | None = None,
        down_block_additional_residuals: tuple[torch.Tensor, ...] | None = None,
        mid_block_additional_residual: torch.Tensor | None = None,
        down_intrablock_additional_residuals: tuple[torch.Tensor, ...] | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
        return_dict: bool = True,
    ) -> UNet2DConditionOutput | tuple[torch.Tensor]:
        """Predict from a noisy ``sample`` (B, C, H, W) at ``timestep`` (a number, or a tensor of
        one or B values), attending to ``encoder_hidden_states`` (B, M, cross_attention_dim).

        ``attention_mask`` / ``encoder_attention_mask``: (B, M) with 1 = keep, 0 = ignore.
        ``down_block_additional_residuals`` + ``mid_block_additional_residual``: ControlNet
        residuals added to the skip connections and the mid block output.
        ``down_intrablock_additional_residuals``: T2I-adapter features added inside the down
        blocks. ``cross_attention_kwargs={"scale": s}`` (by keyword) multiplies the loaded LoRA
        adapters by ``s`` for this call; its other entries are not used.
        Returns ``UNet2DConditionOutput(sample)`` (or ``(sample,)``).
        """
        c = self.config
        check_feature_map("UNet2DConditionModel", "sample", sample, c.in_channels, "in_channels")
        if c.encoder_hid_dim is not None:
            check_tokens("UNet2DConditionModel", "encoder_hidden_states", encoder_hidden_states,
                         c.encoder_hid_dim, "encoder_hid_dim")
        elif isinstance(c.cross_attention_dim, int):
            check_tokens("UNet2DConditionModel", "encoder_hidden_states", encoder_hidden_states,
                         c.cross_attention_dim, "cross_attention_dim")
        # Sizes not divisible by the total downsampling: tell each upsampler its target size.
        factor = 2 ** self.num_upsamplers
        forward_upsample_size = any(s % factor != 0 for s in sample.shape[-2:])
        cache = self._conditioning_cache
        attention_mask = reused(cache, ("attention_mask", sample.dtype), attention_mask,
                                lambda: _mask_bias(attention_mask, sample.dtype))
        encoder_attention_mask = reused(
            cache, ("encoder_attention_mask", sample.dtype), encoder_attention_mask,
            lambda: _mask_bias(encoder_attention_mask, sample.dtype))
        if c.center_input_sample:
            sample = 2 * sample - 1.0

        emb = self._embed_time(sample, timestep, timestep_cond, class_labels,
                               added_cond_kwargs or {}, encoder_hidden_states)
        if self.encoder_hid_proj is not None:
            states = encoder_hidden_states
            encoder_hidden_states = reused(cache, "encoder_hid_proj", states,
                                           lambda: self.encoder_hid_proj(states))
        context = dict(encoder_hidden_states=encoder_hidden_states,
                       attention_mask=attention_mask,
                       encoder_attention_mask=encoder_attention_mask)

        is_controlnet = (down_block_additional_residuals is not None
                         and mid_block_additional_residual is not None)
        adapter = list(down_intrablock_additional_residuals or ())
        if down_block_additional_residuals is not None and not is_controlnet:
            adapter = list(down_block_additional_residuals)  # the older way to pass adapters

        sample = self.conv_in(sample)
        skips = (sample,)
        for block in self.down_blocks:
            extra = adapter.pop(0) if block.has_cross_attention and adapter else None
            sample, states = block(sample, emb, additional_residuals=extra, **context)
            if not block.has_cross_attention and adapter:
                sample = sample + adapter.pop(0)
            skips += states
        if is_controlnet:
            skips = tuple(s + r for s, r in zip(skips, down_block_additional_residuals))

        if self.mid_block is not None:
            sample = self.mid_block(sample, emb, **context)
            if adapter and sample.shape == adapter[0].shape:
                sample = sample + adapter.pop(0)
        if is_controlnet:
            sample = sample + mid_block_additional_residual

        for i, block in enumerate(self.up_blocks):
            block_skips, skips = skips[-len(block.resnets):], skips[:-len(block.resnets)]
            upsample_size = (skips[-1].shape[2:]
                             if forward_upsample_size and i < len(self.up_blocks) - 1 else None)
            sample = block(sample, block_skips, emb, upsample_size, **context)

        if self.conv_norm_out is not None:
            sample = activate_fresh(self.conv_act, self.conv_norm_out(sample))
        sample = self.conv_out(sample)
        if not return_dict:
            return (sample,)
        return UNet2DConditionOutput(sample=sample)

    def _embed_time(self, sample, timestep, timestep_cond, class_labels, added_cond_kwargs,
                    encoder_hidden_states):
        c = self.config
        cache = self._conditioning_cache
        t_emb = self.time_proj(timestep_batch(timestep, sample)).to(sample.dtype)
        emb = self.time_embedding(t_emb, timestep_cond)
        if self.class_embedding is not None:
            if class_labels is None:
                raise ModelInputError("this UNet is class-conditional: pass class_labels")
            class_emb = reused(cache, ("class_embedding", sample.dtype), class_labels,
                               lambda: self._embed_class(class_labels, sample.dtype))
            emb = torch.cat([emb, class_emb], dim=-1) if c.class_embeddings_concat \
                else emb + class_emb
        if c.addition_embed_type == "text_time":
            missing = [k for k in ("text_embeds", "time_ids") if k not in added_cond_kwargs]
            if missing:
                raise ModelInputError(f"this UNet (addition_embed_type='text_time') needs "
                                  f"added_cond_kwargs with {missing}")
            text_embeds = added_cond_kwargs["text_embeds"]
            time_embeds = self.add_time_proj(added_cond_kwargs["time_ids"].flatten())
            time_embeds = time_embeds.reshape(text_embeds.shape[0], -1)
            emb = emb + self.add_embedding(
                torch.cat([text_embeds, time_embeds], dim=-1).to(emb.dtype))
        elif c.addition_embed_type == "text":  # the text states before encoder_hid_proj
            emb = emb + reused(cache, "add_embedding", encoder_hidden_states,
                               lambda: self.add_embedding(encoder_hidden_states))
        if self.time_embed_act is not None:
            emb = self.time_embed_act(emb)
        return emb

    def _embed_class(self, class_labels: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        if self.config.class_embed_type == "timestep":
            class_labels = self.time_proj(class_labels).to(dtype)
        return self.class_embedding(class_labels).to(dtype)


def _mask_bias(mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """A (B, M) mask, 1 keep / 0 drop, as the additive bias (B, 1, M) the layers take."""
    if mask is None:
        return None
    return ((1 - mask.to(dtype)) * -10000.0).unsqueeze(1)


def _per_block(value: Any, n: int) -> list:
    """A per-block list from a single value or a list (left as is)."""
    return list(value) if isinstance(value, list | tuple) else [value] * n
