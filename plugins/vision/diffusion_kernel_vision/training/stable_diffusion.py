"""What the Stable Diffusion fine-tunes (text-to-image, textual inversion, DreamBooth) share: the
base pipeline with its frozen parts, the per-sample random draws, the denoising loss, LoRA on the
U-Net, validation images and the final files.

The loss is the latent-diffusion objective (Rombach et al. 2022, eq. 2): for VAE latents z0 of a
training image, noise eps and a uniform timestep t, the U-Net sees z_t = add_noise(z0, eps, t)
with the text's CLIP hidden states and regresses onto eps (or v, or z0: the scheduler's
``prediction_type``), optionally weighted by min-SNR-gamma (Hang et al. 2023) and with offset
noise (Guttenberg 2023).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from diffusion_kernel import registry
from diffusion_kernel.errors import ConfigError
from diffusion_kernel.training import PREDICTION_TYPES, min_snr_weights, training_target

from .loop import LoopConfig, Trainer, ema_weights, generator

LORA_ADAPTER = "default_0"  # the adapter name diffusers gives the first loaded LoRA
LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")  # attention projections, as diffusers'
# LoRA training scripts adapt
SAMPLE_STREAM = 104_729  # keys the per-sample generators apart from the data order's


@dataclass(kw_only=True)
class StableDiffusionConfig(LoopConfig):
    """Options every Stable Diffusion fine-tune takes (the loop's and these)."""

    model: str
    data: str
    resolution: int | None = None  # default: the model's own (U-Net sample size x VAE factor)
    random_flip: bool = False
    learning_rate: float = 1e-4
    lr_warmup_steps: int = 0
    weight_decay: float = 1e-2
    max_grad_norm: float | None = 1.0
    train_batch_size: int = 4
    gradient_checkpointing: bool = False
    snr_gamma: float | None = None
    noise_offset: float = 0.0
    prediction_type: str | None = None  # default: the model's scheduler's
    validation_prompt: str | None = None
    validation_steps: int = 100
    num_validation_images: int = 4
    validation_inference_steps: int = 25
    validation_guidance_scale: float = 7.5

    MUST_MATCH: ClassVar[tuple[str, ...]] = LoopConfig.MUST_MATCH + (
        "model", "data", "resolution", "random_flip", "prediction_type")

    def check(self) -> None:
        super().check()
        if self.resolution is not None and (self.resolution <= 0 or self.resolution % 8):
            raise ConfigError(f"--resolution must be a positive multiple of 8, got "
                              f"{self.resolution}")
        if self.prediction_type is not None and self.prediction_type not in PREDICTION_TYPES:
            raise ConfigError(f"--prediction-type {self.prediction_type!r}: choose one of "
                              f"{', '.join(PREDICTION_TYPES)}")
        if self.snr_gamma is not None and self.snr_gamma <= 0:
            raise ConfigError(f"--snr-gamma must be positive (5 is usual), got {self.snr_gamma}")
        if self.noise_offset < 0:
            raise ConfigError(f"--noise-offset must be 0 or positive, got {self.noise_offset}")
        if self.validation_steps <= 0 or self.num_validation_images <= 0:
            raise ConfigError("--validation-steps and --num-validation-images must be positive")


@dataclass(kw_only=True)
class LoRAOptions:
    """The LoRA options of the commands that can train the U-Net either way."""

    lora_rank: int | None = None  # None: fine-tune every U-Net weight
    lora_alpha: float | None = None  # None: the rank (scale 1)
    lora_target_modules: tuple[str, ...] = LORA_TARGETS

    LORA_MUST_MATCH: ClassVar[tuple[str, ...]] = ("lora_rank", "lora_alpha",
                                                  "lora_target_modules")

    def check_lora(self) -> None:
        if self.lora_rank is not None and self.lora_rank <= 0:
            raise ConfigError(f"--lora-rank must be positive, got {self.lora_rank}")
        if self.lora_rank is None and self.lora_alpha is not None:
            raise ConfigError("--lora-alpha needs --lora-rank")
        if not self.lora_target_modules:
            raise ConfigError("--lora-target-modules needs at least one module name")


@dataclass
class SampleDraws:
    """The random draws of one training sample, all from its own keyed generator."""

    timestep: torch.Tensor  # (1,) long
    noise: torch.Tensor  # latent-shaped
    posterior: torch.Tensor  # latent-shaped: the VAE posterior's eps
    offset: torch.Tensor  # (C,): the offset-noise direction
    flip: bool
    choice: float  # in [0, 1): picks a caption or prompt template


def sample_draws(seed: int, stream: int, micro_step: int, position: int, shape: tuple,
                 num_train_timesteps: int) -> SampleDraws:
    """The draws of the sample at global ``position`` of ``micro_step`` (always all of them, in
    one order, so that an option never shifts another draw)."""
    g = generator(seed, SAMPLE_STREAM, stream, micro_step, position)
    return SampleDraws(timestep=torch.randint(0, num_train_timesteps, (1,), generator=g),
                       noise=torch.randn(shape, generator=g),
                       posterior=torch.randn(shape, generator=g),
                       offset=torch.randn(shape[0], generator=g),
                       flip=bool(torch.rand((), generator=g) < 0.5),
                       choice=float(torch.rand((), generator=g)))


class StableDiffusionTrainer(Trainer):
    """The base pipeline and the denoising loss; subclasses choose what trains."""

    cfg: StableDiffusionConfig

    def load_base(self, accelerator) -> None:
        """Load the base pipeline, freeze all of it, move it to the device (frozen weights in the
        mixed-precision dtype, as diffusers' scripts keep them)."""
        cfg = self.cfg
        pipe = registry.pipelines.get("StableDiffusionPipeline").from_pretrained(cfg.model)
        pipe.set_progress_bar_config(disable=True)
        self.pipe = pipe
        self.token_cache: dict[str, torch.Tensor] = {}  # text -> its token ids (token_ids)
        overrides = {"prediction_type": cfg.prediction_type} if cfg.prediction_type else {}
        self.noise_scheduler = registry.schedulers.get("DDPMScheduler").from_config(
            pipe.scheduler.config, **overrides)
        self.weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(
            cfg.mixed_precision, torch.float32)
        for model in (pipe.vae, pipe.text_encoder, pipe.unet):
            model.requires_grad_(False)
            model.eval()
            model.to(accelerator.device, self.weight_dtype)
        factor = 2 ** (len(pipe.vae.config.block_out_channels) - 1)
        self.resolution = cfg.resolution or pipe.unet.config.sample_size * factor
        if cfg.gradient_checkpointing:
            pipe.unet.enable_gradient_checkpointing()

    # The U-Net: fully or through LoRA -----------------------------------------------------------
    def train_unet(self, lora: LoRAOptions) -> torch.nn.Module:
        """Make the U-Net trainable: every weight (in float32), or only new LoRA adapters
        (rank ``lora.lora_rank``, float32) on the target layers, the base weights untouched."""
        unet = self.pipe.unet
        if lora.lora_rank is None:
            unet.to(torch.float32)
            unet.requires_grad_(True)
            return unet
        from diffusion_kernel.nn.lora import add_lora, lora_parameters

        init = generator(self.cfg.seed, 3)  # the same adapters on every process
        add_lora(unet, LORA_ADAPTER, lora.lora_rank, lora.lora_alpha,
                 target_modules=lora.lora_target_modules, generator=init)
        for parameter in lora_parameters(unet, LORA_ADAPTER):  # trained in float32 always
            parameter.data = parameter.data.float()
        return unet

    # Text --------------------------------------------------------------------------------------
    def token_ids(self, texts: list[str]) -> torch.Tensor:
        """The padded token ids of ``texts`` (B, max_length). Each text is tokenized once per
        run (the tokenizer is fixed once training starts; tokenizing every step cost about 10 ms
        of a 0.2-0.5 s tiny-model step)."""
        cache = self.token_cache
        missing = [t for t in dict.fromkeys(texts) if t not in cache]
        if missing:
            tokenizer = self.pipe.tokenizer
            ids = tokenizer(missing, padding="max_length", max_length=tokenizer.model_max_length,
                            truncation=True, return_tensors="pt").input_ids
            cache.update(zip(missing, ids))
        return torch.stack([cache[t] for t in texts])

    def encode_text(self, texts: list[str], text_encoder=None) -> torch.Tensor:
        """CLIP last hidden states of ``texts`` (through ``text_encoder``, default the frozen
        one, without gradients)."""
        ids = self.token_ids(texts).to(self.accelerator.device)
        if text_encoder is None:
            with torch.no_grad():
                return self.pipe.text_encoder(ids)[0]
        return text_encoder(ids)[0]

    # The loss ----------------------------------------------------------------------------------
    def draws(self, micro_step: int, positions: range, stream: int = 0) -> list[SampleDraws]:
        return [sample_draws(self.cfg.seed, stream, micro_step, pos, self.latents.shape,
                             self.noise_scheduler.config.num_train_timesteps)
                for pos in positions]

    def sample_latents(self, indices: list[int], draws: list[SampleDraws],
                       latents=None) -> torch.Tensor:
        cache = self.latents if latents is None else latents
        keys = [(i, self.cfg.random_flip and d.flip) for i, d in zip(indices, draws)]
        return cache.sample(keys, torch.stack([d.posterior for d in draws]))

    def denoising_losses(self, unet, latents: torch.Tensor, hidden_states: torch.Tensor,
                         draws: list[SampleDraws]) -> torch.Tensor:
        """The per-sample loss (B,): mean squared error between the U-Net's prediction and its
        target (unweighted; see ``loss_weights``)."""
        cfg, device = self.cfg, latents.device
        noise = torch.stack([d.noise for d in draws]).to(device)
        if cfg.noise_offset:
            offset = torch.stack([d.offset for d in draws]).to(device)
            noise = noise + cfg.noise_offset * offset[:, :, None, None]
        timesteps = self.timesteps(draws, device)
        noisy = self.noise_scheduler.add_noise(latents, noise, timesteps)
        with self.accelerator.autocast():
            prediction = unet(noisy, timesteps, hidden_states.to(self.unet_input_dtype(unet))
                              ).sample
        target = training_target(self.noise_scheduler, latents, noise, timesteps)
        return ((prediction.float() - target.float()) ** 2).mean(dim=(1, 2, 3))

    def loss_weights(self, draws: list[SampleDraws], device) -> torch.Tensor | float:
        """min-SNR-gamma weights of these samples with ``--snr-gamma``, else 1."""
        if not self.cfg.snr_gamma:
            return 1.0
        return min_snr_weights(self.noise_scheduler, self.timesteps(draws, device),
                               self.cfg.snr_gamma)

    @staticmethod
    def timesteps(draws: list[SampleDraws], device) -> torch.Tensor:
        return torch.cat([d.timestep for d in draws]).to(device)

    @staticmethod
    def unet_input_dtype(unet) -> torch.dtype:
        # The first parameter (conv_in's weight) has the frozen weights' dtype; a DDP wrapper
        # yields its module's parameters, so no unwrapping (accelerate's walks every module).
        return next(unet.parameters()).dtype

    # Validation and saving ---------------------------------------------------------------------
    def save_validation_images(self, step: int, prompt: str) -> None:
        """A grid of ``--num-validation-images`` images of ``prompt`` (per-image seeds
        ``seed + i``) made with the weights as they are now: ``validation/step-N.png``."""
        from ..grid import save_grid

        cfg = self.cfg
        generators = [torch.Generator().manual_seed(cfg.seed + i)
                      for i in range(cfg.num_validation_images)]
        with self.inference_weights(), self.accelerator.autocast(), torch.no_grad():
            images = self.pipe([prompt] * cfg.num_validation_images, generator=generators,
                               num_inference_steps=cfg.validation_inference_steps,
                               guidance_scale=cfg.validation_guidance_scale,
                               height=self.resolution, width=self.resolution).images
        save_grid(images, self.output / "validation" / f"step-{step}.png")

    def every_step(self, step: int) -> None:
        cfg = self.cfg
        if cfg.validation_prompt and (step % cfg.validation_steps == 0 or step == cfg.max_steps):
            self.save_validation_images(step, cfg.validation_prompt)

    def inference_weights(self):
        """A context in which the trained model is in eval mode (a trainer with EMA puts the
        averaged weights in)."""
        return ema_weights(None, self.unwrapped_model)

    def save_lora(self) -> None:
        """``pytorch_lora_weights.safetensors`` in diffusers' format: the U-Net adapter under
        ``unet.<layer>.lora.down.weight`` / ``.lora.up.weight``, the keys diffusers' LoRA
        training scripts write (with the alphas in the file's metadata when they differ from
        the rank)."""
        from diffusion_kernel.nn.lora import lora_state_dict

        from ..loaders.lora_pipeline import lora_adapter_metadata

        unet = self.pipe.unet
        state = {key.replace(".lora_A.", ".lora.down.").replace(".lora_B.", ".lora.up."): value
                 for key, value in lora_state_dict(unet, LORA_ADAPTER).items()}
        type(self.pipe).save_lora_weights(
            self.output, unet_lora_layers=state,
            unet_lora_adapter_metadata=lora_adapter_metadata(unet, LORA_ADAPTER))

    def save_pipeline(self, **trained) -> None:
        """The whole pipeline folder (diffusers layout) with the ``trained`` components (e.g.
        ``unet=...``). Under mixed precision the frozen components were cast for speed, so they
        are read again from the base model and saved as they were."""
        pipe = self.pipe
        if self.weight_dtype != torch.float32:
            pipe = registry.pipelines.get("StableDiffusionPipeline").from_pretrained(
                self.cfg.model, **trained)
        pipe.save_pretrained(self.output)
