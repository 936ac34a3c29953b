"""Offline data for the point maze, made here: the waypoint controller, with noise on its actions,
drives to one random goal after another, as D4RL's Maze2D data was made (Fu et al. 2020).

Unlike D4RL's controller, ours rests at each goal for a random number of steps (0 to
``max_dwell``) before it takes the next: the data then holds arrivals, so a planner conditioned on
a resting goal state (x_g, y_g, 0, 0) learns to get there and stay, as the evaluation asks.

Data are gathered by ``num_streams`` independent runs side by side (one seeded generator for all).
Each run is one continuous trajectory; ``timeouts`` marks its last step, and training windows never
cross it. The dictionary has D4RL's keys and ``next_observations``:

    observations (N, 4), actions (N, 2), next_observations (N, 4), rewards (N,),
    terminals (N,), timeouts (N,), infos/goal (N, 2)

(rewards: the sparse Maze2D reward of reaching the goal the controller steers for).
"""

from __future__ import annotations

import io
import math
import os
from pathlib import Path

import numpy as np
from diffusion_kernel.errors import ConfigError, FileAccessError
from diffusion_kernel.hub import atomic_write_bytes

from . import physics
from .controller import WaypointController
from .mazes import Maze

REQUIRED_KEYS = ("observations", "actions", "next_observations", "rewards", "terminals",
                 "timeouts", "infos/goal")
GOAL_JITTER = 0.25  # goals anywhere within the middle half of a free cell


def random_goals(maze: Maze, rng: np.random.Generator, n: int,
                 jitter: float = GOAL_JITTER) -> np.ndarray:
    """n goal positions: random free cells' centres moved by up to ``jitter`` on each axis."""
    cells = maze.free_cells[rng.integers(len(maze.free_cells), size=n)].astype(np.float64)
    return cells + rng.uniform(-jitter, jitter, size=(n, 2))


def generate_dataset(maze: str | Maze = "medium", num_steps: int = 400_000, seed: int = 0,
                     num_streams: int = 100, action_noise: float = 0.3,
                     episode_steps: int | None = 72, max_start_rest: int = 10,
                     max_dwell: int = 40) -> dict[str, np.ndarray]:
    """``num_steps`` transitions, the same for the same arguments. ``action_noise``: the
    standard deviation of the Gaussian noise added to the controller's actions (then clipped to
    [-1, 1]).

    Episodes (``episode_steps``, the default): each starts at rest near a random free cell's
    centre, waits there 0 to ``max_start_rest`` steps, drives to one random goal in another cell
    and rests on it until the episode ends after ``episode_steps`` steps (``num_steps`` rounded
    up to whole episodes, run side by side). A window from rest to rest is then one direct leg.

    ``episode_steps=None``: D4RL's way, ``num_streams`` long runs side by side (``num_steps``
    rounded up to a multiple), each going from goal to random goal and resting 0 to
    ``max_dwell`` steps at each."""
    maze = maze if isinstance(maze, Maze) else Maze(maze)
    if num_steps < 1 or num_streams < 1 or (episode_steps is not None and episode_steps < 2):
        raise ConfigError(f"num_steps and num_streams must be positive and episode_steps at "
                          f"least 2, got {num_steps}, {num_streams} and {episode_steps}")
    rng = np.random.default_rng(seed)
    if episode_steps is None:
        runs = _streams(maze, rng, math.ceil(num_steps / num_streams), num_streams,
                        action_noise, max_dwell)
    else:
        runs = _episodes(maze, rng, episode_steps, math.ceil(num_steps / episode_steps),
                         action_noise, max_start_rest)
    return _flatten(*runs)


def _noisy(controller, rng, state, target, action_noise):
    noise = rng.normal(0, action_noise, (len(state), 2))
    return np.clip(controller(state, target) + noise, -1.0, 1.0)


def _streams(maze, rng, length, count, action_noise, max_dwell):
    """D4RL-style runs: (obs, actions, goals) shaped (length, count, .) and the final states."""
    controller = WaypointController(maze)
    starts = random_goals(maze, rng, count, jitter=0.1)
    state = np.concatenate([starts, np.zeros((count, 2))], axis=1)
    goal = random_goals(maze, rng, count)
    dwell = np.full(count, -1)  # steps left to rest at the goal; -1: not arrived yet
    obs, acts, goals = np.empty((length, count, 4)), np.empty((length, count, 2)), \
        np.empty((length, count, 2))
    for t in range(length):
        action = _noisy(controller, rng, state, goal, action_noise)
        obs[t], acts[t], goals[t] = state, action, goal
        state = physics.step(maze, state, action)
        arrived = physics.reached(state, goal) & (dwell < 0)
        dwell[arrived] = rng.integers(0, max_dwell + 1, size=arrived.sum())
        done = dwell == 0
        goal[done] = random_goals(maze, rng, int(done.sum()))
        dwell[done] = -1
        dwell[dwell > 0] -= 1
    return obs, acts, goals, state


def _episodes(maze, rng, length, count, action_noise, max_start_rest):
    """Episodes from rest to rest at one goal: the same shapes as ``_streams``."""
    controller = WaypointController(maze)
    start_cells = rng.integers(len(maze.free_cells), size=count)
    goal_cells = (start_cells + rng.integers(1, len(maze.free_cells), size=count)) \
        % len(maze.free_cells)  # any other cell
    starts = maze.free_cells[start_cells] + rng.uniform(-0.1, 0.1, size=(count, 2))
    goal = maze.free_cells[goal_cells] + rng.uniform(-GOAL_JITTER, GOAL_JITTER, size=(count, 2))
    rest = rng.integers(0, max_start_rest + 1, size=count)
    state = np.concatenate([starts, np.zeros((count, 2))], axis=1)
    obs, acts = np.empty((length, count, 4)), np.empty((length, count, 2))
    for t in range(length):
        target = np.where((t < rest)[:, None], starts, goal)
        obs[t], acts[t] = state, _noisy(controller, rng, state, target, action_noise)
        state = physics.step(maze, state, acts[t])
    return obs, acts, np.broadcast_to(goal, (length, count, 2)), state


def _flatten(obs, acts, goals, final_states) -> dict[str, np.ndarray]:
    """Runs shaped (length, count, .) one after the other, as D4RL's keys; ``timeouts`` marks
    the last step of each run."""
    length, count = obs.shape[:2]
    flat = lambda a: np.swapaxes(a, 0, 1).reshape(count * length, *a.shape[2:])
    observations, actions, goals = flat(obs), flat(acts), flat(goals)
    timeouts = np.zeros((count, length), dtype=bool)
    timeouts[:, -1] = True
    timeouts = timeouts.reshape(-1)
    next_observations = np.concatenate([observations[1:], final_states[-1:]])
    next_observations[timeouts] = final_states  # each run's last step ends in its last state
    return {
        "observations": observations.astype(np.float32),
        "actions": actions.astype(np.float32),
        "next_observations": next_observations.astype(np.float32),
        "rewards": physics.reached(next_observations, goals).astype(np.float32),
        "terminals": np.zeros(len(observations), dtype=bool),
        "timeouts": timeouts,
        "infos/goal": goals.astype(np.float32),
    }


def save_dataset(data: dict[str, np.ndarray], path: str | os.PathLike) -> Path:
    """Write the data as a compressed .npz, atomically; returns the path."""
    check_dataset(data, str(path))
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **data)
    atomic_write_bytes(path, buffer.getvalue())
    return Path(path)


def load_dataset(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read an .npz written by ``save_dataset`` (or any file with the same keys)."""
    path = Path(path)
    if not path.is_file():
        raise FileAccessError(f"no dataset file at {path}; make one with "
                              f"`diffusion-kernel rl dataset --out {path}`")
    try:
        with np.load(path, allow_pickle=False) as archive:
            data = {key: archive[key] for key in archive.files}
    except (OSError, ValueError) as exc:
        raise FileAccessError(f"{path} is not a readable .npz dataset ({exc})") from None
    check_dataset(data, str(path))
    return data


def check_dataset(data: dict[str, np.ndarray], where: str = "the dataset") -> None:
    """A ConfigError unless every required key is there with matching lengths."""
    missing = [k for k in REQUIRED_KEYS if k not in data]
    if missing:
        raise ConfigError(f"{where} lacks the keys {missing}; a point-maze dataset needs "
                          f"{list(REQUIRED_KEYS)} (make one with `diffusion-kernel rl dataset`)")
    lengths = {k: len(data[k]) for k in REQUIRED_KEYS}
    if len(set(lengths.values())) != 1:
        raise ConfigError(f"{where}: the keys hold different numbers of steps: {lengths}")
    if data["observations"].ndim != 2 or data["actions"].ndim != 2:
        raise ConfigError(f"{where}: observations and actions must be 2-D (steps, dims), got "
                          f"{data['observations'].shape} and {data['actions'].shape}")


def window_starts(data: dict[str, np.ndarray], horizon: int) -> np.ndarray:
    """Every index i such that steps i .. i + horizon - 1 lie in one continuous trajectory."""
    ends = np.flatnonzero(np.asarray(data["timeouts"]) | np.asarray(data["terminals"]))
    starts = np.concatenate([[0], ends[:-1] + 1])
    return np.concatenate([np.arange(s, e + 2 - horizon) for s, e in zip(starts, ends)
                           if e + 1 - s >= horizon] or [np.empty(0, dtype=np.int64)])


def trajectories(data: dict[str, np.ndarray]) -> np.ndarray:
    """Per step, the transition the planner models: (actions, observations), as Diffuser
    orders them (N, action_dim + observation_dim)."""
    return np.concatenate([data["actions"], data["observations"]], axis=1).astype(np.float32)
