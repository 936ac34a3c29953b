"""Goal-conditioned planning by inpainting: Diffuser's Maze2D planner (Janner et al. 2022, sec. 4.1
and 5.1).

A trajectory of ``planning_horizon`` transitions (action, observation) is denoised from Gaussian
noise; after every denoising step its first state is overwritten with the start and its last state
with the goal, so the model fills in a path between them that looks like its training data. Planning
without a goal (only the start fixed) is the unconditional baseline.

The denoiser is a ``UNet1DModel`` (any scheduler fits; the shipped planner predicts the clean
trajectory, as Diffuser's does). An optional ``normalizer`` component (``TrajectoryNormalizer``)
maps environment units to the model's and back; it is saved in the pipeline folder.
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
from diffusion_kernel.sampling_loop import step_kwargs

from .plan_selection import (
    SELECTIONS,
    denoising_errors,
    likelihood_timesteps,
    medoid_distances,
)
from .trajectory import apply_conditions, check_horizon, model_sample


@dataclass
class Plan:
    """One plan as ``diffusion-kernel generate`` saves it: ``states`` (horizon, observation_dim)
    and ``actions`` (horizon, action_dim) as numpy arrays, the ``start`` and ``goal`` it was
    asked for (``goal`` None without one), and the ``environment`` the planner was trained in
    (e.g. ``"maze2d-medium"``; None if its folder does not say)."""

    states: np.ndarray
    actions: np.ndarray
    start: np.ndarray
    goal: np.ndarray | None
    environment: str | None


@dataclass
class DiffuserPlanningOutput(PipelineOutput):
    """``states`` (batch, horizon, observation_dim) and ``actions`` (batch, horizon, action_dim)
    of the plans, in the environment's units (numpy, or tensors with ``output_type="pt"``);
    ``plans``: the same, one ``Plan`` each, with its start and goal (what ``generate`` saves).
    With several candidates per plan, ``candidate_scores`` (batch, num_candidates) holds each
    candidate's score (lower is better) and ``chosen`` (batch,) the candidate each plan is;
    both None with one candidate."""

    states: Any
    actions: Any
    plans: list[Plan]
    candidate_scores: Any = None
    chosen: Any = None


class DiffuserPlanningPipeline(DiffusionPipeline):
    """``DiffuserPlanningPipeline(unet, scheduler, normalizer=None, environment=None,
    num_candidates=1)``; ``pipe(start, goal).states`` is a plan from each start to its goal.

    ``num_candidates``: how many plans a call samples per start/goal by default, keeping the
    one the model finds most likely (see ``__call__``); saved in ``model_index.json`` as the
    folder's recommended setting (1: one sample, Diffuser's planner)."""

    _optional_components = ("normalizer",)
    generate_input = "start"

    def __init__(self, unet: Any, scheduler: Any, normalizer: Any = None,
                 environment: str | None = None, num_candidates: int = 1):
        self.register_modules(unet=unet, scheduler=scheduler, normalizer=normalizer)
        self.environment = environment
        self.num_candidates = _candidates(num_candidates)

    @property
    def config(self):
        """``model_index.json``, with the ``environment`` the planner was trained in and its
        recommended ``num_candidates`` (when not 1)."""
        config = dict(super().config)
        if self.environment is not None:
            config["environment"] = self.environment
        if self.num_candidates != 1:
            config["num_candidates"] = self.num_candidates
        return FrozenConfig(config)

    def _dims(self, start: np.ndarray) -> tuple[int, int]:
        """(action_dim, observation_dim), from the normalizer or else from the start's size."""
        channels = self.unet.config.in_channels
        observation_dim = start.shape[-1]
        if self.normalizer is not None:
            if self.normalizer.transition_dim != channels:
                raise PipelineError(f"the normalizer covers {self.normalizer.transition_dim} "
                                    f"values per step but the unet takes {channels}")
            if observation_dim != self.normalizer.observation_dim:
                raise PipelineError(f"start must hold observations of size "
                                    f"{self.normalizer.observation_dim}, got shape "
                                    f"{start.shape}")
            return self.normalizer.action_dim, observation_dim
        if not 0 < observation_dim < channels:
            raise PipelineError(f"start must hold observations of fewer than the unet's "
                                f"{channels} channels per step (the rest is the action); got "
                                f"shape {start.shape}")
        return channels - observation_dim, observation_dim

    def _states(self, values, batch_size: int, observation_dim: int, name: str) -> np.ndarray:
        """(batch, observation_dim) raw states; a goal may give only the first coordinates (a
        position): the rest (the velocity) is 0, a goal to arrive at and rest on."""
        values = np.asarray(values, dtype=np.float64)
        values = values[None] if values.ndim == 1 else values
        if values.ndim != 2 or values.shape[0] not in (1, batch_size) or \
                not 0 < values.shape[1] <= observation_dim:
            raise PipelineError(f"{name} must be ({observation_dim},) or (batch, "
                                f"{observation_dim}) (a goal may give fewer values, its first "
                                f"coordinates), got {values.shape} for batch {batch_size}")
        padded = np.zeros((batch_size, observation_dim))
        padded[:, :values.shape[1]] = values
        return padded

    def _normalize(self, states: np.ndarray) -> torch.Tensor:
        if self.normalizer is not None:
            states = self.normalizer.normalize(states, "observations")
        return torch.as_tensor(states, dtype=self.dtype, device=self._execution_device)

    @torch.no_grad()
    def __call__(self, start, goal=None, planning_horizon: int | None = None,
                 num_inference_steps: int | None = None, generator=None,
                 batch_size: int | None = None, output_type: str = "np",
                 return_dict: bool = True, num_candidates: int | None = None,
                 selection: str = "likelihood") -> DiffuserPlanningOutput | tuple:
        """Plan from ``start`` to ``goal``.

        ``start``: one observation (observation_dim,) or one per plan (batch, observation_dim);
        ``goal``: likewise, or only its first coordinates (x, y), or None for no goal.
        ``planning_horizon``: steps per plan (default: the unet's ``sample_size``);
        ``num_inference_steps``: default the scheduler's whole training chain;
        ``generator``: one ``torch.Generator`` or one per plan; ``batch_size``: plans per start
        when one start is given. Returns ``DiffuserPlanningOutput(states, actions)``.

        ``num_candidates`` (default: the pipeline's ``num_candidates``, 1 unless its folder
        recommends more): sample that many plans per start/goal (other noise; with one generator
        per plan, all of a plan's candidates draw from its generator) and keep one, chosen by
        the model alone (``plan_selection``): ``selection="likelihood"`` the lowest denoising
        error at fixed noise levels (an ELBO-style score), ``"medoid"`` the one closest to the
        others. It costs num_candidates times the sampling, plus 4 network calls per candidate
        for the likelihood. 1 is one sample, the plain planner.
        """
        candidates = self.num_candidates if num_candidates is None else \
            _candidates(num_candidates)
        if selection not in SELECTIONS:
            raise PipelineError(f"selection must be one of {SELECTIONS}, got {selection!r}")
        start = np.asarray(start, dtype=np.float64)
        if start.ndim not in (1, 2):
            raise PipelineError(f"start must be (observation_dim,) or (batch, observation_dim), "
                                f"got shape {start.shape}")
        batch = start.shape[0] if start.ndim == 2 else (batch_size or 1)
        if isinstance(generator, list | tuple) and len(generator) != batch:
            raise PipelineError(f"got {len(generator)} generators for {batch} plans; pass one "
                                f"per plan or a single generator")
        if output_type not in ("np", "pt"):
            raise PipelineError(f"output_type must be 'np' or 'pt', got {output_type!r}")
        action_dim, observation_dim = self._dims(start)
        horizon = planning_horizon or self.unet.config.sample_size
        check_horizon(self.unet, horizon)
        starts = self._states(start, batch, observation_dim, "start")
        if goal is not None:
            goal = self._states(goal, batch, observation_dim, "goal")
        self._check_in_maze(starts, goal)
        # The candidates of plan i are rows i * candidates ... (i + 1) * candidates - 1.
        conditions = {0: self._normalize(np.repeat(starts, candidates, 0))}
        if goal is not None:
            conditions[horizon - 1] = self._normalize(np.repeat(goal, candidates, 0))
        if isinstance(generator, list | tuple) and candidates > 1:
            generator = [g for g in generator for _ in range(candidates)]
        self.scheduler.set_timesteps(num_inference_steps
                                     or self.scheduler.config.num_train_timesteps)
        shape = (batch * candidates, horizon, action_dim + observation_dim)
        x = randn(shape, generator, self._execution_device, self.dtype)
        x = apply_conditions(x * self.scheduler.init_noise_sigma, conditions, action_dim)
        for t in self.progress_bar(self.scheduler.timesteps):
            model_input = self.scheduler.scale_model_input(x, t)
            model_output = model_sample(self.unet, model_input, t).permute(0, 2, 1)
            x = self.scheduler.step(model_output, t, x, **step_kwargs(self.scheduler, generator))
            x = apply_conditions(x.prev_sample, conditions, action_dim)
        scores = chosen = None
        if candidates > 1:
            x, scores, chosen = self._select(x, conditions, action_dim, candidates, selection)
        if self.normalizer is not None:
            x = self.normalizer.unnormalize(x)
        states, actions = x[..., action_dim:], x[..., :action_dim]
        plans = [Plan(s.cpu().numpy(), a.cpu().numpy(), starts[i],
                      None if goal is None else goal[i], self.environment)
                 for i, (s, a) in enumerate(zip(states, actions))]
        if output_type == "np":
            states, actions = states.cpu().numpy(), actions.cpu().numpy()
        if not return_dict:
            return states, actions
        return DiffuserPlanningOutput(states=states, actions=actions, plans=plans,
                                      candidate_scores=scores, chosen=chosen)

    def _select(self, x: torch.Tensor, conditions: dict[int, torch.Tensor], action_dim: int,
                candidates: int, selection: str):
        """The chosen candidate of each plan (batch, horizon, transition), the scores (batch,
        candidates) and the chosen indices (batch,), as numpy."""
        if selection == "likelihood":
            scores = denoising_errors(self.unet, self.scheduler, x, conditions, action_dim,
                                      likelihood_timesteps(self.scheduler))
        else:
            scores = medoid_distances(x, candidates, action_dim)
        scores = scores.reshape(-1, candidates)
        chosen = scores.argmin(1)
        x = x.reshape(-1, candidates, *x.shape[1:])[torch.arange(len(chosen)), chosen]
        return x, scores.cpu().numpy(), chosen.cpu().numpy()

    def generate_arguments(self, num_samples: int, input: Any = None,
                           num_inference_steps: int | None = None,
                           generator: list | None = None) -> dict[str, Any]:
        """For ``diffusion-kernel generate``: INPUT ``"x,y:x,y"`` is a start and a goal (their
        first coordinates; the rest, the velocities, 0), planned ``--num`` times; without INPUT,
        ``--num`` fixed start/goal pairs of the planner's maze (``evaluation_pairs``, seed 0)."""
        if input is None:
            starts, goals = self._evaluation_pairs(num_samples)
        else:
            starts, goals = _start_and_goal(input)
            self._check_in_maze(starts, goals)
            starts, goals = np.tile(starts, (num_samples, 1)), np.tile(goals, (num_samples, 1))
        observation_dim = self.normalizer.observation_dim if self.normalizer is not None else \
            starts.shape[1]
        padded = np.zeros((num_samples, observation_dim))
        padded[:, :starts.shape[1]] = starts
        kwargs = {"start": padded, "goal": goals, "generator": generator}
        if num_inference_steps is not None:
            kwargs["num_inference_steps"] = num_inference_steps
        return kwargs

    def _maze(self):
        from ..mazes import LAYOUTS, Maze

        name = (self.environment or "").removeprefix("maze2d-")
        return Maze(name) if name in LAYOUTS else None

    def _evaluation_pairs(self, n: int):
        from ..evaluation import evaluation_pairs

        maze = self._maze()
        if maze is None:
            raise PipelineError(f"this planner's folder names no maze (environment="
                                f"{self.environment!r}), so there are no default start/goal "
                                f"pairs; give them as INPUT: \"x,y:x,y\"")
        return evaluation_pairs(maze, n, seed=0)

    def _check_in_maze(self, starts, goals) -> None:
        """In the planner's own maze, a start or goal inside a wall is a ConfigError."""
        maze = self._maze()
        if maze is None:
            return
        for start in starts:
            maze.check_free(start[:2], "start")
        for goal in goals if goals is not None else ():
            maze.check_free(goal[:2], "goal")


def _candidates(value) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise PipelineError(f"num_candidates must be a positive integer (1: one plan, no "
                            f"choice), got {value!r}")
    return int(value)


def _start_and_goal(text: str) -> tuple[np.ndarray, np.ndarray]:
    """``"1,1:6,6"`` -> (start (1, k), goal (1, k)); a PipelineError naming the format."""
    try:
        start, goal = (np.array([float(v) for v in part.split(",")])[None]
                       for part in str(text).split(":"))
    except ValueError:
        raise PipelineError(f"the input {text!r} is not a start and a goal: write them as "
                            f"\"x,y:x,y\", e.g. \"1,1:6,6\"") from None
    return start, goal
