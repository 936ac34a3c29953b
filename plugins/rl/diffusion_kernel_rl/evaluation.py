"""Evaluation on fixed start/goal pairs of a maze: success rate and D4RL's normalised score.

An episode starts at rest on a free cell's centre, with a goal at another cell's centre at least
``min_cells`` cells away along the maze, and lasts ``max_steps`` steps. Its return R counts the
steps spent within 0.5 of the goal (Maze2D's sparse reward), so getting there sooner and staying
scores more; it succeeds if it gets there at all. The normalised score is D4RL's
(Fu et al. 2020, sec. 5):

    score = 100 (R - R_random) / (R_expert - R_random)

with mean returns over the same pairs of a uniform random policy and of the waypoint controller
that generated the data (the "expert": Diffuser's scores above 100 on Maze2D are paths shorter
than its, Janner et al. 2022, table 1).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from diffusion_kernel.errors import ConfigError

from . import physics
from .mazes import Maze
from .policies import RandomPolicy, WaypointPolicy

Policy = Callable[[np.ndarray, np.ndarray, int], np.ndarray]


@dataclass
class Rollout:
    """Episodes run side by side: ``states`` (n, max_steps + 1, 4), ``rewards`` (n, max_steps),
    ``goals`` (n, 2)."""

    states: np.ndarray
    rewards: np.ndarray
    goals: np.ndarray

    @property
    def returns(self) -> np.ndarray:
        return self.rewards.sum(axis=1)

    @property
    def success(self) -> np.ndarray:
        return self.rewards.max(axis=1) > 0

    @property
    def arrival(self) -> np.ndarray:
        """The first step that ends within reach of the goal (``max_steps`` if none did)."""
        hit = self.rewards > 0
        return np.where(hit.any(axis=1), hit.argmax(axis=1) + 1, self.rewards.shape[1])


def evaluation_pairs(maze: Maze, n: int = 100, seed: int = 0,
                     min_cells: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """n (start, goal) pairs of free cells' centres at least ``min_cells`` apart along the maze,
    drawn with replacement by a generator seeded ``seed``: the same pairs for the same seed."""
    far = np.argwhere(maze.distances >= min_cells)
    if len(far) == 0:
        raise ConfigError(f"no two cells of the {maze.name} maze are {min_cells} cells apart")
    chosen = far[np.random.default_rng(seed).integers(len(far), size=n)]
    cells = maze.free_cells.astype(np.float64)
    return cells[chosen[:, 0]], cells[chosen[:, 1]]


def rollout(maze: Maze, policy: Policy, starts, goals, max_steps: int = 300) -> Rollout:
    """Run ``policy`` from rest at each start towards its goal for ``max_steps`` steps."""
    starts, goals = np.asarray(starts, np.float64), np.asarray(goals, np.float64)
    state = np.concatenate([starts, np.zeros_like(starts)], axis=1)
    states, rewards = [state], []
    for t in range(max_steps):
        action = np.asarray(policy(state, goals, t), dtype=np.float64)
        if action.shape != (len(state), 2):
            raise ConfigError(f"a policy must return actions of shape ({len(state)}, 2), got "
                              f"{action.shape}")
        state = physics.step(maze, state, action)
        states.append(state)
        rewards.append(physics.reached(state, goals).astype(np.float64))
    return Rollout(np.stack(states, axis=1), np.stack(rewards, axis=1), goals)


@dataclass
class References:
    """Mean returns of the random policy and of the controller on one set of pairs."""

    random: float
    expert: float

    def score(self, returns) -> float:
        return float(100 * (np.mean(returns) - self.random) / (self.expert - self.random))


def references(maze: Maze, starts, goals, max_steps: int = 300, seed: int = 0) -> References:
    """R_random (uniform actions, seeded) and R_expert (the waypoint controller) on the pairs."""
    random = rollout(maze, RandomPolicy(seed), starts, goals, max_steps).returns.mean()
    expert = rollout(maze, WaypointPolicy(maze), starts, goals, max_steps).returns.mean()
    return References(float(random), float(expert))


def summary(result: Rollout, refs: References) -> dict[str, float]:
    """Success rate (%), mean return, normalised score and mean arrival step of a rollout."""
    return {"success_rate": float(100 * result.success.mean()),
            "mean_return": float(result.returns.mean()),
            "normalized_score": refs.score(result.returns),
            "mean_arrival_step": float(result.arrival.mean())}


def plan_and_follow(pipe, maze: Maze, starts, goals, max_steps: int = 300, seed: int = 0,
                    use_goal: bool = True, **plan_kwargs) -> tuple[Rollout, np.ndarray]:
    """Diffuser's Maze2D protocol: plan once from each start (at rest) to its goal with a
    ``DiffuserPlanningPipeline``, then follow the plan (``PlanFollower``). Returns the rollout
    and the plans' states. ``use_goal=False``: plans fixed at the start only."""
    import torch

    from .policies import PlanFollower

    starts, goals = np.asarray(starts, np.float64), np.asarray(goals, np.float64)
    generators = [torch.Generator().manual_seed(seed + i) for i in range(len(starts))]
    observations = np.concatenate([starts, np.zeros_like(starts)], axis=1)
    plans = pipe(observations, goals if use_goal else None, generator=generators,
                 **plan_kwargs).states
    return rollout(maze, PlanFollower(plans), starts, goals, max_steps), plans


def planner_report(pipe, maze: Maze, num_pairs: int = 100, seed: int = 0, max_steps: int = 300,
                   num_inference_steps: int | None = None, baselines: bool = True,
                   behaviour_cloning_steps: int = 3000, data=None,
                   num_candidates: int | None = None, selection: str = "likelihood") -> dict:
    """The planner and the policies it is compared with on ``num_pairs`` fixed pairs: for each,
    success rate, mean return, normalised score and mean arrival step; and R_random, R_expert.
    ``baselines``: also the straight-line controller, planning without the goal, and (with
    ``behaviour_cloning_steps`` > 0, trained on ``data``) behaviour cloning.
    ``num_candidates`` / ``selection``: plans sampled per pair and how one is kept (default:
    the planner's recommended ``num_candidates``); the report says which were used."""
    from .policies import StraightLinePolicy, train_behaviour_cloning

    starts, goals = evaluation_pairs(maze, num_pairs, seed)
    refs = references(maze, starts, goals, max_steps, seed)
    candidates = pipe.num_candidates if num_candidates is None else num_candidates
    plan = dict(seed=seed, max_steps=max_steps, num_inference_steps=num_inference_steps,
                num_candidates=candidates, selection=selection)
    rows = {"planner": summary(plan_and_follow(pipe, maze, starts, goals, **plan)[0], refs)}
    if baselines:
        rows["planner without goal"] = summary(
            plan_and_follow(pipe, maze, starts, goals, use_goal=False, **plan)[0], refs)
        rows["straight line"] = summary(
            rollout(maze, StraightLinePolicy(), starts, goals, max_steps), refs)
        if behaviour_cloning_steps > 0 and data is not None:
            policy = train_behaviour_cloning(data, maze, behaviour_cloning_steps, seed=seed)
            rows["behaviour cloning"] = summary(
                rollout(maze, policy, starts, goals, max_steps), refs)
    rows["random"] = summary(rollout(maze, RandomPolicy(seed), starts, goals, max_steps), refs)
    rows["controller (expert)"] = summary(
        rollout(maze, WaypointPolicy(maze), starts, goals, max_steps), refs)
    return {"maze": maze.name, "pairs": num_pairs, "seed": seed, "max_steps": max_steps,
            "num_candidates": candidates,
            "selection": selection if candidates > 1 else None,
            "R_random": refs.random, "R_expert": refs.expert, "policies": rows}


def guidance_report(pipe, maze: Maze, goal, num_starts: int = 50, seed: int = 0,
                    max_steps: int = 300, batch_size: int = 16, n_guide_steps: int = 2,
                    scale: float = 1.0, num_inference_steps: int | None = None) -> dict:
    """Value guidance on a fixed goal: from ``num_starts`` seeded start cells (at least 3 cells
    from the goal), a ``ValueGuidedRLPipeline`` plans once with and without guidance (the same
    generator seeds) and the chosen plan is followed; the success rate of each."""
    import torch

    from .policies import PlanFollower

    goal = maze.check_free(goal, "goal")
    cells = maze.free_cells.astype(np.float64)
    target = maze.cell_index(maze.cell_of(goal))[0]
    far = np.flatnonzero(maze.distances[:, target] >= 3)
    starts = cells[far[np.random.default_rng(seed).integers(len(far), size=num_starts)]]
    rows = {}
    for name, guide in (("guided", n_guide_steps), ("unguided", 0)):
        plans = []
        for i, start in enumerate(starts):
            out = pipe(np.concatenate([start, np.zeros(2)]).astype(np.float32),
                       batch_size=batch_size, planning_horizon=pipe.unet.config.sample_size,
                       n_guide_steps=guide, scale=scale,
                       generator=torch.Generator().manual_seed(seed + i),
                       num_inference_steps=num_inference_steps, return_dict=True)
            plans.append(out.trajectories[out.chosen, :, pipe.action_dim:])
        result = rollout(maze, PlanFollower(np.stack(plans)), starts,
                         np.tile(goal, (num_starts, 1)), max_steps)
        rows[name] = {"success_rate": float(100 * result.success.mean()),
                      "mean_arrival_step": float(result.arrival.mean())}
    return {"maze": maze.name, "goal": goal.tolist(), "starts": num_starts, "seed": seed,
            "batch_size": batch_size, "n_guide_steps": n_guide_steps, "scale": scale,
            "policies": rows}
