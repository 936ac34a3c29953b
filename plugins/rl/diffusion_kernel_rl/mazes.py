"""Maze layouts and the grid facts every part of the plugin asks about them.

The layouts are D4RL's Maze2D ones (Fu et al. 2020, "D4RL: Datasets for Deep Data-Driven
Reinforcement Learning"): ``#`` is a wall, ``O`` a free cell. As in D4RL, cell (i, j) (row i,
column j) is the unit square centred on the point (x, y) = (i, j), so a position rounds to its
cell. Shortest paths between cells are breadth-first searches over the 4-connected free cells,
done once per maze for every pair (the medium maze has 26 free cells).
"""

from __future__ import annotations

from collections import deque
from functools import cached_property

import numpy as np
from diffusion_kernel.errors import ConfigError

LAYOUTS = {
    "umaze": ("#####",
              "#OOO#",
              "###O#",
              "#OOO#",
              "#####"),
    "medium": ("########",
               "#OO##OO#",
               "#OO#OOO#",
               "##OOO###",
               "#OO#OOO#",
               "#O#OO#O#",
               "#OOO#OO#",
               "########"),
}
UNREACHABLE = -1
_MOVES = ((1, 0), (-1, 0), (0, 1), (0, -1))


class Maze:
    """A grid maze: ``Maze("medium")`` or ``Maze(rows=("####", "#OO#", "####"))``."""

    def __init__(self, name: str | None = "medium", rows: tuple[str, ...] | None = None):
        if rows is None:
            if name not in LAYOUTS:
                raise ConfigError(f"unknown maze {name!r}; the layouts are: "
                                  f"{', '.join(sorted(LAYOUTS))} (or pass rows=)")
            rows = LAYOUTS[name]
        if len({len(r) for r in rows}) != 1 or set("".join(rows)) - {"#", "O"}:
            raise ConfigError("maze rows must be strings of one length made of '#' (wall) and "
                              "'O' (free)")
        self.name = name or "custom"
        self.rows = tuple(rows)
        self.walls = np.array([[c == "#" for c in r] for r in rows])
        if not self.walls[0].all() or not self.walls[-1].all() or not self.walls[:, 0].all() \
                or not self.walls[:, -1].all():
            raise ConfigError("a maze must be closed: its first and last rows and columns must be "
                              "walls")
        self.free_cells = np.argwhere(~self.walls)  # (n, 2) cell indices, row-major order
        # free-cell index of each grid cell, -1 for walls
        self._index = np.full(self.walls.shape, -1, dtype=np.int64)
        self._index[~self.walls] = np.arange(len(self.free_cells))

    @property
    def shape(self) -> tuple[int, int]:
        return self.walls.shape

    def cell_of(self, positions) -> np.ndarray:
        """The (row, column) cell holding each position (..., 2): positions round to cells."""
        return np.floor(np.asarray(positions, dtype=np.float64) + 0.5).astype(np.int64)

    def is_wall(self, positions) -> np.ndarray:
        """True where a position lies in a wall cell or outside the grid."""
        cells = self.cell_of(positions)
        inside = ((cells >= 0) & (cells < np.array(self.shape))).all(-1)
        clipped = np.clip(cells, 0, np.array(self.shape) - 1)
        return ~inside | self.walls[clipped[..., 0], clipped[..., 1]]

    def check_free(self, position, what: str = "position") -> np.ndarray:
        """The position as a float array, or a ConfigError when it is in a wall."""
        position = np.asarray(position, dtype=np.float64)
        if position.shape != (2,):
            raise ConfigError(f"a {what} is an (x, y) pair; got shape {position.shape}")
        if self.is_wall(position):
            raise ConfigError(f"the {what} {tuple(position.tolist())} lies in a wall of the "
                              f"{self.name} maze; pick a free cell, e.g. one of "
                              f"{[tuple(c) for c in self.free_cells[:3].tolist()]}")
        return position

    def cell_index(self, cells) -> np.ndarray:
        """Index into ``free_cells`` of each (row, column) cell (it must be free)."""
        cells = np.asarray(cells).reshape(-1, 2)
        inside = ((cells >= 0) & (cells < np.array(self.shape))).all(-1)
        index = np.where(inside, self._index[cells[:, 0].clip(0, self.shape[0] - 1),
                                             cells[:, 1].clip(0, self.shape[1] - 1)], -1)
        if (index < 0).any():
            bad = cells[index < 0][0]
            raise ConfigError(f"cell {tuple(bad.tolist())} of the {self.name} maze is a wall or "
                              f"outside it")
        return index

    @cached_property
    def _bfs(self) -> tuple[np.ndarray, np.ndarray]:
        """Cell-to-cell path lengths and, for each (cell, goal cell), the next cell on a
        shortest path (the cell itself once it is the goal)."""
        n = len(self.free_cells)
        distance = np.full((n, n), UNREACHABLE, dtype=np.int64)
        next_cell = np.tile(np.arange(n), (n, 1))
        for goal in range(n):  # BFS outward from each goal: the parent is one step closer
            distance[goal, goal] = 0
            queue = deque([goal])
            while queue:
                here = queue.popleft()
                r, c = self.free_cells[here]
                for dr, dc in _MOVES:
                    there = self._index[r + dr, c + dc]  # closed mazes: never off the grid
                    if there >= 0 and distance[there, goal] == UNREACHABLE:
                        distance[there, goal] = distance[here, goal] + 1
                        next_cell[there, goal] = here
                        queue.append(there)
        return distance, next_cell

    @property
    def distances(self) -> np.ndarray:
        """(n, n) shortest-path lengths in cells between free cells (``UNREACHABLE``: none)."""
        return self._bfs[0]

    @property
    def next_cells(self) -> np.ndarray:
        """(n, n): ``next_cells[a, g]`` is the free-cell index one step from a towards g."""
        return self._bfs[1]

    def path(self, start, goal) -> np.ndarray:
        """The cells (k, 2) of a shortest path from the start position's cell to the goal's."""
        here, target = self.cell_index(self.cell_of([start, goal]))
        if self.distances[here, target] == UNREACHABLE:
            raise ConfigError(f"no path from {tuple(start)} to {tuple(goal)} in the {self.name} "
                              f"maze")
        cells = [here]
        while cells[-1] != target:
            cells.append(self.next_cells[cells[-1], target])
        return self.free_cells[cells]

    def geodesic_distance(self, positions, goals) -> np.ndarray:
        """Length of the cell path from each position (n, 2) to its goal ((2,) or (n, 2)), plus
        the straight distance from the position to its next cell's centre (or to the goal inside
        the goal's cell): a wall-respecting distance, used as a dense reward."""
        positions = np.asarray(positions, dtype=np.float64).reshape(-1, 2)
        goals = np.broadcast_to(np.asarray(goals, dtype=np.float64), positions.shape)
        here = self.cell_index(self.cell_of(positions))
        target = self.cell_index(self.cell_of(goals))
        steps = self.distances[here, target]
        aim = np.where((steps == 0)[:, None], goals,
                       self.free_cells[self.next_cells[here, target]].astype(np.float64))
        return np.maximum(steps - 1, 0) + np.linalg.norm(aim - positions, axis=-1)
