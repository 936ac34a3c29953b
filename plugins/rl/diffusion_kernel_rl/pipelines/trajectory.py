"""What both planning pipelines do to a batch of trajectories x (batch, horizon, transition):
check that the networks can take the horizon, call a 1-D UNet on it, and fix known states
(inpainting, Janner et al. 2022, sec. 4.1: the sampled trajectory is overwritten with the
conditioned states after every denoising step).

A transition is (action, observation): ``x[..., :action_dim]`` the action, the rest the state, as
in Diffuser and diffusers' ``ValueGuidedRLPipeline``. The UNets see (batch, transition, horizon).
"""

from __future__ import annotations

from typing import Any

import torch
from diffusion_kernel.errors import PipelineError


def downsamplings(unet: Any) -> int:
    """How many times a ``UNet1DModel`` halves the horizon on its way down (the stride-2
    convolutions of the down blocks, and the two of the value function's middle block)."""
    config = unet.config
    count = len(config.down_block_types)
    if not config.downsample_each_block:
        count -= 1  # the last down block keeps its length
    if config.mid_block_type == "ValueFunctionMidBlock1D":
        count += 2
    return count


def check_horizon(unet: Any, horizon: int, role: str = "unet") -> None:
    """A PipelineError unless ``unet`` can take trajectories of ``horizon`` steps: a denoiser
    needs a multiple of 2**downsamplings (its skips must line up); a value function must bring
    the horizon down to one step (its last layer is a linear map of the flattened features)."""
    if not isinstance(horizon, int) or horizon < 1:
        raise PipelineError(f"planning_horizon must be a positive integer, got {horizon!r}")
    halvings = downsamplings(unet)
    if role == "value_function":
        if horizon > 2 ** halvings:
            raise PipelineError(f"the value function halves the horizon {halvings} times down "
                                f"to one step, so it takes horizons of at most {2 ** halvings}; "
                                f"got planning_horizon={horizon}")
    elif horizon % 2 ** halvings:
        multiple = 2 ** halvings
        nearest = max(multiple, horizon // multiple * multiple)
        raise PipelineError(f"the {role} downsamples the horizon {halvings} times, so "
                            f"planning_horizon must be a multiple of {multiple}; got {horizon} "
                            f"(try {nearest})")


def check_channels(unet: Any, transition_dim: int, role: str = "unet") -> None:
    if unet.config.in_channels != transition_dim:
        raise PipelineError(f"the {role} takes {unet.config.in_channels} channels per step but a "
                            f"transition here has {transition_dim} (actions + observations); "
                            f"the networks and the environment do not fit together")


def model_sample(model: Any, x: torch.Tensor, timestep: Any) -> torch.Tensor:
    """``model`` on (batch, horizon, transition) trajectories at one timestep, in that layout;
    the timestep goes in as one value per trajectory, as the reference pipeline passes it."""
    timesteps = torch.full((x.shape[0],), int(timestep), device=x.device, dtype=torch.long)
    return model(x.permute(0, 2, 1), timesteps).sample


def apply_conditions(x: torch.Tensor, conditions: dict[int, torch.Tensor],
                     action_dim: int) -> torch.Tensor:
    """Overwrite the observation part of the steps named in ``conditions`` ({step: (batch,
    observation_dim)}) in place; returns x."""
    for step, state in conditions.items():
        x[:, step, action_dim:] = state
    return x
