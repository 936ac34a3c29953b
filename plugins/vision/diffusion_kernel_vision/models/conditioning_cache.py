"""What a conditional U-Net computes from its conditioning alone, kept over a sampling loop.

A sampling loop calls the U-Net once per step with a new sample and timestep but the same text
states, masks and class labels. Everything derived from those alone (the projected text tokens,
each attention layer's text keys and values, the pooled-text and class embeddings, the additive
masks) is then the same at every step; inside ``UNet2DConditionModel.reuse_conditioning()`` it is
computed at the first step and reused at the next ones. The values are the ones a fresh
computation gives (the same operations on the same tensors), so the samples do not change.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any

import torch


class ConditioningCache:
    """Values keyed by who computes them (``key``) and the tensor they are computed from
    (``source``): reused while the same tensor object comes back unmodified, computed afresh
    otherwise. Nothing is kept while gradients are recorded (a reused graph could not be
    back-propagated twice)."""

    def __init__(self) -> None:
        self._entries: dict[Hashable, tuple[Any, Any, Any]] = {}

    def get(self, key: Hashable, source: torch.Tensor | None,
            compute: Callable[[], Any]) -> Any:
        if torch.is_grad_enabled():
            return compute()
        version = _version(source)
        hit = self._entries.get(key)
        if hit is not None and hit[0] is source and hit[1] == version:
            return hit[2]
        value = compute()
        # The entry holds the source itself: its id cannot be reused by another tensor.
        self._entries[key] = (source, version, value)
        return value


def reused(cache: ConditioningCache | None, key: Hashable, source: torch.Tensor | None,
           compute: Callable[[], Any]) -> Any:
    """``compute()``, through ``cache`` when there is one."""
    return compute() if cache is None else cache.get(key, source, compute)


def _version(tensor: torch.Tensor | None) -> int | None:
    """The in-place modification count; inference tensors keep none (they cannot be modified
    outside inference mode, and a loop does not modify its conditioning)."""
    if tensor is None or tensor.is_inference():
        return None
    return tensor._version
