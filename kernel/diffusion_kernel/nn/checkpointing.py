"""Gradient checkpointing (Chen et al. 2016): recompute a block's activations in the backward pass
instead of storing them, trading compute for memory during training."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.utils.checkpoint import checkpoint


def maybe_checkpoint(owner: torch.nn.Module, function: Callable[..., Any], *args: Any) -> Any:
    """``function(*args)``, checkpointed when ``owner.gradient_checkpointing`` is set and
    gradients are being recorded (inference is never slowed down)."""
    if getattr(owner, "gradient_checkpointing", False) and torch.is_grad_enabled():
        return checkpoint(function, *args, use_reentrant=False)
    return function(*args)
