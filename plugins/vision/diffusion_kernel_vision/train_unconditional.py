"""Train an unconditional ``UNet2DModel`` DDPM on a folder of images (or a built-in set) with
accelerate: one process, several (``torchrun`` / ``accelerate launch``), or several machines.

The loop, checkpoints, resume and keyed randomness are the shared ones of ``training/loop.py``:
the data order of epoch e is a permutation seeded by (seed, e); the noise and timestep of a sample
come from a generator seeded by (seed, micro-step, position in the global batch), so P processes
give one process's gradient on the whole batch and a resumed run continues exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch
from diffusion_kernel import registry
from diffusion_kernel.errors import ConfigError
from diffusion_kernel.scheduling import scheduler_from_name
from diffusion_kernel.training import EMAModel, diffusion_loss, min_snr_weights, training_target

from .datasets import load_training_images
from .training.loop import LoopConfig, Trainer, ema_weights, epoch_indices, generator


@dataclass(kw_only=True)
class TrainConfig(LoopConfig):
    """Everything a run depends on (the loop's options and these); saved with every checkpoint so
    a resume can check it."""

    data: str
    resolution: int | None = None
    mode: str | None = None
    block_out_channels: tuple[int, ...] = (32, 64, 64)
    layers_per_block: int = 1
    attention_levels: tuple[int, ...] = (2,)
    norm_num_groups: int = 8
    num_train_timesteps: int = 1000
    beta_schedule: str = "squaredcos_cap_v2"
    prediction_type: str = "epsilon"
    snr_gamma: float | None = None
    use_ema: bool = True
    ema_decay: float = 0.999
    save_images_steps: int = 0
    sample_scheduler: str = "ddim"
    sample_steps: int = 50
    num_samples: int = 16

    MUST_MATCH: ClassVar[tuple[str, ...]] = LoopConfig.MUST_MATCH + (
        "data", "resolution", "mode", "block_out_channels", "layers_per_block",
        "attention_levels", "norm_num_groups", "num_train_timesteps", "beta_schedule",
        "prediction_type", "use_ema")

    def check(self) -> None:
        super().check()
        if any(level >= len(self.block_out_channels) for level in self.attention_levels):
            raise ConfigError("--attention-levels must index --block-out-channels")

    def unet_config(self, channels: int, resolution: int) -> dict:
        levels = range(len(self.block_out_channels))
        return dict(
            sample_size=resolution, in_channels=channels, out_channels=channels,
            block_out_channels=list(self.block_out_channels),
            layers_per_block=self.layers_per_block, norm_num_groups=self.norm_num_groups,
            down_block_types=["AttnDownBlock2D" if i in self.attention_levels else "DownBlock2D"
                              for i in levels],
            up_block_types=["AttnUpBlock2D" if i in self.attention_levels else "UpBlock2D"
                            for i in reversed(levels)],
        )


class UnconditionalTrainer(Trainer):
    """A ``UNet2DModel`` from scratch (seeded: the same initial weights on every process)."""

    cfg: TrainConfig

    def load_data(self, world_size: int) -> None:
        cfg = self.cfg
        scheduler_from_name(cfg.sample_scheduler)  # an unknown name fails before any work
        self.images = load_training_images(cfg.data, cfg.resolution, cfg.mode)
        if len(self.images) < cfg.train_batch_size:
            raise ConfigError(f"{len(self.images)} images is fewer than one batch of "
                              f"{cfg.train_batch_size}; lower --train-batch-size")

    def setup(self, accelerator) -> torch.nn.Module:
        cfg = self.cfg
        channels, resolution = self.images.shape[1], self.images.shape[-1]
        torch.manual_seed(cfg.seed)  # the same initial weights on every process
        unet = registry.models.get("UNet2DModel")(**cfg.unet_config(channels, resolution))
        self.noise_scheduler = registry.schedulers.get("DDPMScheduler")(
            num_train_timesteps=cfg.num_train_timesteps, beta_schedule=cfg.beta_schedule,
            prediction_type=cfg.prediction_type)
        self.ema = (EMAModel(unet.parameters(), decay=cfg.ema_decay, use_ema_warmup=True)
                    if cfg.use_ema else None)
        return unet

    def checkpoint_objects(self) -> list:
        return [self.ema] if self.ema is not None else []

    def loss(self, micro_step: int, positions: range) -> torch.Tensor:
        cfg, device = self.cfg, self.accelerator.device
        index = epoch_indices(cfg.seed, micro_step, len(self.images), cfg.train_batch_size)
        clean = self.images[index[positions.start:positions.stop]].to(device)
        noises, steps = [], []
        for pos in positions:
            g = generator(cfg.seed, 7919, micro_step, pos)
            steps.append(torch.randint(0, cfg.num_train_timesteps, (1,), generator=g))
            noises.append(torch.randn(clean.shape[1:], generator=g))
        noise, timesteps = torch.stack(noises).to(device), torch.cat(steps).to(device)
        noisy = self.noise_scheduler.add_noise(clean, noise, timesteps)
        with self.accelerator.autocast():
            prediction = self.model(noisy, timesteps).sample
        target = training_target(self.noise_scheduler, clean, noise, timesteps)
        weights = (min_snr_weights(self.noise_scheduler, timesteps, cfg.snr_gamma)
                   if cfg.snr_gamma else None)
        return diffusion_loss(prediction, target, weights)

    def after_step(self, step: int) -> None:
        if self.ema is not None:
            self.ema.step(self.unwrapped_model.parameters())

    def every_step(self, step: int) -> None:
        if self.cfg.save_images_steps and step % self.cfg.save_images_steps == 0:
            self._save_samples(step)

    def save(self) -> None:
        final = self.unwrapped_model
        with ema_weights(self.ema, final):
            pipeline = registry.pipelines.get("DDPMPipeline")(unet=final,
                                                               scheduler=self.noise_scheduler)
            pipeline.save_pretrained(self.output)

    def _save_samples(self, step: int) -> None:
        from .grid import save_grid

        cfg, unet = self.cfg, self.unwrapped_model
        with ema_weights(self.ema, unet):
            sampler = scheduler_from_name(cfg.sample_scheduler, self.noise_scheduler.config)
            pipeline = registry.pipelines.get("DDPMPipeline")(unet=unet, scheduler=sampler)
            pipeline.set_progress_bar_config(disable=True)
            generators = [torch.Generator().manual_seed(cfg.seed + i)
                          for i in range(cfg.num_samples)]
            images = pipeline(batch_size=cfg.num_samples, generator=generators,
                              num_inference_steps=cfg.sample_steps, output_type="pil").images
        save_grid(images, Path(cfg.output_dir) / "samples" / f"step-{step}.png")


def train(cfg: TrainConfig) -> Path:
    """Run (or resume) training; returns the output folder, a DDPM pipeline in diffusers format."""
    return UnconditionalTrainer(cfg).run()
