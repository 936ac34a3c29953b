"""``PointMazeEnv``: the point mass in a maze, with the gymnasium ``reset``/``step`` API and a
D4RL-style ``get_dataset()``.

Observations are (x, y, vx, vy), actions a force in [-1, 1]^2 (``physics.py``). The reward is
D4RL Maze2D's sparse one, 1 within 0.5 of the goal and 0 elsewhere, or ``reward_type="geodesic"``:
minus the wall-respecting distance to the goal (``Maze.geodesic_distance``). Episodes never
terminate; they are truncated after ``max_episode_steps``.

gymnasium is optional: when it is installed the environment is a ``gymnasium.Env`` with
``gymnasium.spaces.Box`` spaces (``register_with_gymnasium()`` makes ``gymnasium.make`` know it);
without it the spaces are the small ``Box`` below, with the same fields.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from diffusion_kernel.errors import ConfigError

from . import physics
from .mazes import Maze

try:  # optional: the environment is a real gymnasium.Env when gymnasium is there
    import gymnasium as _gymnasium
    from gymnasium.spaces import Box
    _EnvBase: type = _gymnasium.Env
except ImportError:  # pragma: no cover - exercised where gymnasium is absent
    _gymnasium = None
    _EnvBase = object

    class Box:
        """The fields of ``gymnasium.spaces.Box`` this plugin uses."""

        def __init__(self, low, high, shape=None, dtype=np.float32, seed=None):
            self.shape = tuple(shape) if shape is not None else np.shape(low)
            self.dtype = np.dtype(dtype)
            self.low = np.broadcast_to(np.asarray(low, self.dtype), self.shape).copy()
            self.high = np.broadcast_to(np.asarray(high, self.dtype), self.shape).copy()
            self.np_random = np.random.default_rng(seed)

        def sample(self) -> np.ndarray:
            return self.np_random.uniform(self.low, self.high).astype(self.dtype)

        def contains(self, x) -> bool:
            x = np.asarray(x)
            return x.shape == self.shape and bool(np.all((x >= self.low) & (x <= self.high)))

REWARD_TYPES = ("sparse", "geodesic")
START_NOISE = 0.1  # D4RL: the start is a free cell's centre plus uniform noise, velocity noise
GYMNASIUM_IDS = {"diffusion-kernel/maze2d-umaze-v0": "umaze",
                 "diffusion-kernel/maze2d-medium-v0": "medium"}


class PointMazeEnv(_EnvBase):
    """``PointMazeEnv(maze="medium", goal=None, reward_type="sparse", max_episode_steps=300)``.

    ``goal``: a fixed (x, y) goal, or None for a new random free cell's centre at each reset
    (``reset(options={"start": (x, y), "goal": (x, y)})`` chooses both). ``dataset``: the path of
    an .npz written by ``datasets.save_dataset`` that ``get_dataset()`` returns; without it,
    ``get_dataset()`` generates ``dataset_size`` steps with the seed ``dataset_seed``.
    """

    metadata = {"render_modes": []}

    def __init__(self, maze: str | Maze = "medium", goal=None, reward_type: str = "sparse",
                 max_episode_steps: int = 300, dataset: str | None = None,
                 dataset_size: int = 400_000, dataset_seed: int = 0):
        self.maze = maze if isinstance(maze, Maze) else Maze(maze)
        if reward_type not in REWARD_TYPES:
            raise ConfigError(f"unknown reward_type {reward_type!r}; choose one of "
                              f"{', '.join(REWARD_TYPES)}")
        if max_episode_steps < 1:
            raise ConfigError(f"max_episode_steps must be positive, got {max_episode_steps}")
        self.fixed_goal = None if goal is None else self.maze.check_free(goal, "goal")
        self.reward_type, self.max_episode_steps = reward_type, max_episode_steps
        self.dataset_path, self.dataset_size, self.dataset_seed = dataset, dataset_size, \
            dataset_seed
        rows, cols = self.maze.shape
        self.observation_space = Box(
            low=np.array([0, 0, -physics.TOP_SPEED, -physics.TOP_SPEED], dtype=np.float32),
            high=np.array([rows - 1, cols - 1, physics.TOP_SPEED, physics.TOP_SPEED],
                          dtype=np.float32), dtype=np.float32)
        self.action_space = Box(low=-1.0, high=1.0, shape=(2,), dtype=np.float32)
        self._rng: np.random.Generator | None = None
        self._state: np.ndarray | None = None
        self._dataset: dict[str, np.ndarray] | None = None
        self.goal = self.fixed_goal

    # The gymnasium API -------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        """Start an episode; returns ``(observation, info)``."""
        rng = self._generator(seed)
        options = dict(options or {})
        unknown = set(options) - {"start", "goal"}
        if unknown:
            raise ConfigError(f"PointMazeEnv.reset takes options 'start' and 'goal', not "
                              f"{sorted(unknown)}")
        cells = self.maze.free_cells
        if "start" in options:
            position = self.maze.check_free(options["start"], "start")
            velocity = np.zeros(2)
        else:
            centre = cells[rng.integers(len(cells))].astype(np.float64)
            position = centre + rng.uniform(-START_NOISE, START_NOISE, 2)
            velocity = rng.normal(0.0, START_NOISE, 2)
        if "goal" in options:
            self.goal = self.maze.check_free(options["goal"], "goal")
        elif self.fixed_goal is not None:
            self.goal = self.fixed_goal
        else:
            self.goal = cells[rng.integers(len(cells))].astype(np.float64)
        self._state = np.concatenate([position, velocity])
        self._t = 0
        return self._observation(), {"goal": self.goal.copy()}

    def _generator(self, seed: int | None) -> np.random.Generator:
        """The episode's generator: gymnasium's ``np_random`` (seeded by ``super().reset``) when
        gymnasium is there, else the same kind of generator kept here (``default_rng(seed)``
        and gymnasium's seeding give the same numbers)."""
        if _gymnasium is not None:
            super().reset(seed=seed)
            return self.np_random
        if seed is not None or self._rng is None:
            self._rng = np.random.default_rng(seed)
        return self._rng

    def step(self, action):
        """One step; returns ``(observation, reward, terminated, truncated, info)``."""
        if self._state is None:
            raise ConfigError("PointMazeEnv.step() before reset(); call env.reset() first")
        action = np.asarray(action, dtype=np.float64)
        if action.shape != (2,) or not np.all(np.isfinite(action)):
            raise ConfigError(f"an action is 2 finite numbers (a force in [-1, 1]^2); got "
                              f"{action!r}")
        self._state = physics.step(self.maze, self._state[None], action[None])[0]
        self._t += 1
        reward = float(self.reward(self._state[None, :2], self.goal)[0])
        success = bool(physics.reached(self._state, self.goal))
        truncated = self._t >= self.max_episode_steps
        return self._observation(), reward, False, truncated, {"goal": self.goal.copy(),
                                                               "success": success}

    def reward(self, positions, goals) -> np.ndarray:
        """The reward at each position (n, 2) for a goal (2,) or one goal each (n, 2), as
        ``step`` gives it."""
        if self.reward_type == "sparse":
            return physics.reached(positions, goals).astype(np.float64)
        return -self.maze.geodesic_distance(positions, goals)

    def _observation(self) -> np.ndarray:
        return self._state.astype(np.float32)

    @property
    def state(self) -> np.ndarray:
        """The current (x, y, vx, vy) in float64."""
        return self._state.copy()

    # D4RL's dataset API --------------------------------------------------------------------
    def get_dataset(self) -> dict[str, np.ndarray]:
        """The offline data as D4RL gives it: ``observations`` (N, 4), ``actions`` (N, 2),
        ``rewards`` (N,), ``terminals`` and ``timeouts`` (N,) and ``infos/goal`` (N, 2). The
        rewards are this environment's (its reward type, towards its fixed goal if it has one,
        else towards the goal the controller was steering for)."""
        if self._dataset is None:
            from .datasets import generate_dataset, load_dataset

            if self.dataset_path is not None:
                data = load_dataset(self.dataset_path)
            else:
                data = generate_dataset(self.maze, self.dataset_size, seed=self.dataset_seed)
            goal = self.fixed_goal if self.fixed_goal is not None else data["infos/goal"]
            data["rewards"] = self.reward(data["next_observations"][:, :2], goal)
            self._dataset = data
        return dict(self._dataset)


def register_with_gymnasium() -> list[str]:
    """Make ``gymnasium.make("diffusion-kernel/maze2d-medium-v0")`` (and ``-umaze-``) build a
    ``PointMazeEnv``; returns the ids. Needs gymnasium."""
    if _gymnasium is None:
        raise ConfigError("register_with_gymnasium needs gymnasium: pip install gymnasium")
    for env_id, maze in GYMNASIUM_IDS.items():
        if env_id not in _gymnasium.registry:
            _gymnasium.register(env_id, entry_point=f"{__name__}:PointMazeEnv",
                                kwargs={"maze": maze}, max_episode_steps=300)
    return list(GYMNASIUM_IDS)
