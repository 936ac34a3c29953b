"""Exact reference solutions for sampler tests: Gaussian data under a VP diffusion.

For data x_0 ~ N(mu, s^2) (each coordinate independent) and x_sigma = x_0 + sigma eps (the sigma
view of x_t = alpha_t x_0 + sigma_t eps, with sigma = sigma_t / alpha_t and
x_sigma = x_t / alpha_t), everything a sampler needs is known in closed form:

- the exact denoiser (posterior mean)  D(x; sigma) = E[x_0 | x_sigma = x]
  = mu + s^2 / (s^2 + sigma^2) (x - mu);
- the exact noise prediction  eps(x; sigma) = (x - D(x; sigma)) / sigma;
- the probability-flow ODE  dx/dsigma = (x - D(x; sigma)) / sigma = (x - mu) sigma / (s^2 + sigma^2)
  (Karras et al. 2022, eq. 3), whose solution from (sigma_a, x_a) is
  x(sigma) = mu + (x_a - mu) sqrt((s^2 + sigma^2) / (s^2 + sigma_a^2)).

``run_exact_model`` drives any scheduler (VP-space ones such as DPM-Solver, and sigma-space ones
such as Euler, whose ``init_noise_sigma`` exceeds 1) with the exact model and returns its final
sample next to the exact one, both as float64.
"""

from __future__ import annotations

import math

import torch


class GaussianData:
    """x_0 ~ N(mu, s^2) per coordinate."""

    def __init__(self, mu: float = 0.3, s: float = 0.5):
        self.mu, self.s = mu, s

    def denoiser(self, x: torch.Tensor, sigma: float) -> torch.Tensor:
        """D(x; sigma) = E[x_0 | x_sigma = x] for x in the sigma view."""
        return self.mu + self.s**2 / (self.s**2 + sigma**2) * (x - self.mu)

    def noise_prediction(self, x_vp: torch.Tensor, sigma: float) -> torch.Tensor:
        """The exact epsilon-model output for a VP-scaled input x_t = x_sigma / sqrt(1+sigma^2)."""
        x = x_vp * math.sqrt(1.0 + sigma**2)
        return (x - self.denoiser(x, sigma)) / sigma

    def flow(self, x_a: torch.Tensor, sigma_a: float, sigma: float) -> torch.Tensor:
        """The exact probability-flow ODE solution at ``sigma`` from ``x_a`` at ``sigma_a``."""
        ratio = math.sqrt((self.s**2 + sigma**2) / (self.s**2 + sigma_a**2))
        return self.mu + (x_a - self.mu) * ratio

    def sample_prior(self, sigma: float, shape, seed: int = 0) -> torch.Tensor:
        """x_sigma ~ N(mu, s^2 + sigma^2): a draw from the marginal at ``sigma``, float64."""
        g = torch.Generator().manual_seed(seed)
        z = torch.randn(shape, generator=g, dtype=torch.float64)
        return self.mu + math.sqrt(self.s**2 + sigma**2) * z


def _current_sigma(scheduler) -> float:
    index = getattr(scheduler, "step_index", None)
    return float(scheduler.sigmas[0 if index is None else index])


def run_exact_model(scheduler, num_inference_steps: int, data: GaussianData,
                    shape=(1, 64), seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(final sample, exact final sample) of a deterministic run with the exact eps-model.

    The model is told the scheduler's own sigma at each call (``sigmas[step_index]``), so the only
    error left is the solver's. Runs ending at sigma = 0 take their last step from the smallest
    positive sigma straight to the denoiser's output (a first-order step to sigma = 0 returns
    D(x) for every solver here), so the exact reference is D applied to the exact flow there.
    """
    scheduler.set_timesteps(num_inference_steps)
    sigmas = [float(s) for s in scheduler.sigmas]
    sigma_0 = sigmas[0]
    vp_space = float(scheduler.init_noise_sigma) == 1.0
    x_start = data.sample_prior(sigma_0, shape, seed)  # the same x_sigma for every scheduler
    x = x_start / math.sqrt(1.0 + sigma_0**2) if vp_space else x_start.clone()
    for t in scheduler.timesteps:
        model_input = scheduler.scale_model_input(x, t)
        eps = data.noise_prediction(model_input, _current_sigma(scheduler))
        x = scheduler.step(eps, t, x).prev_sample
    sigma_end = sigmas[-1]
    if sigma_end > 0:
        exact = data.flow(x_start, sigma_0, sigma_end)
        if vp_space:
            exact = exact / math.sqrt(1.0 + sigma_end**2)
    else:
        sigma_last = min(s for s in sigmas if s > 0)
        exact = data.denoiser(data.flow(x_start, sigma_0, sigma_last), sigma_last)
    return x.double(), exact


def observed_orders(errors: list[float]) -> list[float]:
    """log2 of successive error ratios for step counts that double: the empirical order."""
    return [math.log2(a / b) for a, b in zip(errors, errors[1:])]
