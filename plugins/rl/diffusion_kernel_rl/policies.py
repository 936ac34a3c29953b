"""Policies the evaluation compares: every one is a callable
``policy(states (n, 4), goals (n, 2), t) -> actions (n, 2)`` acting on n episodes at once.

- ``RandomPolicy``: uniform actions (the reference low end of the normalised score);
- ``WaypointPolicy``: the data-generating controller without noise (the reference high end);
- ``StraightLinePolicy``: the controller's law aimed straight at the goal, no path (walls stop it);
- ``PlanFollower``: follows the waypoints of plans made once at the start (Diffuser's Maze2D
  protocol, Janner et al. 2022, sec. 5.1);
- ``BehaviourCloningPolicy``: an MLP from (state, goal) to action, fit to the data's actions with
  the goal the controller was steering for (``train_behaviour_cloning``).
"""

from __future__ import annotations

import numpy as np
import torch

from . import physics
from .controller import D_GAIN, P_GAIN, WaypointController
from .mazes import Maze


class RandomPolicy:
    """Uniform actions in [-1, 1]^2 from a seeded generator."""

    def __init__(self, seed: int = 0):
        self.rng = np.random.default_rng(seed)

    def __call__(self, states, goals, t):
        return self.rng.uniform(-1.0, 1.0, size=(len(states), 2))


class WaypointPolicy:
    """The waypoint controller as a policy (no noise)."""

    def __init__(self, maze: Maze):
        self.controller = WaypointController(maze)

    def __call__(self, states, goals, t):
        return self.controller(states, goals)


class StraightLinePolicy:
    """Steers straight at the goal with the controller's gains, ignoring the walls."""

    def __call__(self, states, goals, t):
        return np.clip(P_GAIN * (goals - states[:, :2]) - D_GAIN * states[:, 2:], -1.0, 1.0)


class PlanFollower:
    """Tracks planned states: at step t it aims for the position of plan state t + 1 (the last
    one once the plan is over) with the action that the point mass's dynamics say gets it there
    in one step, clipped to the allowed force. Plans: (n, horizon, >= 2), positions first."""

    def __init__(self, plans):
        self.plans = np.asarray(plans, dtype=np.float64)

    def __call__(self, states, goals, t):
        target = self.plans[:, min(t + 1, self.plans.shape[1] - 1), :2]
        wanted_velocity = (target - states[:, :2]) / physics.DT
        return np.clip((wanted_velocity - physics.DAMPING * states[:, 2:]) / physics.THRUST,
                       -1.0, 1.0)


class BehaviourCloningNet(torch.nn.Module):
    """a = tanh(MLP(state, goal)); inputs scaled by the maze's size and the top speed."""

    def __init__(self, maze_shape: tuple[int, int], hidden: int = 256):
        super().__init__()
        rows, cols = maze_shape
        scale = [rows, cols, physics.TOP_SPEED, physics.TOP_SPEED, rows, cols]
        self.register_buffer("scale", torch.tensor(scale, dtype=torch.float32))
        self.mlp = torch.nn.Sequential(torch.nn.Linear(6, hidden), torch.nn.Mish(),
                                       torch.nn.Linear(hidden, hidden), torch.nn.Mish(),
                                       torch.nn.Linear(hidden, 2))

    def forward(self, states: torch.Tensor, goals: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.mlp(torch.cat([states, goals], -1) / self.scale))


class BehaviourCloningPolicy:
    """A trained ``BehaviourCloningNet`` as a policy."""

    def __init__(self, net: BehaviourCloningNet):
        self.net = net.eval()

    @torch.no_grad()
    def __call__(self, states, goals, t):
        states = torch.as_tensor(np.asarray(states), dtype=torch.float32)
        goals = torch.as_tensor(np.asarray(goals), dtype=torch.float32).expand(len(states), 2)
        return self.net(states, goals).numpy().astype(np.float64)


def train_behaviour_cloning(data: dict[str, np.ndarray], maze: Maze, steps: int = 3000,
                            batch_size: int = 256, learning_rate: float = 1e-3,
                            seed: int = 0) -> BehaviourCloningPolicy:
    """Fit ``BehaviourCloningPolicy`` to the dataset's (observation, infos/goal) -> action by
    mean squared error with Adam; the same seed gives the same policy."""
    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        net = BehaviourCloningNet(maze.shape)
    states = torch.as_tensor(data["observations"], dtype=torch.float32)
    goals = torch.as_tensor(data["infos/goal"], dtype=torch.float32)
    actions = torch.as_tensor(data["actions"], dtype=torch.float32)
    optimizer = torch.optim.Adam(net.parameters(), lr=learning_rate)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    for _ in range(steps):
        idx = torch.randint(len(states), (batch_size,), generator=generator)
        loss = torch.nn.functional.mse_loss(net(states[idx], goals[idx]),
                                            actions[idx])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    return BehaviourCloningPolicy(net)
