"""The unCLIP sampler (Ramesh et al. 2022, "Hierarchical Text-Conditional Image Generation with CLIP
Latents", the Karlo / DALL-E 2 checkpoints): ancestral DDPM steps (Ho et al. 2020, eq. 6-7) on the
cosine schedule of Nichol & Dhariwal 2021 (eq. 17), between two timesteps of the caller's choice.

From t to the previous visited timestep s (``prev_timestep``; t - 1 when not given):

    alpha = abar_t / abar_s,  beta = 1 - alpha                       (Nichol & Dhariwal, eq. 19)
    mu = sqrt(abar_s) beta / (1 - abar_t) x0_hat + sqrt(alpha) (1 - abar_s) / (1 - abar_t) x_t
    x_s = mu + sigma z,  z = 0 when t = 0

with x0_hat from the model (``prediction_type`` "epsilon": eq. 15 of Ho et al.; "sample": the
output itself, which the unCLIP prior predicts), clipped to [-clip_sample_range,
clip_sample_range]; sigma is sqrt(beta_tilde), beta_tilde = (1 - abar_s) / (1 - abar_t) beta
("fixed_small_log"), or the learned interpolation exp((v log beta + (1 - v) log beta_tilde) / 2),
v = (out + 1) / 2 ("learned_range", Nichol & Dhariwal eq. 15).

Timesteps: ``num_inference_steps`` values spread evenly over [T - 1, 0] and rounded, both ends
included (the format's choice; at least 2 steps). Coefficients and the step are computed in
float32 in the reference's order of operations, so runs equal the reference's bit for bit.
"""

from __future__ import annotations

import numpy as np
import torch
from diffusion_kernel.errors import SchedulerError
from diffusion_kernel.scheduling import SchedulerMixin, SchedulerOutput, check_option

from .alpha_schedule import check_num_inference_steps
from .schedules import broadcast_to, cosine_betas, gaussian_noise

VARIANCE_TYPES = ("fixed_small_log", "learned_range")
PREDICTION_TYPES = ("epsilon", "sample")


class UnCLIPScheduler(SchedulerMixin):
    """Ancestral sampling for the unCLIP prior, decoder and super-resolution stages."""

    order = 1
    init_noise_sigma = 1.0
    prediction_types = PREDICTION_TYPES

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        variance_type: str = "fixed_small_log",
        clip_sample: bool = True,
        clip_sample_range: float = 1.0,
        prediction_type: str = "epsilon",
        beta_schedule: str = "squaredcos_cap_v2",
    ):
        owner = type(self).__name__
        check_option("variance_type", variance_type, VARIANCE_TYPES, owner)
        check_option("prediction_type", prediction_type, PREDICTION_TYPES, owner)
        check_option("beta_schedule", beta_schedule, ("squaredcos_cap_v2",), owner)
        self.betas = cosine_betas(num_train_timesteps)
        self.alphas = 1.0 - self.betas
        self.alphas_cumprod = torch.cumprod(self.alphas, dim=0)
        self.variance_type = variance_type
        self.num_inference_steps: int | None = None
        self.timesteps = torch.arange(num_train_timesteps - 1, -1, -1)
        self._coefficients: dict[tuple[int, int], dict[str, float]] = {}

    def set_timesteps(self, num_inference_steps: int,
                      device: str | torch.device | None = None) -> None:
        """``num_inference_steps`` (at least 2) timesteps from T - 1 down to 0."""
        owner = type(self).__name__
        T = self.config.num_train_timesteps
        n = check_num_inference_steps(num_inference_steps, T, owner)
        if n < 2:
            raise SchedulerError(f"{owner}.set_timesteps: the run goes from timestep {T - 1} to "
                                 f"0, which takes at least 2 steps; got num_inference_steps={n}")
        step_ratio = (T - 1) / (n - 1)
        run = (np.arange(0, n) * step_ratio).round()[::-1].copy().astype(np.int64)
        self.timesteps = torch.from_numpy(run).to(device)
        self.num_inference_steps = n

    def _step_coefficients(self, t: int, prev: int) -> dict[str, float]:
        """The step from t to prev (cached per pair), in torch's float32 scalar arithmetic, as
        the reference computes it: clipping x0_hat magnifies one-ulp differences over a run (torch's
        pow(x, 0.5) differs from numpy's for about a fifth of the schedule)."""
        key = (t, prev)
        if key not in self._coefficients:
            a_t = self.alphas_cumprod[t]
            a_prev = self.alphas_cumprod[prev] if prev >= 0 else torch.tensor(1.0)
            beta = self.betas[t] if prev == t - 1 else 1 - a_t / a_prev
            alpha = self.alphas[t] if prev == t - 1 else 1 - beta
            beta_tilde = (1 - a_prev) / (1 - a_t) * beta  # Ho et al. eq. 7
            # 0 when prev = -1 (only a step to x_0 has no noise, so only its log is unused)
            log_beta_tilde = torch.log(torch.clamp(beta_tilde, min=1e-20))
            self._coefficients[key] = {k: float(v) for k, v in {
                "sqrt_a_t": a_t ** 0.5, "sqrt_1m_a_t": (1 - a_t) ** 0.5,
                "x0_coeff": a_prev ** 0.5 * beta / (1 - a_t),
                "xt_coeff": alpha ** 0.5 * (1 - a_prev) / (1 - a_t),
                "std": torch.exp(0.5 * log_beta_tilde),
                "log_beta_tilde": log_beta_tilde, "log_beta": torch.log(beta),
            }.items()}
        return self._coefficients[key]

    def step(
        self,
        model_output: torch.Tensor,
        timestep: int | torch.Tensor,
        sample: torch.Tensor,
        prev_timestep: int | torch.Tensor | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
        return_dict: bool = True,
    ) -> SchedulerOutput | tuple:
        """One ancestral step from ``timestep`` to ``prev_timestep`` (default ``timestep - 1``).

        With ``variance_type="learned_range"`` a model output with twice the sample's channels is
        split into the prediction and the variance values. ``generator``: one, or one per sample.
        Returns ``SchedulerOutput(prev_sample, pred_original_sample)``."""
        t = _as_int(timestep, "timestep")
        prev = t - 1 if prev_timestep is None else _as_int(prev_timestep, "prev_timestep")
        T = self.config.num_train_timesteps
        if not 0 <= t < T or not -1 <= prev < t:
            raise SchedulerError(f"UnCLIPScheduler.step: need 0 <= timestep < {T} and -1 <= "
                                 f"prev_timestep < timestep, got {t} and {prev}")
        predicted_variance = None
        if self.variance_type == "learned_range" and model_output.shape[1] == 2 * sample.shape[1]:
            model_output, predicted_variance = model_output.split(sample.shape[1], dim=1)
        self._check_model_output(model_output, sample)
        c = self._step_coefficients(t, prev)

        # In the reference's order of operations (clipping magnifies round-off differences).
        if self.config.prediction_type == "epsilon":  # Ho et al. eq. 15
            x0 = (sample - c["sqrt_1m_a_t"] * model_output) / c["sqrt_a_t"]
        else:
            x0 = model_output
        if self.config.clip_sample:
            x0 = x0.clamp(-self.config.clip_sample_range, self.config.clip_sample_range)

        prev_sample = c["x0_coeff"] * x0 + c["xt_coeff"] * sample  # the posterior mean, eq. 7
        if t > 0:
            noise = gaussian_noise(model_output, generator)
            prev_sample = prev_sample + self._std(c, predicted_variance) * noise
        if not return_dict:
            return prev_sample, x0
        return SchedulerOutput(prev_sample=prev_sample, pred_original_sample=x0)

    def _std(self, c: dict[str, float], predicted_variance: torch.Tensor | None):
        if self.variance_type == "fixed_small_log" or predicted_variance is None:
            if self.variance_type == "learned_range":
                raise SchedulerError("UnCLIPScheduler(variance_type='learned_range') needs a "
                                     "model output with twice the sample's channels (prediction, "
                                     "variance)")
            return c["std"]
        frac = (predicted_variance + 1) / 2  # Nichol & Dhariwal eq. 15, in log space
        return torch.exp(0.5 * (frac * c["log_beta"] + (1 - frac) * c["log_beta_tilde"]))

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor,
                  timesteps: torch.Tensor) -> torch.Tensor:
        """x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) noise (Ho et al. eq. 4)."""
        abar = self.alphas_cumprod.to(device=original_samples.device, dtype=original_samples.dtype)
        index = torch.as_tensor(timesteps, device=original_samples.device).long().reshape(-1)
        if index.numel() and (index.min() < 0 or index.max() >= len(abar)):
            raise SchedulerError(f"timesteps must lie in [0, {len(abar) - 1}], got "
                                 f"{index.tolist()}")
        a = broadcast_to(abar[index], original_samples)
        return a**0.5 * original_samples + (1 - a) ** 0.5 * noise


def _as_int(value: int | torch.Tensor, name: str) -> int:
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise SchedulerError(f"UnCLIPScheduler.step takes one {name} for the whole batch, "
                                 f"got a tensor of shape {tuple(value.shape)}")
        value = value.item()
    if not float(value).is_integer():
        raise SchedulerError(f"UnCLIPScheduler.step: {name} must be an integer, got {value}")
    return int(value)
