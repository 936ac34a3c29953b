"""Euler sampling of an EDM-parameterised model: Karras et al. 2022, "Elucidating the design space
of diffusion-based generative models", Algorithm 2 (first order, optional churn) with the
network preconditioning of Table 1 / eq. 7:

    D(x; sigma) = c_skip(sigma) x + c_out(sigma) F(c_in(sigma) x; c_noise(sigma)),
    c_skip = sigma_data^2 / (sigma^2 + sigma_data^2),
    c_out  = sigma sigma_data / sqrt(sigma^2 + sigma_data^2)   (negated for v-prediction),
    c_in   = 1 / sqrt(sigma^2 + sigma_data^2),
    c_noise = ln(sigma) / 4.

The discretisation is the paper's eq. 5 (``sigma_schedule="karras"``, with ``rho``) or even spacing
in log-sigma ("exponential"), between ``sigma_max`` and ``sigma_min``; ``timesteps`` hold
c_noise(sigma_i), the value the network takes.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from diffusion_kernel.errors import SchedulerError
from diffusion_kernel.scheduling import SchedulerOutput, check_option

from .euler import churn
from .schedules import as_dtype, exponential_sigmas, karras_sigmas_at
from .sigma_schedule import FINAL_SIGMAS_TYPES, SigmaSchedulerMixin, euler_step

SIGMA_SCHEDULES = ("karras", "exponential")


class EDMEulerScheduler(SigmaSchedulerMixin):
    """Euler sampler for EDM-preconditioned models (no training beta schedule: sigma is the time).

    Config (diffusers format): ``sigma_min``, ``sigma_max``, ``sigma_data`` (the data's standard
    deviation in the preconditioning), ``sigma_schedule`` ("karras" or "exponential"), ``rho``
    (Karras exponent), ``num_train_timesteps``, ``prediction_type`` ("epsilon" or
    "v_prediction") and ``final_sigmas_type`` ("zero" or "sigma_min").
    """

    _compatibles = ()
    order = 1
    _refuses_integer_timesteps = True
    prediction_types = ("epsilon", "v_prediction")

    def __init__(
        self,
        sigma_min: float | None = 0.002,
        sigma_max: float | None = 80.0,
        sigma_data: float = 0.5,
        sigma_schedule: str = "karras",
        num_train_timesteps: int = 1000,
        prediction_type: str = "epsilon",
        rho: float = 7.0,
        final_sigmas_type: str = "zero",
    ):
        owner = type(self).__name__
        check_option("sigma_schedule", sigma_schedule, SIGMA_SCHEDULES, owner)
        check_option("prediction_type", prediction_type, self.prediction_types, owner)
        check_option("final_sigmas_type", final_sigmas_type, FINAL_SIGMAS_TYPES, owner)
        # None (as in an Euler config swapped in) means the paper's range, Karras et al. Table 1
        self.sigma_min = 0.002 if sigma_min is None else sigma_min
        self.sigma_max = 80.0 if sigma_max is None else sigma_max
        self._clear_run()
        # the diffusers format's starting run: T + 1 sigmas along the schedule, no step count
        self.set_timesteps(sigmas=torch.arange(num_train_timesteps + 1) / num_train_timesteps)
        self.num_inference_steps = None

    # -- preconditioning (Karras et al. 2022, Table 1) ---------------------------------------------
    def precondition_inputs(self, sample: torch.Tensor, sigma: float) -> torch.Tensor:
        """c_in(sigma) x."""
        return sample * (1.0 / (float(sigma) ** 2 + self.config.sigma_data**2) ** 0.5)

    def precondition_noise(self, sigma: float | torch.Tensor) -> torch.Tensor:
        """c_noise(sigma) = ln(sigma) / 4, the network's noise-level input."""
        return 0.25 * torch.as_tensor(sigma, dtype=torch.float32).reshape(-1).log()

    def _output_coefficients(self, sigma: float) -> tuple[float, float]:
        """(c_skip, c_out) with D = c_skip x + c_out F."""
        sigma_data = self.config.sigma_data
        c_skip = sigma_data**2 / (sigma**2 + sigma_data**2)
        c_out = sigma * sigma_data / (sigma**2 + sigma_data**2) ** 0.5
        return c_skip, (c_out if self.config.prediction_type == "epsilon" else -c_out)

    def precondition_outputs(self, sample: torch.Tensor, model_output: torch.Tensor,
                             sigma: float) -> torch.Tensor:
        """D(x; sigma) = c_skip x + c_out F."""
        c_skip, c_out = self._output_coefficients(float(sigma))
        return c_skip * sample + c_out * model_output

    # -- the run ----------------------------------------------------------------------------------
    @property
    def init_noise_sigma(self) -> float:
        """sqrt(sigma_max^2 + 1), as in the diffusers format."""
        return (self.sigma_max**2 + 1) ** 0.5

    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: str | torch.device | None = None,
        sigmas: Sequence[float] | torch.Tensor | None = None,
    ) -> None:
        """Prepare a run of ``num_inference_steps``. ``sigmas`` here (as in the diffusers format)
        are custom *positions* in [0, 1] along the schedule (0 -> sigma_max, 1 -> sigma_min), one
        per step. Starts clean."""
        cfg, owner = self.config, type(self).__name__
        if sigmas is None:
            n = self._check_num_steps(num_inference_steps, owner)
            ramp = torch.linspace(0, 1, n, dtype=torch.float64)
        else:
            ramp = torch.as_tensor(sigmas, dtype=torch.float64).reshape(-1)
            if len(ramp) < 1 or not bool(((ramp >= 0) & (ramp <= 1)).all()):
                raise SchedulerError(
                    f"{owner}.set_timesteps: sigmas= are positions along the schedule in [0, 1] "
                    f"(0 -> sigma_max, 1 -> sigma_min), as in the diffusers format; got "
                    f"{ramp.tolist()}"
                )
            n = len(ramp)
        if cfg.sigma_schedule == "karras":
            run = karras_sigmas_at(ramp, self.sigma_min, self.sigma_max, cfg.rho).float()
        else:  # evenly spaced in log-sigma; only the number of positions matters
            run = torch.from_numpy(exponential_sigmas(self.sigma_min, self.sigma_max, n)).float()
        last = float(run[-1]) if cfg.final_sigmas_type == "sigma_min" else 0.0
        sigmas = torch.cat([run, torch.tensor([last])])
        self._set_run(sigmas.numpy(), self.precondition_noise(run), n, device)

    def _input_scales(self) -> list[float]:
        # c_in(sigma_i) = 1 / sqrt(sigma_i^2 + sigma_data^2)
        sigma_data = self.config.sigma_data
        return [1.0 / (s * s + sigma_data**2) ** 0.5 for s in self._model_input_sigmas()]

    def step(
        self,
        model_output: torch.Tensor,
        timestep: float | torch.Tensor,
        sample: torch.Tensor,
        s_churn: float = 0.0,
        s_tmin: float = 0.0,
        s_tmax: float = float("inf"),
        s_noise: float = 1.0,
        generator: torch.Generator | list[torch.Generator] | None = None,
        return_dict: bool = True,
        pred_original_sample: torch.Tensor | None = None,
    ) -> SchedulerOutput | tuple:
        """One Euler step (Algorithm 2, lines 4-8 without the correction); ``s_churn`` > 0 raises
        sigma to sigma_hat first (``generator``: one, or one per sample). A given
        ``pred_original_sample`` (e.g. after guidance on D) replaces the preconditioned output."""
        i = self._begin_step(model_output, timestep, sample)
        sigma, sigma_next = self._sigma_list[i], self._sigma_list[i + 1]
        x = as_dtype(sample, torch.float32)
        x, sigma_hat = churn(x, sigma, len(self._sigma_list) - 1, s_churn, s_tmin, s_tmax,
                             s_noise, model_output, generator)
        if pred_original_sample is None:
            c_skip, c_out = self._output_coefficients(sigma_hat)
            prev_sample, denoised = euler_step(x, model_output, sigma_hat, sigma_next,
                                               c_skip, c_out)
        else:
            denoised = pred_original_sample
            prev_sample = torch.add(x, x - denoised, alpha=(sigma_next - sigma_hat) / sigma_hat)
        prev_sample = as_dtype(prev_sample, model_output.dtype)
        return self._step_output(i, prev_sample, denoised, return_dict)

