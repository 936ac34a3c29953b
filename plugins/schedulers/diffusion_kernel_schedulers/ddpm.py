"""DDPM: Ho, Jain & Abbeel 2020, "Denoising Diffusion Probabilistic Models" (arXiv:2006.11239),
with the learned variances of Nichol & Dhariwal 2021, "Improved DDPM" (arXiv:2102.09672).

One ancestral step samples x_prev ~ q(x_prev | x_t, x0_hat), the Gaussian posterior of eq. 6-7:

    mu_tilde = sqrt(abar_prev) beta_t / (1 - abar_t) x0_hat
             + sqrt(alpha_t) (1 - abar_prev) / (1 - abar_t) x_t                  (eq. 7)
    beta_tilde = (1 - abar_prev) / (1 - abar_t) beta_t                            (eq. 7)

where, for a run that skips timesteps, "prev" is the next visited timestep and
alpha_t = abar_t / abar_prev, beta_t = 1 - alpha_t (Nichol & Dhariwal 2021, eq. 19). The variance
is beta_tilde ("fixed_small"), beta_t ("fixed_large"), both computed in log space ("*_log"), a
model-predicted variance ("learned") or a model-predicted interpolation
exp(v log beta_t + (1 - v) log beta_tilde) with v = (out + 1) / 2 ("learned_range", Nichol &
Dhariwal eq. 15). No noise is added on the last step (Algorithm 2: z = 0 when going to x_0).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from diffusion_kernel.errors import SchedulerError
from diffusion_kernel.scheduling import SchedulerOutput, check_option

from .alpha_schedule import (
    AlphaSchedulerMixin,
    limit_x0,
    previous_timestep,
    x0_and_eps,
)
from .schedules import accumulate, gaussian_noise, lincomb
from .sigma_schedule import KARRAS_DIFFUSION_SCHEDULERS

VARIANCE_TYPES = ("fixed_small", "fixed_small_log", "fixed_large", "fixed_large_log",
                  "learned", "learned_range")
LEARNED_VARIANCE_TYPES = ("learned", "learned_range")


def _sqrt32(x: float) -> float:
    """sqrt(x) in torch's float32 arithmetic, as the reference computes its coefficients: torch's
    pow(x, 0.5) is one ulp off the correctly rounded value for about a fifth of the cosine
    schedule's alpha_bar (numpy's is not), and thresholded runs magnify that (see
    ``_thresholded_step``)."""
    return float(torch.tensor(float(x), dtype=torch.float32) ** 0.5)


def _log32(x: float) -> float:
    """log(x) in torch's float32 arithmetic (the reference's learned-range variances)."""
    return float(torch.log(torch.tensor(float(x), dtype=torch.float32)))


class DDPMScheduler(AlphaSchedulerMixin):
    """Ancestral sampling of the DDPM reverse process; also the training-time noiser
    (``add_noise``, ``get_velocity``)."""

    _compatibles = KARRAS_DIFFUSION_SCHEDULERS
    order = 1
    init_noise_sigma = 1.0

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        trained_betas: Sequence[float] | None = None,
        variance_type: str | None = "fixed_small",
        clip_sample: bool = True,
        prediction_type: str = "epsilon",
        thresholding: bool = False,
        dynamic_thresholding_ratio: float = 0.995,
        clip_sample_range: float = 1.0,
        sample_max_value: float = 1.0,
        timestep_spacing: str = "leading",
        steps_offset: int = 0,
        rescale_betas_zero_snr: bool = False,
    ):
        # None comes with configs of other schedulers (DPM-Solver's variance_type=None): the
        # format treats it as the default, fixed_small
        variance_type = variance_type or "fixed_small"
        check_option("variance_type", variance_type, VARIANCE_TYPES, type(self).__name__)
        self._init_training_schedule(self.config)
        self.variance_type = variance_type
        self.custom_timesteps = False
        # As in the diffusers format, a new DDPM steps over the whole training chain, T - 1 down
        # to 0, until set_timesteps picks a run (num_inference_steps stays None until then).
        self._set_run(np.arange(num_train_timesteps - 1, -1, -1))
        self.num_inference_steps = None

    def set_timesteps(self, num_inference_steps: int | None = None,
                      device: str | torch.device | None = None,
                      timesteps: Sequence[int] | None = None) -> None:
        """Prepare a run of ``num_inference_steps`` steps spaced by ``config.timestep_spacing``, or
        over explicit strictly descending ``timesteps``. Calling it again starts a fresh run."""
        run = self._run_timesteps(num_inference_steps, timesteps)
        self.custom_timesteps = timesteps is not None
        self._set_run(run, device)

    def _set_run(self, timesteps: np.ndarray, device=None) -> None:
        super()._set_run(timesteps, device)
        self._run = [int(t) for t in timesteps]
        # Filled as steps are taken; kept per run, so a pipeline called again with the same
        # steps (the usual case) finds its coefficients computed (the same float32 numbers).
        runs = self.__dict__.setdefault("_coefficients_of_run", {})
        key = (getattr(self, "variance_type", None), tuple(self._run))
        if len(runs) >= 8 and key not in runs:
            runs.clear()
        self._coefficients: dict[int, dict[str, float]] = runs.setdefault(key, {})

    def _require_timesteps(self) -> None:
        pass  # there is always a run: the training chain until set_timesteps picks another

    def _step_coefficients(self, i: int) -> dict[str, float]:
        """Everything step i needs, from abar_t and abar_prev (the next visited timestep);
        computed on the step's first use in a run."""
        if i in self._coefficients:
            return self._coefficients[i]
        run = self._run
        t = run[i]
        last = i + 1 == len(run)
        a_t = self._abar[t]
        a_prev = np.float32(1.0) if last else self._abar[run[i + 1]]
        alpha_t = a_t / a_prev  # alpha_t and beta_t of the (possibly skipping) step
        beta_t = 1 - alpha_t
        beta_tilde = max((1 - a_prev) / (1 - a_t) * beta_t, np.float32(1e-20))  # eq. 7, floored
        fixed_std = {"fixed_small": _sqrt32(beta_tilde), "fixed_small_log": _sqrt32(beta_tilde),
                     "fixed_large": _sqrt32(beta_t), "fixed_large_log": _sqrt32(beta_t)}
        coefficients = {
            "sqrt_a_t": _sqrt32(a_t), "sqrt_1m_a_t": _sqrt32(1 - a_t),
            "x0_coeff": _sqrt32(a_prev) * beta_t / (1 - a_t),  # eq. 7, mu_tilde's x0 coefficient
            "xt_coeff": _sqrt32(alpha_t) * (1 - a_prev) / (1 - a_t),  # eq. 7, mu_tilde's x_t one
            "std": fixed_std.get(self.variance_type, 0.0),
            "log_beta": _log32(beta_t), "log_beta_tilde": _log32(beta_tilde),
        }
        coefficients = {k: float(v) for k, v in coefficients.items()}
        coefficients["noise"] = not last  # Algorithm 2: z = 0 on the step that lands on x_0
        self._coefficients[i] = coefficients
        return coefficients

    def step(
        self,
        model_output: torch.Tensor,
        timestep: int | torch.Tensor,
        sample: torch.Tensor,
        generator: torch.Generator | list[torch.Generator] | None = None,
        return_dict: bool = True,
    ) -> SchedulerOutput | tuple:
        """One ancestral step from ``timestep`` to the next timestep of the run.

        With a learned variance the model output holds 2x the sample's channels: the prediction,
        then the variance values. ``generator`` is one generator or one per sample.
        Returns ``SchedulerOutput(prev_sample, pred_original_sample)``.
        """
        i = self._step_index(timestep)
        predicted_variance = None
        if self.variance_type in LEARNED_VARIANCE_TYPES:
            channels = sample.shape[1]
            if model_output.shape[1] != 2 * channels:
                raise SchedulerError(
                    f"variance_type={self.variance_type!r} needs a model output with twice the "
                    f"sample's {channels} channels (prediction, variance); got shape "
                    f"{tuple(model_output.shape)}"
                )
            model_output, predicted_variance = model_output.split(channels, dim=1)
        self._check_model_output(model_output, sample)
        c = self._step_coefficients(i)

        if self.config.thresholding:
            prev_sample, x0 = self._thresholded_step(c, model_output, sample, predicted_variance,
                                                     generator)
            return (prev_sample, x0) if not return_dict else \
                SchedulerOutput(prev_sample=prev_sample, pred_original_sample=x0)

        # 1. x0_hat from the model output (eq. 15 for eps), then clip / threshold
        x0, _ = x0_and_eps(model_output, sample, c["sqrt_a_t"], c["sqrt_1m_a_t"],
                           self.config.prediction_type)
        x0 = limit_x0(x0, self, owned=x0 is not model_output)

        # 2. posterior mean mu_tilde(x_t, x0_hat) (eq. 7), 3. + sigma_t z (Algorithm 2, line 4)
        mean = ((c["x0_coeff"], x0), (c["xt_coeff"], sample))
        if c["noise"]:
            noise = gaussian_noise(model_output, generator)
            prev_sample = accumulate(noise, self._std(c, predicted_variance), *mean)
        else:
            prev_sample = lincomb(*mean[0], *mean[1])
        if not return_dict:
            return prev_sample, x0
        return SchedulerOutput(prev_sample=prev_sample, pred_original_sample=x0)

    def _thresholded_step(self, c, model_output, sample, predicted_variance, generator):
        """The step under dynamic thresholding (Saharia et al. 2022, sec. 2.3), in the
        reference's order of operations: s is a quantile of |x0_hat| per image, so a one-ulp
        change in x0_hat can move s and the whole image with it, and over a run (DeepFloyd IF)
        the fused passes' round-off grows to 1e-3. Written this way, runs equal the reference's
        bit for bit (the fused path is kept for every other mode)."""
        a, b = c["sqrt_a_t"], c["sqrt_1m_a_t"]
        prediction = self.config.prediction_type
        if prediction == "epsilon":  # eq. 15
            x0 = (sample - b * model_output) / a
        elif prediction == "sample":
            x0 = model_output
        else:  # v-prediction
            x0 = a * sample - b * model_output
        x0 = limit_x0(x0, self)
        prev_sample = c["x0_coeff"] * x0 + c["xt_coeff"] * sample  # eq. 7
        if c["noise"]:
            noise = gaussian_noise(model_output, generator)
            prev_sample = prev_sample + self._std(c, predicted_variance) * noise
        return prev_sample, x0

    def _std(self, c: dict[str, float], predicted_variance: torch.Tensor | None):
        if self.variance_type == "learned":  # the model predicts Sigma itself
            return predicted_variance**0.5
        if self.variance_type == "learned_range":  # Nichol & Dhariwal 2021, eq. 15
            frac = (predicted_variance + 1) / 2
            log_variance = frac * c["log_beta"] + (1 - frac) * c["log_beta_tilde"]
            return torch.exp(0.5 * log_variance)
        return c["std"]

    def _get_variance(self, t: int | torch.Tensor, predicted_variance: torch.Tensor | None = None,
                      variance_type: str | None = None) -> torch.Tensor:
        """The reference's per-timestep variance helper, for code written against it (diffusers'
        ``ValueGuidedRLPipeline`` scales its value gradient by ``exp(0.5 * _get_variance(t))``).

        Values, from abar at ``t`` and at the step's previous timestep (``t - 1`` before
        ``set_timesteps``, as in the reference), beta_t = 1 - abar_t / abar_prev and
        beta_tilde = max((1 - abar_prev) / (1 - abar_t) beta_t, 1e-20) (eq. 7):
        ``fixed_small`` beta_tilde; ``fixed_small_log`` sqrt(beta_tilde), the standard deviation
        and not a log (the reference's convention, kept so callers get its numbers);
        ``fixed_large`` beta_t; ``fixed_large_log`` log beta_t; ``learned`` the predicted
        variance itself; ``learned_range`` the interpolated log variance (Nichol & Dhariwal
        2021, eq. 15). A float32 tensor.
        """
        variance_type = variance_type or self.variance_type
        check_option("variance_type", variance_type, VARIANCE_TYPES, type(self).__name__)
        t = int(t)
        prev = int(self.previous_timestep(t))  # t - 1 before set_timesteps
        a_t = self.alphas_cumprod[t]
        a_prev = self.alphas_cumprod[prev] if prev >= 0 else torch.tensor(1.0)
        beta_t = 1 - a_t / a_prev
        beta_tilde = torch.clamp((1 - a_prev) / (1 - a_t) * beta_t, min=1e-20)
        if variance_type in LEARNED_VARIANCE_TYPES and predicted_variance is None:
            raise SchedulerError(f"_get_variance with variance_type={variance_type!r} needs "
                                 f"predicted_variance")
        if variance_type == "learned":
            return predicted_variance
        if variance_type == "learned_range":
            frac = (predicted_variance + 1) / 2
            return frac * torch.log(beta_t) + (1 - frac) * torch.log(beta_tilde)
        return {"fixed_small": lambda: beta_tilde, "fixed_small_log": lambda: beta_tilde.sqrt(),
                "fixed_large": lambda: beta_t, "fixed_large_log": lambda: torch.log(beta_t),
                }[variance_type]()

    def previous_timestep(self, timestep: int | torch.Tensor) -> int | torch.Tensor:
        """The timestep the step from ``timestep`` lands on (diffusers API; see
        ``alpha_schedule.previous_timestep``)."""
        return previous_timestep(self, timestep)
