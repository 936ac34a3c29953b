"""``diffusion-kernel train dreambooth`` (Ruiz et al. 2023): fine-tune Stable Diffusion's U-Net
(every weight, or LoRA adapters) so that one prompt with a rare identifier ("a photo of sks dog")
shows the subject of a few instance images.

With prior preservation (Sec. 3.3 of the paper) each step also denoises class images ("a photo of
dog") made by the base model, and the loss is ``L_instance + prior_loss_weight * L_class``: the
class keeps its meaning instead of collapsing onto the subject. Missing class images are generated
with the base pipeline before training (image i from a generator keyed by the seed and i, so a
rerun makes the same images, and images already in the folder are reused).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch
from diffusion_kernel.errors import ConfigError

from .captioned_images import ImageSet, image_files, image_folder
from .latents import LatentCache
from .loop import epoch_indices, generator
from .stable_diffusion import LoRAOptions, StableDiffusionConfig, StableDiffusionTrainer

CLASS_STREAM = 1  # keys the class images' data order and draws apart from the instance ones
CLASS_BATCH = 4  # class images generated per pipeline call


@dataclass(kw_only=True)
class DreamBoothConfig(LoRAOptions, StableDiffusionConfig):
    """``train dreambooth`` options (see ``--help``)."""

    instance_prompt: str
    with_prior_preservation: bool = False
    class_prompt: str | None = None
    class_data_dir: str | None = None
    num_class_images: int = 100
    prior_loss_weight: float = 1.0
    class_inference_steps: int = 50
    class_guidance_scale: float = 7.5
    max_steps: int = 400
    learning_rate: float = 5e-6
    train_batch_size: int = 1

    MUST_MATCH: ClassVar[tuple[str, ...]] = (
        StableDiffusionConfig.MUST_MATCH + LoRAOptions.LORA_MUST_MATCH
        + ("instance_prompt", "with_prior_preservation", "class_prompt", "class_data_dir",
           "num_class_images", "prior_loss_weight"))

    def check(self) -> None:
        super().check()
        self.check_lora()
        if not self.instance_prompt.strip():
            raise ConfigError("--instance-prompt is empty; give the prompt with the identifier, "
                              "e.g. 'a photo of sks dog'")
        if not self.with_prior_preservation:
            given = [f"--{k.replace('_', '-')}" for k in ("class_prompt", "class_data_dir")
                     if getattr(self, k) is not None]
            if given:
                raise ConfigError(f"{', '.join(given)} only take effect with "
                                  f"--with-prior-preservation; add it or drop them")
            return
        if not self.class_prompt or not self.class_data_dir:
            raise ConfigError("--with-prior-preservation needs --class-prompt (e.g. 'a photo of "
                              "dog') and --class-data-dir (a folder; missing class images are "
                              "generated there)")
        if self.num_class_images < self.train_batch_size:
            raise ConfigError(f"--num-class-images {self.num_class_images} is fewer than one "
                              f"batch ({self.train_batch_size})")
        if self.prior_loss_weight < 0:
            raise ConfigError(f"--prior-loss-weight must be 0 or positive, got "
                              f"{self.prior_loss_weight}")
        if self.class_inference_steps <= 0:
            raise ConfigError("--class-inference-steps must be positive")
        if Path(self.class_data_dir).exists() and not Path(self.class_data_dir).is_dir():
            raise ConfigError(f"--class-data-dir {self.class_data_dir} is a file, not a folder")


class DreamBoothTrainer(StableDiffusionTrainer):
    """Instance (and class) denoising losses; the trained module is the U-Net."""

    cfg: DreamBoothConfig

    def load_data(self, world_size: int) -> None:
        cfg = self.cfg
        self.images = image_folder(cfg.data, "instance image folder")
        if len(self.images) < cfg.train_batch_size:
            raise ConfigError(f"{len(self.images)} instance images is fewer than one batch of "
                              f"{cfg.train_batch_size}; lower --train-batch-size")
        if cfg.with_prior_preservation and Path(cfg.class_data_dir).is_dir():
            found = image_files(Path(cfg.class_data_dir))
            if found:  # existing class images must decode: checked before any model loads
                image_folder(cfg.class_data_dir, "class image folder")

    def setup(self, accelerator) -> torch.nn.Module:
        cfg = self.cfg
        self.load_base(accelerator)
        self.latents = LatentCache(self.pipe.vae, self.images, self.resolution)
        self.instance_hidden = self.encode_text([cfg.instance_prompt])
        if cfg.with_prior_preservation:
            self.class_images = self.make_class_images()
            self.class_latents = LatentCache(self.pipe.vae, self.class_images, self.resolution)
            self.class_hidden = self.encode_text([cfg.class_prompt])
        return self.train_unet(cfg)

    # Class images ------------------------------------------------------------------------------
    def make_class_images(self) -> ImageSet:
        """Generate the missing class images (each process its share), then read the first
        ``num_class_images`` of the folder."""
        cfg, accelerator = self.cfg, self.accelerator
        folder = Path(cfg.class_data_dir)
        jobs = _missing_class_images(folder, cfg.num_class_images)
        accelerator.wait_for_everyone()  # every process listed the folder before any writes
        mine = jobs[accelerator.process_index::accelerator.num_processes]
        if mine:
            self._generate(mine, folder)
        accelerator.wait_for_everyone()
        found = image_folder(folder, "class image folder")
        return ImageSet(found.folder, found.paths[:cfg.num_class_images])

    def _generate(self, jobs: list[int], folder: Path) -> None:
        from diffusion_kernel.hub import atomic_write_bytes
        from tqdm.auto import tqdm

        cfg = self.cfg
        bar = tqdm(total=len(jobs), desc="generating class images",
                   disable=not self.accelerator.is_local_main_process)
        for start in range(0, len(jobs), CLASS_BATCH):
            batch = jobs[start:start + CLASS_BATCH]
            generators = [generator(cfg.seed, CLASS_STREAM, i) for i in batch]
            with torch.no_grad():
                images = self.pipe([cfg.class_prompt] * len(batch), generator=generators,
                                   num_inference_steps=cfg.class_inference_steps,
                                   guidance_scale=cfg.class_guidance_scale,
                                   height=self.resolution, width=self.resolution).images
            for i, image in zip(batch, images):
                buffer = io.BytesIO()
                image.save(buffer, format="PNG")
                atomic_write_bytes(folder / class_image_name(i), buffer.getvalue())
            bar.update(len(batch))
        bar.close()

    # The loss ----------------------------------------------------------------------------------
    def loss(self, micro_step: int, positions: range) -> torch.Tensor:
        cfg = self.cfg
        index = epoch_indices(cfg.seed, micro_step, len(self.images), cfg.train_batch_size)
        index = index[positions.start:positions.stop].tolist()
        draws = self.draws(micro_step, positions)
        latents = self.sample_latents(index, draws)
        hidden = self.instance_hidden.expand(len(index), -1, -1)
        if not cfg.with_prior_preservation:
            losses = self.denoising_losses(self.model, latents, hidden, draws)
            return (losses * self.loss_weights(draws, losses.device)).mean()
        cindex = epoch_indices(cfg.seed, micro_step, len(self.class_images),
                               cfg.train_batch_size, CLASS_STREAM)
        cindex = cindex[positions.start:positions.stop].tolist()
        cdraws = self.draws(micro_step, positions, stream=CLASS_STREAM)
        clatents = self.sample_latents(cindex, cdraws, self.class_latents)
        # one U-Net call on instance + class samples, as the paper's batch
        losses = self.denoising_losses(
            self.model, torch.cat([latents, clatents]),
            torch.cat([hidden, self.class_hidden.expand(len(cindex), -1, -1)]), draws + cdraws)
        instance, prior = losses[:len(index)], losses[len(index):]
        instance = (instance * self.loss_weights(draws, losses.device)).mean()
        return instance + cfg.prior_loss_weight * prior.mean()

    def save(self) -> None:
        if self.cfg.lora_rank is not None:
            self.save_lora()
        else:
            self.save_pipeline(unet=self.pipe.unet)


def class_image_name(index: int) -> str:
    return f"class-{index:05d}.png"


def _missing_class_images(folder: Path, wanted: int) -> list[int]:
    """Indices of the class images to generate so the folder holds ``wanted``: the lowest
    indices whose file names are free."""
    missing = wanted - (len(image_files(folder)) if folder.is_dir() else 0)
    jobs, index = [], 0
    while len(jobs) < missing:
        if not (folder / class_image_name(index)).exists():
            jobs.append(index)
        index += 1
    if jobs:
        folder.mkdir(parents=True, exist_ok=True)
    return jobs


def train_dreambooth(cfg: DreamBoothConfig) -> Path:
    """Run (or resume) a DreamBooth fine-tune; returns the output folder."""
    return DreamBoothTrainer(cfg).run()
