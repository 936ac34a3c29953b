"""Pieces of a pipeline's sampling loop that do not depend on the modality: which optional
arguments the scheduler's ``step`` takes, and the tensor inside a model's output."""

from __future__ import annotations

import inspect
from typing import Any

import torch


def step_kwargs(scheduler: Any, generator: Any = None, eta: float | None = None,
                **extra: Any) -> dict[str, Any]:
    """The optional ``step`` arguments this scheduler takes: ``generator`` for stochastic
    samplers, ``eta`` for DDIM, and any ``extra`` it knows; ``None`` values and arguments its
    ``step`` does not name are left out (deterministic samplers take no generator)."""
    params = inspect.signature(scheduler.step).parameters
    wanted = {"generator": generator, "eta": eta, **extra}
    return {k: v for k, v in wanted.items() if k in params and v is not None}


def sample_of(output: Any) -> torch.Tensor:
    """The tensor a model call returns: the output itself if it is one, else ``output.sample``,
    else its first element (a ``return_dict=False`` tuple)."""
    if isinstance(output, torch.Tensor):
        return output
    sample = getattr(output, "sample", None)
    return sample if sample is not None else output[0]
