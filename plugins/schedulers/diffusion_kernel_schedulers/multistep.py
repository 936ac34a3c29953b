"""The algebra the exponential-integrator solvers share: DPM-Solver, DPM-Solver++ (multistep and
singlestep), UniPC and DEIS.

A VP diffusion x_t = alpha_t x_0 + sigma_t eps is, in the sigma view (sigma = sigma_t / alpha_t),

    alpha_t = 1 / sqrt(1 + sigma^2),   sigma_t = sigma alpha_t,
    lambda_t = log(alpha_t / sigma_t) = -log sigma          (half the log-SNR);

a flow-matching schedule (``use_flow_sigmas``) is x_t = (1 - s) x_0 + s eps: alpha_t = 1 - s,
sigma_t = s, with the same lambda_t = log(alpha_t / sigma_t).

Written in lambda, the probability-flow ODE has a linear part that is integrated exactly
(variation of constants, Lu et al. 2022, eq. 3.4; Lu et al. 2022b, eq. 8); a solver only
approximates the model's term, a data prediction x_theta (the "++" / predict-x0 solvers) or a noise
prediction eps_theta, by a polynomial in lambda through a few past model outputs. Everything a
step needs besides the model output depends on the schedule alone, so ``set_timesteps``
precomputes it (``alpha``, ``sigma_t``, ``lambda`` per run sigma, and each solver's per-step
coefficients) and ``step`` is a handful of fused tensor ops.

Here:
- ``solver_timesteps``: the timestep grid these solvers use (n + 1 points, the last dropped);
- ``phi_coefficients``: the coefficients of the first-, second- and third-order updates of
  DPM-Solver(++), ODE and SDE (shared by the multistep and the singlestep solver);
- ``MultistepScheduler``: the state every such scheduler shares (training schedule, run sigmas
  with Karras / exponential / uniform-lambda discretisation or shifted flow-matching sigmas and
  the final sigma, model-output conversion with thresholding, history of converted outputs,
  step index, ``add_noise``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from diffusion_kernel.errors import ConfigError, SchedulerError
from diffusion_kernel.scheduling import SchedulerMixin, SchedulerOutput, check_option

from .schedules import (
    PREDICTION_TYPES,
    TIMESTEP_SPACINGS,
    RunIndexMixin,
    alphas_cumprod_for,
    betas_for,
    broadcast_to,
    dynamic_threshold,
    exponential_sigmas,
    own_option,
    shift_flow_sigmas,
    sigma_to_t,
    sigmas_from_alphas_cumprod,
    stretch_flow_sigmas_to_terminal,
    time_shift_flow_sigmas,
)
from .sigma_schedule import KARRAS_DIFFUSION_SCHEDULERS, discretise, sigma_kind

FINAL_SIGMAS_TYPES = ("zero", "sigma_min")
# learned variance channels are dropped; DDPM's fixed types (a swapped config) mean there are none
VARIANCE_TYPES = (None, "learned", "learned_range", "fixed_small", "fixed_small_log", "fixed_large",
                  "fixed_large_log")
FLOW_PREDICTION_TYPES = (*PREDICTION_TYPES, "flow_prediction")
DPM_ALGORITHM_TYPES = ("dpmsolver", "dpmsolver++", "sde-dpmsolver", "sde-dpmsolver++")
DPM_SOLVER_TYPES = ("midpoint", "heun")
# Option values of the other solvers' configs that map onto DPM-Solver's (so a config saved for
# DEIS or UniPC builds a DPM-Solver++ with its default update); the multistep and the singlestep
# solver read them.
DPM_ALGORITHM_ALIASES = {"deis": "dpmsolver++"}
DPM_SOLVER_ALIASES = {"logrho": "midpoint", "bh1": "midpoint", "bh2": "midpoint"}


def solver_timesteps(timestep_spacing: str, num_inference_steps: int, num_train_timesteps: int,
                     steps_offset: int = 0, last_timestep: int | None = None,
                     owner: str = "scheduler") -> np.ndarray:
    """Descending int64 timesteps of a run. "linspace" and "leading" lay n + 1 points over
    [0, last_timestep) and drop the final one (t = 0 is never visited: the run ends at the final
    sigma instead); "trailing" steps back from ``last_timestep`` by T / n (Lin et al. 2023,
    Table 2). ``last_timestep`` defaults to T (it is smaller when lambda is clipped)."""
    check_option("timestep_spacing", timestep_spacing, TIMESTEP_SPACINGS, owner)
    n, T = num_inference_steps, num_train_timesteps
    last = T if last_timestep is None else last_timestep
    if timestep_spacing == "linspace":
        timesteps = np.linspace(0, last - 1, n + 1).round()[::-1][:-1]
    elif timestep_spacing == "leading":
        timesteps = (np.arange(0, n + 1) * (last // (n + 1))).round()[::-1][:-1] + steps_offset
    else:
        timesteps = np.arange(last, 0, -T / n).round() - 1
    return timesteps.copy().astype(np.int64)


# ----------------------------------------------------------------------- DPM-Solver coefficients


@dataclass(frozen=True)
class PhiCoefficients:
    """One DPM-Solver update from s to t as x_t = x * D(x_s) + d0 * D0 + ... + noise * z, with
    D0 the model term at the expansion point, D1 ~ h dD/dlambda and D2 ~ h^2 d2D/dlambda^2
    (finite differences the caller forms: D2 estimates h^2 D'', not h^2 D'' / 2).
    ``d1_midpoint`` is the second-order midpoint weight, ``d1`` the weight of the Taylor (Heun /
    third-order) first derivative, ``d2`` the second's."""

    x: float
    d0: float
    d1_midpoint: float
    d1: float
    d2: float
    noise: float


def phi_coefficients(algorithm_type: str, h: float, alpha_s: float, sigma_s: float,
                     alpha_t: float, sigma_t: float) -> PhiCoefficients:
    """The update coefficients of DPM-Solver (noise prediction; Lu et al. 2022, eqs. 3.7-3.9 and
    Algorithms 4-6), DPM-Solver++ (data prediction; Lu et al. 2022b, eq. 9 and Algorithms 1-2)
    and their SDE variants (Lu et al. 2022b, sec. 4.2 / appendix, noise z ~ N(0, I)), for a
    step of h = lambda_t - lambda_s.

    With phi(h) = 1 - exp(-h) (data prediction) or psi(h) = exp(h) - 1 (noise prediction), the
    exact integral of a polynomial model term gives the weights below; the SDE variants integrate
    over twice the step in lambda and add the matching amount of fresh noise."""
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        if algorithm_type == "dpmsolver++":
            phi = -np.expm1(-h)
            return PhiCoefficients(
                x=sigma_t / sigma_s, d0=alpha_t * phi, d1_midpoint=0.5 * alpha_t * phi,
                d1=alpha_t * (1.0 - phi / h), d2=-alpha_t * ((h - phi) / h**2 - 0.5), noise=0.0)
        if algorithm_type == "dpmsolver":
            psi = np.expm1(h)
            return PhiCoefficients(
                x=alpha_t / alpha_s, d0=-sigma_t * psi, d1_midpoint=-0.5 * sigma_t * psi,
                d1=-sigma_t * (psi / h - 1.0), d2=-sigma_t * ((psi - h) / h**2 - 0.5), noise=0.0)
        if algorithm_type == "sde-dpmsolver++":
            phi2 = -np.expm1(-2.0 * h)
            return PhiCoefficients(
                x=sigma_t / sigma_s * np.exp(-h), d0=alpha_t * phi2,
                d1_midpoint=0.5 * alpha_t * phi2, d1=alpha_t * (1.0 - phi2 / (2.0 * h)),
                # int_0^h 2 e^{-2v} (h - v)^2 / 2 dv = h^2 / 2 - h / 2 + phi2 / 4 per h^2;
                # the reference writes "- 0.5" here, a sign slip that leaves a weight of
                # about -alpha_t (an O(h^2) local error) instead of 2 alpha_t h / 3
                d2=alpha_t * ((phi2 - 2.0 * h) / (2.0 * h) ** 2 + 0.5),
                noise=sigma_t * np.sqrt(phi2))
        # sde-dpmsolver: no third-order form exists
        psi = np.expm1(h)
        return PhiCoefficients(
            x=alpha_t / alpha_s, d0=-2.0 * sigma_t * psi, d1_midpoint=-sigma_t * psi,
            d1=-2.0 * sigma_t * (psi / h - 1.0), d2=float("nan"),
            noise=sigma_t * np.sqrt(np.expm1(2.0 * h)))


# ------------------------------------------------------------------------------ the base class


class MultistepScheduler(RunIndexMixin, SchedulerMixin):
    """Shared state of the exponential-integrator schedulers; subclasses add the solver.

    After ``set_timesteps`` the run is described by ``timesteps`` (int64, descending),
    ``sigmas`` (float32, one more than the timesteps: the final sigma) and, in float64 numpy,
    ``alpha``, ``sigma_t`` and ``lambda_`` at each run sigma. Subclasses implement ``_plan()``
    (precompute their per-step coefficients) and ``step()``.
    """

    _compatibles = KARRAS_DIFFUSION_SCHEDULERS
    order = 1
    init_noise_sigma = 1.0
    # Whether a "sigma_min" final sigma repeats the last run sigma for Karras/exponential runs
    # (UniPC, DEIS) instead of using the smallest training sigma.
    _repeat_last_sigma_when_discretised = False
    # Flow-matching runs (use_flow_sigmas): which sigma grid the format uses ("shifted_ramp":
    # shift(1 - linspace(1, 1/T, n+1)) reversed, DPM-Solver/DEIS; "ramp_then_shift":
    # shift(linspace(1, 1/T, n+1)), UniPC), whether Karras sigmas may be combined with it, and
    # the time_shift_type values for dynamic shifting.
    _flow_grid = "shifted_ramp"
    _flow_allows_karras = False
    _time_shift_types: tuple[str, ...] = ("exponential",)

    # ---------------------------------------------------------------- construction (subclasses)
    def _init_common(self, prediction_types: Sequence[str] = FLOW_PREDICTION_TYPES) -> None:
        c, owner = self.config, type(self).__name__
        self._owner = owner
        check_option("prediction_type", c.prediction_type, tuple(prediction_types), owner)
        check_option("timestep_spacing", self._option("timestep_spacing", "linspace"),
                     TIMESTEP_SPACINGS, owner)
        check_option("final_sigmas_type", self._option("final_sigmas_type", "sigma_min"),
                     FINAL_SIGMAS_TYPES, owner)
        if int(c.solver_order) not in (1, 2, 3):
            raise ConfigError(f"{owner}: solver_order must be 1, 2 or 3, got {c.solver_order!r}")
        self._sigma_kind = sigma_kind(c.use_karras_sigmas, c.use_exponential_sigmas,
                                      self._option("use_beta_sigmas", False), owner)
        if self._option("use_lu_lambdas", False):
            if self._sigma_kind != "default":
                raise ConfigError(f"{owner}: use_lu_lambdas cannot be combined with "
                                  f"use_karras_sigmas or use_exponential_sigmas; set one of them")
            self._sigma_kind = "lu"
        self._check_flow_options(owner)
        self._learned_variance = self._option("variance_type", None) in ("learned",
                                                                         "learned_range")
        rescale = self._option("rescale_betas_zero_snr", False)
        self.betas = betas_for(c.beta_schedule, c.num_train_timesteps, c.beta_start, c.beta_end,
                               c.trained_betas, rescale, owner)
        self.alphas_cumprod = alphas_cumprod_for(self.betas, rescale)
        # lambda at each training step (float32, as the format computes it), for clipping
        self._train_lambdas = (torch.log(self.alphas_cumprod.sqrt())
                               - torch.log((1 - self.alphas_cumprod).sqrt()))
        self._train_sigmas = sigmas_from_alphas_cumprod(self.alphas_cumprod)
        self._reset_run()
        # As in the diffusers format, a new solver lists the training timesteps (T - 1 .. 0, as
        # floats) and sigmas (ascending with t) for code that reads them; step still needs
        # set_timesteps (num_inference_steps is None until then).
        T = c.num_train_timesteps
        self.timesteps = torch.linspace(T - 1, 0, T, dtype=torch.float32)
        self.sigmas = torch.from_numpy(np.asarray(self._train_sigmas, dtype=np.float32))
        self.num_inference_steps = None

    def _clipped_train_steps(self) -> int:
        """How many of the last training steps have a lambda below ``lambda_min_clipped`` (the
        DPM-Solvers leave them out of a run: the cosine schedule's lambda -> -inf there)."""
        return int(torch.searchsorted(torch.flip(self._train_lambdas, [0]),
                                      self.config.lambda_min_clipped))

    def _check_flow_options(self, owner: str) -> None:
        """Flow-matching sigmas (x_t = (1 - s) x_0 + s eps: alpha_t = 1 - s, sigma_t = s) and
        their shifts; the combinations the format leaves undefined are refused."""
        self._flow = bool(self._option("use_flow_sigmas", False))
        check_option("time_shift_type", self._option("time_shift_type", "exponential"),
                     self._time_shift_types, owner)
        if self._option("use_dynamic_shifting", False) and not self._flow:
            raise ConfigError(f"{owner}: use_dynamic_shifting shifts flow-matching sigmas; set "
                              f"use_flow_sigmas=True or use_dynamic_shifting=False")
        if self._option("shift_terminal", None) is not None and not self._flow:
            raise ConfigError(f"{owner}: shift_terminal is only supported with "
                              f"use_flow_sigmas=True")
        if self._flow and self._sigma_kind != "default" and not (
                self._sigma_kind == "karras" and self._flow_allows_karras):
            raise ConfigError(f"{owner}: use_flow_sigmas cannot be combined with "
                              f"{self._sigma_kind} sigmas; set one of them")

    def _require_data_prediction_for_flow(self, data_prediction: bool, what: str) -> None:
        if self.config.prediction_type == "flow_prediction" and not data_prediction:
            raise ConfigError(f"{type(self).__name__}: prediction_type 'flow_prediction' needs "
                              f"the data-prediction form; {what}")

    def _option(self, name: str, default: Any) -> Any:
        """A config value this class takes, else ``default``. Keys kept from another scheduler's
        config (a swap) are in the config too, but are not this solver's options."""
        return own_option(self, name, default)

    def _reset_run(self) -> None:
        self._history: list[torch.Tensor] = []
        self._steps_taken = 0
        self._step_index: int | None = None
        self._begin_index: int | None = None

    # -------------------------------------------------------------------------- step index
    def set_begin_index(self, begin_index: int = 0) -> None:
        """Start the run at ``timesteps[begin_index]`` (call after ``set_timesteps``)."""
        self._begin_index = begin_index

    def index_for_timestep(self, timestep: Any, schedule_timesteps: torch.Tensor | None = None):
        """Index of ``timestep`` in the run; for a repeated timestep the second occurrence, for
        an unknown one the last index (the format's rule, so img2img starts line up)."""
        schedule = self.timesteps if schedule_timesteps is None else schedule_timesteps
        if isinstance(timestep, torch.Tensor):
            timestep = timestep.to(schedule.device)
        candidates = (schedule == timestep).nonzero()
        if len(candidates) == 0:
            return len(self.timesteps) - 1
        return candidates[1 if len(candidates) > 1 else 0].item()

    # ------------------------------------------------------------------------------ the run
    def set_timesteps(self, num_inference_steps: int | None = None,
                      device: str | torch.device | None = None,
                      timesteps: Sequence[int] | None = None,
                      sigmas: Sequence[float] | None = None, mu: float | None = None) -> None:
        """Prepare a run of ``num_inference_steps``, of the given descending ``timesteps``, or
        (flow-matching runs) of the given descending ``sigmas``: fills ``timesteps`` and
        ``sigmas``, precomputes every step's coefficients and clears the solver's history
        (calling it again starts a fresh run). ``mu`` is the resolution-dependent shift that
        ``use_dynamic_shifting`` needs."""
        owner = type(self).__name__
        given = [x is not None for x in (num_inference_steps, timesteps, sigmas)]
        if sum(given) != 1:
            raise SchedulerError(f"{owner}.set_timesteps: pass exactly one of "
                                 f"num_inference_steps, timesteps or (flow-matching) sigmas")
        if sigmas is not None and not self._flow:
            raise SchedulerError(f"{owner}.set_timesteps: custom sigmas need use_flow_sigmas="
                                 f"True; pass num_inference_steps or timesteps")
        if timesteps is not None and self._flow:
            raise SchedulerError(f"{owner}.set_timesteps: a flow-matching run takes custom "
                                 f"sigmas, not timesteps")
        dynamic = self._option("use_dynamic_shifting", False)
        if dynamic and mu is None or mu is not None and not dynamic:
            raise SchedulerError(f"{owner}.set_timesteps: mu is needed exactly when "
                                 f"use_dynamic_shifting=True (it is {dynamic})")
        T = self.config.num_train_timesteps
        if num_inference_steps is not None:
            n = num_inference_steps
            if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 1 <= n <= T:
                raise SchedulerError(f"{owner}.set_timesteps: num_inference_steps must be an "
                                     f"integer in [1, {T}] (num_train_timesteps), got {n!r}")
        if self._flow:
            run_sigmas = self._flow_sigmas(num_inference_steps, sigmas, mu)
            run_timesteps = (run_sigmas * T).astype(np.int64)  # the format truncates
        elif timesteps is not None:
            custom = np.asarray(list(timesteps) if not isinstance(timesteps, torch.Tensor)
                                else timesteps.cpu().numpy())
            self._check_custom_timesteps(custom, T, owner)
            run_sigmas, run_timesteps = self._run_sigmas(custom.astype(np.int64), len(custom))
        else:
            run_sigmas, run_timesteps = self._run_sigmas(self._default_timesteps(int(n)), int(n))
        final = self._final_sigma(run_sigmas)
        run_sigmas = np.concatenate([run_sigmas, [final]]).astype(np.float32)
        self.sigmas = torch.from_numpy(run_sigmas)
        self.timesteps = torch.from_numpy(np.asarray(run_timesteps)).to(device=device,
                                                                        dtype=torch.int64)
        self.num_inference_steps = len(self.timesteps)
        # alpha_t, sigma_t, lambda_t at every run sigma, in float64 from the float32 sigmas
        s = run_sigmas.astype(np.float64)
        if self._flow:
            self.alpha, self.sigma_t = 1.0 - s, s
        else:
            self.alpha = 1.0 / np.sqrt(s**2 + 1.0)
            self.sigma_t = s * self.alpha
        with np.errstate(divide="ignore"):  # +inf at a final sigma of 0
            self.lambda_ = np.log(self.alpha) - np.log(self.sigma_t)
        self._reset_run()
        self._plan()

    def _flow_sigmas(self, n: int | None, custom: Sequence[float] | None,
                     mu: float | None) -> np.ndarray:
        """Descending flow-matching sigmas of a run (without the final one), shifted."""
        c, T = self.config, self.config.num_train_timesteps
        if self._sigma_kind == "karras":  # Karras sigmas of the VP schedule, as flow sigmas
            if custom is not None:
                raise SchedulerError(f"{type(self).__name__}.set_timesteps: custom sigmas cannot "
                                     f"be combined with use_karras_sigmas")
            sigmas = discretise(self._train_sigmas[::-1].copy(), "karras", n,
                                self._option("sigma_min", None), self._option("sigma_max", None))
            return sigmas / (sigmas + 1)
        if custom is not None:
            sigmas = np.asarray(custom, dtype=np.float64)
            if sigmas.ndim != 1 or len(sigmas) == 0 or np.any(sigmas <= 0) or np.any(sigmas > 1):
                raise SchedulerError(f"{type(self).__name__}.set_timesteps: sigmas must be a "
                                     f"non-empty list of values in (0, 1]")
        elif self._flow_grid == "ramp_then_shift":
            sigmas = np.linspace(1, 1 / T, n + 1)[:-1]
        else:
            ramp = 1.0 - np.linspace(1, 1 / T, n + 1)
            shift = math.exp(mu) if mu is not None else c.flow_shift
            return shift_flow_sigmas(ramp, shift)[::-1][:-1].copy()
        if mu is not None:
            sigmas = time_shift_flow_sigmas(sigmas, mu, c.time_shift_type)
        else:
            sigmas = shift_flow_sigmas(sigmas, c.flow_shift)
        if self._option("shift_terminal", None):
            sigmas = stretch_flow_sigmas_to_terminal(sigmas, self._option("shift_terminal", None))
        if abs(sigmas[0] - 1) < 1e-6:
            sigmas[0] -= 1e-6  # sigma = 1 is alpha = 0: lambda would be -inf
        return sigmas

    def _check_custom_timesteps(self, custom: np.ndarray, T: int, owner: str) -> None:
        if self._sigma_kind != "default":
            raise SchedulerError(f"{owner}.set_timesteps: custom timesteps cannot be used with "
                                 f"use_karras_sigmas / use_exponential_sigmas / use_beta_sigmas / "
                                 f"use_lu_lambdas")
        if custom.ndim != 1 or len(custom) == 0 or np.any(custom < 0) or np.any(custom >= T) \
                or np.any(np.diff(custom) >= 0):
            raise SchedulerError(f"{owner}.set_timesteps: timesteps must be a non-empty, strictly "
                                 f"descending list of integers in [0, {T - 1}]")

    def _default_timesteps(self, n: int) -> np.ndarray:
        c = self.config
        return solver_timesteps(c.timestep_spacing, n, c.num_train_timesteps,
                                self._option("steps_offset", 0), owner=type(self).__name__)

    def _run_sigmas(self, timesteps: np.ndarray, n: int):
        """(sigmas, timesteps) of the run without the final sigma."""
        train = self._train_sigmas
        kind = self._sigma_kind
        if kind == "default":
            return np.interp(timesteps, np.arange(len(train)), train), timesteps
        if kind == "lu":
            # uniform steps in lambda = -log sigma over the training range (Lu et al. 2022,
            # sec. 3.3): the exponential discretisation of sigma
            sigmas = exponential_sigmas(float(train[0]), float(train[-1]), n)
        else:
            sigmas = discretise(train[::-1].copy(), kind, n, self._option("sigma_min", None),
                                self._option("sigma_max", None))
        t = sigma_to_t(sigmas, np.log(train))
        if self._rounds_timesteps(kind):
            t = t.round()
        return sigmas, t.astype(np.int64)

    def _rounds_timesteps(self, kind: str) -> bool:
        """Whether the timesteps of a discretised run are rounded (the format's convention for
        each solver; unrounded ones are truncated to integers)."""
        return kind == "karras"

    def _final_sigma(self, sigmas: np.ndarray) -> float:
        final = self._option("final_sigmas_type", "sigma_min")
        if final == "zero":
            return 0.0
        if self._repeat_last_sigma_when_discretised and (self._sigma_kind != "default"
                                                         or self._flow):
            return float(sigmas[-1])
        return float(self._train_sigmas[0])

    def _plan(self) -> None:  # pragma: no cover - every subclass defines it
        raise NotImplementedError

    # ----------------------------------------------------------------------- model outputs
    def _begin_step(self, model_output: torch.Tensor, timestep: Any, sample: torch.Tensor):
        """Checks shared by every ``step``; returns the model output (learned variance dropped)
        and the step index."""
        self._require_timesteps()
        if self._learned_variance and model_output.shape[1] == 2 * sample.shape[1]:
            model_output = model_output[:, : sample.shape[1]]  # drop the variance channels
        self._check_model_output(model_output, sample)
        if self._step_index is None:
            self._step_index = self._first_index(timestep)
        if self._step_index >= self.num_inference_steps:
            raise SchedulerError(
                f"{type(self).__name__}.step() was called after the last of the "
                f"{self.num_inference_steps} timesteps; call set_timesteps() to start a new run")
        return model_output, self._step_index

    def _first_index(self, timestep: Any) -> int:
        """Where a run starts: the begin index when set, else the index of ``timestep``. A run
        that starts at its own first timestep starts at index 0 even when that timestep repeats
        (Karras sigmas on the cosine schedule round several sigmas to one timestep; the
        format's second-occurrence rule would then skip steps and fail at the end)."""
        if self._begin_index is not None:
            return self._begin_index
        if bool(torch.as_tensor(timestep).to(self.timesteps.device) == self.timesteps[0]):
            return 0
        return self.index_for_timestep(timestep)

    def _end_step(self) -> None:
        self._steps_taken += 1
        self._step_index += 1

    def _push(self, converted: torch.Tensor, keep: int) -> None:
        """Remember a converted model output; only the last ``keep`` are needed."""
        self._history.append(converted)
        del self._history[:-keep]

    def data_prediction(self, model_output: torch.Tensor, sample: torch.Tensor,
                        i: int) -> torch.Tensor:
        """x_theta(x_i): the model's estimate of the clean sample at run index ``i``, from an
        epsilon, v (Salimans & Ho 2022, sec. 4), flow-velocity or sample prediction, dynamically
        thresholded when configured."""
        a, s = float(self.alpha[i]), float(self.sigma_t[i])
        kind = self.config.prediction_type
        if kind == "epsilon":
            x0 = torch.add(sample, model_output, alpha=-s).div_(a)  # (x - sigma_t eps) / alpha_t
        elif kind == "v_prediction":
            x0 = torch.mul(sample, a).add_(model_output, alpha=-s)  # alpha_t x - sigma_t v
        elif kind == "flow_prediction":
            x0 = torch.add(sample, model_output, alpha=-s)  # x - sigma v, v = eps - x_0
        else:
            x0 = model_output
        if self.config.thresholding:
            x0 = dynamic_threshold(x0, self.config.dynamic_thresholding_ratio,
                                   self.config.sample_max_value)
        return x0

    def convert_model_output(self, model_output: torch.Tensor, sample: torch.Tensor,
                             **unused: Any) -> torch.Tensor:
        """The model output as the solver's model term at the current step: the data
        prediction (dpmsolver++ variants) or the noise prediction (dpmsolver variants). DPM-Solver
        (multistep and singlestep) set ``_data_pred``; DEIS and UniPC have their own."""
        i = self._step_index if self._step_index is not None else 0
        if self._data_pred:
            return self.data_prediction(model_output, sample, i)
        return self.noise_prediction(model_output, sample, i)

    def noise_prediction(self, model_output: torch.Tensor, sample: torch.Tensor,
                         i: int) -> torch.Tensor:
        """eps_theta(x_i): the model's estimate of the noise at run index ``i``; with
        thresholding, the noise that matches the thresholded clean-sample estimate."""
        a, s = float(self.alpha[i]), float(self.sigma_t[i])
        kind = self.config.prediction_type
        if kind == "epsilon":
            eps = model_output
        elif kind == "v_prediction":
            eps = torch.mul(model_output, a).add_(sample, alpha=s)  # alpha_t v + sigma_t x
        else:
            eps = torch.add(sample, model_output, alpha=-a).div_(s)  # (x - alpha_t x0) / sigma_t
        if self.config.thresholding:
            x0 = torch.add(sample, eps, alpha=-s).div_(a)
            x0 = dynamic_threshold(x0, self.config.dynamic_thresholding_ratio,
                                   self.config.sample_max_value)
            eps = torch.add(sample, x0, alpha=-a).div_(s)
        return eps

    @staticmethod
    def _combine(x_coef: float, x: torch.Tensor, terms) -> torch.Tensor:
        """x_coef * x + sum(c * m for c, m in terms): one multiply and one fused add per term."""
        out = torch.mul(x, x_coef)
        for coef, m in terms:
            if coef != 0.0:
                out.add_(m, alpha=coef)
        return out

    @staticmethod
    def _compute_dtype(sample: torch.Tensor) -> torch.dtype:
        # half precision is upcast for the update (the format computes it in float32)
        return torch.float32 if sample.dtype in (torch.float16, torch.bfloat16) else sample.dtype

    # ------------------------------------------------------------------------------ training
    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor,
                  timesteps: torch.Tensor) -> torch.Tensor:
        """alpha_t x_0 + sigma_t noise at run timesteps ``timesteps`` (one per sample, or the
        begin index's when one is set): the img2img starting point."""
        self._require_timesteps()
        timesteps = torch.as_tensor(timesteps).reshape(-1)
        if self._begin_index is None:
            idx = [self.index_for_timestep(t) for t in timesteps]
        else:
            start = self._step_index if self._step_index is not None else self._begin_index
            idx = [start] * timesteps.shape[0]
        alpha = torch.tensor(self.alpha[idx], dtype=original_samples.dtype,
                             device=original_samples.device)
        sigma = torch.tensor(self.sigma_t[idx], dtype=original_samples.dtype,
                             device=original_samples.device)
        return (broadcast_to(alpha, original_samples) * original_samples
                + broadcast_to(sigma, original_samples) * noise)


__all__ = ["MultistepScheduler", "SchedulerOutput", "phi_coefficients", "solver_timesteps",
           "DPM_ALGORITHM_TYPES", "DPM_SOLVER_TYPES", "FINAL_SIGMAS_TYPES", "VARIANCE_TYPES"]
