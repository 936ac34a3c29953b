"""Pieces of a pipeline's sampling loop that do not depend on the modality: which optional
arguments the scheduler's ``step`` takes, the tensor inside a model's output, and the context
the loop runs in."""

from __future__ import annotations

import contextlib
import functools
import inspect
from collections.abc import Iterator
from typing import Any

import torch


def step_kwargs(scheduler: Any, generator: Any = None, eta: float | None = None,
                **extra: Any) -> dict[str, Any]:
    """The optional ``step`` arguments this scheduler takes: ``generator`` for stochastic
    samplers, ``eta`` for DDIM, and any ``extra`` it knows; ``None`` values and arguments its
    ``step`` does not name are left out (deterministic samplers take no generator)."""
    step = scheduler.step
    try:
        params = _parameters(getattr(step, "__func__", step))
    except TypeError:  # an unhashable callable
        params = frozenset(inspect.signature(step).parameters)
    wanted = {"generator": generator, "eta": eta, **extra}
    return {k: v for k, v in wanted.items() if k in params and v is not None}


@functools.lru_cache(maxsize=256)
def _parameters(function: Any) -> frozenset[str]:
    # inspect.signature costs ~0.1 ms: pipelines that ask at every step (a per-step argument
    # such as unCLIP's prev_timestep) would pay it hundreds of times per call.
    return frozenset(inspect.signature(function).parameters)


def sample_of(output: Any) -> torch.Tensor:
    """The tensor a model call returns: the output itself if it is one, else ``output.sample``,
    else its first element (a ``return_dict=False`` tuple)."""
    if isinstance(output, torch.Tensor):
        return output
    sample = getattr(output, "sample", None)
    return sample if sample is not None else output[0]


@contextlib.contextmanager
def sampling(*models: Any) -> Iterator[None]:
    """The context of a denoising loop: inference mode (no autograd bookkeeping on the loop's
    thousands of small tensor operations), and each model that offers ``reuse_conditioning()``
    inside it (its conditioning, the same at every step, is processed once). Tensors made inside
    are inference tensors: pass what leaves the loop through ``ordinary``."""
    with torch.inference_mode(), contextlib.ExitStack() as stack:
        for model in models:
            reuse = getattr(model, "reuse_conditioning", None)
            if reuse is not None:
                stack.enter_context(reuse())
        yield


def ordinary(tensor: torch.Tensor) -> torch.Tensor:
    """A tensor made under ``sampling`` as an ordinary one (a copy), which callers may modify in
    place or use in autograd; other tensors as they are."""
    return tensor.clone() if tensor.is_inference() else tensor
