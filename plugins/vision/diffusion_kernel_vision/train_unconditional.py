"""Train an unconditional ``UNet2DModel`` DDPM on a folder of images (or a built-in set) with
accelerate: one process, several (``torchrun`` / ``accelerate launch``), or several machines.

Every random choice is keyed by the *global* sample position, never by the process: the data order
of epoch e is a permutation seeded by (seed, e); the noise and timestep of a sample come from a
generator seeded by (seed, micro-step, position in the global batch). Each process takes its slice
of the global batch, so the averaged gradients over P processes equal one process's gradient on the
whole batch, and a resumed run continues exactly where the checkpoint left it.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusion_kernel import registry
from diffusion_kernel.errors import CheckpointError, ConfigError, FileAccessError
from diffusion_kernel.hub import atomic_write_text
from diffusion_kernel.scheduling import scheduler_from_name
from diffusion_kernel.training import (
    EMAModel,
    diffusion_loss,
    min_snr_weights,
    training_target,
)

from .datasets import load_training_images

CHECKPOINT_PREFIX = "step-"
STATE_FILE = "trainer_state.json"


@dataclass
class TrainConfig:
    """Everything a run depends on; saved with every checkpoint so a resume can check it."""

    data: str
    output_dir: str
    resolution: int | None = None
    mode: str | None = None
    max_steps: int = 1000
    train_batch_size: int = 64  # global: split across processes
    gradient_accumulation_steps: int = 1
    learning_rate: float = 1e-3
    lr_warmup_steps: int = 100
    lr_scheduler: str = "constant"  # or "cosine": decay to 0 at max_steps after the warm-up
    weight_decay: float = 0.0
    mixed_precision: str = "no"
    seed: int = 0
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
    checkpointing_steps: int = 500
    checkpoints_total_limit: int | None = 2
    save_images_steps: int = 0
    sample_scheduler: str = "ddim"
    sample_steps: int = 50
    num_samples: int = 16
    resume: str | None = None

    def check(self) -> None:
        if self.max_steps <= 0 or self.train_batch_size <= 0:
            raise ConfigError("--max-steps and --train-batch-size must be positive")
        if self.gradient_accumulation_steps <= 0:
            raise ConfigError("--gradient-accumulation-steps must be positive")
        if self.mixed_precision not in ("no", "fp16", "bf16"):
            raise ConfigError(f"--mixed-precision {self.mixed_precision!r}: choose no, fp16, bf16")
        if self.lr_scheduler not in ("constant", "cosine"):
            raise ConfigError(f"--lr-scheduler {self.lr_scheduler!r}: choose constant or cosine")
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


def _lr_factor(cfg: TrainConfig, step: int) -> float:
    """Linear warm-up to the full rate, then constant, or a half cosine down to 0 at max_steps
    (Loshchilov & Hutter 2017, SGDR without restarts)."""
    warmup = max(1, cfg.lr_warmup_steps)
    if step < warmup or cfg.lr_scheduler == "constant":
        return min(1.0, (step + 1) / warmup)
    progress = (step - warmup) / max(1, cfg.max_steps - warmup)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def _generator(*key: int) -> torch.Generator:
    seed = 0
    for part in key:  # a simple, stable mix of the key into one 63-bit seed
        seed = (seed * 1_000_003 + part + 1) % (2**63 - 1)
    return torch.Generator().manual_seed(seed)


def _batch_indices(cfg: TrainConfig, micro_step: int, n_images: int) -> torch.Tensor:
    per_epoch = n_images // cfg.train_batch_size
    epoch, k = divmod(micro_step, per_epoch)
    order = torch.randperm(n_images, generator=_generator(cfg.seed, epoch))
    return order[k * cfg.train_batch_size:(k + 1) * cfg.train_batch_size]


def _noise_and_timesteps(cfg: TrainConfig, micro_step: int, positions: range, shape, T: int):
    noises, steps = [], []
    for pos in positions:
        g = _generator(cfg.seed, 7919, micro_step, pos)
        steps.append(torch.randint(0, T, (1,), generator=g))
        noises.append(torch.randn(shape, generator=g))
    return torch.stack(noises), torch.cat(steps)


def list_checkpoints(output_dir: Path) -> list[Path]:
    folder = output_dir / "checkpoints"
    found = [p for p in folder.glob(f"{CHECKPOINT_PREFIX}*") if p.is_dir()
             and p.name[len(CHECKPOINT_PREFIX):].isdigit()] if folder.is_dir() else []
    return sorted(found, key=lambda p: int(p.name[len(CHECKPOINT_PREFIX):]))


def _resolve_resume(cfg: TrainConfig) -> Path | None:
    if cfg.resume is None:
        return None
    if cfg.resume == "latest":
        found = list_checkpoints(Path(cfg.output_dir))
        if not found:
            raise FileAccessError(f"--resume latest: no checkpoints in "
                                  f"{cfg.output_dir}/checkpoints; start without --resume")
        return found[-1]
    path = Path(cfg.resume)
    if not (path / STATE_FILE).is_file():
        raise FileAccessError(f"--resume {cfg.resume}: not a checkpoint folder (no {STATE_FILE}); "
                              f"pass a folder under {cfg.output_dir}/checkpoints or 'latest'")
    return path


def train(cfg: TrainConfig) -> Path:
    """Run (or resume) training; returns the output folder, a DDPM pipeline in diffusers format."""
    from accelerate import Accelerator
    from tqdm.auto import tqdm

    cfg.check()
    resume_from = _resolve_resume(cfg)
    scheduler_from_name(cfg.sample_scheduler)  # an unknown name fails before any work is done
    accelerator = Accelerator(mixed_precision=cfg.mixed_precision,
                              gradient_accumulation_steps=cfg.gradient_accumulation_steps)
    world, rank = accelerator.num_processes, accelerator.process_index
    if cfg.train_batch_size % world:
        raise ConfigError(f"--train-batch-size {cfg.train_batch_size} must divide evenly over "
                          f"{world} processes")
    images = load_training_images(cfg.data, cfg.resolution, cfg.mode)
    if len(images) < cfg.train_batch_size:
        raise ConfigError(f"{len(images)} images is fewer than one batch of "
                          f"{cfg.train_batch_size}; lower --train-batch-size")
    channels, resolution = images.shape[1], images.shape[-1]

    torch.manual_seed(cfg.seed)  # the same initial weights on every process
    unet = registry.models.get("UNet2DModel")(**cfg.unet_config(channels, resolution))
    noise_scheduler = registry.schedulers.get("DDPMScheduler")(
        num_train_timesteps=cfg.num_train_timesteps, beta_schedule=cfg.beta_schedule,
        prediction_type=cfg.prediction_type)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=cfg.learning_rate,
                                  weight_decay=cfg.weight_decay)
    lr_schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _lr_factor(cfg, s))
    ema = EMAModel(unet.parameters(), decay=cfg.ema_decay, use_ema_warmup=True) \
        if cfg.use_ema else None
    # The LR schedule is stepped once per optimizer step by us, not by accelerate (which would
    # step it once per process and so warm up P times faster on P processes).
    unet, optimizer = accelerator.prepare(unet, optimizer)
    accelerator.register_for_checkpointing(lr_schedule)
    if ema is not None:
        accelerator.register_for_checkpointing(ema)

    step = 0
    if resume_from is not None:
        step = _load_checkpoint(accelerator, resume_from, cfg)
    output = Path(cfg.output_dir)
    log_path = output / "logs.jsonl"
    bar = tqdm(total=cfg.max_steps, initial=step, desc="training",
               disable=not accelerator.is_main_process)
    local = cfg.train_batch_size // world
    T = cfg.num_train_timesteps
    unet.train()
    while step < cfg.max_steps:
        for accum in range(cfg.gradient_accumulation_steps):
            micro = step * cfg.gradient_accumulation_steps + accum
            index = _batch_indices(cfg, micro, len(images))[rank * local:(rank + 1) * local]
            clean = images[index].to(accelerator.device)
            positions = range(rank * local, (rank + 1) * local)
            noise, timesteps = _noise_and_timesteps(cfg, micro, positions, clean.shape[1:], T)
            noise, timesteps = noise.to(clean.device), timesteps.to(clean.device)
            noisy = noise_scheduler.add_noise(clean, noise, timesteps)
            with accelerator.accumulate(unet):
                with accelerator.autocast():
                    prediction = unet(noisy, timesteps).sample
                target = training_target(noise_scheduler, clean, noise, timesteps)
                weights = (min_snr_weights(noise_scheduler, timesteps, cfg.snr_gamma)
                           if cfg.snr_gamma else None)
                loss = diffusion_loss(prediction, target, weights)
                accelerator.backward(loss)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
        lr_schedule.step()
        step += 1
        if ema is not None:
            ema.step(accelerator.unwrap_model(unet).parameters())
        mean_loss = accelerator.reduce(loss.detach(), reduction="mean").item()
        bar.update(1)
        bar.set_postfix(loss=f"{mean_loss:.4f}")
        if accelerator.is_main_process:
            output.mkdir(parents=True, exist_ok=True)
            with open(log_path, "a", encoding="utf-8") as log:
                log.write(json.dumps({"step": step, "loss": mean_loss,
                                      "lr": lr_schedule.get_last_lr()[0]}) + "\n")
        if cfg.checkpointing_steps and step % cfg.checkpointing_steps == 0:
            _save_checkpoint(accelerator, cfg, step)
        if cfg.save_images_steps and step % cfg.save_images_steps == 0 \
                and accelerator.is_main_process:
            _save_samples(accelerator.unwrap_model(unet), noise_scheduler, ema, cfg, step)
    bar.close()
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        final = accelerator.unwrap_model(unet)
        if ema is not None:
            ema.store(final.parameters())
            ema.copy_to(final.parameters())
        pipeline = registry.pipelines.get("DDPMPipeline")(unet=final, scheduler=noise_scheduler)
        pipeline.save_pretrained(output)
        if ema is not None:
            ema.restore(final.parameters())
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return output


def _save_checkpoint(accelerator, cfg: TrainConfig, step: int) -> None:
    folder = Path(cfg.output_dir) / "checkpoints"
    final = folder / f"{CHECKPOINT_PREFIX}{step}"
    partial = folder / f".{CHECKPOINT_PREFIX}{step}.partial"
    if accelerator.is_main_process:
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(partial))
    if accelerator.is_main_process:
        state = {"step": step, "config": dataclasses.asdict(cfg)}
        atomic_write_text(partial / STATE_FILE, json.dumps(state, indent=2, default=list) + "\n")
        shutil.rmtree(final, ignore_errors=True)
        os.rename(partial, final)  # a crash before this line leaves only a .partial folder
        if cfg.checkpoints_total_limit:
            for old in list_checkpoints(Path(cfg.output_dir))[:-cfg.checkpoints_total_limit]:
                shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()


_MUST_MATCH = ("data", "resolution", "mode", "train_batch_size", "gradient_accumulation_steps",
               "seed", "block_out_channels", "layers_per_block", "attention_levels",
               "norm_num_groups", "num_train_timesteps", "beta_schedule", "prediction_type",
               "use_ema")


def _load_checkpoint(accelerator, folder: Path, cfg: TrainConfig) -> int:
    try:
        state = json.loads((folder / STATE_FILE).read_text(encoding="utf-8"))
        step = int(state["step"])
        saved = state["config"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"checkpoint {folder} is corrupt ({STATE_FILE}: {exc}); resume "
                              f"from an earlier checkpoint or start again") from exc
    current = json.loads(json.dumps(dataclasses.asdict(cfg), default=list))
    differ = [k for k in _MUST_MATCH if saved.get(k) != current.get(k)]
    if differ:
        raise ConfigError(f"checkpoint {folder} was made with different settings for "
                          f"{differ} (saved: {[saved.get(k) for k in differ]}); resume with the "
                          f"same settings or start a new output folder")
    try:
        accelerator.load_state(str(folder))
    except Exception as exc:
        raise CheckpointError(f"checkpoint {folder} could not be loaded ({type(exc).__name__}: "
                              f"{exc}); it is incomplete or corrupt: resume from an earlier "
                              f"checkpoint") from exc
    return step


def _save_samples(unet, noise_scheduler, ema, cfg: TrainConfig, step: int) -> None:
    from .grid import save_grid

    if ema is not None:
        ema.store(unet.parameters())
        ema.copy_to(unet.parameters())
    unet.eval()
    try:
        sampler = scheduler_from_name(cfg.sample_scheduler, noise_scheduler.config)
        pipeline = registry.pipelines.get("DDPMPipeline")(unet=unet, scheduler=sampler)
        pipeline.set_progress_bar_config(disable=True)
        generators = [torch.Generator().manual_seed(cfg.seed + i) for i in range(cfg.num_samples)]
        images = pipeline(batch_size=cfg.num_samples, generator=generators,
                          num_inference_steps=cfg.sample_steps, output_type="pil").images
        save_grid(images, Path(cfg.output_dir) / "samples" / f"step-{step}.png")
    finally:
        unet.train()
        if ema is not None:
            ema.restore(unet.parameters())

