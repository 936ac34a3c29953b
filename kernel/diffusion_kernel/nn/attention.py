"""Multi-head attention (Vaswani et al. 2017, eq. 1 and sec. 3.2.2) as a layer whose computation is
a swappable *processor* (``attention_processor.py``; the default runs
``torch.nn.functional.scaled_dot_product_attention``).

One module covers self- and cross-attention on token sequences ``(B, N, C)`` and on channel-first
feature maps ``(B, C, *spatial)`` (flattened to ``N = prod(spatial)`` tokens), with the optional
pieces diffusion networks use: a group norm on the input, a residual connection and an output
rescale. Weight keys follow the diffusers format: ``to_q``, ``to_k``, ``to_v``, ``to_out.0``,
``group_norm``.

Attention slicing computes the ``B * heads`` attention problems a slice at a time, so the
``N x N`` score matrices of only one slice exist at once (memory for speed). Fused projections
compute q, k and v (or k and v) with one matrix product. ``AttentionMixin`` gives a model the
diffusers API over all its layers: ``attn_processors``, ``set_attn_processor``,
``set_default_attn_processor``, ``fuse_qkv_projections`` / ``unfuse_qkv_projections`` and
``set_attention_slice``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError
from .attention_processor import AttnProcessor

PROCESSOR_SIGNATURE = ("(attn, hidden_states, encoder_hidden_states=None, attention_mask=None, "
                       "temb=None, **kwargs)")


class Attention(nn.Module):
    """Multi-head attention.

    ``query_dim``: channels of the input; ``cross_attention_dim``: channels of the context keys and
    values come from (``None``: self-attention); ``heads`` x ``dim_head``: the projection width.
    ``upcast_attention`` / ``upcast_softmax`` are recorded for the format; the fused kernel already
    accumulates the softmax in float32. ``processor``: what ``forward`` runs (default
    ``AttnProcessor``).
    """

    def __init__(
        self,
        query_dim: int,
        cross_attention_dim: int | None = None,
        heads: int = 8,
        dim_head: int = 64,
        dropout: float = 0.0,
        bias: bool = False,
        upcast_attention: bool = False,
        upcast_softmax: bool = False,
        norm_num_groups: int | None = None,
        eps: float = 1e-5,
        rescale_output_factor: float = 1.0,
        residual_connection: bool = False,
        out_bias: bool = True,
        out_dim: int | None = None,
        processor: Callable[..., torch.Tensor] | None = None,
    ):
        super().__init__()
        inner_dim = dim_head * heads
        self.heads = heads
        self.dim_head = dim_head
        self.inner_dim = inner_dim
        self.query_dim = query_dim
        self.out_dim = out_dim or query_dim
        self.is_cross_attention = cross_attention_dim is not None
        self.upcast_attention = upcast_attention
        self.upcast_softmax = upcast_softmax
        self.rescale_output_factor = rescale_output_factor
        self.residual_connection = residual_connection
        self.scale = dim_head**-0.5
        self.slice_size: int | None = None
        self.group_norm = (nn.GroupNorm(norm_num_groups, query_dim, eps=eps)
                           if norm_num_groups is not None else None)
        context_dim = cross_attention_dim if cross_attention_dim is not None else query_dim
        self.to_q = nn.Linear(query_dim, inner_dim, bias=bias)
        self.to_k = nn.Linear(context_dim, inner_dim, bias=bias)
        self.to_v = nn.Linear(context_dim, inner_dim, bias=bias)
        self.to_out = nn.ModuleList([nn.Linear(inner_dim, self.out_dim, bias=out_bias),
                                     nn.Dropout(dropout)])
        # Parts of the diffusers layer that processors written for it look at; absent here.
        self.spatial_norm = self.norm_cross = self.norm_q = self.norm_k = None
        self._init_fused_projections()
        self.set_processor(processor if processor is not None else self.default_processor())

    @property
    def sliceable_head_dim(self) -> int:
        return self.heads

    def set_attention_slice(self, slice_size: int | None) -> None:
        """Compute attention ``slice_size`` (batch x head) problems at a time; ``None``: all."""
        if slice_size is not None and slice_size < 1:
            raise ConfigError(f"attention slice size must be a positive number, got {slice_size}")
        self.slice_size = slice_size

    def forward(self, hidden_states: torch.Tensor,
                encoder_hidden_states: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None, **cross_attention_kwargs
                ) -> torch.Tensor:
        """``hidden_states`` (B, N, C) or (B, C, *spatial); ``encoder_hidden_states`` (B, M, D) for
        cross-attention; ``attention_mask`` an additive bias over the key tokens, (B, M) or
        (B, 1, M); further keyword arguments go to the processor. Returns a tensor shaped like
        ``hidden_states``."""
        return self.processor(self, hidden_states, encoder_hidden_states=encoder_hidden_states,
                              attention_mask=attention_mask, **cross_attention_kwargs)

    # Processors ---------------------------------------------------------------------------
    def set_processor(self, processor: Callable[..., torch.Tensor]) -> None:
        """Run ``processor`` from now on (see ``attention_processor.py`` for the signature). A
        processor that is an ``nn.Module`` (one with its own weights) becomes a submodule."""
        check_processor(processor)
        if isinstance(getattr(self, "processor", None), nn.Module) and not isinstance(
                processor, nn.Module):
            del self._modules["processor"]  # else nn.Module would keep returning the old one
        self.processor = processor

    def get_processor(self) -> Callable[..., torch.Tensor]:
        return self.processor

    def default_processor(self) -> Callable[..., torch.Tensor]:
        """The processor this kind of layer starts with (subclasses with other projections
        name their own; ``set_default_attn_processor`` goes back to it)."""
        return AttnProcessor()

    # Fused projections --------------------------------------------------------------------
    def _init_fused_projections(self) -> None:
        # Non-persistent buffers: they follow .to() and never enter a saved checkpoint.
        for name in ("fused_qkv_weight", "fused_qkv_bias", "fused_kv_weight", "fused_kv_bias"):
            self.register_buffer(name, None, persistent=False)

    @property
    def fused_projections(self) -> bool:
        return self.fused_qkv_weight is not None or self.fused_kv_weight is not None

    @torch.no_grad()
    def fuse_projections(self) -> None:
        """Concatenate the q, k, v weights (self-attention) or the k, v weights (cross-attention)
        into one matrix, so the default processor does one product instead of three (or two).
        ``to_q``/``to_k``/``to_v`` stay as they are (custom processors keep using them); after
        changing their weights, fuse again."""
        parts = (self.to_k, self.to_v) if self.is_cross_attention else (
            self.to_q, self.to_k, self.to_v)
        weight = torch.cat([p.weight for p in parts])
        bias = torch.cat([p.bias for p in parts]) if parts[0].bias is not None else None
        self.unfuse_projections()
        if self.is_cross_attention:
            self.fused_kv_weight, self.fused_kv_bias = weight, bias
        else:
            self.fused_qkv_weight, self.fused_qkv_bias = weight, bias

    def unfuse_projections(self) -> None:
        self.fused_qkv_weight = self.fused_qkv_bias = None
        self.fused_kv_weight = self.fused_kv_bias = None

    # Helpers diffusers' processors call on the layer ------------------------------------------
    def prepare_attention_mask(self, attention_mask: torch.Tensor | None, target_length: int,
                               batch_size: int, out_dim: int = 3) -> torch.Tensor | None:
        """An additive key mask (B, M) or (B, 1, M) repeated per head: (B * heads, 1, M) for
        ``out_dim=3``, (B, heads, 1, M) for 4; padded with zeros (attend) to ``target_length``."""
        if attention_mask is None:
            return None
        if attention_mask.ndim == 2:
            attention_mask = attention_mask[:, None]
        missing = target_length - attention_mask.shape[-1]
        if missing > 0:
            attention_mask = nn.functional.pad(attention_mask, (0, missing), value=0.0)
        if out_dim == 3:
            if attention_mask.shape[0] < batch_size * self.heads:
                attention_mask = attention_mask.repeat_interleave(self.heads, dim=0)
            return attention_mask
        return attention_mask[:, None].repeat_interleave(self.heads, dim=1)

    def norm_encoder_hidden_states(self, encoder_hidden_states: torch.Tensor) -> torch.Tensor:
        """The context as is: this layer has no cross-attention norm (``norm_cross`` is None)."""
        return encoder_hidden_states

    def head_to_batch_dim(self, tensor: torch.Tensor, out_dim: int = 3) -> torch.Tensor:
        """(B, N, heads * d) -> (B * heads, N, d) (``out_dim=3``) or (B, heads, N, d)."""
        batch, tokens, _ = tensor.shape
        tensor = tensor.reshape(batch, tokens, self.heads, -1).permute(0, 2, 1, 3)
        return tensor.reshape(batch * self.heads, tokens, -1) if out_dim == 3 else tensor

    def batch_to_head_dim(self, tensor: torch.Tensor) -> torch.Tensor:
        """(B * heads, N, d) -> (B, N, heads * d)."""
        batch_heads, tokens, dim = tensor.shape
        tensor = tensor.reshape(batch_heads // self.heads, self.heads, tokens, dim)
        return tensor.permute(0, 2, 1, 3).reshape(batch_heads // self.heads, tokens,
                                                   self.heads * dim)

    def get_attention_scores(self, query: torch.Tensor, key: torch.Tensor,
                             attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """softmax(q k^T * scale + mask) on (B * heads, N, d) tensors, computed in float32 when
        ``upcast_attention`` / ``upcast_softmax`` ask for it, returned in the query's dtype."""
        dtype = query.dtype
        if self.upcast_attention:
            query, key = query.float(), key.float()
        scores = torch.bmm(query, key.transpose(-1, -2)) * self.scale
        if attention_mask is not None:
            scores = scores + attention_mask
        if self.upcast_softmax:
            scores = scores.float()
        return scores.softmax(dim=-1).to(dtype)


def check_processor(processor: Any) -> None:
    if not callable(processor):
        raise ConfigError(f"an attention processor must be callable as processor"
                          f"{PROCESSOR_SIGNATURE}, got {type(processor).__name__}")


def set_attention_slice(model: nn.Module, slice_size: str | int | Sequence[int | None] | None
                        = "auto") -> None:
    """Turn attention slicing on for every ``Attention`` in ``model``.

    ``"auto"``: half of each layer's heads at a time (two steps per batch element); ``"max"``: one
    head at a time (least memory); an int: that many (batch x head) problems at a time; a list:
    one value per attention layer, in module order; ``None``: off.
    """
    layers = [m for m in model.modules() if isinstance(m, Attention)]
    if slice_size == "auto":
        sizes = [max(layer.heads // 2, 1) for layer in layers]
    elif slice_size == "max":
        sizes = [1] * len(layers)
    elif slice_size is None or isinstance(slice_size, int):
        sizes = [slice_size] * len(layers)
    else:
        sizes = list(slice_size)
        if len(sizes) != len(layers):
            raise ConfigError(f"got {len(sizes)} attention slice sizes for {len(layers)} attention "
                              f"layers; pass one per layer, or a single int, 'auto' or 'max'")
    for layer, size in zip(layers, sizes):
        layer.set_attention_slice(size)


class AttentionMixin:
    """The attention API of a model that holds ``Attention`` layers (diffusers names): slicing,
    processors and fused projections, applied to every layer."""

    # Slicing ------------------------------------------------------------------------------
    def set_attention_slice(self, slice_size: str | int | Sequence[int | None] | None = "auto"):
        set_attention_slice(self, slice_size)

    def disable_attention_slicing(self) -> None:
        set_attention_slice(self, None)

    # Processors ---------------------------------------------------------------------------
    def _attention_layers(self) -> dict[str, Attention]:
        """``{"<module path>.processor": layer}`` for every attention layer, in module order."""
        return {f"{name}.processor": module for name, module in self.named_modules()
                if isinstance(module, Attention)}

    @property
    def attn_processors(self) -> dict[str, Callable[..., torch.Tensor]]:
        """Each attention layer's processor, keyed ``"<module path>.processor"`` (e.g.
        ``"down_blocks.0.attentions.0.transformer_blocks.0.attn1.processor"``)."""
        return {name: layer.processor for name, layer in self._attention_layers().items()}

    def set_attn_processor(self, processor: Callable[..., torch.Tensor]
                           | Mapping[str, Callable[..., torch.Tensor]]) -> None:
        """Give every attention layer ``processor``, or each layer its own from a dict keyed like
        ``attn_processors`` (every layer named once)."""
        layers = self._attention_layers()
        if not isinstance(processor, Mapping):
            check_processor(processor)
            processor = dict.fromkeys(layers, processor)
        missing = sorted(set(layers) - set(processor))
        unknown = sorted(set(processor) - set(layers))
        if missing or unknown:
            raise ConfigError(
                f"set_attn_processor got a dict that does not name each of the model's "
                f"{len(layers)} attention layers once (missing: {missing[:5]}"
                f"{' ...' if len(missing) > 5 else ''}; unknown: {unknown[:5]}"
                f"{' ...' if len(unknown) > 5 else ''}); take the keys from model.attn_processors"
            )
        for value in processor.values():
            check_processor(value)
        for name, layer in layers.items():
            layer.set_processor(processor[name])

    def set_default_attn_processor(self) -> None:
        """Every layer back to its default processor (SDPA for the plain layers)."""
        for layer in self._attention_layers().values():
            layer.set_processor(layer.default_processor())

    def fuse_qkv_projections(self) -> None:
        """Fuse the q/k/v (self-attention) and k/v (cross-attention) projections of every layer
        into one matrix product each; the default processor then uses them (an inference
        speed-up; custom processors keep using ``to_q``/``to_k``/``to_v``)."""
        for layer in self._attention_layers().values():
            layer.fuse_projections()

    def unfuse_qkv_projections(self) -> None:
        for layer in self._attention_layers().values():
            layer.unfuse_projections()


# The name models used before processors existed; the same mixin.
AttentionSlicingMixin = AttentionMixin
