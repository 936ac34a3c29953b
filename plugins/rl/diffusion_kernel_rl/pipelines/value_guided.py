"""Value-guided planning: Diffuser (Janner et al. 2022, "Planning with Diffusion for Flexible
Behavior Synthesis", sec. 3.3 and Algorithm 1) as diffusers' experimental ``ValueGuidedRLPipeline``
runs it.

From the current observation, a batch of trajectories is denoised; before each denoising step the
trajectories climb the gradient of a learned value J (classifier guidance, eq. 3):

    x <- x + scale * w_t * grad_x J(x, t)     (n_guide_steps times; no step for t < t_grad_cutoff)

and the first state is reset to the observation after every change (inpainting). The action is the
first action of the trajectory with the highest value. By default everything follows diffusers
0.42.1, so its checkpoints and code give the same actions:

- ``normalization="global"``: one mean and standard deviation per key of the environment's
  dataset; ``"gaussian"`` per dimension is the original Diffuser's (diffusers issue #10636),
  ``"limits"`` the original's Maze2D normalisation;
- ``grad_scale="diffusers"``: w_t = exp(0.5 * scheduler._get_variance(t)), which for the
  ``fixed_small_log`` scheduler of the reference checkpoints is exp(0.5 * sigma_t);
  ``"posterior_variance"`` is the original's w_t = beta_tilde_t (its ``scale_grad_by_std``);
  ``"none"``: w_t = 1.

Differences from the reference, on purpose: ``generator=`` (the reference draws from the global
generators only; without a generator this pipeline does too, so seeds carry over);
``n_guide_steps=0`` picks a random trajectory, which the reference means to do but fails at (it
sorts by a value that was never computed); ``return_dict=True`` also returns every trajectory and
its value.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from diffusion_kernel.configuration import FrozenConfig
from diffusion_kernel.errors import PipelineError
from diffusion_kernel.noise import randn
from diffusion_kernel.pipelines import DiffusionPipeline, PipelineOutput

from ..normalization import TrajectoryNormalizer
from .trajectory import apply_conditions, check_channels, check_horizon, model_sample

GRAD_SCALES = ("diffusers", "posterior_variance", "none")


@dataclass
class ValueGuidedRLPipelineOutput(PipelineOutput):
    """``action`` (action_dim,) to take now; ``trajectories`` (batch, horizon, action_dim +
    observation_dim) in the environment's units, best first; ``trajectory_values`` (batch,) their
    values (None when no guidance step ran); ``chosen``: the index of the trajectory the action
    comes from (0, the best, after guidance; a random one without)."""

    action: np.ndarray
    trajectories: np.ndarray
    trajectory_values: np.ndarray | None  # not ``values``: an output is a dict (.values())
    chosen: int


class ValueGuidedRLPipeline(DiffusionPipeline):
    """``ValueGuidedRLPipeline(value_function, unet, scheduler, env)``; ``pipe(obs)`` returns the
    action to take. ``env`` needs ``get_dataset()`` (D4RL-style: ``observations``, ``actions``),
    ``observation_space`` and ``action_space``; it is not saved with the pipeline, so pass it to
    ``from_pretrained(path, env=env)``."""

    def __init__(self, value_function: Any, unet: Any, scheduler: Any, env: Any,
                 normalization: str = "global", normalizer: TrajectoryNormalizer | None = None):
        """``normalization``: how the statistics of ``env.get_dataset()`` normalise (module
        docstring); ``normalizer``: a ``TrajectoryNormalizer`` to use instead (e.g. a trained
        planner's), in which case the dataset is not read."""
        if env is None or not hasattr(env, "observation_space"):
            raise PipelineError("ValueGuidedRLPipeline needs env=: an environment with "
                                "get_dataset(), observation_space and action_space (it is not "
                                "saved with the pipeline: pass from_pretrained(path, env=env))")
        self.register_modules(value_function=value_function, unet=unet, scheduler=scheduler,
                              env=env)
        self.state_dim = env.observation_space.shape[0]
        self.action_dim = env.action_space.shape[0]
        self.normalization = normalization if normalizer is None else normalizer.kind
        self.normalizer = normalizer or self._fit_normalizer(env, normalization)
        if self.normalizer.action_dim != self.action_dim or \
                self.normalizer.observation_dim != self.state_dim:
            raise PipelineError(f"the normalizer covers {self.normalizer.action_dim} action and "
                                f"{self.normalizer.observation_dim} observation values; the "
                                f"environment has {self.action_dim} and {self.state_dim}")
        check_channels(unet, self.state_dim + self.action_dim)
        if value_function is not None:
            check_channels(value_function, self.state_dim + self.action_dim, "value_function")

    def _fit_normalizer(self, env, normalization: str) -> TrajectoryNormalizer:
        data = env.get_dataset()
        shapes = {k: np.shape(data[k])[1:] for k in ("observations", "actions") if k in data}
        if shapes != {"observations": (self.state_dim,), "actions": (self.action_dim,)}:
            raise PipelineError(f"env.get_dataset() must hold 'observations' and 'actions' of "
                                f"the spaces' sizes ({self.state_dim}, {self.action_dim}); got "
                                f"{shapes}")
        return TrajectoryNormalizer.fit(data, normalization)

    # Saving: the environment stays out of the folder, as with the reference ----------------
    @property
    def config(self):
        config = dict(super().config)
        config["env"] = [None, None]
        if self.normalization != "global":  # the reference's loader ignores keys it lacks
            config["normalization"] = self.normalization
        return FrozenConfig(config)

    def save_pretrained(self, save_directory, **kwargs) -> None:
        """Save the networks and scheduler; the environment is written as ``[null, null]``."""
        copy = object.__new__(type(self))
        copy.__dict__.update(self.__dict__, _component_names=list(self._component_names))
        object.__setattr__(copy, "env", None)
        DiffusionPipeline.save_pretrained(copy, save_directory, **kwargs)

    # Sampling ----------------------------------------------------------------------------
    def _guidance_weight(self, timestep: int, grad_scale: str) -> torch.Tensor | float:
        if grad_scale == "diffusers":
            return torch.exp(0.5 * self.scheduler._get_variance(timestep))
        if grad_scale == "posterior_variance":
            return self.scheduler._get_variance(timestep, variance_type="fixed_small")
        return 1.0

    def _check_call(self, obs, batch_size, planning_horizon, n_guide_steps, grad_scale,
                    generator):
        obs = np.asarray(obs)
        if obs.shape != (self.state_dim,):
            raise PipelineError(f"obs must be one observation of shape ({self.state_dim},), got "
                                f"{obs.shape}")
        if batch_size < 1 or n_guide_steps < 0:
            raise PipelineError(f"batch_size must be positive and n_guide_steps non-negative, "
                                f"got {batch_size} and {n_guide_steps}")
        if isinstance(generator, list | tuple) and len(generator) != batch_size:
            raise PipelineError(f"got {len(generator)} generators for {batch_size} trajectories; "
                                f"pass one per trajectory or a single generator")
        if grad_scale not in GRAD_SCALES:
            raise PipelineError(f"unknown grad_scale {grad_scale!r}; choose one of "
                                f"{', '.join(GRAD_SCALES)}")
        if n_guide_steps and self.value_function is None:
            raise PipelineError("guidance needs a value_function; pass one or n_guide_steps=0")
        check_horizon(self.unet, planning_horizon)
        if n_guide_steps:
            check_horizon(self.value_function, planning_horizon, "value_function")
        return obs

    def _guide(self, x, timestep, conditions, n_guide_steps, scale, weight):
        """n_guide_steps ascents of the value: returns x and the last values. Only the gradient
        with respect to x is computed: the value function's parameters are frozen for the call
        (restored after), so its layers neither record nor compute weight gradients."""
        frozen = [p for p in self.value_function.parameters() if p.requires_grad]
        try:
            for p in frozen:
                p.requires_grad_(False)
            for _ in range(n_guide_steps):
                with torch.enable_grad():
                    x = x.detach().requires_grad_()
                    values = model_sample(self.value_function, x, timestep)
                    grad = torch.autograd.grad([values.sum()], [x])[0]
                x = apply_conditions(x.detach() + scale * (weight * grad), conditions,
                                     self.action_dim)
        finally:
            for p in frozen:
                p.requires_grad_(True)
        return x, values

    @torch.no_grad()
    def __call__(self, obs, batch_size: int = 64, planning_horizon: int = 32,
                 n_guide_steps: int = 2, scale: float = 0.1, generator=None,
                 grad_scale: str = "diffusers", t_grad_cutoff: int = 2,
                 num_inference_steps: int | None = None, return_dict: bool = False):
        """Plan from the observation ``obs`` and return the first action (a numpy array), or a
        ``ValueGuidedRLPipelineOutput`` with ``return_dict=True``.

        ``num_inference_steps``: None runs the scheduler's current timesteps (the whole training
        chain if it was never set, as the reference does). ``generator``: one
        ``torch.Generator`` or one per trajectory; it also picks the random trajectory when
        ``n_guide_steps=0``.
        """
        obs = self._check_call(obs, batch_size, planning_horizon, n_guide_steps, grad_scale,
                               generator)
        device = self._execution_device
        if num_inference_steps is not None or self.scheduler.num_inference_steps is None:
            self.scheduler.set_timesteps(num_inference_steps
                                         or self.scheduler.config.num_train_timesteps)
        start = self.normalizer.normalize(obs, "observations")
        start = torch.as_tensor(np.repeat(start[None], batch_size, axis=0), device=device,
                                dtype=self.dtype)
        conditions = {0: start}
        shape = (batch_size, planning_horizon, self.state_dim + self.action_dim)
        x = apply_conditions(randn(shape, generator, device, self.dtype), conditions,
                             self.action_dim)
        values = None
        timesteps = [int(t) for t in self.scheduler.timesteps]
        for i, t in enumerate(self.progress_bar(timesteps)):
            if n_guide_steps and t >= t_grad_cutoff:
                weight = self._guidance_weight(t, grad_scale)
                x, values = self._guide(x, t, conditions, n_guide_steps, scale, weight)
            elif n_guide_steps and i == len(timesteps) - 1:
                # Below the cutoff the gradient is zeroed, so guiding leaves x as it is; of its
                # values only the last step's are used (to rank): one forward pass gives them.
                values = model_sample(self.value_function, x, t)
            model_output = model_sample(self.unet, x, t).permute(0, 2, 1)
            x = self.scheduler.step(model_output, t, x, generator=generator).prev_sample
            x = apply_conditions(x, conditions, self.action_dim)
        return self._result(x, values, batch_size, generator, return_dict)

    def _result(self, x, values, batch_size, generator, return_dict):
        if values is not None:
            order = values.reshape(-1).argsort(descending=True)
            x, values = x[order], values.reshape(-1)[order].cpu().numpy()
            chosen = 0
        elif generator is None:
            chosen = np.random.randint(0, batch_size)  # the reference's draw
        else:
            first = generator[0] if isinstance(generator, list | tuple) else generator
            chosen = int(torch.randint(batch_size, (1,), generator=first, device=first.device))
        trajectories = self.normalizer.unnormalize(x.cpu().numpy())
        action = trajectories[chosen, 0, :self.action_dim]
        if not return_dict:
            return action
        return ValueGuidedRLPipelineOutput(action=action, trajectories=trajectories,
                                           trajectory_values=values, chosen=chosen)
