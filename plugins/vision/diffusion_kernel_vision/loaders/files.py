"""Reading and writing the single weight files community formats come in (a LoRA, an embedding,
an original checkpoint): from a file path, a folder or a Hub repo, through the kernel's Hub
module; safetensors checked before use, pickles only when allowed and then tensors only."""

from __future__ import annotations

import contextlib
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from diffusion_kernel.errors import CheckpointError, FileAccessError
from diffusion_kernel.hub import default_file_mode, list_files, pin_revision, resolve_file
from diffusion_kernel.weights import PICKLE_SUFFIXES, SafetensorsFile, load_pickle, save_safetensors

# Files in a repo that are never the weights asked for (diffusers skips the same ones).
_NOT_WEIGHTS = ("scheduler", "optimizer", "checkpoint")


@dataclass
class WeightsFile:
    """What was read: the tensors (a nested dict for some pickles), the safetensors metadata and
    where they came from."""

    tensors: dict[str, Any]
    metadata: dict[str, str] = field(default_factory=dict)
    path: str = "<state dict>"


def read_weights(source: str | os.PathLike | dict, weight_name: str | None,
                 default_names: tuple[str, ...], what: str, allow_pickle: bool = False,
                 subfolder: str | None = None, **hub: Any) -> WeightsFile:
    """Read a weights file: ``source`` is a state dict, a file, a folder or a Hub repo id.
    In a folder or repo, ``weight_name`` names the file; without it the first of
    ``default_names`` present is read, else the only ``.safetensors`` file there. ``what`` names
    the kind of file in errors ("LoRA", "textual inversion embedding")."""
    if isinstance(source, dict):
        return WeightsFile(dict(source))
    if not isinstance(source, str | os.PathLike):
        raise FileAccessError(f"a {what} source must be a path, a Hub repo id or a state dict, "
                              f"got {type(source).__name__}")
    if os.path.isfile(source):
        return read_file(Path(source), allow_pickle)
    hub["revision"] = pin_revision(source, **hub)
    if weight_name is None:
        weight_name = _guess_weight_name(source, subfolder, default_names, what, allow_pickle,
                                         **hub)
    return read_file(resolve_file(source, weight_name, subfolder, **hub), allow_pickle)


def read_file(path: Path, allow_pickle: bool) -> WeightsFile:
    """A safetensors file (checked, memory-mapped) or, with ``allow_pickle``, a pickle
    (``torch.load(weights_only=True)``)."""
    if path.name.endswith(".safetensors"):
        with SafetensorsFile(path) as file:
            return WeightsFile({k: file.tensor(k) for k in file.keys()}, dict(file.metadata),
                               str(path))
    if path.name.endswith(PICKLE_SUFFIXES):
        return WeightsFile(load_pickle(path, allow_pickle), {}, str(path))
    raise CheckpointError(f"{path} is neither a .safetensors file nor a pickle (.bin, .ckpt, .pt, "
                          f".pth); pass the weights file itself")


def _guess_weight_name(source, subfolder, default_names, what, allow_pickle, **hub) -> str:
    prefix = f"{subfolder.strip('/')}/" if subfolder else ""
    files = [f[len(prefix):] for f in list_files(source, **hub) if f.startswith(prefix)]
    top = [f for f in files if "/" not in f]
    for name in default_names:
        if name in top and (name.endswith(".safetensors") or allow_pickle):
            return name
    for suffixes in ((".safetensors",), PICKLE_SUFFIXES):
        found = [f for f in top if f.endswith(suffixes)
                 and not any(word in f for word in _NOT_WEIGHTS)]
        if len(found) == 1:
            return found[0]
        if len(found) > 1:
            raise FileAccessError(f"{os.fspath(source)!r} holds several possible {what} files "
                                  f"({', '.join(found[:6])}); pass weight_name= to choose one")
    raise FileAccessError(f"no {what} file in {os.fspath(source)!r}"
                          f"{f' (subfolder {subfolder!r})' if subfolder else ''}: expected "
                          f"{' or '.join(default_names)}, or pass weight_name=")


def save_weights_file(tensors: dict[str, torch.Tensor], path: str | os.PathLike,
                      metadata: dict[str, str] | None = None) -> Path:
    """Write a safetensors file atomically: readers see the old file or the whole new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, staging = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    os.close(fd)
    try:
        save_safetensors(tensors, staging, metadata)
        os.chmod(staging, default_file_mode())
        os.replace(staging, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(staging)
        raise
    return path
