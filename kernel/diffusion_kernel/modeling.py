"""The model base: a ``torch.nn.Module`` whose constructor arguments are its config, saved and
loaded in the diffusers layout (``config.json`` + ``diffusion_pytorch_model.safetensors``).

Loading builds the module with its parameters on the meta device (no random initialisation),
then fills them with the file's tensors: memory-mapped when the dtype is kept (no copy), converted
tensor by tensor otherwise (never two full copies).
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .configuration import ConfigMixin, read_json
from .errors import CheckpointError, ConfigError, FileAccessError
from .hub import (
    PushToHubMixin,
    atomic_directory,
    atomic_write_text,
    check_relative_path,
    fetch,
    list_files,
    pin_revision,
)
from .weights import PICKLE_SUFFIXES, SafetensorsFile, load_pickle, save_safetensors

WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
WEIGHTS_INDEX_NAME = "diffusion_pytorch_model.safetensors.index.json"
PICKLE_WEIGHTS_NAME = "diffusion_pytorch_model.bin"
PICKLE_INDEX_NAME = "diffusion_pytorch_model.bin.index.json"
_SIZE_UNITS = {"KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}


def add_variant(filename: str, variant: str | None) -> str:
    """``diffusion_pytorch_model.safetensors`` -> ``diffusion_pytorch_model.fp16.safetensors``."""
    if not variant:
        return filename
    stem, _, ext = filename.rpartition(".")
    return f"{stem}.{variant}.{ext}"


def parse_size(size: int | str) -> int:
    if isinstance(size, int):
        return size
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]I?B)\s*", size.upper())
    if not match:
        raise ConfigError(f"max_shard_size {size!r} is not a size like '5GB', '500MB' or 10**9")
    return int(float(match.group(1)) * _SIZE_UNITS[match.group(2)])


_ORIGINAL_REGISTER_PARAMETER = nn.Module.register_parameter
_meta_lock = threading.Lock()
_meta_loads = 0  # loads under way, in all threads: the patch is installed while any runs
_meta_thread = threading.local()  # .depth: loads under way in this thread


def _register_parameter_on_meta(module, name, param):
    if getattr(_meta_thread, "depth", 0) and param is not None and param.device.type != "meta":
        param = nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)
    _ORIGINAL_REGISTER_PARAMETER(module, name, param)


@contextlib.contextmanager
def parameters_on_meta() -> Iterator[None]:
    """Create parameters on the meta device (no memory, no init); buffers stay real, because
    non-persistent ones (not in the checkpoint) must be computed by the constructor.

    Only the calling thread is affected: a model built meanwhile in another thread gets real
    parameters, and overlapping loads restore ``nn.Module.register_parameter`` when the last ends.
    """
    global _meta_loads
    with _meta_lock:
        _meta_loads += 1
        nn.Module.register_parameter = _register_parameter_on_meta
    _meta_thread.depth = getattr(_meta_thread, "depth", 0) + 1
    try:
        yield
    finally:
        _meta_thread.depth -= 1
        with _meta_lock:
            _meta_loads -= 1
            if _meta_loads == 0:
                nn.Module.register_parameter = _ORIGINAL_REGISTER_PARAMETER


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Hold off Python's cyclic garbage collector while a model is built and filled. Building
    creates thousands of long-lived objects; every 700 allocations start a collection, and the
    older generations' collections walk every live object (torch's included): on an SD-1.5
    U-Net that was half of a memory-mapped load. Collection resumes afterwards if it was on."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


class ModelMixin(nn.Module, ConfigMixin, PushToHubMixin):
    """Base of every model. Subclasses take their config as constructor arguments."""

    config_name = "config.json"
    # Modules whose parameters stay float32 when loading in half precision (e.g. norms that
    # overflow); names are matched against parameter name prefixes.
    _keep_in_fp32_modules: tuple[str, ...] = ()
    _supports_gradient_checkpointing = False

    # Saving ----------------------------------------------------------------------------------
    def save_pretrained(
        self,
        save_directory: str | os.PathLike,
        variant: str | None = None,
        max_shard_size: int | str = "10GB",
        safe_serialization: bool = True,
        push_to_hub: bool = False,
        **push_kwargs: Any,
    ) -> None:
        """Write ``config.json`` and the weights (sharded above ``max_shard_size``) atomically:
        if anything fails, the folder keeps its previous checkpoint. ``push_to_hub=True`` then
        uploads the folder to Hub repo ``repo_id=`` (default: the folder's name)."""
        if not safe_serialization:
            raise CheckpointError("diffusion-kernel writes safetensors only; drop "
                                  "safe_serialization=False (pickle weights can run code on load)")
        stem = re.escape(add_variant(WEIGHTS_NAME, variant)[: -len(".safetensors")])
        same_variant = re.compile(  # weights an earlier save of this variant left behind
            rf"{stem}(-\d{{5}}-of-\d{{5}})?\.safetensors|"
            rf"{re.escape(add_variant(WEIGHTS_INDEX_NAME, variant))}"
        )
        with atomic_directory(save_directory, replaces=same_variant.fullmatch) as staging:
            self.save_config(staging)
            self._save_weights(staging, variant, parse_size(max_shard_size))
        if push_to_hub:
            self._push_saved_folder(save_directory, **push_kwargs)

    def _save_weights(self, folder: Path, variant: str | None, max_shard_size: int) -> None:
        from .nn.lora import lora_excluded_from_state_dict

        with lora_excluded_from_state_dict(self):  # LoRA adapters are not the model's weights
            state = self.state_dict()
        shards: list[dict[str, torch.Tensor]] = [{}]
        size = 0
        seen: set[int] = set()  # storages already written (tied weights share one)
        for key, tensor in state.items():
            nbytes = tensor.numel() * tensor.element_size()
            if shards[-1] and size + nbytes > max_shard_size:
                shards.append({})
                size = 0
            shards[-1][key] = _unshare(tensor, seen)
            size += nbytes
        if len(shards) == 1:
            save_safetensors(shards[0], folder / add_variant(WEIGHTS_NAME, variant))
            return
        base = add_variant(WEIGHTS_NAME, variant)[: -len(".safetensors")]
        weight_map, total = {}, 0
        for i, shard in enumerate(shards, 1):
            name = f"{base}-{i:05d}-of-{len(shards):05d}.safetensors"
            save_safetensors(shard, folder / name)
            weight_map.update(dict.fromkeys(shard, name))
            total += sum(t.numel() * t.element_size() for t in shard.values())
        index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
        atomic_write_text(folder / add_variant(WEIGHTS_INDEX_NAME, variant),
                          json.dumps(index, indent=2, sort_keys=True) + "\n")

    # Loading ---------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls,
        source: str | os.PathLike,
        subfolder: str | None = None,
        revision: str | None = None,
        variant: str | None = None,
        torch_dtype: torch.dtype | None = None,
        device: str | torch.device | None = None,
        cache_dir: str | os.PathLike | None = None,
        local_files_only: bool | None = None,
        token: str | bool | None = None,
        allow_pickle: bool = False,
        mmap: bool = True,
        use_safetensors: bool | None = None,
        low_cpu_mem_usage: bool = True,
        dtype: torch.dtype | None = None,
        verify: bool = False,
        **config_overrides: Any,
    ):
        """Load a model from a folder or Hub repo in the diffusers layout.

        ``torch_dtype`` (or its diffusers alias ``dtype``) converts floating weights tensor by
        tensor; ``device`` moves them;
        ``mmap=False`` streams the file instead of mapping it (for network disks);
        ``allow_pickle=True`` accepts ``.bin`` weights (loaded with ``weights_only=True``).
        Taken for diffusers compatibility (so they do not end up in the config):
        ``use_safetensors=True`` refuses pickles even with ``allow_pickle``; ``low_cpu_mem_usage``
        changes nothing, loading always builds on the meta device.
        ``verify=True`` checks the config and weight files against their recorded sha256 (the
        folder's ``SHA256SUMS``, or the hashes the Hub published) before use: one read of each.
        """
        allow_pickle = allow_pickle and not use_safetensors
        torch_dtype = resolve_dtype(dtype, torch_dtype)
        if torch_dtype is not None and not isinstance(torch_dtype, torch.dtype):
            raise ConfigError(f"torch_dtype must be a torch.dtype like torch.float16, "
                              f"got {torch_dtype!r}")
        hub = dict(revision=revision, cache_dir=cache_dir, local_files_only=local_files_only,
                   token=token)
        hub["revision"] = pin_revision(source, **hub)  # every file from one commit
        if subfolder:
            subfolder = check_relative_path(subfolder.strip("/"), "subfolder")
        prefix = f"{subfolder}/" if subfolder else ""
        available = [f[len(prefix):] for f in list_files(source, **hub) if f.startswith(prefix)]
        if cls.config_name not in available:
            raise FileAccessError(
                f"no {cls.config_name} in {os.fspath(source)!r}"
                f"{f' (subfolder {subfolder!r})' if subfolder else ''}; is this a model folder? "
                f"For a pipeline, pass subfolder='unet' (or the component's folder)"
            )
        weights = select_weight_files(available, variant, allow_pickle, source)
        root = fetch(source, [prefix + f for f in [cls.config_name, *weights]], verify=verify,
                     **hub)
        folder = root / prefix if prefix else root
        config = read_json(folder / cls.config_name)
        model_cls = cls._class_for_config(config)
        if weights and weights[0].endswith(".json"):  # a shard index: fetch its shards
            shard_names = sorted(set(_read_index(folder / weights[0]).values()))
            missing = [s for s in shard_names if s not in available]
            if missing:
                raise CheckpointError(f"shard index {weights[0]} names files that are missing: "
                                      f"{missing}")
            root = fetch(source, [prefix + s for s in shard_names], verify=verify, **hub)
            folder = root / prefix if prefix else root
            weights = shard_names
        with gc_paused():
            with parameters_on_meta():
                model = model_cls.from_config(config, **config_overrides)
            model._load_weights([folder / w for w in weights], torch_dtype, device, allow_pickle,
                                mmap)
        model.eval()
        return model

    @classmethod
    def _class_for_config(cls, config: dict[str, Any]) -> type:
        if cls is not ModelMixin:
            return cls
        name = config.get("_class_name")
        if not name:
            raise ConfigError("the model config has no _class_name; load it with the model "
                              "class directly, e.g. UNet2DModel.from_pretrained(...)")
        from .plugins import registry

        return registry.models.get(name)

    @classmethod
    def _rename_checkpoint_keys(cls, state: dict[str, Any]) -> dict[str, Any]:
        """Map legacy key names of older checkpoints to the current ones (subclasses override)."""
        return state

    def _load_weights(self, files: list[Path], dtype, device, allow_pickle: bool, mmap: bool):
        expected = self.state_dict(keep_vars=True)
        sources: dict[str, tuple[Any, str]] = {}
        opened = []
        loaded: dict[str, torch.Tensor] = {}
        try:  # files are closed whatever goes wrong (a bad key, a bad tensor)
            for path in files:
                if path.name.endswith(PICKLE_SUFFIXES):
                    state = load_pickle(path, allow_pickle)
                    sources.update({k: (state, k) for k in state})
                else:
                    file = SafetensorsFile(path, mmap_file=mmap)
                    opened.append(file)
                    sources.update({k: (file, k) for k in file.keys()})
            sources = self._rename_checkpoint_keys(sources)
            self._check_keys(expected, sources, files)
            for key, (src, name) in sources.items():
                stored = src.dtype(name) if isinstance(src, SafetensorsFile) else src[name].dtype
                if expected[key].is_floating_point() != stored.is_floating_point:
                    kind = "floating point" if expected[key].is_floating_point() else "integer"
                    raise CheckpointError(
                        f"tensor {key!r} in {', '.join(str(f) for f in files)} has dtype "
                        f"{stored} but {type(self).__name__} expects {kind} values; "
                        f"the checkpoint does not belong to this model or is corrupt")
                target = self._target_dtype(key, expected[key], stored, dtype)
                if isinstance(src, SafetensorsFile):  # one tensor at a time, pages released
                    loaded[key] = src.load(name, target, device)
                else:
                    loaded[key] = src[name].to(device=device or "cpu", dtype=target)
        finally:
            for file in opened:
                file.close()
        self._assign(loaded)
        if device is not None:  # buffers the checkpoint does not hold
            self.to(device)

    def _assign(self, loaded: dict[str, torch.Tensor]) -> None:
        """Put the loaded tensors in place of the meta parameters (and persistent buffers): what
        ``load_state_dict(assign=True)`` does once keys and shapes are checked, without its walk
        through every module (a third of the load time of a memory-mapped U-Net)."""
        for key, tensor in loaded.items():
            owner_name, _, name = key.rpartition(".")
            owner = self.get_submodule(owner_name)
            current = owner._parameters.get(name)
            if current is not None:
                tensor = nn.Parameter(tensor, requires_grad=current.requires_grad)
            setattr(owner, name, tensor)

    def _target_dtype(self, key: str, current: torch.Tensor, stored: torch.dtype, dtype):
        if not stored.is_floating_point:
            return stored
        if dtype is None:
            return current.dtype if current.is_floating_point() else stored
        if any(key == m or key.startswith(m + ".") for m in self._keep_in_fp32_modules):
            return torch.float32
        return dtype

    def _check_keys(self, expected: dict[str, torch.Tensor], sources: dict, files) -> None:
        shapes = {k: (src.shape(n) if isinstance(src, SafetensorsFile) else tuple(src[n].shape))
                  for k, (src, n) in sources.items()}
        missing = sorted(set(expected) - set(shapes))
        unexpected = sorted(set(shapes) - set(expected))
        mis_shaped = [f"{k}: checkpoint {shapes[k]} vs model {tuple(expected[k].shape)}"
                      for k in sorted(set(expected) & set(shapes))
                      if tuple(expected[k].shape) != shapes[k]]
        if missing or unexpected or mis_shaped:
            parts = []
            for title, items in (("missing", missing), ("unexpected", unexpected),
                                 ("mis-shaped", mis_shaped)):
                if items:
                    more = [f"... {len(items) - 20} more"] if len(items) > 20 else []
                    shown = items[:20] + more
                    parts.append(f"{len(items)} {title} keys: {', '.join(shown)}")
            raise CheckpointError(
                f"the weights in {', '.join(str(f) for f in files)} do not match "
                f"{type(self).__name__} built from its config.json: {'; '.join(parts)}. Check that "
                f"config.json belongs to these weights (same architecture and sizes)."
            )

    # Conveniences -------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        """The device of the first parameter (the CPU for a model without any)."""
        return next((p.device for p in self.parameters()), torch.device("cpu"))

    @property
    def dtype(self) -> torch.dtype:
        """The first floating-point parameter's dtype (else float32)."""
        return next((p.dtype for p in self.parameters() if p.is_floating_point()), torch.float32)

    def num_parameters(self, trainable_only: bool = False) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)

    @property
    def is_gradient_checkpointing(self) -> bool:
        """Whether any block recomputes its activations in the backward pass."""
        return any(getattr(m, "gradient_checkpointing", False) for m in self.modules())

    def enable_gradient_checkpointing(self) -> None:
        if not self._supports_gradient_checkpointing:
            raise ConfigError(f"{type(self).__name__} does not support gradient checkpointing")
        for module in self.modules():
            if hasattr(module, "gradient_checkpointing"):
                module.gradient_checkpointing = True

    def disable_gradient_checkpointing(self) -> None:
        for module in self.modules():
            if hasattr(module, "gradient_checkpointing"):
                module.gradient_checkpointing = False


def resolve_dtype(dtype: torch.dtype | None, torch_dtype: torch.dtype | None
                  ) -> torch.dtype | None:
    """The dtype asked for by ``dtype=`` (the diffusers spelling) or ``torch_dtype=``."""
    if dtype is not None and torch_dtype is not None and dtype != torch_dtype:
        raise ConfigError(f"dtype={dtype} and torch_dtype={torch_dtype} disagree; pass one of "
                          f"them (dtype is the newer name of torch_dtype)")
    return dtype if dtype is not None else torch_dtype


def _unshare(tensor: torch.Tensor, seen: set[int]) -> torch.Tensor:
    """safetensors refuses tensors that share memory (tied weights, views of a larger tensor);
    give each its own copy."""
    tensor = tensor.detach()
    storage = tensor.untyped_storage()
    partial = storage.nbytes() != tensor.numel() * tensor.element_size()
    shared = partial or storage.data_ptr() in seen
    seen.add(storage.data_ptr())
    return tensor.clone() if shared else tensor


def _read_index(path: Path) -> dict[str, str]:
    index = read_json(path)
    weight_map = index.get("weight_map")
    if not isinstance(weight_map, dict):
        raise CheckpointError(f"shard index {path} has no 'weight_map' object")
    if not all(isinstance(v, str) for v in weight_map.values()):
        raise CheckpointError(f"shard index {path}: every 'weight_map' value must be a file name")
    return {k: check_relative_path(v, "shard file name") for k, v in weight_map.items()}


def select_weight_files(available: list[str], variant: str | None, allow_pickle: bool,
                        source: Any) -> list[str]:
    """Which weight file(s) to fetch: safetensors over pickles, the asked-for variant."""
    for name in (WEIGHTS_NAME, WEIGHTS_INDEX_NAME):
        if add_variant(name, variant) in available:
            return [add_variant(name, variant)]
    pickles = [add_variant(n, variant) for n in (PICKLE_WEIGHTS_NAME, PICKLE_INDEX_NAME)]
    found = [p for p in pickles if p in available]
    if found:
        if not allow_pickle:
            load_pickle(found[0], allow_pickle=False)  # raises the explanatory error
        return found[:1]
    variants = sorted({f.split(".")[1] for f in available
                       if f.startswith("diffusion_pytorch_model.") and f.count(".") >= 2
                       and f.split(".")[1] not in ("safetensors", "bin")})
    hint = (f" Variants present: {', '.join(variants)}." if variants else "")
    asked = f" for variant {variant!r}" if variant else ""
    raise FileAccessError(f"no weights{asked} in {os.fspath(source)!r}: expected "
                          f"{add_variant(WEIGHTS_NAME, variant)} or a sharded index.{hint}")
