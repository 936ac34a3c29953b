"""``diffusion-kernel train textual-inversion`` (Gal et al. 2022): learn the embedding of a new
token from a few images; everything else stays frozen.

The new token (``--num-vectors`` > 1: tokens ``tok, tok_1, ...``) is added to the tokenizer; its
embedding rows start as the initializer word's and are the only trained parameters. They live in
their own small tensor (``PlaceholderEmbedding``), so the optimizer holds just them and every other
row of the embedding table stays bit-identical by construction (diffusers' script optimizes the
whole table and copies the other rows back after each step). Prompts are short templates around
the token ("a photo of a {}" for an object, "a painting in the style of {}" for a style).

Writes ``learned_embeds.safetensors`` = ``{token: (num_vectors, dim)}`` (diffusers' format, which
``load_textual_inversion`` reads), and with ``--save-as-full-pipeline`` the whole pipeline too.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch
import torch.nn.functional as F
from diffusion_kernel.errors import ConfigError
from torch import nn

from .captioned_images import image_folder
from .latents import LatentCache
from .loop import epoch_indices
from .stable_diffusion import StableDiffusionConfig, StableDiffusionTrainer

EMBEDDINGS_FILE = "learned_embeds.safetensors"

# Prompt templates, written for this project. "{}" is the placeholder token(s).
OBJECT_TEMPLATES = (
    "a photo of a {}", "a picture of a {}", "a close-up photo of the {}", "a photo of my {}",
    "an image of the {}", "a bright photo of a {}", "a dark photo of the {}",
    "a cropped photo of a {}", "a good photo of the {}", "a photo of one {}",
    "a clean photo of the {}", "a small {}", "a large {}", "the {} on a table",
)
STYLE_TEMPLATES = (
    "a painting in the style of {}", "an image in the style of {}", "a picture in the style of {}",
    "artwork in the style of {}", "a drawing in the style of {}", "a sketch in the style of {}",
    "a landscape in the style of {}", "a portrait in the style of {}",
    "a still life in the style of {}", "a street scene in the style of {}",
)


@dataclass(kw_only=True)
class TextualInversionConfig(StableDiffusionConfig):
    """``train textual-inversion`` options (see ``--help``)."""

    placeholder_token: str
    initializer_token: str
    num_vectors: int = 1
    learnable_property: str = "object"
    save_as_full_pipeline: bool = False
    max_steps: int = 3000
    learning_rate: float = 5e-4
    weight_decay: float = 0.0  # a decay would pull the new rows towards zero, not the data
    max_grad_norm: float | None = None

    MUST_MATCH: ClassVar[tuple[str, ...]] = StableDiffusionConfig.MUST_MATCH + (
        "placeholder_token", "initializer_token", "num_vectors", "learnable_property")

    def check(self) -> None:
        super().check()
        if not self.placeholder_token.strip() or any(c.isspace()
                                                     for c in self.placeholder_token):
            raise ConfigError(f"--placeholder-token {self.placeholder_token!r} must be one "
                              f"word without spaces, e.g. '<cat-toy>'")
        if self.num_vectors < 1:
            raise ConfigError(f"--num-vectors must be at least 1, got {self.num_vectors}")
        if self.learnable_property not in ("object", "style"):
            raise ConfigError(f"--learnable-property {self.learnable_property!r}: choose object "
                              f"or style")
        if self.validation_prompt and self.placeholder_token not in self.validation_prompt:
            raise ConfigError(f"--validation-prompt {self.validation_prompt!r} does not use "
                              f"{self.placeholder_token}, so it would not show what is learned")

    @property
    def tokens(self) -> list[str]:
        """The placeholder and, for several vectors, ``tok_1 ... tok_{n-1}`` (diffusers' names)."""
        return [self.placeholder_token] + [f"{self.placeholder_token}_{i}"
                                           for i in range(1, self.num_vectors)]


class PlaceholderEmbedding(nn.Module):
    """A token embedding whose ids from ``base_rows`` on are looked up in ``learned`` (the trained
    rows) and below it in the frozen table ``base``. ``weight`` is the merged table."""

    def __init__(self, base: nn.Embedding, base_rows: int, learned: torch.Tensor):
        super().__init__()
        self.base = base
        self.base_rows = base_rows
        self.learned = nn.Parameter(learned)

    @property
    def weight(self) -> torch.Tensor:
        return torch.cat([self.base.weight[:self.base_rows],
                          self.learned.to(self.base.weight.dtype)])

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        frozen = self.base(ids.clamp(max=self.base_rows - 1))
        new = F.embedding((ids - self.base_rows).clamp(min=0), self.learned.to(frozen.dtype))
        return torch.where((ids >= self.base_rows).unsqueeze(-1), new, frozen)


class TextualInversionTrainer(StableDiffusionTrainer):
    """Denoising loss of template prompts with the new token; the trained module is the text
    encoder, whose only trainable parameter is the new rows."""

    cfg: TextualInversionConfig

    def load_data(self, world_size: int) -> None:
        self.images = image_folder(self.cfg.data)
        if len(self.images) < self.cfg.train_batch_size:
            raise ConfigError(f"{len(self.images)} images is fewer than one batch of "
                              f"{self.cfg.train_batch_size}; lower --train-batch-size")
        self.templates = (OBJECT_TEMPLATES if self.cfg.learnable_property == "object"
                          else STYLE_TEMPLATES)

    def setup(self, accelerator) -> nn.Module:
        self.load_base(accelerator)
        self.latents = LatentCache(self.pipe.vae, self.images, self.resolution)
        text_encoder = self.pipe.text_encoder
        base_rows, init_row = self._add_tokens()
        table = text_encoder.get_input_embeddings()
        learned = table.weight[init_row].detach().float().repeat(self.cfg.num_vectors, 1)
        text_encoder.set_input_embeddings(PlaceholderEmbedding(table, base_rows, learned))
        self.placeholder_text = " ".join(self.cfg.tokens)
        return text_encoder

    def _add_tokens(self) -> tuple[int, int]:
        """Add the tokens to the tokenizer (checked first); returns the first new id and the
        initializer's id."""
        cfg, tokenizer = self.cfg, self.pipe.tokenizer
        rows = self.pipe.text_encoder.get_input_embeddings().num_embeddings
        vocabulary = tokenizer.get_vocab()
        for token in cfg.tokens:
            if token in vocabulary:
                raise ConfigError(f"placeholder token {token!r} is already in the tokenizer's "
                                  f"vocabulary; choose a new one, e.g. "
                                  f"'<{cfg.initializer_token}-concept>'")
            ids = tokenizer.encode(token, add_special_tokens=False)
            if len(ids) == 1 and ids[0] != tokenizer.unk_token_id:  # it would take a word's place
                word = tokenizer.convert_ids_to_tokens(ids)[0]
                raise ConfigError(f"placeholder token {token!r} is already a word of the "
                                  f"tokenizer's vocabulary ({word!r}); choose a new one, e.g. "
                                  f"'<{cfg.initializer_token}-concept>'")
        init = tokenizer.encode(cfg.initializer_token, add_special_tokens=False)
        if len(init) != 1:
            raise ConfigError(f"--initializer-token {cfg.initializer_token!r} is {len(init)} "
                              f"tokens for this tokenizer; pass a word that is a single token")
        base_rows = len(tokenizer)
        if base_rows > rows:
            raise ConfigError(f"the tokenizer has {base_rows} tokens but the text encoder only "
                              f"{rows} embedding rows; the base model is inconsistent")
        tokenizer.add_tokens(cfg.tokens)
        return base_rows, init[0]

    def loss(self, micro_step: int, positions: range) -> torch.Tensor:
        cfg = self.cfg
        index = epoch_indices(cfg.seed, micro_step, len(self.images), cfg.train_batch_size)
        index = index[positions.start:positions.stop].tolist()
        draws = self.draws(micro_step, positions)
        texts = [self.templates[int(d.choice * len(self.templates))].format(
            self.placeholder_text) for d in draws]
        hidden = self.encode_text(texts, text_encoder=self.model)
        latents = self.sample_latents(index, draws)
        losses = self.denoising_losses(self.pipe.unet, latents, hidden, draws)
        return (losses * self.loss_weights(draws, losses.device)).mean()

    def learned_embeddings(self) -> torch.Tensor:
        """The trained rows, (num_vectors, dim), float32."""
        return self.unwrapped_model.get_input_embeddings().learned.detach().float().cpu()

    def save(self) -> None:
        import safetensors.torch
        from diffusion_kernel.hub import atomic_write_bytes

        data = safetensors.torch.save({self.cfg.placeholder_token: self.learned_embeddings()},
                                      metadata={"format": "pt"})
        atomic_write_bytes(self.output / EMBEDDINGS_FILE, data)
        if self.cfg.save_as_full_pipeline:
            self._save_full_pipeline()

    def _save_full_pipeline(self) -> None:
        """The pipeline with a plain, grown embedding table (base rows + learned rows) and the
        tokenizer that knows the new tokens."""
        from diffusion_kernel import registry

        text_encoder = self.pipe.text_encoder
        placeholder = text_encoder.get_input_embeddings()
        if self.weight_dtype != torch.float32:  # the frozen rows as saved, not as cast
            text_encoder = registry.pipelines.get("StableDiffusionPipeline").from_pretrained(
                self.cfg.model).text_encoder
            base = text_encoder.get_input_embeddings().weight[:placeholder.base_rows]
        else:
            base = placeholder.base.weight[:placeholder.base_rows]
        merged = torch.cat([base.detach(), self.learned_embeddings().to(base.dtype)])
        table = nn.Embedding.from_pretrained(merged.clone(), freeze=True)
        text_encoder.set_input_embeddings(table)
        text_encoder.config.vocab_size = merged.shape[0]
        self.save_pipeline(text_encoder=text_encoder, tokenizer=self.pipe.tokenizer)
        if text_encoder is self.pipe.text_encoder:
            text_encoder.set_input_embeddings(placeholder)


def train_textual_inversion(cfg: TextualInversionConfig) -> Path:
    """Run (or resume) a textual inversion; returns the output folder."""
    return TextualInversionTrainer(cfg).run()
