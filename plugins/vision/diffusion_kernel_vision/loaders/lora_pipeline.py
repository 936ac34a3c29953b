"""LoRA on the Stable Diffusion pipelines, with diffusers' method names: ``load_lora_weights``,
``set_adapters``, ``get_active_adapters``, ``get_list_adapters``, ``fuse_lora`` /
``unfuse_lora``, ``unload_lora_weights``, ``delete_adapters``, ``enable_lora`` /
``disable_lora``, ``save_lora_weights``; per call ``cross_attention_kwargs={"scale": s}``.

The adapters are the kernel's (``diffusion_kernel.nn.lora``), on the U-Net and the CLIP text
encoder alike; the file formats are read by ``lora_formats``.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch
from diffusion_kernel.errors import CheckpointError, ConfigError, PipelineError
from diffusion_kernel.nn import lora
from torch import nn

from . import lora_formats
from .files import read_weights, save_weights_file

LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"
_LORA_NAMES = (LORA_WEIGHT_NAME, "pytorch_lora_weights.bin")


class StableDiffusionLoraLoaderMixin:
    """LoRA adapters for a pipeline with ``unet`` and ``text_encoder`` components."""

    _lora_loadable_modules = ("unet", "text_encoder")
    unet_name = "unet"
    text_encoder_name = "text_encoder"

    def _lora_models(self, components: Sequence[str] | None = None) -> dict[str, nn.Module]:
        names = self._lora_loadable_modules if components is None else components
        unknown = [c for c in names if c not in self._lora_loadable_modules]
        if unknown:
            raise PipelineError(f"components {unknown} cannot hold LoRA adapters; choose from "
                                f"{list(self._lora_loadable_modules)}")
        return {c: getattr(self, c) for c in names if getattr(self, c, None) is not None}

    # Loading -----------------------------------------------------------------------------------
    def load_lora_weights(self, pretrained_model_name_or_path_or_dict: str | os.PathLike | dict,
                          adapter_name: str | None = None, weight_name: str | None = None,
                          subfolder: str | None = None, revision: str | None = None,
                          cache_dir: str | os.PathLike | None = None,
                          local_files_only: bool | None = None, token: str | bool | None = None,
                          allow_pickle: bool = False, hotswap: bool = False,
                          low_cpu_mem_usage: bool = True, **kwargs: Any) -> None:
        """Load a LoRA (a file, a folder or Hub repo holding ``pytorch_lora_weights.safetensors``
        or ``weight_name``, or a state dict) into the U-Net and the text encoder as adapter
        ``adapter_name`` (default ``default_<n>``), which becomes the active one.

        Reads diffusers / peft files and kohya / A1111 ones (``lora_unet_*``, ``lora_te_*`` with
        ``.alpha``; diffusers' or SGM block names). A file that cannot be used (another format,
        another base model, mis-shaped weights, a name in use) raises before anything changes.
        ``.bin`` files are pickles: refused unless ``allow_pickle=True`` (then tensors only).
        ``unet_config`` (diffusers needs it for SGM names) is accepted and not needed here."""
        kwargs.pop("unet_config", None)
        kwargs.pop("use_safetensors", None)
        if kwargs:
            raise PipelineError(f"load_lora_weights got unexpected arguments {sorted(kwargs)}")
        if hotswap:
            raise PipelineError("hotswap=True is not supported: load the LoRA as a new adapter "
                                "and set_adapters() to switch")
        models = self._lora_models()
        adapter_name = adapter_name or f"default_{len(self._all_adapters())}"
        lora.check_adapter_name(adapter_name)
        if adapter_name in self._all_adapters():
            raise ConfigError(f"adapter name {adapter_name!r} is already in use; pass another "
                              f"adapter_name, or delete_adapters({adapter_name!r}) first")
        source = pretrained_model_name_or_path_or_dict
        file = read_weights(source, weight_name, _LORA_NAMES, "LoRA", allow_pickle, subfolder,
                            revision=revision, cache_dir=cache_dir,
                            local_files_only=local_files_only, token=token)
        where = file.path if file.path != "<state dict>" else "the LoRA state dict"
        groups = lora_formats.parse(file.tensors, file.metadata, where)
        resolved = lora_formats.resolve(groups, models, where)
        if not resolved:
            raise CheckpointError(f"{where} holds no LoRA layers")
        for component, weights in resolved.items():  # every check before any change
            try:
                lora.check_lora_weights(models[component], adapter_name, weights)
            except CheckpointError as exc:
                raise CheckpointError(f"{where}: {exc}") from None
        for component, weights in resolved.items():  # a file's tensors are ours: no copy
            lora.inject_lora(models[component], adapter_name, weights,
                             copy=isinstance(source, dict))
        # the new adapter is the one in use, in every model that holds adapters
        for component, model in models.items():
            if component not in resolved:
                lora.set_lora_adapters(model, [adapter_name])

    # Adapters ----------------------------------------------------------------------------------
    def _all_adapters(self) -> list[str]:
        names: dict[str, None] = {}
        for model in self._lora_models().values():
            names.update(dict.fromkeys(lora.list_lora_adapters(model)))
        return list(names)

    def get_list_adapters(self) -> dict[str, list[str]]:
        """``{component: [adapter names]}`` for the components that hold adapters."""
        found = {c: lora.list_lora_adapters(m) for c, m in self._lora_models().items()}
        return {c: names for c, names in found.items() if names}

    def get_active_adapters(self) -> list[str]:
        """The adapters in use, in the order ``set_adapters`` gave them."""
        names: dict[str, None] = {}
        for model in self._lora_models().values():
            names.update(dict.fromkeys(lora.active_lora_adapters(model)))
        return list(names)

    def set_adapters(self, adapter_names: str | list[str],
                     adapter_weights: float | dict | list[float | dict] | None = None) -> None:
        """Use these adapters with these weights (one per adapter, or one for all; a weight may
        be ``{"unet": w, "text_encoder": w}``; default 1.0). Other adapters stay loaded."""
        names = [adapter_names] if isinstance(adapter_names, str) else list(adapter_names)
        weights = (list(adapter_weights) if isinstance(adapter_weights, list | tuple)
                   else [adapter_weights] * len(names))
        if len(weights) != len(names):
            raise PipelineError(f"got {len(weights)} adapter weights for {len(names)} adapters; "
                                f"give one per adapter or a single one")
        missing = [n for n in names if n not in self._all_adapters()]
        if missing:
            raise PipelineError(f"adapters {missing} are not loaded; loaded: "
                                f"{self._all_adapters()}")
        for component, model in self._lora_models().items():
            lora.set_lora_adapters(model, names, [_component_weight(w, component)
                                                  for w in weights])

    def enable_lora(self) -> None:
        """Use the active adapters again after ``disable_lora``."""
        for model in self._lora_models().values():
            lora.enable_lora(model, True)

    def disable_lora(self) -> None:
        """Run the base models (adapters stay loaded and active)."""
        for model in self._lora_models().values():
            lora.enable_lora(model, False)

    def delete_adapters(self, adapter_names: str | list[str]) -> None:
        """Remove adapters (a fused one's update stays in the weights: ``unfuse_lora`` first)."""
        names = [adapter_names] if isinstance(adapter_names, str) else list(adapter_names)
        missing = [n for n in names if n not in self._all_adapters()]
        if missing:
            raise PipelineError(f"adapters {missing} are not loaded; loaded: "
                                f"{self._all_adapters()}")
        for model in self._lora_models().values():
            for name in names:
                lora.delete_lora_adapter(model, name)

    def unload_lora_weights(self) -> None:
        """Remove every adapter; the models are plain again (fused updates stay fused)."""
        for model in self._lora_models().values():
            lora.unload_lora(model)

    # Fusing ------------------------------------------------------------------------------------
    def fuse_lora(self, components: Sequence[str] = ("unet", "text_encoder"),
                  lora_scale: float = 1.0, safe_fusing: bool = False,
                  adapter_names: list[str] | None = None, **kwargs: Any) -> None:
        """Add the active (or the named) adapters, times ``lora_scale``, into the weights: the
        pipeline then runs at the base model's speed. ``safe_fusing=True`` refuses adapters with
        NaN or infinite values. ``unfuse_lora`` takes them out again."""
        models = self._lora_models(components)
        if adapter_names is not None:
            missing = [n for n in adapter_names if n not in self._all_adapters()]
            if missing:
                raise PipelineError(f"adapters {missing} are not loaded; loaded: "
                                    f"{self._all_adapters()}")
        if safe_fusing:
            for model in models.values():
                lora.check_finite(model, adapter_names)
        for model in models.values():
            lora.fuse_lora(model, lora_scale, adapter_names)

    def unfuse_lora(self, components: Sequence[str] = ("unet", "text_encoder"),
                    **kwargs: Any) -> None:
        """Subtract the fused updates: every base weight is back (to float rounding)."""
        for model in self._lora_models(components).values():
            lora.unfuse_lora(model)

    # Saving --------------------------------------------------------------------------------------
    @classmethod
    def save_lora_weights(cls, save_directory: str | os.PathLike,
                          unet_lora_layers: dict[str, torch.Tensor] | nn.Module | None = None,
                          text_encoder_lora_layers: dict[str, torch.Tensor] | nn.Module
                          | None = None,
                          is_main_process: bool = True, weight_name: str | None = None,
                          save_function: Callable | None = None, safe_serialization: bool = True,
                          unet_lora_adapter_metadata: dict | None = None,
                          text_encoder_lora_adapter_metadata: dict | None = None) -> None:
        """Write ``pytorch_lora_weights.safetensors`` (or ``weight_name``) in ``save_directory``,
        atomically, in diffusers' format: keys ``unet.<...>`` / ``text_encoder.<...>``; the
        metadata dicts (peft ``LoraConfig`` fields, from ``lora_adapter_metadata``) are stored
        under ``lora_adapter_metadata`` so alphas other than the rank survive. Get the layers of
        a loaded or trained adapter with ``diffusion_kernel.nn.lora.lora_state_dict``."""
        if not safe_serialization:
            raise CheckpointError("LoRA weights are written as safetensors only; drop "
                                  "safe_serialization=False (pickles can run code when loaded)")
        if save_function is not None:
            raise PipelineError("save_function is not supported: the file is written "
                                "atomically as safetensors")
        if unet_lora_layers is None and text_encoder_lora_layers is None:
            raise PipelineError("pass unet_lora_layers and/or text_encoder_lora_layers")
        if not is_main_process:
            return
        tensors: dict[str, torch.Tensor] = {}
        metadata: dict[str, Any] = {}
        for prefix, layers, meta in ((cls.unet_name, unet_lora_layers, unet_lora_adapter_metadata),
                                     (cls.text_encoder_name, text_encoder_lora_layers,
                                      text_encoder_lora_adapter_metadata)):
            if layers is None:
                continue
            state = layers.state_dict() if isinstance(layers, nn.Module) else layers
            not_lora = [k for k in state if "lora" not in k]
            if not_lora:
                raise PipelineError(f"{prefix}_lora_layers has keys without 'lora' in their "
                                    f"name ({not_lora[:3]}); pass a LoRA state dict such as "
                                    f"lora_state_dict(pipe.{prefix}, adapter_name)")
            tensors.update({f"{prefix}.{k}": v for k, v in state.items()})
            metadata.update({f"{prefix}.{k}": v for k, v in (meta or {}).items()})
        extra = ({lora_formats.METADATA_KEY: json.dumps(metadata, indent=2, sort_keys=True)}
                 if metadata else None)
        save_weights_file(tensors, os.path.join(save_directory, weight_name or LORA_WEIGHT_NAME),
                          extra)

    def save_pretrained(self, save_directory: str | os.PathLike, *args: Any, **kwargs: Any):
        """As ``DiffusionPipeline.save_pretrained``; with LoRA adapters loaded, the saved models
        hold their own weights (fused adapters included) and not the adapters (warned)."""
        models = self._lora_models()
        unfused = lora.unfused_adapters(*models.values())
        if unfused:
            warnings.warn(f"the saved pipeline does not include the unfused LoRA adapters "
                          f"{unfused}: fuse_lora() first to bake them in, or save them apart "
                          f"with save_lora_weights()", stacklevel=2)
        with lora.lora_excluded_from_state_dict(*models.values()):
            return super().save_pretrained(save_directory, *args, **kwargs)


def lora_adapter_metadata(model: nn.Module, adapter_name: str) -> dict | None:
    """The ``*_lora_adapter_metadata`` for ``save_lora_weights`` that keeps an adapter's alphas
    (``None`` when every alpha equals its rank)."""
    return lora_formats.adapter_metadata(lora.get_lora_weights(model, adapter_name))


def _component_weight(weight: Any, component: str) -> float:
    if weight is None:
        return 1.0
    if isinstance(weight, dict):
        value = weight.get(component, 1.0)
        if isinstance(value, dict):
            raise PipelineError("per-block LoRA weights ({'down': ..., 'mid': ..., 'up': ...}) "
                                "are not supported; give one weight per adapter and component")
        return float(value)
    return float(weight)
