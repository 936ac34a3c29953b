"""Input checks shared by the image models: a wrong input fails with a message naming the config
field it contradicts, not deep inside a convolution. (Shape checks only: no graph breaks under
``torch.compile``.)"""

from __future__ import annotations

import torch
from diffusion_kernel.errors import ModelInputError


def check_feature_map(model: str, name: str, tensor: torch.Tensor, channels: int,
                      field: str) -> None:
    """``tensor`` must be (B, ``channels``, H, W)."""
    if tensor.ndim != 4 or tensor.shape[1] != channels:
        raise ModelInputError(
            f"{model}: {name} must have shape (batch, {channels}, height, width) ({field}="
            f"{channels} in the config), got {tuple(tensor.shape)}")


def check_tokens(model: str, name: str, tensor: torch.Tensor | None, width: int,
                 field: str) -> None:
    """``tensor`` must be (B, tokens, ``width``)."""
    if tensor is None:
        raise ModelInputError(f"{model}: {name} is required (batch, tokens, {width})")
    if tensor.ndim != 3 or tensor.shape[-1] != width:
        raise ModelInputError(
            f"{model}: {name} must have shape (batch, tokens, {width}) ({field}={width} in the "
            f"config), got {tuple(tensor.shape)}")
