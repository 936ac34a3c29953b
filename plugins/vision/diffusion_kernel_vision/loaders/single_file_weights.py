"""Weights between a model of the pipeline and an original checkpoint, both ways, through the one
key map of ``ldm_keys``: ``original_keys`` says where each parameter of a model lives in the
original layout; loading reads those tensors into a model built on the meta device (memory-mapped
views when the dtype is kept: one copy of the weights at most), saving writes them back.

Two layout differences beyond names: the VAE's mid-block attention is stored as 1x1 convolutions
(the same numbers, shapes ``(C, C, 1, 1)``), and OpenCLIP stores q, k and v projections
concatenated (``attn.in_proj_weight``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from diffusion_kernel.errors import CheckpointError
from diffusion_kernel.modeling import gc_paused, parameters_on_meta
from torch import nn

from . import ldm_keys
from .checkpoint import Checkpoint, ema_key

# a parameter's place in the original layout: (key, slice of the rows or None)
Place = tuple[str, slice | None]


def original_keys(kind: str, model: nn.Module, prefix: str = "") -> dict[str, Place]:
    """``{parameter key: (original key, rows)}`` for a model of ``kind`` ``"unet"``,
    ``"vae"``, ``"clip"`` or ``"open_clip"``; ``prefix`` is the model's prefix in the file."""
    keys = list(model.state_dict(keep_vars=True))
    if kind in ("unet", "vae"):
        config = model.config
        blocks = (ldm_keys.unet_block_map if kind == "unet" else ldm_keys.vae_block_map)(config)
        to_ldm = ldm_keys.unet_module_to_ldm if kind == "unet" else ldm_keys.vae_module_to_ldm
        places = {}
        for key in keys:
            original = ldm_keys.key_to_ldm(key, to_ldm, blocks)
            if original is None:
                raise CheckpointError(f"{type(model).__name__} parameter {key!r} has no place in "
                                      f"the original layout")
            places[key] = (prefix + original, None)
        return places
    if kind == "clip":
        return {k: (prefix + "text_model." + k.removeprefix("text_model."), None) for k in keys}
    width = model.config.hidden_size
    places = {}
    for key in keys:
        original, part = ldm_keys.open_clip_key_to_ldm(key)
        original = prefix + original.removeprefix(ldm_keys.OPEN_CLIP_PREFIX)
        rows = None if part is None else slice("qkv".index(part) * width,
                                               ("qkv".index(part) + 1) * width)
        places[key] = (original, rows)
    return places


# Loading ---------------------------------------------------------------------------------------
def build(factory: Callable[[], nn.Module]) -> nn.Module:
    """A model made by ``factory`` with its parameters on the meta device (no memory, no
    random initialisation), to be filled by ``load_into``."""
    with gc_paused(), parameters_on_meta():
        return factory()


def load_into(model: nn.Module, checkpoint: Checkpoint, places: dict[str, Place],
              dtype: torch.dtype | None, what: str, use_ema: bool = False,
              consumed_prefix: str | None = None) -> nn.Module:
    """Fill ``model`` from ``checkpoint``; every key and shape is checked before a tensor is
    read. ``use_ema``: read the EMA twin of each key. ``consumed_prefix``: every checkpoint key
    under it must be used (else the config does not describe this checkpoint)."""
    expected = model.state_dict(keep_vars=True)
    where = {k: (ema_key(o) if use_ema else o, rows) for k, (o, rows) in places.items()}
    if use_ema:  # EMA files keep the U-Net's buffers-free twins; fall back for any missing
        where = {k: (o if o in checkpoint else places[k][0], r) for k, (o, r) in where.items()}
    _check(model, expected, checkpoint, where, what, consumed_prefix, places)
    loaded = {}
    with gc_paused():
        for key, (original, rows) in where.items():
            target = _dtype(expected[key], checkpoint.dtype(original), dtype)
            tensor = checkpoint.load(original, target)
            if rows is not None:
                tensor = tensor[rows]
            loaded[key] = tensor.reshape(expected[key].shape)  # 1x1 conv <-> linear: a view
        _assign(model, loaded)
    return model.eval()


def _dtype(current: torch.Tensor, stored: torch.dtype, dtype: torch.dtype | None):
    if not stored.is_floating_point:
        return stored
    return dtype or (current.dtype if current.is_floating_point() else stored)


def _check(model, expected, checkpoint, where, what, consumed_prefix, places) -> None:
    missing, mis_shaped = [], []
    for key, (original, rows) in where.items():
        if original not in checkpoint:
            missing.append(original)
            continue
        shape = checkpoint.shape(original)
        if rows is not None:
            shape = (rows.stop - rows.start, *shape[1:]) if shape[0] >= rows.stop else shape
        want = tuple(expected[key].shape)
        if _squeezed(shape) != _squeezed(want):
            mis_shaped.append(f"{original}: file {tuple(shape)} vs model {want}")
    unused = []
    if consumed_prefix is not None:
        used = {o for o, _ in places.values()}
        unused = sorted(k for k in checkpoint.with_prefix(consumed_prefix) if k not in used)
    if missing or mis_shaped or unused:
        parts = [f"{len(items)} {title}: {', '.join(items[:5])}"
                 + (f" ... ({len(items) - 5} more)" if len(items) > 5 else "")
                 for title, items in (("missing keys", missing), ("mis-shaped", mis_shaped),
                                      ("keys the model has no place for", unused)) if items]
        raise CheckpointError(
            f"the {what} weights in {checkpoint.path} do not fit {type(model).__name__} built "
            f"from its config: {'; '.join(parts)}. Check that the config (config= folder or "
            f"original_config= yaml) belongs to this checkpoint.")


def _squeezed(shape) -> tuple[int, ...]:
    """A shape without trailing 1s: a 1x1 convolution weight and a linear one compare equal."""
    shape = tuple(shape)
    while len(shape) > 2 and shape[-1] == 1:
        shape = shape[:-1]
    return shape


def _assign(model: nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    """Put the tensors in place of the meta parameters (and persistent buffers)."""
    for key, tensor in tensors.items():
        owner_name, _, name = key.rpartition(".")
        owner = model.get_submodule(owner_name)
        if name in owner._parameters:
            tensor = nn.Parameter(tensor, requires_grad=owner._parameters[name].requires_grad)
        setattr(owner, name, tensor)


# Saving ----------------------------------------------------------------------------------------
def to_original(model: nn.Module, places: dict[str, Place],
                dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """The model's parameters under their original keys (1x1-conv shapes restored for the
    VAE attention, OpenCLIP's q/k/v concatenated)."""
    state = model.state_dict()
    out: dict[str, Any] = {}
    parts: dict[str, dict[int, torch.Tensor]] = {}
    for key, (original, rows) in places.items():
        tensor = state[key].detach()
        if dtype is not None and tensor.is_floating_point():
            tensor = tensor.to(dtype)
        if rows is None:
            out[original] = tensor
        else:
            parts.setdefault(original, {})[rows.start] = tensor
    for original, pieces in parts.items():
        out[original] = torch.cat([pieces[start] for start in sorted(pieces)])
    return out


def vae_to_conv_shapes(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The original VAE stores its mid-block attention projections as 1x1 convolutions."""
    out = {}
    for key, tensor in tensors.items():
        name = key.rsplit(".", 2)
        if ".mid.attn_1." in key and name[-2] in ("q", "k", "v", "proj_out") \
                and name[-1] == "weight" and tensor.ndim == 2:
            tensor = tensor[:, :, None, None]
        out[key] = tensor
    return out
