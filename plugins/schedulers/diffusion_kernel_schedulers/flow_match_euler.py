"""Euler sampling of a flow-matching / rectified-flow model.

The data path is the straight line x_sigma = (1 - sigma) x_0 + sigma eps, sigma in [0, 1]
(Lipman et al. 2023, "Flow Matching for Generative Modeling", eq. 20-23; Liu et al. 2023,
"Rectified Flow"); the model predicts the velocity v = dx/dsigma = eps - x_0, and sampling
integrates the ODE from sigma = 1 to 0 with Euler steps x_next = x + (sigma_next - sigma) v.

The timestep shift of Esser et al. 2024 ("Scaling Rectified Flow Transformers", SD3, eq. 23)
spends more steps at high noise: sigma' = shift sigma / (1 + (shift - 1) sigma). Resolution-
dependent ("dynamic") shifting, as in Flux, uses sigma' = e^mu / (e^mu + (1/sigma - 1)), with
the caller's ``mu`` (``time_shift_type="linear"``: mu / (mu + (1/sigma - 1))). The model is
called at timestep = sigma * num_train_timesteps.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from diffusion_kernel.errors import SchedulerError
from diffusion_kernel.scheduling import SchedulerMixin, SchedulerOutput, check_option

from .alpha_schedule import check_num_inference_steps
from .schedules import (
    accumulate,
    as_dtype,
    broadcast_to,
    gaussian_noise,
    shift_flow_sigmas,
    stretch_flow_sigmas_to_terminal,
    time_shift_flow_sigmas,
)
from .sigma_schedule import discretise, sigma_kind

TIME_SHIFT_TYPES = ("exponential", "linear")


class FlowMatchEulerDiscreteScheduler(SchedulerMixin):
    """Euler steps on the flow-matching ODE, with SD3 shift or Flux dynamic shifting."""

    order = 1
    init_noise_sigma = 1.0

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        shift: float = 1.0,
        use_dynamic_shifting: bool = False,
        base_shift: float | None = 0.5,
        max_shift: float | None = 1.15,
        base_image_seq_len: int = 256,
        max_image_seq_len: int = 4096,
        invert_sigmas: bool = False,
        shift_terminal: float | None = None,
        use_karras_sigmas: bool = False,
        use_exponential_sigmas: bool = False,
        use_beta_sigmas: bool = False,
        time_shift_type: str = "exponential",
        stochastic_sampling: bool = False,
    ):
        owner = type(self).__name__
        check_option("time_shift_type", time_shift_type, TIME_SHIFT_TYPES, owner)
        self._sigma_kind = sigma_kind(use_karras_sigmas, use_exponential_sigmas, use_beta_sigmas,
                                      owner)
        # the training grid: sigma = t / T for t = T..1, shifted unless shifting is dynamic
        sigmas = torch.linspace(1, num_train_timesteps, num_train_timesteps,
                                dtype=torch.float32).flip(0) / num_train_timesteps
        if not use_dynamic_shifting:
            sigmas = shift_flow_sigmas(sigmas, shift)
        self.sigma_min = sigmas[-1].item()
        self.sigma_max = sigmas[0].item()
        self._set_training_run(sigmas)

    def _set_training_run(self, sigmas: torch.Tensor) -> None:
        """The state a new scheduler starts in (as in the diffusers format): the training grid
        as ``sigmas`` (T values, no end point) and ``timesteps`` = sigma T, with
        ``num_inference_steps`` None; ``step`` works on it, ending at sigma = 0."""
        self.sigmas = sigmas
        self.timesteps = sigmas * self.config.num_train_timesteps
        self.num_inference_steps = None
        self._sigma_list = [*sigmas.tolist(), 0.0]
        self._index_of: dict[float, int] = {}
        for i, t in enumerate(self.timesteps.tolist()):
            self._index_of.setdefault(t, i)
        self._begin_index: int | None = None

    def _require_timesteps(self) -> None:
        pass  # there is always a run: the training grid until set_timesteps picks another

    @property
    def shift(self) -> float:
        return self.config.shift

    def set_timesteps(self, num_inference_steps: int | None = None,
                      device: str | torch.device | None = None,
                      sigmas: Sequence[float] | None = None, mu: float | None = None,
                      timesteps: Sequence[float] | None = None) -> None:
        """Prepare a run: ``num_inference_steps`` evenly spaced sigmas from sigma_max to
        sigma_min, or explicit ``sigmas`` (and/or model ``timesteps``), then shifted. ``mu`` is
        required with ``use_dynamic_shifting``. Calling it again starts a fresh run."""
        owner = type(self).__name__
        T = self.config.num_train_timesteps
        if self.config.use_dynamic_shifting and mu is None:
            raise SchedulerError(f"{owner}.set_timesteps: use_dynamic_shifting=True needs mu= "
                                 f"(the resolution-dependent shift)")
        given = sigmas if sigmas is not None else timesteps
        if num_inference_steps is None:
            if given is None:
                raise SchedulerError(f"{owner}.set_timesteps: pass num_inference_steps, sigmas "
                                     f"or timesteps")
            num_inference_steps = len(given)
        n = check_num_inference_steps(num_inference_steps, T, owner)
        for name, values in (("sigmas", sigmas), ("timesteps", timesteps)):
            if values is not None and len(values) != n:
                raise SchedulerError(f"{owner}.set_timesteps: {len(values)} {name} for "
                                     f"num_inference_steps={n}; they must agree")
        custom_timesteps = None
        if timesteps is not None:
            custom_timesteps = np.asarray(timesteps, dtype=np.float32)
        if sigmas is None:
            ts = custom_timesteps if custom_timesteps is not None else np.linspace(
                self.sigma_max * T, self.sigma_min * T, n)
            run = ts / T
        else:
            run = np.asarray(sigmas, dtype=np.float32)
        # shift (SD3 eq. 23) or dynamic shift, optional terminal stretch, then discretisation
        if self.config.use_dynamic_shifting:
            run = time_shift_flow_sigmas(run, mu, self.config.time_shift_type)
        else:
            run = shift_flow_sigmas(run, self.shift)
        if self.config.shift_terminal:
            run = stretch_flow_sigmas_to_terminal(run, self.config.shift_terminal)
        run = discretise(run, self._sigma_kind, n)
        run = torch.from_numpy(np.asarray(run)).to(torch.float32)
        if custom_timesteps is not None and not self.config.invert_sigmas:
            model_timesteps = torch.from_numpy(custom_timesteps)
        else:
            if self.config.invert_sigmas:
                run = 1.0 - run
            model_timesteps = run * T
        end = torch.ones(1) if self.config.invert_sigmas else torch.zeros(1)
        self.sigmas = torch.cat([run, end])
        self.timesteps = model_timesteps.to(device)
        self.num_inference_steps = n
        self._sigma_list = self.sigmas.tolist()
        self._index_of = {}
        for i, t in enumerate(model_timesteps.tolist()):
            self._index_of.setdefault(t, i)
        self._begin_index = None

    @property
    def begin_index(self) -> int | None:
        return self._begin_index

    def set_begin_index(self, begin_index: int = 0) -> None:
        """Start the run at ``timesteps[begin_index]`` (img2img); steps are found from their
        timestep, so this records where the run starts."""
        self._require_timesteps()
        if not 0 <= begin_index < len(self.timesteps):
            raise SchedulerError(f"begin_index {begin_index} is outside this run of "
                                 f"{len(self.timesteps)} timesteps")
        self._begin_index = int(begin_index)

    def _index(self, timestep) -> int:
        value = float(timestep.item() if isinstance(timestep, torch.Tensor) else timestep)
        index = self._index_of.get(value)
        if index is None:
            raise SchedulerError(
                f"{type(self).__name__}: timestep {value} is not one of this run's timesteps; "
                f"pass the values of scheduler.timesteps"
            )
        return index

    def scale_noise(self, sample: torch.Tensor, timestep: torch.Tensor | float,
                    noise: torch.Tensor) -> torch.Tensor:
        """Noise a clean ``sample`` to a run timestep (one, or one per sample):
        x = sigma noise + (1 - sigma) sample (the flow-matching path)."""
        self._require_timesteps()
        steps = torch.as_tensor(timestep).reshape(-1).tolist()
        sigma = torch.tensor([self._sigma_list[self._index(t)] for t in steps],
                             dtype=sample.dtype, device=sample.device)
        sigma = broadcast_to(sigma, sample)
        return sigma * noise + (1.0 - sigma) * sample

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor,
                  timesteps: torch.Tensor) -> torch.Tensor:
        """The same path at any training timestep t in [0, T]: sigma = t / T (training-time
        noising; ``scale_noise`` is the img2img form for run timesteps)."""
        t = torch.as_tensor(timesteps, device=original_samples.device).reshape(-1)
        T = self.config.num_train_timesteps
        if t.numel() and (t.min() < 0 or t.max() > T):
            raise SchedulerError(f"timesteps must lie in [0, {T}], got {t.tolist()}")
        sigma = broadcast_to((t.to(torch.float32) / T).to(original_samples.dtype),
                             original_samples)
        return sigma * noise + (1.0 - sigma) * original_samples

    def step(self, model_output: torch.Tensor, timestep: float | torch.Tensor,
             sample: torch.Tensor, generator: torch.Generator | list[torch.Generator] | None = None,
             return_dict: bool = True) -> SchedulerOutput | tuple:
        """One Euler step x_next = x + (sigma_next - sigma) v for the predicted velocity v; with
        ``stochastic_sampling`` the clean estimate x_0 = x - sigma v is re-noised to sigma_next
        instead (``generator``: one or one per sample)."""
        self._require_timesteps()
        self._check_model_output(model_output, sample)
        i = self._index(timestep)
        sigma, sigma_next = self._sigma_list[i], self._sigma_list[i + 1]
        x = as_dtype(sample, torch.float32)  # step in float32
        if self.config.stochastic_sampling:
            x0 = torch.add(x, model_output, alpha=-sigma)
            prev_sample = accumulate(gaussian_noise(x, generator), sigma_next,
                                     (1.0 - sigma_next, x0))
        else:
            prev_sample = torch.add(x, model_output, alpha=sigma_next - sigma)
        prev_sample = as_dtype(prev_sample, model_output.dtype)
        if not return_dict:
            return (prev_sample,)
        return SchedulerOutput(prev_sample=prev_sample)
