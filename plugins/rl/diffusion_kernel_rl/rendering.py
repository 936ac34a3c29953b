"""Pictures of the maze with paths on it (PNG through Pillow): walls dark, free cells light, each
path a coloured line from a green start dot to a red goal ring."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
from diffusion_kernel.hub import atomic_write_bytes

from .mazes import Maze

WALL, FLOOR, START, GOAL = (45, 52, 64), (236, 239, 244), (46, 160, 67), (214, 39, 40)
PALETTE = [(31, 119, 180), (255, 127, 14), (148, 103, 189), (23, 190, 207), (140, 86, 75),
           (227, 119, 194), (188, 189, 34), (127, 127, 127)]


def render_paths(maze: Maze, paths=(), goals=(), cell_pixels: int = 48):
    """A PIL image of the maze with ``paths`` (each (T, >= 2), positions first) and ``goals``
    ((2,) each, or one per path) drawn on it."""
    from PIL import Image, ImageDraw

    rows, cols = maze.shape
    image = Image.new("RGB", (cols * cell_pixels, rows * cell_pixels), FLOOR)
    draw = ImageDraw.Draw(image)
    for r, c in np.argwhere(maze.walls):
        draw.rectangle([c * cell_pixels, r * cell_pixels, (c + 1) * cell_pixels - 1,
                        (r + 1) * cell_pixels - 1], fill=WALL)

    def pixel(point):  # (x, y) = (row, column) with cell centres on integers
        return ((point[1] + 0.5) * cell_pixels, (point[0] + 0.5) * cell_pixels)

    dot = cell_pixels // 8
    for i, path in enumerate(paths):
        points = [pixel(p) for p in np.asarray(path)[:, :2]]
        draw.line(points, fill=PALETTE[i % len(PALETTE)], width=max(2, cell_pixels // 16),
                  joint="curve")
        x, y = points[0]
        draw.ellipse([x - dot, y - dot, x + dot, y + dot], fill=START)
    for goal in np.asarray(goals, dtype=np.float64).reshape(-1, 2):
        x, y = pixel(goal)
        ring = cell_pixels // 2  # the goal counts as reached within half a cell
        draw.ellipse([x - ring, y - ring, x + ring, y + ring], outline=GOAL,
                     width=max(2, cell_pixels // 16))
    return image


def save_png(image, path: str | os.PathLike) -> Path:
    """Write a PIL image as PNG, atomically."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    atomic_write_bytes(path, buffer.getvalue())
    return Path(path)
