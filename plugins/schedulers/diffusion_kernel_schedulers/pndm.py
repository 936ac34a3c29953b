"""PNDM: Liu, Ren, Lin & Zhao 2022, "Pseudo Numerical Methods for Diffusion Models on Manifolds"
(arXiv:2202.09778).

Every step moves along the data manifold with the transfer function (eq. 11)

    phi(x_t, e, t, t') = sqrt(abar_t' / abar_t) x_t
                         - (abar_t' - abar_t) e / (sqrt(abar_t) (sqrt((1 - abar_t') abar_t)
                                                              + sqrt((1 - abar_t) abar_t')))

and differs only in the noise estimate e it feeds it:
- pseudo Runge-Kutta (eq. 13), 4 model calls from t to t' = t - delta through the midpoint:
  e1 = eps(x_t, t), e2 = eps(phi(x_t, e1, t, mid), mid), e3 = eps(phi(x_t, e2, t, mid), mid),
  e4 = eps(phi(x_t, e3, t, t'), t'), e' = (e1 + 2 e2 + 2 e3 + e4) / 6;
- pseudo linear multistep (PLMS, eq. 12/14), 1 call: the Adams-Bashforth combination of the last
  four noise estimates e' = (55 e_t - 59 e_{t+d} + 37 e_{t+2d} - 9 e_{t+3d}) / 24.
PNDM runs 3 PRK steps to fill the history, then PLMS. With ``skip_prk_steps`` (the Stable Diffusion
setting, "PLMS") the history is filled with lower-order Adams-Bashforth steps instead, the first
one a pseudo improved Euler step (2 calls: e' = (e(x_t, t) + e(x_pred, t')) / 2).

The grid is the run's visited timesteps: t' is always the next visited timestep (the clean end
after the last), and the PRK midpoint is halfway between them. Multistep history makes the step
order matter: ``step`` must be called on ``timesteps`` in order (it says so if not).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from diffusion_kernel.errors import SchedulerError
from diffusion_kernel.scheduling import SchedulerOutput

from .alpha_schedule import AlphaSchedulerMixin
from .schedules import accumulate, lincomb
from .sigma_schedule import KARRAS_DIFFUSION_SCHEDULERS

# Adams-Bashforth weights by history length, newest estimate first (eq. 12 and its lower orders)
ADAMS_BASHFORTH = {1: (1.0,), 2: (3 / 2, -1 / 2), 3: (23 / 12, -16 / 12, 5 / 12),
                   4: (55 / 24, -59 / 24, 37 / 24, -9 / 24)}
# Runge-Kutta weights of e1..e4 (eq. 13)
RK_WEIGHTS = (1 / 6, 1 / 3, 1 / 3, 1 / 6)


@dataclass(frozen=True)
class _Call:
    """One model call of the plan: what to do with its noise estimate.

    kind: "prk" (stage 0-3 of a Runge-Kutta step), "euler_predict" / "euler_correct" (the
    pseudo improved Euler start of PLMS), "plms". The step goes from ``t_from`` to ``t_to`` by
    phi with coefficients (c_x, c_e); ``t_to`` is -1 for the clean end.
    """

    kind: str
    stage: int
    timestep: int
    t_from: int
    t_to: int
    c_x: float
    c_e: float


class PNDMScheduler(AlphaSchedulerMixin):
    """Pseudo numerical methods (PRK warm-up then PLMS, or PLMS alone with ``skip_prk_steps``)."""

    _compatibles = KARRAS_DIFFUSION_SCHEDULERS
    order = 1
    init_noise_sigma = 1.0
    prediction_types = ("epsilon", "v_prediction")
    pndm_order = 4

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        trained_betas: Sequence[float] | None = None,
        skip_prk_steps: bool = False,
        set_alpha_to_one: bool = False,
        prediction_type: str = "epsilon",
        timestep_spacing: str = "leading",
        steps_offset: int = 0,
    ):
        self._init_training_schedule(self.config)
        self.final_alpha_cumprod = np.float32(1.0) if set_alpha_to_one else self._abar[0]
        self.timesteps = None
        self._plan: list[_Call] = []
        self._reset_history()

    def _reset_history(self) -> None:
        self._next_call = 0
        self._restart_at = 0  # calls before this one (after an img2img start) change nothing
        self._eps_history: list[torch.Tensor] = []  # e at the start of each finished interval
        self._x_start: torch.Tensor | None = None  # x at the start of the current interval
        self._eps_sum: torch.Tensor | None = None  # running RK / Euler combination

    # -- the plan -------------------------------------------------------------------------------
    def _phi(self, t_from: int, t_to: int) -> tuple[float, float]:
        """(c_x, c_e) with phi(x, e, t_from, t_to) = c_x x - c_e e (eq. 11)."""
        a = self._abar[t_from]
        a_next = self._abar_or(t_to, self.final_alpha_cumprod)
        denom = a * (1 - a_next) ** 0.5 + (a * (1 - a) * a_next) ** 0.5
        return self._floats(((a_next / a) ** 0.5, (a_next - a) / denom))

    def _call(self, kind: str, stage: int, timestep: int, t_from: int, t_to: int) -> _Call:
        return _Call(kind, stage, int(timestep), int(t_from), int(t_to), *self._phi(t_from, t_to))

    def set_timesteps(self, num_inference_steps: int,
                      device: str | torch.device | None = None) -> None:
        """Prepare a run of ``num_inference_steps`` intervals; ``timesteps`` lists every model
        call (4 per PRK step, 2 for the improved-Euler start). Starts a fresh history."""
        grid = self._spaced_run(num_inference_steps).tolist()
        n = int(num_inference_steps)  # checked by _spaced_run
        ends = grid[1:] + [-1]  # each interval ends at the next visited timestep
        plan: list[_Call] = []
        first_plms = 0
        if not self.config.skip_prk_steps:
            first_plms = min(self.pndm_order - 1, n - 1)
            for t, t_next in zip(grid[:first_plms], ends[:first_plms]):
                mid = (t + t_next) // 2
                plan += [self._call("prk", 0, t, t, mid), self._call("prk", 1, mid, t, mid),
                         self._call("prk", 2, mid, t, t_next),
                         self._call("prk", 3, t_next, t, t_next)]
        elif n > 1:
            first_plms = 1
            plan += [self._call("euler_predict", 0, grid[0], grid[0], grid[1]),
                     self._call("euler_correct", 1, grid[1], grid[0], grid[1])]
        for t, t_next in zip(grid[first_plms:], ends[first_plms:]):
            plan.append(self._call("plms", 0, t, t, t_next))
        self._plan = plan
        self._set_run(np.array([c.timestep for c in plan]), device)
        self.num_inference_steps = n
        self._reset_history()

    @property
    def prk_timesteps(self) -> np.ndarray | None:
        """The timesteps of the pseudo Runge-Kutta calls (the start of ``timesteps``; empty with
        ``skip_prk_steps``), None before ``set_timesteps``: diffusers API."""
        return self._timesteps_of(("prk",))

    @property
    def plms_timesteps(self) -> np.ndarray | None:
        """The timesteps of the linear multistep calls (the rest of ``timesteps``, including the
        improved-Euler start of ``skip_prk_steps``), None before ``set_timesteps``."""
        return self._timesteps_of(("euler_predict", "euler_correct", "plms"))

    def _timesteps_of(self, kinds: tuple[str, ...]) -> np.ndarray | None:
        if self.timesteps is None:
            return None
        return np.array([c.timestep for c in self._plan if c.kind in kinds], dtype=np.int64)

    def set_begin_index(self, begin_index: int = 0) -> None:
        """Start the run at ``timesteps[begin_index]`` (img2img); the multistep history starts
        empty there, as at the start of a run.

        An index inside a multi-call step is accepted when the calls left in that step are at
        the timestep where the next step starts (the PLMS start's second call, a Runge-Kutta
        step's last call): those calls then leave the sample as it is, and the scheme restarts
        at the next step."""
        self._require_timesteps()
        starts = [i for i, c in enumerate(self._plan) if c.stage == 0]
        restart = next((i for i in starts if i >= begin_index), None)
        same_level = restart is not None and all(
            c.timestep == self._plan[restart].timestep for c in self._plan[begin_index:restart])
        if not 0 <= begin_index < len(self._plan) or not same_level:
            raise SchedulerError(
                f"PNDMScheduler cannot start a run at begin_index {begin_index}: it is inside a "
                f"multi-call step whose remaining calls are at other timesteps. Valid indices: "
                f"{sorted(set(starts) | {i for i, c in enumerate(self._plan) if c.stage == 3})}"
            )
        super().set_begin_index(begin_index)
        self._reset_history()
        self._next_call = begin_index
        self._restart_at = restart

    # -- a step ---------------------------------------------------------------------------------
    def _to_eps(self, model_output: torch.Tensor, sample: torch.Tensor, t: int) -> torch.Tensor:
        """The noise estimate at (sample, t): v-predictions are converted where they were made,
        eps = sqrt(abar_t) v + sqrt(1 - abar_t) x_t."""
        if self.config.prediction_type == "epsilon":
            return model_output
        a = float(self._abar[t])
        return torch.add(a**0.5 * model_output, sample, alpha=(1 - a) ** 0.5)

    def step_prk(self, model_output: torch.Tensor, timestep: int | torch.Tensor,
                 sample: torch.Tensor, return_dict: bool = True) -> SchedulerOutput | tuple:
        """``step`` for a call of ``prk_timesteps`` (diffusers API: its ``step`` dispatches to
        ``step_prk`` then ``step_plms``; calling them directly is the same)."""
        self._check_phase("prk", "step_prk")
        return self.step(model_output, timestep, sample, return_dict)

    def step_plms(self, model_output: torch.Tensor, timestep: int | torch.Tensor,
                  sample: torch.Tensor, return_dict: bool = True) -> SchedulerOutput | tuple:
        """``step`` for a call of ``plms_timesteps`` (diffusers API)."""
        self._check_phase("plms", "step_plms")
        return self.step(model_output, timestep, sample, return_dict)

    def _check_phase(self, phase: str, method: str) -> None:
        self._require_timesteps()
        if self._next_call >= len(self._plan):
            return  # step says the run is finished
        is_prk = self._plan[self._next_call].kind == "prk"
        if is_prk != (phase == "prk"):
            raise SchedulerError(
                f"PNDMScheduler.{method}: call {self._next_call} of this run is a "
                f"{'pseudo Runge-Kutta' if is_prk else 'linear multistep'} call; use "
                f"{'step_prk' if is_prk else 'step_plms'} there (or step, which picks it)")

    def step(self, model_output: torch.Tensor, timestep: int | torch.Tensor,
             sample: torch.Tensor, return_dict: bool = True) -> SchedulerOutput | tuple:
        """Feed the model output at ``timestep`` (the next entry of ``timesteps``); returns the
        sample for the next model call (after the last call: the final sample)."""
        self._require_timesteps()
        self._check_model_output(model_output, sample)
        i = self._next_call
        if i >= len(self._plan):
            raise SchedulerError("this PNDM run is finished; call set_timesteps() to start a new "
                                 "one")
        call = self._plan[i]
        t = int(timestep.item() if isinstance(timestep, torch.Tensor) else timestep)
        if t != call.timestep:
            raise SchedulerError(
                f"PNDM is a multistep method and must be stepped through scheduler.timesteps in "
                f"order: expected timestep {call.timestep} (call {i}), got {t}"
            )
        if i < self._restart_at:  # an img2img start inside a step: wait for the next step
            self._next_call = i + 1
            return SchedulerOutput(prev_sample=sample) if return_dict else (sample,)
        eps = self._to_eps(model_output, sample, t)

        if call.kind == "prk":  # eq. 13
            if call.stage == 0:
                self._x_start, self._eps_sum = sample, RK_WEIGHTS[0] * eps
                self._eps_history.append(eps)
                e = eps
            elif call.stage < 3:
                self._eps_sum = lincomb(1.0, self._eps_sum, RK_WEIGHTS[call.stage], eps)
                e = eps
            else:
                e = lincomb(1.0, self._eps_sum, RK_WEIGHTS[3], eps)
        elif call.kind == "euler_predict":  # first-order predictor, remembered for the corrector
            self._x_start, self._eps_sum = sample, eps
            self._eps_history.append(eps)
            e = eps
        elif call.kind == "euler_correct":  # pseudo improved Euler: mean of both estimates
            e = (self._eps_sum + eps) / 2
        else:  # PLMS, eq. 12: Adams-Bashforth on the last (up to) four estimates
            self._eps_history = self._eps_history[-(self.pndm_order - 1):] + [eps]
            weights = ADAMS_BASHFORTH[len(self._eps_history)]
            e = accumulate(torch.mul(eps, weights[0]), 1.0,
                           *zip(weights[1:], reversed(self._eps_history[:-1])))
            self._x_start = sample

        # every step restarts from the sample at the start of its interval (eq. 11)
        x_from = sample if call.kind == "plms" else self._x_start
        prev_sample = lincomb(call.c_x, x_from, -call.c_e, e)
        self._next_call = i + 1
        if not return_dict:
            return (prev_sample,)
        return SchedulerOutput(prev_sample=prev_sample)
