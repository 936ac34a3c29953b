"""The point mass: a square body of half-size ``BODY_RADIUS`` pushed by a bounded force, with
linear drag, sliding along walls.

One step of ``DT`` seconds (semi-implicit Euler), for a batch of states (x, y, vx, vy) and actions
in [-1, 1]^2:

    v' = DAMPING v + THRUST a          (drag and push; |v| stays below THRUST / (1 - DAMPING))
    p' = p + DT v'                     (moved one axis at a time)

Moving along one axis, a body that would overlap a wall cell stops flush against it and loses its
velocity along that axis (an inelastic contact), so it slides along walls rather than sticking.
A step moves at most ``DT * TOP_SPEED`` = 0.4 cells, less than a wall's width: nothing tunnels.
"""

from __future__ import annotations

import numpy as np

from .mazes import Maze

DT = 0.1
DAMPING = 0.8
THRUST = 0.8
TOP_SPEED = THRUST / (1 - DAMPING)  # 4 cells per second, 0.4 cells per step
BODY_RADIUS = 0.1
GOAL_RADIUS = 0.5  # D4RL's Maze2D: the goal is reached within 0.5 of it
_CONTACT_GAP = 1e-6  # a body stopped by a wall rests this far from it


def _body_hits_wall(maze: Maze, positions: np.ndarray) -> np.ndarray:
    """True where the body centred at a position overlaps a wall. The body is smaller than a
    cell, so it touches at most the cells of its lowest and highest corner on each axis; cells
    off the grid count as the grid's border walls."""
    top = np.array(maze.shape) - 1
    low = np.clip(np.floor(positions - BODY_RADIUS + 0.5).astype(np.intp), 0, top)
    high = np.clip(np.floor(positions + BODY_RADIUS + 0.5).astype(np.intp), 0, top)
    walls = maze.walls
    return (walls[low[:, 0], low[:, 1]] | walls[low[:, 0], high[:, 1]]
            | walls[high[:, 0], low[:, 1]] | walls[high[:, 0], high[:, 1]])


def body_fits(maze: Maze, positions) -> np.ndarray:
    """True where a body centred at each position (..., 2) touches no wall."""
    positions = np.asarray(positions, dtype=np.float64)
    return ~_body_hits_wall(maze, positions.reshape(-1, 2)).reshape(positions.shape[:-1])


def step(maze: Maze, states: np.ndarray, actions: np.ndarray) -> np.ndarray:
    """The states (n, 4) after one step under actions (n, 2) (clipped to [-1, 1])."""
    actions = np.clip(actions, -1.0, 1.0)
    velocity = DAMPING * states[:, 2:] + THRUST * actions
    position = states[:, :2].copy()
    for axis in (0, 1):
        moved = position.copy()
        moved[:, axis] += DT * velocity[:, axis]
        hit = _body_hits_wall(maze, moved)
        if hit.any():
            # The leading edge entered wall cell k: rest against its face k -/+ 0.5.
            direction = np.sign(velocity[hit, axis])
            cell = np.floor(moved[hit, axis] + direction * BODY_RADIUS + 0.5)
            moved[hit, axis] = (cell - direction * (0.5 + BODY_RADIUS + _CONTACT_GAP))
            velocity[hit, axis] = 0.0
        position = moved
    return np.concatenate([position, velocity], axis=1)


def reached(positions, goals) -> np.ndarray:
    """True where a position is within ``GOAL_RADIUS`` of its goal."""
    gap = np.asarray(positions)[..., :2] - np.asarray(goals)[..., :2]
    return np.linalg.norm(gap, axis=-1) <= GOAL_RADIUS
