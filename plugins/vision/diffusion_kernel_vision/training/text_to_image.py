"""``diffusion-kernel train text-to-image``: fine-tune Stable Diffusion's U-Net on captioned
images, every weight (optionally with an EMA copy) or LoRA adapters only.

The VAE and the text encoder stay frozen. Full fine-tuning writes a whole pipeline folder
(diffusers layout); LoRA writes ``pytorch_lora_weights.safetensors`` (diffusers' format) and
leaves every base weight bit-identical.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch
from diffusion_kernel.errors import ConfigError
from diffusion_kernel.training import EMAModel

from .captioned_images import captioned_folder
from .latents import LatentCache
from .loop import ema_weights, epoch_indices
from .stable_diffusion import LoRAOptions, StableDiffusionConfig, StableDiffusionTrainer


@dataclass(kw_only=True)
class TextToImageConfig(LoRAOptions, StableDiffusionConfig):
    """``train text-to-image`` options (see ``--help``)."""

    max_steps: int = 1000
    caption_column: str = "text"
    use_ema: bool = False
    ema_decay: float = 0.9999

    MUST_MATCH: ClassVar[tuple[str, ...]] = (StableDiffusionConfig.MUST_MATCH
                                             + LoRAOptions.LORA_MUST_MATCH
                                             + ("caption_column", "use_ema"))

    def check(self) -> None:
        super().check()
        self.check_lora()
        if self.use_ema and self.lora_rank is not None:
            raise ConfigError("--use-ema averages full fine-tuning weights; drop it with "
                              "--lora-rank")


class TextToImageTrainer(StableDiffusionTrainer):
    """Denoising loss on (image, caption) pairs; the trained module is the U-Net."""

    cfg: TextToImageConfig

    def load_data(self, world_size: int) -> None:
        self.images = captioned_folder(self.cfg.data, self.cfg.caption_column)
        if len(self.images) < self.cfg.train_batch_size:
            raise ConfigError(f"{len(self.images)} images is fewer than one batch of "
                              f"{self.cfg.train_batch_size}; lower --train-batch-size")

    def setup(self, accelerator) -> torch.nn.Module:
        self.load_base(accelerator)
        self.latents = LatentCache(self.pipe.vae, self.images, self.resolution)
        unet = self.train_unet(self.cfg)
        self.ema = (EMAModel(unet.parameters(), decay=self.cfg.ema_decay, use_ema_warmup=True)
                    if self.cfg.use_ema else None)
        return unet

    def checkpoint_objects(self) -> list:
        return [self.ema] if self.ema is not None else []

    def loss(self, micro_step: int, positions: range) -> torch.Tensor:
        cfg = self.cfg
        index = epoch_indices(cfg.seed, micro_step, len(self.images), cfg.train_batch_size)
        index = index[positions.start:positions.stop].tolist()
        draws = self.draws(micro_step, positions)
        captions = [self.images.captions[i] for i in index]
        texts = [options[int(d.choice * len(options))] for options, d in zip(captions, draws)]
        latents = self.sample_latents(index, draws)
        losses = self.denoising_losses(self.model, latents, self.encode_text(texts), draws)
        return (losses * self.loss_weights(draws, losses.device)).mean()

    def after_step(self, step: int) -> None:
        if self.ema is not None:
            self.ema.step(self.unwrapped_model.parameters())

    def inference_weights(self):
        return ema_weights(self.ema, self.unwrapped_model)

    def save(self) -> None:
        if self.cfg.lora_rank is not None:
            self.save_lora()
            return
        with self.inference_weights():
            self.save_pipeline(unet=self.pipe.unet)


def train_text_to_image(cfg: TextToImageConfig) -> Path:
    """Run (or resume) a text-to-image fine-tune; returns the output folder."""
    return TextToImageTrainer(cfg).run()
