"""Training utilities, modality-free: EMA of weights, timestep and noise sampling, the regression
target for each prediction type, and min-SNR-gamma loss weights.

Everything about the noise schedule comes from the scheduler passed in (its ``alphas_cumprod`` and
``add_noise``): there is no second copy of the schedule math here.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any

import torch

from .errors import ConfigError

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


class EMAModel:
    """Exponential moving average of parameters: theta_ema <- d * theta_ema + (1 - d) * theta.

    The decay warms up so early, poorly trained weights fade fast: with ``use_ema_warmup`` it is
    ``1 - (1 + step / inv_gamma) ** -power`` (Karras-style warm-up), otherwise
    ``(1 + step) / (10 + step)``; both are clipped to [``min_decay``, ``decay``].
    ``state_dict`` / ``load_state_dict`` make it part of a checkpoint (accelerate's
    ``register_for_checkpointing`` accepts it).
    """

    # The settings and counter that ``state_dict`` saves beside the averaged tensors.
    _STATE_KEYS = ("decay", "min_decay", "update_after_step", "use_ema_warmup", "inv_gamma",
                   "power", "optimization_step")

    def __init__(
        self,
        parameters: Iterable[torch.nn.Parameter],
        decay: float = 0.9999,
        min_decay: float = 0.0,
        update_after_step: int = 0,
        use_ema_warmup: bool = False,
        inv_gamma: float = 1.0,
        power: float = 2 / 3,
    ):
        if not 0.0 <= min_decay <= decay <= 1.0:
            raise ConfigError(f"EMA needs 0 <= min_decay <= decay <= 1, got min_decay="
                              f"{min_decay}, decay={decay}")
        self.shadow_params = [p.detach().clone() for p in parameters]
        self.decay, self.min_decay = decay, min_decay
        self.update_after_step = update_after_step
        self.use_ema_warmup, self.inv_gamma, self.power = use_ema_warmup, inv_gamma, power
        self.optimization_step = 0
        self._stored: list[torch.Tensor] | None = None

    def get_decay(self, optimization_step: int) -> float:
        step = max(0, optimization_step - self.update_after_step - 1)
        if step <= 0:
            return 0.0
        if self.use_ema_warmup:
            value = 1 - (1 + step / self.inv_gamma) ** -self.power
        else:
            value = (1 + step) / (10 + step)
        return max(self.min_decay, min(value, self.decay))

    @torch.no_grad()
    def step(self, parameters: Iterable[torch.nn.Parameter]) -> None:
        """Fold the current parameters into the average (call after each optimizer step)."""
        parameters = list(parameters)
        self._check(parameters)
        self.optimization_step += 1
        one_minus_decay = 1 - self.get_decay(self.optimization_step)
        for shadow, param in zip(self.shadow_params, parameters):
            if param.requires_grad:
                shadow.sub_(one_minus_decay * (shadow - param.to(shadow.dtype)))
            else:
                shadow.copy_(param)

    def copy_to(self, parameters: Iterable[torch.nn.Parameter]) -> None:
        """Write the averaged weights into a model's parameters (e.g. before saving)."""
        parameters = list(parameters)
        self._check(parameters)
        for shadow, param in zip(self.shadow_params, parameters):
            param.data.copy_(shadow.to(param.device, param.dtype))

    def store(self, parameters: Iterable[torch.nn.Parameter]) -> None:
        """Keep a copy of the current weights, to ``restore`` after evaluating with EMA ones."""
        self._stored = [p.detach().clone() for p in parameters]

    def restore(self, parameters: Iterable[torch.nn.Parameter]) -> None:
        if self._stored is None:
            raise ConfigError("EMAModel.restore() called without store() first")
        for stored, param in zip(self._stored, parameters):
            param.data.copy_(stored)
        self._stored = None

    def to(self, device=None, dtype=None) -> EMAModel:
        self.shadow_params = [
            p.to(device=device, dtype=dtype if dtype is not None and p.is_floating_point()
                 else p.dtype) for p in self.shadow_params
        ]
        return self

    def state_dict(self) -> dict[str, Any]:
        return {**{k: getattr(self, k) for k in self._STATE_KEYS},
                "shadow_params": [p.clone() for p in self.shadow_params]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        state = copy.copy(state)
        shadow = state.pop("shadow_params", None)
        if shadow is None or len(shadow) != len(self.shadow_params):
            raise ConfigError(
                f"EMA state holds {0 if shadow is None else len(shadow)} tensors but this model "
                f"has {len(self.shadow_params)} parameters; the checkpoint is for another model"
            )
        for key, value in state.items():
            if key not in self._STATE_KEYS:
                raise ConfigError(f"unknown EMA state key {key!r}")
            setattr(self, key, value)
        self.shadow_params = [s.to(p.device, p.dtype) for s, p in zip(shadow, self.shadow_params)]

    def _check(self, parameters: list) -> None:
        if len(parameters) != len(self.shadow_params):
            raise ConfigError(f"EMA tracks {len(self.shadow_params)} parameters, got "
                              f"{len(parameters)}; pass the same model's parameters")


def sample_timesteps(batch_size: int, scheduler: Any, generator: torch.Generator | None = None,
                     device: str | torch.device = "cpu") -> torch.Tensor:
    """Training timesteps drawn uniformly from 0..T-1 (Ho et al. 2020, Algorithm 1, line 3)."""
    num_train_timesteps = scheduler.config.num_train_timesteps
    return torch.randint(0, num_train_timesteps, (batch_size,), generator=generator,
                         device=device, dtype=torch.long)


def sample_noise(like: torch.Tensor, generator: torch.Generator | None = None,
                 offset_noise: float = 0.0) -> torch.Tensor:
    """Gaussian noise shaped like the data; ``offset_noise`` adds a per-channel constant
    (Guttenberg 2023) so the model learns to change overall brightness."""
    noise = torch.randn(like.shape, generator=generator, dtype=like.dtype, device=like.device)
    if offset_noise:
        shape = (like.shape[0], like.shape[1]) + (1,) * (like.ndim - 2)
        offset = torch.randn(shape, generator=generator, dtype=like.dtype,
                             device=noise.device)
        noise = noise + offset_noise * offset
    return noise


def _alphas_at(scheduler: Any, timesteps: torch.Tensor, like: torch.Tensor):
    """alpha_bar at each timestep, in float32, shaped to broadcast against ``like``."""
    alphas_cumprod = scheduler.alphas_cumprod.to(like.device)[timesteps].to(torch.float32)
    shape = (-1,) + (1,) * (like.ndim - 1)
    return alphas_cumprod.reshape(shape)


def _prediction_type(scheduler: Any, prediction_type: str | None) -> str:
    """The asked-for prediction type, else the scheduler's; an unknown one raises."""
    prediction_type = prediction_type or scheduler.config.prediction_type
    if prediction_type not in PREDICTION_TYPES:
        raise ConfigError(f"unknown prediction_type {prediction_type!r}; valid values are: "
                          f"{', '.join(PREDICTION_TYPES)}")
    return prediction_type


def training_target(scheduler: Any, clean: torch.Tensor, noise: torch.Tensor,
                    timesteps: torch.Tensor, prediction_type: str | None = None) -> torch.Tensor:
    """What the model regresses onto for ``x_t = add_noise(clean, noise, t)``:
    epsilon -> the noise; sample -> the clean data; v_prediction ->
    v = sqrt(alpha_bar) * eps - sqrt(1 - alpha_bar) * x0 (Salimans & Ho 2022, sec. 4)."""
    prediction_type = _prediction_type(scheduler, prediction_type)
    if prediction_type == "epsilon":
        return noise
    if prediction_type == "sample":
        return clean
    alpha_bar = _alphas_at(scheduler, timesteps, clean)
    v = alpha_bar.sqrt() * noise.float() - (1 - alpha_bar).sqrt() * clean.float()
    return v.to(clean.dtype)


def snr(scheduler: Any, timesteps: torch.Tensor) -> torch.Tensor:
    """Signal-to-noise ratio alpha_bar_t / (1 - alpha_bar_t) at each timestep."""
    alpha_bar = _alphas_at(scheduler, timesteps, timesteps)
    return alpha_bar / (1 - alpha_bar)


def min_snr_weights(scheduler: Any, timesteps: torch.Tensor, gamma: float = 5.0,
                    prediction_type: str | None = None) -> torch.Tensor:
    """Per-sample loss weights of min-SNR-gamma (Hang et al. 2023, eq. 8), expressed for the loss
    on each prediction type: epsilon min(SNR, g)/SNR, v min(SNR, g)/(SNR + 1), x0 min(SNR, g)."""
    prediction_type = _prediction_type(scheduler, prediction_type)
    ratio = snr(scheduler, timesteps)
    clipped = torch.clamp(ratio, max=gamma)
    if prediction_type == "epsilon":
        return clipped / ratio
    if prediction_type == "v_prediction":
        return clipped / (ratio + 1)
    return clipped


def diffusion_loss(model_output: torch.Tensor, target: torch.Tensor,
                   weights: torch.Tensor | None = None) -> torch.Tensor:
    """Mean squared error per sample, optionally weighted (min-SNR), averaged over the batch."""
    per_sample = ((model_output.float() - target.float()) ** 2).mean(
        dim=tuple(range(1, model_output.ndim)))
    if weights is not None:
        per_sample = per_sample * weights
    return per_sample.mean()
