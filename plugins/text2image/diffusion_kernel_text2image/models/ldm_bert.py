"""LDMBert: the text encoder of the latent diffusion text-to-image model (Rombach et al. 2022,
sec. 4.3.1 and appendix E.2: "a BERT-tokenizer and ... a transformer", 32 layers of width 1280 in
CompVis/ldm-text2im-large-256), trained from scratch with the diffusion model.

Architecture: token and learned position embeddings, pre-norm transformer encoder layers (self-
attention without q/k/v biases, a GELU MLP), a final layer norm; the last hidden state is the
conditioning the U-Net cross-attends to (``to_logits`` is kept for the format and never run).

Files are in the transformers layout the diffusers format uses for this component (model_index
entry ``["latent_diffusion", "LDMBertModel"]``): ``config.json`` with ``model_type: "ldmbert"``
and ``model.safetensors`` (or ``pytorch_model.bin``, with ``allow_pickle=True``); key names
``model.embed_tokens``, ``model.layers.N.self_attn.{q,k,v,out}_proj``, ... This module writes
the same, so a saved folder loads in diffusers.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

import torch
from diffusion_kernel.configuration import config_parameters, read_json
from diffusion_kernel.errors import FileAccessError, ModelInputError
from diffusion_kernel.hub import (
    atomic_directory,
    atomic_write_text,
    fetch,
    list_files,
    pin_revision,
)
from diffusion_kernel.modeling import ModelMixin, gc_paused, parameters_on_meta
from diffusion_kernel.nn import ModelOutput, get_activation
from diffusion_kernel.weights import save_safetensors
from torch import nn
from torch.nn import functional as F

SAFE_WEIGHTS = "model.safetensors"
PICKLE_WEIGHTS = "pytorch_model.bin"


@dataclass
class LDMBertOutput(ModelOutput):
    """``last_hidden_state``: (B, L, d_model), what the U-Net cross-attends to."""

    last_hidden_state: torch.Tensor


class LDMBertAttention(nn.Module):
    """Multi-head self-attention with bias-free q/k/v projections and a biased output."""

    def __init__(self, embed_dim: int, num_heads: int, head_dim: int, dropout: float = 0.0):
        super().__init__()
        self.num_heads = num_heads
        self.dropout = dropout  # on the attention weights, in training
        inner_dim = num_heads * head_dim
        self.q_proj = nn.Linear(embed_dim, inner_dim, bias=False)
        self.k_proj = nn.Linear(embed_dim, inner_dim, bias=False)
        self.v_proj = nn.Linear(embed_dim, inner_dim, bias=False)
        self.out_proj = nn.Linear(inner_dim, embed_dim)

    def forward(self, hidden_states: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        batch, tokens, _ = hidden_states.shape

        def heads(x):
            return x.view(batch, tokens, self.num_heads, -1).transpose(1, 2)

        out = F.scaled_dot_product_attention(heads(self.q_proj(hidden_states)),
                                             heads(self.k_proj(hidden_states)),
                                             heads(self.v_proj(hidden_states)), attn_mask=bias,
                                             dropout_p=self.dropout if self.training else 0.0)
        return self.out_proj(out.transpose(1, 2).reshape(batch, tokens, -1))


class LDMBertEncoderLayer(nn.Module):
    """``x += attn(norm(x))``; ``x += fc2(act(fc1(norm(x))))`` (dropouts act in training)."""

    def __init__(self, d_model: int, heads: int, head_dim: int, ffn_dim: int, activation: str,
                 dropout: float, activation_dropout: float, attention_dropout: float):
        super().__init__()
        self.self_attn = LDMBertAttention(d_model, heads, head_dim, attention_dropout)
        self.self_attn_layer_norm = nn.LayerNorm(d_model)
        self.activation_fn = get_activation(activation)
        self.fc1 = nn.Linear(d_model, ffn_dim)
        self.fc2 = nn.Linear(ffn_dim, d_model)
        self.final_layer_norm = nn.LayerNorm(d_model)
        self.dropout = dropout
        self.activation_dropout = activation_dropout

    def forward(self, hidden_states: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        attended = self.self_attn(self.self_attn_layer_norm(hidden_states), bias)
        hidden_states = hidden_states + F.dropout(attended, self.dropout, self.training)
        mlp = self.activation_fn(self.fc1(self.final_layer_norm(hidden_states)))
        mlp = self.fc2(F.dropout(mlp, self.activation_dropout, self.training))
        return hidden_states + F.dropout(mlp, self.dropout, self.training)


class _Embedding(nn.Embedding):
    """``nn.Embedding`` whose initialisation is skipped when its weight is on the meta device
    (a checkpoint load fills it): there torch runs ``normal_`` through its Python reference
    kernels, whose first use imports torch._dynamo (seconds, for a few kilobytes)."""

    def reset_parameters(self) -> None:
        if not self.weight.is_meta:
            super().reset_parameters()


class LDMBertEncoder(nn.Module):
    def __init__(self, vocab_size: int, max_positions: int, d_model: int, layers: list[nn.Module],
                 dropout: float):
        super().__init__()
        self.embed_tokens = _Embedding(vocab_size, d_model)
        self.embed_positions = _Embedding(max_positions, d_model)
        self.layers = nn.ModuleList(layers)
        self.layer_norm = nn.LayerNorm(d_model)
        self.dropout = dropout

    def forward(self, input_ids: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        hidden_states = self.embed_tokens(input_ids) + self.embed_positions(positions)[None]
        hidden_states = F.dropout(hidden_states, self.dropout, self.training)
        for layer in self.layers:
            hidden_states = layer(hidden_states, bias)
        return self.layer_norm(hidden_states)


class LDMBertModel(ModelMixin):
    """``bert(input_ids)[0]`` (or ``.last_hidden_state``): (B, L, d_model) text states. Config
    fields are those of the format's ``LDMBertConfig`` (defaults: the released 1.45B model's
    encoder)."""

    _library_name = "latent_diffusion"  # model_index.json: ["latent_diffusion", "LDMBertModel"]

    def __init__(
        self,
        vocab_size: int = 30522,
        max_position_embeddings: int = 77,
        encoder_layers: int = 32,
        encoder_ffn_dim: int = 5120,
        encoder_attention_heads: int = 8,
        head_dim: int = 64,
        encoder_layerdrop: float = 0.0,
        activation_function: str = "gelu",
        d_model: int = 1280,
        dropout: float = 0.1,
        attention_dropout: float = 0.0,
        activation_dropout: float = 0.0,
        init_std: float = 0.02,
        classifier_dropout: float = 0.0,
        scale_embedding: bool = False,
        use_cache: bool = True,
        pad_token_id: int = 0,
    ):
        super().__init__()
        # encoder_layerdrop, init_std, classifier_dropout, use_cache and scale_embedding are kept
        # in the config for the format; the format's encoder does not use them either.
        layers = [LDMBertEncoderLayer(d_model, encoder_attention_heads, head_dim,
                                      encoder_ffn_dim, activation_function, dropout,
                                      activation_dropout, attention_dropout)
                  for _ in range(encoder_layers)]
        self.model = LDMBertEncoder(vocab_size, max_position_embeddings, d_model, layers, dropout)
        self.to_logits = nn.Linear(d_model, vocab_size)
        self._initialise(init_std)

    def _initialise(self, std: float) -> None:
        """A fresh model starts as the format's does: weights ~ N(0, init_std^2), biases 0
        (a load fills everything from the checkpoint instead)."""
        for module in self.modules():
            if isinstance(module, nn.Linear | nn.Embedding) and not module.weight.is_meta:
                with torch.no_grad():
                    module.weight.normal_(0.0, std)
                    if getattr(module, "bias", None) is not None:
                        module.bias.zero_()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                return_dict: bool = True) -> LDMBertOutput | tuple[torch.Tensor]:
        """``input_ids`` (B, L) token ids (L at most ``max_position_embeddings``);
        ``attention_mask`` (B, L), 1 = keep, 0 = padding to ignore."""
        if input_ids.ndim != 2 or input_ids.shape[1] > self.config.max_position_embeddings:
            raise ModelInputError(f"LDMBertModel takes input_ids of shape (batch, tokens) with at "
                                  f"most {self.config.max_position_embeddings} tokens, got "
                                  f"{tuple(input_ids.shape)}")
        bias = None
        if attention_mask is not None:  # padding keys get the most negative value
            keep = attention_mask[:, None, None, :].to(self.dtype)
            bias = (1.0 - keep) * torch.finfo(self.dtype).min
        hidden_states = self.model(input_ids, bias)
        return LDMBertOutput(hidden_states) if return_dict else (hidden_states,)

    # The transformers file layout ------------------------------------------------------------
    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs: Any) -> None:
        """Write ``config.json`` (with the ``model_type`` transformers reads) and
        ``model.safetensors``, atomically. Other keyword arguments (``variant``...) are
        accepted for interface compatibility and not used."""
        config = {"architectures": ["LDMBertModel"], "model_type": "ldmbert",
                  **self.config.to_dict(), "num_hidden_layers": self.config.encoder_layers,
                  "dtype": str(self.dtype).removeprefix("torch.")}
        with atomic_directory(save_directory, replaces=lambda n: n in (SAFE_WEIGHTS,
                                                                       PICKLE_WEIGHTS)) as staging:
            atomic_write_text(staging / "config.json", json.dumps(config, indent=2) + "\n")
            save_safetensors(self.state_dict(), staging / SAFE_WEIGHTS)

    @classmethod
    def from_pretrained(cls, source: str | os.PathLike, subfolder: str | None = None,
                        torch_dtype: torch.dtype | None = None, allow_pickle: bool = False,
                        device: str | torch.device | None = None, revision: str | None = None,
                        cache_dir: str | os.PathLike | None = None,
                        local_files_only: bool | None = None, token: str | bool | None = None,
                        **ignored: Any) -> LDMBertModel:
        """Load a folder (or Hub repo) in the transformers layout: ``config.json`` and
        ``model.safetensors`` (``pytorch_model.bin`` only with ``allow_pickle=True``)."""
        hub = dict(revision=revision, cache_dir=cache_dir, local_files_only=local_files_only,
                   token=token)
        hub["revision"] = pin_revision(source, **hub)
        prefix = f"{subfolder.strip('/')}/" if subfolder else ""
        available = [f[len(prefix):] for f in list_files(source, **hub) if f.startswith(prefix)]
        weights = next((w for w in (SAFE_WEIGHTS, PICKLE_WEIGHTS) if w in available), None)
        if "config.json" not in available or weights is None:
            raise FileAccessError(f"{os.fspath(source)!r}{f' ({subfolder})' if subfolder else ''} "
                                  f"is not an LDMBert folder: it needs config.json and "
                                  f"{SAFE_WEIGHTS} (found {available})")
        root = fetch(source, [prefix + "config.json", prefix + weights], **hub)
        folder = root / prefix if prefix else root
        # transformers writes its generic fields (architectures, dtype, label maps...) beside
        # the architecture's: keep the architecture's
        params = config_parameters(cls)
        config = {k: v for k, v in read_json(folder / "config.json").items() if k in params}
        with gc_paused():
            with parameters_on_meta():
                model = cls.from_config(config)
            model._load_weights([folder / weights], torch_dtype, device, allow_pickle, True)
        return model.eval()
