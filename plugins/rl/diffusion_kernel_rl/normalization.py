"""Normalisation of trajectories (actions, observations) before the diffusion model sees them.

Every kind is affine per channel, x_n = (x - shift) / scale, with statistics of the offline data:

- ``"global"``: one mean and one standard deviation per key over all its dimensions, as diffusers'
  ``ValueGuidedRLPipeline`` computes them (``data["observations"].mean()``);
- ``"gaussian"``: mean and standard deviation per dimension, Diffuser's ``GaussianNormalizer``
  (its locomotion setting; diffusers issue #10636 asks for it);
- ``"limits"``: per dimension, [min, max] mapped to [-1, 1], Diffuser's ``LimitsNormalizer`` (its
  Maze2D setting; with ``clip_sample`` the denoiser then stays within the data's box).

``TrajectoryNormalizer`` is a processor: it saves its statistics as a small JSON file in a pipeline
folder, so a trained planner carries the normalisation it was trained with.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from diffusion_kernel.errors import ConfigError
from diffusion_kernel.processing import ProcessorMixin

KINDS = ("global", "gaussian", "limits")
_TINY = 1e-6  # a constant dimension keeps a unit scale instead of dividing by zero


def _statistics(values: np.ndarray, kind: str) -> tuple[np.ndarray, np.ndarray]:
    dims = values.shape[1]
    if kind == "global":
        shift, scale = np.full(dims, values.mean()), np.full(dims, values.std())
    elif kind == "gaussian":
        shift, scale = values.mean(axis=0), values.std(axis=0)
    else:
        low, high = values.min(axis=0), values.max(axis=0)
        shift, scale = (high + low) / 2, (high - low) / 2
    return shift, np.where(scale > _TINY, scale, 1.0).astype(scale.dtype)


class TrajectoryNormalizer(ProcessorMixin):
    """Per-channel affine normalisation of transitions laid out as (actions, observations).

    Build it from data with ``TrajectoryNormalizer.fit(dataset, kind="limits")``; ``normalize`` /
    ``unnormalize`` take numpy arrays or tensors whose last axis is the whole transition
    (``part="all"``), the observation only (``part="observations"``) or the action only.
    """

    def __init__(self, action_dim: int, shift: Sequence[float], scale: Sequence[float],
                 kind: str = "limits"):
        if kind not in KINDS:
            raise ConfigError(f"unknown normalisation {kind!r}; choose one of {', '.join(KINDS)}")
        shift, scale = np.asarray(shift), np.asarray(scale)
        if shift.shape != scale.shape or shift.ndim != 1 or not 0 < action_dim < len(shift):
            raise ConfigError(f"a TrajectoryNormalizer needs shift and scale of one length "
                              f"(actions + observations) and 0 < action_dim < that length; got "
                              f"{shift.shape}, {scale.shape}, action_dim={action_dim}")
        if not np.all(scale > 0):
            raise ConfigError("every scale of a TrajectoryNormalizer must be positive")
        self.action_dim, self.kind = action_dim, kind
        self._shift = shift.astype(np.float32)
        self._scale = scale.astype(np.float32)

    @classmethod
    def fit(cls, data: dict[str, np.ndarray], kind: str = "limits") -> TrajectoryNormalizer:
        """The statistics of a D4RL-style dataset's ``actions`` and ``observations``."""
        if kind not in KINDS:
            raise ConfigError(f"unknown normalisation {kind!r}; choose one of {', '.join(KINDS)}")
        parts = [_statistics(np.asarray(data[key]), kind) for key in ("actions", "observations")]
        return cls(action_dim=data["actions"].shape[1],
                   shift=np.concatenate([p[0] for p in parts]).tolist(),
                   scale=np.concatenate([p[1] for p in parts]).tolist(), kind=kind)

    @property
    def transition_dim(self) -> int:
        return len(self._shift)

    @property
    def observation_dim(self) -> int:
        return self.transition_dim - self.action_dim

    def _slice(self, part: str) -> slice:
        slices = {"all": slice(None), "actions": slice(0, self.action_dim),
                  "observations": slice(self.action_dim, None)}
        if part not in slices:
            raise ConfigError(f"part must be one of {list(slices)}, got {part!r}")
        return slices[part]

    def _stats(self, x, part: str):
        chosen = self._slice(part)
        shift, scale = self._shift[chosen], self._scale[chosen]
        if x.shape[-1] != len(shift):
            raise ConfigError(f"expected {part} with {len(shift)} values on the last axis, got "
                              f"shape {tuple(x.shape)}")
        if isinstance(x, torch.Tensor):
            return (torch.as_tensor(shift, dtype=x.dtype, device=x.device),
                    torch.as_tensor(scale, dtype=x.dtype, device=x.device))
        return shift, scale

    def normalize(self, x, part: str = "all"):
        shift, scale = self._stats(x, part)
        return (x - shift) / scale

    def unnormalize(self, x, part: str = "all"):
        shift, scale = self._stats(x, part)
        return x * scale + shift

    def preprocess(self, data, part: str = "all"):
        return self.normalize(data, part)

    def postprocess(self, tensor, part: str = "all"):
        return self.unnormalize(tensor, part)
