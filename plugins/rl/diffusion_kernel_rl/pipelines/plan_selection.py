"""Choosing one plan among candidates sampled for the same start and goal, with the diffusion
model alone (no map, no reward): a planner must not look at the walls.

- ``"likelihood"``: the candidate the model finds most likely. Each candidate x0 is noised again
  to a few fixed levels t, x_t = sqrt(a_t) x0 + sqrt(1 - a_t) e, its known states written in as
  during sampling, and the model's estimate of x0 is compared with x0. The mean squared error
  over the levels is a Monte-Carlo estimate of the denoising terms of the diffusion ELBO (Ho et
  al. 2020, eq. 5, up to the weight of each level; for a model that predicts x0 each term is
  proportional to ||x0 - x0_hat(x_t, t)||^2), so a lower error is a higher likelihood. The noise
  e is drawn once per level from a fixed seed and is the same for every candidate (common random
  numbers: the candidates differ in their plan, not in their test). A plan through a wall never
  occurs in the training data, so the model denoises it worse.
- ``"medoid"``: the candidate whose states are closest on average to the other candidates' (the
  plan they agree on most).

Both work on the normalised trajectories (batch * candidates, horizon, transition), the
candidates of one plan next to each other, and return one score per trajectory (lower is
better).
"""

from __future__ import annotations

from typing import Any

import torch
from diffusion_kernel.errors import PipelineError

from .trajectory import apply_conditions, model_sample

SELECTIONS = ("likelihood", "medoid")
# The noise levels of the "likelihood" score, as shares of the scheduler's training chain; chosen
# on start/goal pairs apart from the evaluation pairs (docs/rl.md, "Choosing among candidates").
LIKELIHOOD_LEVELS = (0.125, 0.375, 0.625, 0.875)
NOISE_SEED = 0


def likelihood_timesteps(scheduler: Any, levels=None) -> list[int]:
    """The training timesteps of ``levels`` (shares of the chain; default
    ``LIKELIHOOD_LEVELS``) for this scheduler."""
    steps = scheduler.config.num_train_timesteps
    levels = LIKELIHOOD_LEVELS if levels is None else levels
    return sorted({min(steps - 1, int(level * steps)) for level in levels})


@torch.no_grad()
def denoising_errors(unet: Any, scheduler: Any, x: torch.Tensor,
                     conditions: dict[int, torch.Tensor], action_dim: int,
                     timesteps: list[int], seed: int = NOISE_SEED) -> torch.Tensor:
    """(n,) mean squared error of the model's clean-trajectory estimate on ``x`` re-noised at
    each of ``timesteps`` (fixed noise from ``seed``, shared by all n), over every value but the
    conditioned states."""
    alphas = getattr(scheduler, "alphas_cumprod", None)
    if alphas is None:
        raise PipelineError(f"choosing a plan by likelihood needs a scheduler with a noise "
                            f"schedule (alphas_cumprod, e.g. DDPM or DDIM); "
                            f"{type(scheduler).__name__} has none: use selection='medoid'")
    prediction = scheduler.config.get("prediction_type", "epsilon")
    if prediction not in ("sample", "epsilon", "v_prediction"):
        raise PipelineError(f"cannot score plans with a model predicting {prediction!r}")
    n, horizon, channels = x.shape
    known = torch.ones_like(x[:1])
    for step in conditions:  # the conditioned states are given, not denoised
        known[:, step, action_dim:] = 0
    generator = torch.Generator().manual_seed(seed)
    total = torch.zeros(n, dtype=torch.float64, device=x.device)
    for t in timesteps:
        noise = torch.randn((1, horizon, channels), generator=generator).to(x)
        a = alphas[t].to(x)
        noisy = apply_conditions(a.sqrt() * x + (1 - a).sqrt() * noise, conditions, action_dim)
        output = model_sample(unet, noisy, t).permute(0, 2, 1)
        if prediction == "epsilon":
            output = (noisy - (1 - a).sqrt() * output) / a.sqrt()
        elif prediction == "v_prediction":
            output = a.sqrt() * noisy - (1 - a).sqrt() * output
        total += (((output - x) ** 2) * known).sum((1, 2)).double() / known.sum()
    return total / len(timesteps)


def medoid_distances(x: torch.Tensor, candidates: int, action_dim: int) -> torch.Tensor:
    """(n,) mean distance (per step, over the states) from each trajectory to the other
    candidates of its plan."""
    states = x[..., action_dim:].reshape(-1, candidates, *x.shape[1:-1], x.shape[-1] - action_dim)
    apart = (states[:, :, None] - states[:, None]).square().sum(-1).sqrt().mean(-1)
    return (apart.sum(-1) / max(candidates - 1, 1)).reshape(-1)
