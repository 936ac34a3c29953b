"""How ``diffusion-kernel generate`` saves plans: ``--out plans.npz`` (every plan's states,
actions, start and goal stacked), ``--out plans.png`` (the maze with every planned path), or a
folder (``0000.npz``, ``0001.npz``, ... and ``plans.png``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from diffusion_kernel.errors import ConfigError
from diffusion_kernel.outputs import OutputWriter


def _arrays(plans) -> dict[str, np.ndarray]:
    arrays = {"states": np.stack([p.states for p in plans]),
              "actions": np.stack([p.actions for p in plans]),
              "starts": np.stack([p.start for p in plans])}
    if all(p.goal is not None for p in plans):
        arrays["goals"] = np.stack([p.goal for p in plans])
    return arrays


def _picture(plans):
    from .mazes import LAYOUTS, Maze
    from .rendering import render_paths

    names = {(p.environment or "").removeprefix("maze2d-") for p in plans}
    name = names.pop() if len(names) == 1 else None
    if name not in LAYOUTS:
        raise ConfigError("these plans name no maze (the planner's folder has no environment), "
                          "so they cannot be drawn; write them as .npz")
    goals = [p.goal[:2] for p in plans if p.goal is not None]
    return render_paths(Maze(name), [p.states for p in plans], goals)


class PlanWriter(OutputWriter):
    suffixes = (".npz", ".png")
    sample_suffix = ".npz"
    extras = ("plans.png",)
    description = "plans"

    def write_file(self, samples, path: Path) -> None:
        if path.suffix.lower() == ".png":
            _picture(samples).save(path, format="PNG")
        else:
            np.savez(path, **_arrays(samples))

    def write_sample(self, sample, path: Path) -> None:
        np.savez(path, **{k: v[0] for k, v in _arrays([sample]).items()})

    def write_extras(self, samples, folder: Path) -> None:
        from .rendering import save_png

        save_png(_picture(samples), folder / "plans.png")
