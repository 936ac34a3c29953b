"""Textual inversion (Gal et al. 2022): a learned embedding for a new token of the CLIP text
encoder. ``load_textual_inversion`` adds the token(s) to the tokenizer and their vectors to the
encoder's input embeddings; a multi-vector embedding becomes tokens ``tok, tok_1, ...`` and
``maybe_convert_prompt`` expands ``tok`` in a prompt to all of them.

File formats (facts of each): diffusers ``learned_embeds.safetensors`` = ``{token: (n, dim)}``;
A1111 ``.safetensors`` = ``{"emb_params": (n, dim)}`` (no token name: pass ``token=``); A1111
``.pt`` = a pickle ``{"string_to_param": {"*": (n, dim)}, "name": token, ...}``, refused unless
``allow_pickle=True`` and then read with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import json
import os
from typing import Any

import torch
from diffusion_kernel.errors import CheckpointError, PipelineError
from torch import nn

from .files import read_weights

TEXT_INVERSION_NAMES = ("learned_embeds.safetensors", "learned_embeds.bin")


class TextualInversionLoaderMixin:
    """``load_textual_inversion`` / ``unload_textual_inversion`` for a pipeline with
    ``tokenizer`` and ``text_encoder`` components."""

    def maybe_convert_prompt(self, prompt: str | list[str], tokenizer: Any) -> str | list[str]:
        """Expand each multi-vector token in ``prompt`` to ``tok tok_1 ... tok_{n-1}``."""
        if isinstance(prompt, list):
            return [_expand(p, tokenizer) for p in prompt]
        return _expand(prompt, tokenizer)

    def load_textual_inversion(self, pretrained_model_name_or_path: Any,
                               token: str | list[str] | None = None, tokenizer: Any = None,
                               text_encoder: nn.Module | None = None,
                               weight_name: str | None = None, subfolder: str | None = None,
                               allow_pickle: bool = False, revision: str | None = None,
                               cache_dir: str | os.PathLike | None = None,
                               local_files_only: bool | None = None,
                               hf_token: str | bool | None = None, **kwargs: Any) -> None:
        """Add textual-inversion embeddings: ``pretrained_model_name_or_path`` is a file, a
        folder or Hub repo (``learned_embeds.safetensors`` or ``weight_name``), a state dict, a
        tensor (with ``token=``), or a list of these with a list of tokens. ``token`` names the
        new token (it replaces the file's name). Every embedding is checked (format, dimension,
        token not yet in the vocabulary) before tokenizer and text encoder change."""
        kwargs.pop("use_safetensors", None)
        if kwargs:
            raise PipelineError(f"load_textual_inversion got unexpected arguments "
                                f"{sorted(kwargs)}")
        tokenizer = tokenizer or getattr(self, "tokenizer", None)
        text_encoder = text_encoder or getattr(self, "text_encoder", None)
        if tokenizer is None or text_encoder is None:
            raise PipelineError("load_textual_inversion needs a tokenizer and a text encoder "
                                "(the pipeline's, or passed as tokenizer= / text_encoder=)")
        sources = (pretrained_model_name_or_path if isinstance(pretrained_model_name_or_path,
                                                               list)
                   else [pretrained_model_name_or_path])
        tokens = token if isinstance(token, list) else [token] * len(sources)
        hub = dict(revision=revision, cache_dir=cache_dir, local_files_only=local_files_only,
                   token=hf_token)
        if len(sources) == 1 and len(tokens) > 1 and isinstance(sources[0], torch.Tensor):
            sources = list(sources[0])  # one tensor, one row per token
        if len(tokens) != len(sources):
            raise PipelineError(f"got {len(sources)} embeddings and {len(tokens)} tokens; give "
                                f"one token per embedding")
        named = [(t, e) for source, t in zip(sources, tokens)
                 for t, e in [_read_embedding(source, t, weight_name, subfolder, allow_pickle,
                                              hub)]]
        vectors = _expand_vectors(named)
        _check(vectors, tokenizer, text_encoder)
        _add_tokens(vectors, tokenizer, text_encoder)

    def unload_textual_inversion(self, tokens: str | list[str] | None = None,
                                 tokenizer: Any = None,
                                 text_encoder: nn.Module | None = None) -> None:
        """Remove the named added tokens (default: every added, non-special token) from the
        tokenizer and their rows from the text encoder's input embeddings."""
        tokenizer = tokenizer or getattr(self, "tokenizer", None)
        text_encoder = text_encoder or getattr(self, "text_encoder", None)
        added = {t.content: i for i, t in tokenizer.added_tokens_decoder.items() if not t.special}
        if tokens is None:
            remove = list(added)
        else:
            remove = [tokens] if isinstance(tokens, str) else list(tokens)
            unknown = [t for t in remove if t not in added]
            if unknown:
                raise PipelineError(f"tokens {unknown} were not added to the tokenizer; added "
                                    f"tokens: {list(added)}")
        if not remove:
            return
        _remove_tokens(remove, added, tokenizer, text_encoder)


# Reading ---------------------------------------------------------------------------------------
def _read_embedding(source, token, weight_name, subfolder, allow_pickle, hub):
    """``(token, tensor (n, dim))`` from one source."""
    if isinstance(source, torch.Tensor):
        if token is None:
            raise PipelineError("an embedding given as a tensor needs its token: pass token=")
        return token, source
    file = read_weights(source, weight_name, TEXT_INVERSION_NAMES, "textual inversion embedding",
                        allow_pickle, subfolder, **hub)
    where = file.path if file.path != "<state dict>" else "the embedding state dict"
    state = file.tensors
    if "string_to_param" in state:  # A1111 .pt
        params = state["string_to_param"]
        if not isinstance(params, dict) or "*" not in params:
            raise CheckpointError(f"{where}: 'string_to_param' has no '*' entry; not an A1111 "
                                  f"embedding")
        name, tensor = state.get("name"), params["*"]
    elif len(state) == 1:
        name, tensor = next(iter(state.items()))
        if name == "emb_params" and token is None:
            raise PipelineError(f"{where} is an A1111 embedding ('emb_params'), which does not "
                                f"name its token: pass token='<your-token>'")
    else:
        shown = ", ".join(list(state)[:5])
        hint = (" (an SDXL embedding: it holds one vector set per text encoder)"
                if {"clip_l", "clip_g"} <= set(state) else "")
        raise CheckpointError(f"{where} is not a textual inversion embedding{hint}: expected one "
                              f"tensor ({{token: vectors}} or 'emb_params') or A1111's "
                              f"'string_to_param', found keys {shown}")
    if not isinstance(tensor, torch.Tensor) or not tensor.is_floating_point():
        raise CheckpointError(f"{where}: the embedding is not a floating point tensor")
    token = token or name
    if not isinstance(token, str) or not token:
        raise PipelineError(f"{where} does not name its token: pass token=")
    return token, tensor


def _expand_vectors(named: list[tuple[str, torch.Tensor]]) -> list[tuple[str, torch.Tensor]]:
    """One ``(token, vector)`` per vector: ``tok, tok_1, tok_2, ...`` for a multi-vector one."""
    vectors = []
    for token, embedding in named:
        rows = embedding.reshape(-1, embedding.shape[-1]) if embedding.ndim > 1 \
            else embedding[None]
        vectors += [(token if i == 0 else f"{token}_{i}", row) for i, row in enumerate(rows)]
    return vectors


def _check(vectors, tokenizer, text_encoder) -> None:
    dim = text_encoder.get_input_embeddings().weight.shape[-1]
    wrong = [(t, v.shape[-1]) for t, v in vectors if v.shape[-1] != dim]
    if wrong:
        raise CheckpointError(f"embedding {wrong[0][0]!r} has dimension {wrong[0][1]} but this "
                              f"text encoder's is {dim}: it was made for another base model "
                              f"(SD 1.x: 768, SD 2.x: 1024)")
    names = [t for t, _ in vectors]
    repeated = sorted({t for t in names if names.count(t) > 1})
    if repeated:
        raise PipelineError(f"tokens {repeated} are given more than once")
    vocabulary = tokenizer.get_vocab()
    taken = [t for t in names if t in vocabulary]
    if taken:
        raise PipelineError(f"token {taken[0]!r} is already in the tokenizer's vocabulary; pass "
                            f"another token= (or unload_textual_inversion({taken[0]!r}) first)")


# Changing the tokenizer and the text encoder ---------------------------------------------------
def _add_tokens(vectors, tokenizer, text_encoder) -> None:
    embeddings = text_encoder.get_input_embeddings()
    first = len(tokenizer)
    tokenizer.add_tokens([t for t, _ in vectors])
    ids = tokenizer.convert_tokens_to_ids([t for t, _ in vectors])
    weight = embeddings.weight.detach()
    # rows up to the tokenizer's length, then one per new token (the ids the tokenizer gave)
    rows = weight.new_zeros(first + len(vectors), weight.shape[-1])
    kept = min(first, weight.shape[0])
    rows[:kept] = weight[:kept]
    for token_id, (_, vector) in zip(ids, vectors):
        rows[token_id] = vector.to(rows.dtype)
    _set_embeddings(text_encoder, embeddings, rows)


def _remove_tokens(remove, added, tokenizer, text_encoder) -> None:
    backend = getattr(tokenizer, "_tokenizer", None)
    if backend is None:
        raise PipelineError(f"{type(tokenizer).__name__} has no tokenizers backend, so added "
                            f"tokens cannot be removed from it")
    from tokenizers import Tokenizer

    removed_ids = {added[t] for t in remove}
    layout = json.loads(backend.to_str())
    next_id = min(added.values())  # the remaining added tokens are renumbered from here, in order
    kept = []
    for entry in layout.get("added_tokens", []):
        if entry["id"] in removed_ids:
            continue
        if not entry.get("special"):  # renumber the remaining added tokens in order
            entry["id"], next_id = next_id, next_id + 1
        kept.append(entry)
    layout["added_tokens"] = kept
    embeddings = text_encoder.get_input_embeddings()
    weight = embeddings.weight.detach()
    keep = [i for i in range(weight.shape[0]) if i not in removed_ids]
    tokenizer._tokenizer = Tokenizer.from_str(json.dumps(layout))
    _set_embeddings(text_encoder, embeddings, weight[keep].clone())


def _set_embeddings(text_encoder, old: nn.Embedding, rows: torch.Tensor) -> None:
    new = nn.Embedding(rows.shape[0], rows.shape[1], padding_idx=old.padding_idx,
                       device="meta")
    new.weight = nn.Parameter(rows.to(old.weight.device), requires_grad=old.weight.requires_grad)
    text_encoder.set_input_embeddings(new)
    text_encoder.config.vocab_size = rows.shape[0]


def _expand(prompt: str, tokenizer) -> str:
    """``tok`` -> ``tok tok_1 ...`` for every added token that has numbered siblings."""
    added = tokenizer.added_tokens_encoder
    if not any(name.endswith("_1") for name in added):  # no multi-vector token: nothing to do
        return prompt
    for token in set(tokenizer.tokenize(prompt)):
        if token in added and f"{token}_1" in added:
            replacement, i = token, 1
            while f"{token}_{i}" in added:
                replacement += f" {token}_{i}"
                i += 1
            prompt = prompt.replace(token, replacement)
    return prompt
