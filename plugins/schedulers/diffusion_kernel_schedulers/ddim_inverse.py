"""DDIM inversion: the deterministic DDIM step (Song et al. 2021, eq. 12 with sigma = 0) run
forwards, clean data -> noise, as in Dhariwal & Nichol 2021 (sec. 4 / appendix F) and
Mokady et al. 2023 ("Null-text inversion", eq. 4):

    x_next = sqrt(abar_next) x0_hat + sqrt(1 - abar_next) eps_theta(x_cur, t_next),
    x0_hat = (x_cur - sqrt(1 - abar_cur) eps) / sqrt(abar_cur)

The run visits ascending timesteps t_0 < t_1 < ...; step i moves from the level of t_{i-1} (for
i = 0 the clean end: abar = 1, or alpha_bar_0 with ``set_alpha_to_one=False``) to t_i, with the
model evaluated at t_i (the approximation eps(x_{t-1}, t) ~ eps(x_t, t) the method rests on).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from diffusion_kernel.scheduling import SchedulerOutput

from .alpha_schedule import AlphaSchedulerMixin, check_num_inference_steps, limit_x0, x0_and_eps
from .schedules import lincomb, spaced_timesteps


class DDIMInverseScheduler(AlphaSchedulerMixin):
    """DDIM inversion: maps a clean sample to the noise that DDIM would turn back into it.

    As in the diffusers format, the constructor takes further keyword arguments and ignores them
    (kept in the config, logged), and ``set_alpha_to_zero``, the format's old name of
    ``set_alpha_to_one``, sets that option."""

    order = 1
    init_noise_sigma = 1.0
    timestep_spacings = ("leading", "trailing")
    _deprecated_kwargs = ("set_alpha_to_zero",)

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        trained_betas: Sequence[float] | None = None,
        clip_sample: bool = True,
        set_alpha_to_one: bool = True,
        steps_offset: int = 0,
        prediction_type: str = "epsilon",
        clip_sample_range: float = 1.0,
        timestep_spacing: str = "leading",
        rescale_betas_zero_snr: bool = False,
        **kwargs,
    ):
        if kwargs.get("set_alpha_to_zero") is not None:  # the old name means this option
            set_alpha_to_one = kwargs["set_alpha_to_zero"]
            self.register_to_config(set_alpha_to_one=set_alpha_to_one)
        self._init_training_schedule(self.config)
        self.initial_alpha_cumprod = np.float32(1.0) if set_alpha_to_one else self._abar[0]
        self.timesteps = torch.arange(num_train_timesteps)

    def set_timesteps(self, num_inference_steps: int,
                      device: str | torch.device | None = None) -> None:
        """Prepare an inversion of ``num_inference_steps`` steps (ascending timesteps)."""
        owner = type(self).__name__
        T = self.config.num_train_timesteps
        n = check_num_inference_steps(num_inference_steps, T, owner)
        run = spaced_timesteps(self.config.timestep_spacing, n, T, self.config.steps_offset,
                               owner)[::-1]
        run = np.minimum(run, T - 1)
        self._set_run(run, device)
        # Per step i: sqrt(abar_cur), sqrt(1 - abar_cur) of the level the sample is at, and
        # sqrt(abar_next), sqrt(1 - abar_next) of the level it moves to.
        self._coefficients = []
        for i, t in enumerate(run.tolist()):
            a_cur = self._abar[run[i - 1]] if i > 0 else self.initial_alpha_cumprod
            a_next = self._abar[t]
            self._coefficients.append(self._floats(
                (a_cur**0.5, (1 - a_cur) ** 0.5, a_next**0.5, (1 - a_next) ** 0.5)))

    def step(self, model_output: torch.Tensor, timestep: int | torch.Tensor,
             sample: torch.Tensor, return_dict: bool = True) -> SchedulerOutput | tuple:
        """One inversion step to ``timestep`` (the model output is eps_theta(sample, timestep)).
        Returns ``SchedulerOutput(prev_sample, pred_original_sample)``; ``prev_sample`` is the
        noisier sample (named as in the diffusers format)."""
        i = self._step_index(timestep)
        self._check_model_output(model_output, sample)
        sqrt_a_cur, sqrt_1m_a_cur, sqrt_a_next, sqrt_1m_a_next = self._coefficients[i]
        x0, eps = x0_and_eps(model_output, sample, sqrt_a_cur, sqrt_1m_a_cur,
                             self.config.prediction_type)
        x0 = limit_x0(x0, self, owned=x0 is not model_output)
        next_sample = lincomb(sqrt_a_next, x0, sqrt_1m_a_next, eps)
        if not return_dict:
            return next_sample, x0
        return SchedulerOutput(prev_sample=next_sample, pred_original_sample=x0)
