"""Long prompts with weighting syntax for Stable Diffusion, in the "lpw" style of the AUTOMATIC1111
web UI: prompts longer than the text encoder's window and per-word emphasis.

Weights: ``(word:1.3)`` multiplies the weight of ``word`` by 1.3, ``(word)`` by 1.1, ``[word]``
divides it by 1.1; brackets nest (``((word))`` is 1.21) and ``\\(`` is a literal bracket.

Long prompts: the tokens are cut into windows of ``model_max_length - 2`` (75 for CLIP), each
window gets its own BOS and EOS and is encoded separately, and the embeddings are concatenated
along the sequence (the UNet's cross-attention takes any number of tokens). Each token's
embedding is multiplied by its weight and the result rescaled so that the mean of the
embeddings stays what it was: emphasis changes directions, not the overall magnitude (where that
mean is about zero, its mean magnitude is kept instead; see ``rescale``).

    pipe = DiffusionPipeline.from_pretrained(model, custom_pipeline="lpw_stable_diffusion",
                                             trust_remote_code=True)
    pipe("a (red:1.4) cat on a [blurry] sofa, " + "very detailed, " * 20).images[0]
"""

from __future__ import annotations

import math
import re

import torch
from diffusion_kernel import StableDiffusionPipeline
from diffusion_kernel.prompts import negative_texts

_EMPHASIS = 1.1
# One match per syntax element: an escaped bracket, "(", "[", ":<number>)" closing a weighted
# group (the number is group 1), ")", "]", a run of plain text, or a lone ":".
_TOKEN = re.compile(r"\\[\\()\[\]]|\(|\[|:\s*([+-]?\d*\.?\d+)\s*\)|\)|]|[^\\()\[\]:]+|:")


def parse_weights(text: str) -> list[tuple[str, float]]:
    """``"a (red:1.4) [cat]"`` -> ``[("a ", 1.0), ("red", 1.4), ("cat", 1/1.1)]``: pieces of
    text with the product of the weights of the brackets around them."""
    pieces: list[list] = []
    open_round: list[int] = []  # where each open bracket began in ``pieces``
    open_square: list[int] = []

    def scale(start: int, factor: float) -> None:
        for piece in pieces[start:]:
            piece[1] *= factor

    for match in _TOKEN.finditer(text):
        token, weight = match.group(0), match.group(1)
        if token.startswith("\\"):
            pieces.append([token[1:], 1.0])
        elif token == "(":
            open_round.append(len(pieces))
        elif token == "[":
            open_square.append(len(pieces))
        elif weight is not None and open_round:
            scale(open_round.pop(), float(weight))
        elif token == ")" and open_round:
            scale(open_round.pop(), _EMPHASIS)
        elif token == "]" and open_square:
            scale(open_square.pop(), 1 / _EMPHASIS)
        else:  # plain text, or a bracket without its partner: kept as text
            pieces.append([token, 1.0])
    for start in open_round:  # unclosed brackets still emphasise what follows them
        scale(start, _EMPHASIS)
    for start in open_square:
        scale(start, 1 / _EMPHASIS)
    merged: list[tuple[str, float]] = []
    for text_piece, w in pieces:
        if merged and merged[-1][1] == w:
            merged[-1] = (merged[-1][0] + text_piece, w)
        elif text_piece:
            merged.append((text_piece, w))
    return merged


def rescale(embeds: torch.Tensor, weighted: torch.Tensor) -> torch.Tensor:
    """``weighted`` scaled so that each prompt's mean equals that of ``embeds`` (the lpw
    rule). Where the mean is under 1% of the mean magnitude (a text encoder whose final layer
    norm has no bias gives mean ~0), that ratio is noise divided by noise and can be huge or
    infinite: there the mean magnitude is preserved instead."""
    dims = (1, 2)
    mean_before = embeds.mean(dim=dims, keepdim=True)
    mean_after = weighted.mean(dim=dims, keepdim=True)
    size_before = embeds.abs().mean(dim=dims, keepdim=True)
    size_after = weighted.abs().mean(dim=dims, keepdim=True)
    degenerate = (mean_before.abs() < 0.01 * size_before) | (mean_after.abs() < 0.01 * size_after)
    ratio = torch.where(degenerate, size_before / size_after, mean_before / mean_after)
    return weighted * ratio


class LongPromptWeightingPipeline(StableDiffusionPipeline):
    """Stable Diffusion that takes prompts of any length with ``(word:weight)`` emphasis. Called
    like ``StableDiffusionPipeline``; ``prompt_embeds`` given directly are used as they are."""

    def tokens_and_weights(self, text: str) -> tuple[list[int], list[float]]:
        """Token ids (without BOS/EOS) and one weight per token."""
        ids: list[int] = []
        weights: list[float] = []
        for piece, weight in parse_weights(text):
            piece_ids = self.tokenizer(piece, add_special_tokens=False).input_ids
            ids += piece_ids
            weights += [weight] * len(piece_ids)
        return ids, weights

    def weighted_embeddings(self, texts: list[str], device: torch.device, windows: int,
                            clip_skip: int | None = None) -> torch.Tensor:
        """(len(texts), windows * model_max_length, dim): each text's tokens in ``windows``
        windows of ``[BOS] tokens [EOS] pad...``, encoded one window at a time, weighted and
        mean-rescaled."""
        length = self.tokenizer.model_max_length
        span = length - 2
        tok = self.tokenizer
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        all_ids, all_weights = [], []
        for text in texts:
            ids, weights = self.tokens_and_weights(text)
            for w in range(windows):
                chunk, chunk_w = ids[w * span:(w + 1) * span], weights[w * span:(w + 1) * span]
                fill = length - 2 - len(chunk)
                all_ids.append([tok.bos_token_id, *chunk, tok.eos_token_id] + [pad] * fill)
                all_weights.append([1.0, *chunk_w, 1.0] + [1.0] * fill)
        ids = torch.tensor(all_ids, device=device)
        embeds = self._encode_ids(ids, clip_skip)  # (texts * windows, length, dim)
        embeds = embeds.reshape(len(texts), windows * length, -1)
        weights = torch.tensor(all_weights, device=device, dtype=embeds.dtype)
        weights = weights.reshape(len(texts), windows * length, 1)
        if torch.all(weights == 1):
            return embeds
        return rescale(embeds, embeds * weights)

    def _encode_ids(self, ids: torch.Tensor, clip_skip: int | None) -> torch.Tensor:
        if clip_skip is None:
            return self.text_encoder(ids)[0]
        hidden = self.text_encoder(ids, output_hidden_states=True).hidden_states
        text_model = getattr(self.text_encoder, "text_model", self.text_encoder)
        return text_model.final_layer_norm(hidden[-(clip_skip + 1)])

    def encode_prompt(self, prompt, device, num_images_per_prompt, do_classifier_free_guidance,
                      negative_prompt=None, prompt_embeds=None, negative_prompt_embeds=None,
                      clip_skip=None, lora_scale=None):
        """As ``StableDiffusionPipeline.encode_prompt``, with weights and long prompts: prompt
        and negative prompt are cut into the same number of windows; ``lora_scale`` multiplies
        the text encoder's LoRA adapters for this call."""
        if prompt_embeds is not None or prompt is None:
            return super().encode_prompt(prompt, device, num_images_per_prompt,
                                         do_classifier_free_guidance, negative_prompt,
                                         prompt_embeds, negative_prompt_embeds, clip_skip,
                                         lora_scale)
        texts = [prompt] if isinstance(prompt, str) else list(prompt)
        negatives = negative_texts(negative_prompt, len(texts))
        span = self.tokenizer.model_max_length - 2
        counted = texts + (negatives if do_classifier_free_guidance else [])
        windows = max(1, *(math.ceil(len(self.tokens_and_weights(t)[0]) / span)
                           for t in counted))
        with self._prompt_encoding(lora_scale):  # no gradients, LoRA times lora_scale
            embeds = self.weighted_embeddings(texts, device, windows, clip_skip)
            negative = (self.weighted_embeddings(negatives, device, windows)
                        if do_classifier_free_guidance and negative_prompt_embeds is None
                        else negative_prompt_embeds)
        return super().encode_prompt(None, device, num_images_per_prompt,
                                     do_classifier_free_guidance, None, embeds, negative)
