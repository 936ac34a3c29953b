"""Single-file checkpoints: ``StableDiffusionPipeline.from_single_file`` (also img2img /
inpainting), ``UNet2DConditionModel`` / ``AutoencoderKL.from_single_file`` and the reverse,
``pipe.save_single_file``.

Where the configs come from, in this order: ``config=`` (a diffusers-layout folder or Hub repo:
its ``model_index.json``, component configs, tokenizer and scheduler config; no weights are
read from it), else ``original_config=`` (an LDM yaml: U-Net, VAE and scheduler; text encoder
and tokenizer passed in or taken from the default repo), else the default diffusers repo of the
variant the checkpoint's keys show (``stable-diffusion-v1-5/stable-diffusion-v1-5`` for SD 1.x;
its configs only, from the Hub or its cache). With a local folder or yaml (and, for the yaml,
the text encoder and tokenizer) nothing is downloaded.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import torch
from diffusion_kernel.configuration import read_json
from diffusion_kernel.errors import CheckpointError, FileAccessError, PipelineError
from diffusion_kernel.hub import fetch, list_files, pin_revision
from diffusion_kernel.nn import lora
from torch import nn

from . import original_config as ldm_config
from .checkpoint import (
    Checkpoint,
    checkpoint_path,
    detect_variant,
    text_encoder_layout,
    unet_prefix,
    uses_ema,
    vae_prefix,
)
from .files import save_weights_file
from .ldm_keys import CLIP_PREFIXES, OPEN_CLIP_PREFIX, UNET_PREFIX, VAE_PREFIXES
from .single_file_weights import build, load_into, original_keys, to_original, vae_to_conv_shapes

# The diffusers repo whose configs describe each variant (as diffusers picks them).
DEFAULT_CONFIG_REPOS = {
    "v1": "stable-diffusion-v1-5/stable-diffusion-v1-5",
    "v2": "stabilityai/stable-diffusion-2-1",
    "inpainting": "stable-diffusion-v1-5/stable-diffusion-inpainting",
    "inpainting_v2": "stabilityai/stable-diffusion-2-inpainting",
}
_CONFIG_FILES = ("model_index.json", "config.json", "scheduler_config.json")


class ConfigSource:
    """A diffusers-layout folder or Hub repo used for its configs only."""

    def __init__(self, source: str | os.PathLike, hub: dict[str, Any], default: bool = False):
        self.source = source
        hub = dict(hub)
        try:
            hub["revision"] = pin_revision(source, **hub)
            files = list_files(source, **hub)
            wanted = [f for f in files if f.endswith(_CONFIG_FILES) or f.startswith("tokenizer/")]
            self.root = fetch(source, wanted, **hub)
        except FileAccessError as exc:
            if not default:
                raise
            raise FileAccessError(f"{exc}. The checkpoint's configs come from {source!r} by "
                                  f"default; to load offline pass config=<a local diffusers "
                                  f"folder> or original_config=<the model's yaml> (with "
                                  f"text_encoder= and tokenizer=)") from None
        self.files = set(files)

    def json(self, name: str) -> dict:
        if name not in self.files:
            raise FileAccessError(f"{name} not found in config source {os.fspath(self.source)!r}")
        return read_json(self.root / name)

    def folder(self, name: str) -> Path:
        return self.root / name


class FromSingleFileMixin:
    """``from_single_file`` and ``save_single_file`` for the Stable Diffusion pipelines."""

    @classmethod
    def from_single_file(cls, pretrained_model_link_or_path: str | os.PathLike,
                         config: str | os.PathLike | None = None,
                         original_config: str | os.PathLike | dict | None = None,
                         torch_dtype: torch.dtype | None = None,
                         local_files_only: bool | None = None, revision: str | None = None,
                         cache_dir: str | os.PathLike | None = None,
                         token: str | bool | None = None, allow_pickle: bool = False,
                         extract_ema: bool = True, prediction_type: str | None = None,
                         **components: Any):
        """Load a pipeline from one original checkpoint (a ``.safetensors`` file, a ``.ckpt``
        with ``allow_pickle=True``, a Hub URL or ``org/repo/file.safetensors``).

        ``config``: a diffusers-layout folder or repo giving every component's config;
        ``original_config``: the LDM yaml instead. ``extract_ema``: use the EMA weights when the
        file has them (diffusers reads the others; pass ``False`` for the same).
        ``prediction_type`` overrides the scheduler's. Components passed by name
        (``text_encoder=``, ``tokenizer=``, ``scheduler=``, ...) are used as given."""
        from diffusion_kernel.configuration import config_parameters

        unknown = [n for n in components if n not in config_parameters(cls)]
        if unknown:
            raise PipelineError(f"from_single_file got unexpected arguments {unknown}; components "
                                f"of {cls.__name__}: {list(cls._expected_components())}")
        hub = dict(revision=revision, cache_dir=cache_dir, local_files_only=local_files_only,
                   token=token)
        path = checkpoint_path(pretrained_model_link_or_path, **hub)
        config_hub = {**hub, "revision": None}  # the revision is the checkpoint repo's
        with Checkpoint(path, allow_pickle) as checkpoint:
            variant = detect_variant(checkpoint)
            specs = _component_specs(cls, variant, config, original_config, config_hub,
                                     prediction_type, components)
            loaded = dict(components)
            for name, spec in specs.items():
                if name not in loaded:
                    loaded[name] = _load_component(name, spec, checkpoint, torch_dtype,
                                                   extract_ema)
        for name in cls._components_not_loaded:
            loaded.setdefault(name, None)
        return cls(**loaded)

    def save_single_file(self, path: str | os.PathLike, dtype: torch.dtype | None = None,
                         text_encoder_layout: str | None = None) -> Path:
        """Write the U-Net, VAE and text encoder as one original-layout ``.safetensors`` file
        (what A1111, ComfyUI and diffusers' ``from_single_file`` read), atomically.
        ``dtype`` converts floating weights (e.g. ``torch.float16``);
        ``text_encoder_layout``: ``"clip"`` (SD 1.x) or ``"open_clip"`` (SD 2.x; default: read
        from the text encoder, OpenCLIP's uses GELU). LoRA adapters that are not fused are left
        out (warned)."""
        if not os.fspath(path).endswith(".safetensors"):
            raise PipelineError(f"save_single_file writes safetensors only; give a path ending "
                                f"in .safetensors, got {os.fspath(path)!r}")
        models = [m for m in (self.unet, self.vae, self.text_encoder) if m is not None]
        unfused = lora.unfused_adapters(*models)
        if unfused:
            warnings.warn(f"the single file does not include the unfused LoRA adapters "
                          f"{unfused}: fuse_lora() first to bake them in", stacklevel=2)
        with lora.lora_excluded_from_state_dict(*models):
            tensors = original_state_dict(self.unet, self.vae, self.text_encoder, dtype,
                                          text_encoder_layout)
        return save_weights_file(tensors, path)


def original_state_dict(unet: nn.Module | None, vae: nn.Module | None,
                        text_encoder: nn.Module | None, dtype: torch.dtype | None = None,
                        text_encoder_layout: str | None = None) -> dict[str, torch.Tensor]:
    """The models' weights under the original checkpoint's keys."""
    tensors: dict[str, torch.Tensor] = {}
    if unet is not None:
        tensors.update(to_original(unet, original_keys("unet", unet, UNET_PREFIX), dtype))
    if vae is not None:
        tensors.update(vae_to_conv_shapes(
            to_original(vae, original_keys("vae", vae, VAE_PREFIXES[0]), dtype)))
    if text_encoder is not None:
        layout = text_encoder_layout or (
            "open_clip" if getattr(text_encoder.config, "hidden_act", "") == "gelu" else "clip")
        if layout not in ("clip", "open_clip"):
            raise PipelineError(f"text_encoder_layout must be 'clip' or 'open_clip', got "
                                f"{layout!r}")
        prefix = CLIP_PREFIXES[0] if layout == "clip" else OPEN_CLIP_PREFIX
        tensors.update(to_original(text_encoder, original_keys(layout, text_encoder, prefix),
                                   dtype))
    return tensors


# Which config each component comes from --------------------------------------------------------
def _component_specs(cls, variant, config, original_config, hub, prediction_type,
                     components) -> dict[str, tuple[str, Any]]:
    """``{component: (kind, details)}`` for every component the pipeline takes."""
    expected = [n for n in cls._expected_components() if n not in cls._components_not_loaded]
    if config is None and original_config is not None:
        yaml = ldm_config.read_original_config(original_config)
        specs: dict[str, tuple[str, Any]] = {
            "unet": ("model", ldm_config.unet_config(yaml, variant)),
            "vae": ("model", ldm_config.vae_config(yaml, variant)),
            "scheduler": ("scheduler", ("DDIMScheduler",
                                        ldm_config.scheduler_config(yaml, prediction_type)))}
        needs_repo = [n for n in ("text_encoder", "tokenizer") if n not in components]
        if needs_repo:
            source = ConfigSource(DEFAULT_CONFIG_REPOS[variant], hub, default=True)
            specs.update({n: _spec_from_folder(source, n) for n in needs_repo})
        return {n: specs[n] for n in expected if n in specs}
    source = ConfigSource(config if config is not None else DEFAULT_CONFIG_REPOS[variant], hub,
                          default=config is None)
    specs = {n: _spec_from_folder(source, n) for n in expected if n not in components}
    if prediction_type is not None and "scheduler" in specs:
        kind, (class_name, scheduler_config) = specs["scheduler"]
        specs["scheduler"] = (kind, (class_name, {**scheduler_config,
                                                  "prediction_type": prediction_type}))
    return specs


def _spec_from_folder(source: ConfigSource, name: str) -> tuple[str, Any]:
    index = source.json("model_index.json")
    spec = index.get(name)
    if not isinstance(spec, list) or len(spec) != 2 or None in spec:
        raise PipelineError(f"model_index.json of {os.fspath(source.source)!r} has no component "
                            f"{name!r}")
    library, class_name = spec
    if name == "tokenizer":
        return "tokenizer", (class_name, source.folder("tokenizer"))
    if name == "scheduler":
        return "scheduler", (class_name, source.json("scheduler/scheduler_config.json"))
    if library == "transformers":
        return "transformers", (class_name, source.folder(name))
    return "model", source.json(f"{name}/config.json")


def _load_component(name, spec, checkpoint, torch_dtype, extract_ema):
    kind, details = spec
    if kind == "tokenizer":
        class_name, folder = details
        return _transformers_class(class_name).from_pretrained(folder)
    if kind == "scheduler":
        class_name, config = details
        if isinstance(config, dict) and "_class_name" in config:
            class_name = config["_class_name"]
        from diffusion_kernel.plugins import registry

        return registry.find(class_name).load().from_config(config)
    if kind == "transformers":
        class_name, folder = details
        return load_text_encoder(_transformers_class(class_name), folder, checkpoint, torch_dtype)
    if name == "unet":
        return load_unet(details, checkpoint, torch_dtype, extract_ema)
    if name == "vae":
        return load_vae(details, checkpoint, torch_dtype)
    raise PipelineError(f"component {name!r} cannot be read from a single-file checkpoint")


def _transformers_class(class_name: str):
    import transformers

    found = getattr(transformers, class_name, None)
    if found is None:
        raise PipelineError(f"transformers has no class {class_name!r} (installed version "
                            f"{transformers.__version__})")
    return found


# The three models ------------------------------------------------------------------------------
def load_unet(config: dict, checkpoint: Checkpoint, torch_dtype=None, extract_ema=True):
    """A ``UNet2DConditionModel`` from the checkpoint's U-Net weights (EMA when present and
    ``extract_ema``)."""
    from ..models.unet_2d_condition import UNet2DConditionModel

    prefix = unet_prefix(checkpoint)
    unet = build(lambda: UNet2DConditionModel.from_config(config))
    return load_into(unet, checkpoint, original_keys("unet", unet, prefix), torch_dtype,
                     "U-Net", use_ema=uses_ema(checkpoint, extract_ema), consumed_prefix=prefix
                     or None)


def load_vae(config: dict, checkpoint: Checkpoint, torch_dtype=None):
    """An ``AutoencoderKL`` from the checkpoint's VAE (or a standalone VAE file)."""
    from ..models.autoencoder_kl import AutoencoderKL

    prefix = vae_prefix(checkpoint)
    vae = build(lambda: AutoencoderKL.from_config(config))
    return load_into(vae, checkpoint, original_keys("vae", vae, prefix), torch_dtype, "VAE",
                     consumed_prefix=prefix or None)


def load_text_encoder(model_cls, folder: Path, checkpoint: Checkpoint, torch_dtype=None):
    """A transformers CLIP text model (either CLIP layout) from the checkpoint's SD 1.x CLIP or
    SD 2.x OpenCLIP weights."""
    found = text_encoder_layout(checkpoint)
    if found is None:
        raise CheckpointError(f"{checkpoint.path} holds no text encoder weights; pass "
                              f"text_encoder= (and tokenizer=)")
    layout, prefix = found
    config = model_cls.config_class.from_pretrained(folder)
    encoder = build(lambda: model_cls(config))
    places = original_keys(layout, encoder, prefix)
    if layout == "clip" and f"{prefix}text_model.embeddings.token_embedding.weight" \
            not in checkpoint:  # files from older transformers: no text_model. level
        places = {k: (p.replace(f"{prefix}text_model.", prefix, 1), rows)
                  for k, (p, rows) in places.items()}
    return load_into(encoder, checkpoint, places, torch_dtype, "text encoder")


class FromOriginalModelMixin:
    """``from_single_file`` for one model of a Stable Diffusion checkpoint."""

    _single_file_component: str = ""

    @classmethod
    def from_single_file(cls, pretrained_model_link_or_path: str | os.PathLike,
                         config: str | os.PathLike | None = None, subfolder: str | None = None,
                         original_config: str | os.PathLike | dict | None = None,
                         torch_dtype: torch.dtype | None = None,
                         local_files_only: bool | None = None, revision: str | None = None,
                         cache_dir: str | os.PathLike | None = None,
                         token: str | bool | None = None, allow_pickle: bool = False,
                         extract_ema: bool = True):
        """Load this model from an original checkpoint (or, for a VAE, a standalone VAE file
        such as ``vae-ft-mse-840000-ema-pruned.safetensors``). ``config`` + ``subfolder``
        (default: the component's name) or ``original_config`` give its config; else the
        default repo of the checkpoint's variant (SD 1.x for a standalone VAE)."""
        name = cls._single_file_component
        hub = dict(revision=revision, cache_dir=cache_dir, local_files_only=local_files_only,
                   token=token)
        path = checkpoint_path(pretrained_model_link_or_path, **hub)
        with Checkpoint(path, allow_pickle) as checkpoint:
            if original_config is not None and config is None:
                variant = _variant_or_v1(checkpoint)
                yaml = ldm_config.read_original_config(original_config)
                model_config = (ldm_config.unet_config if name == "unet"
                                else ldm_config.vae_config)(yaml, variant)
            else:
                source = ConfigSource(
                    config if config is not None
                    else DEFAULT_CONFIG_REPOS[_variant_or_v1(checkpoint)],
                    {**hub, "revision": None}, default=config is None)
                folder = name if subfolder is None else subfolder.strip("/")
                if subfolder is None and f"{name}/config.json" not in source.files:
                    folder = ""  # a model folder: config.json at its root
                model_config = source.json(f"{folder}/config.json" if folder else "config.json")
            if name == "unet":
                return load_unet(model_config, checkpoint, torch_dtype, extract_ema)
            return load_vae(model_config, checkpoint, torch_dtype)


def _variant_or_v1(checkpoint: Checkpoint) -> str:
    """The checkpoint's variant; a file without a U-Net (a standalone VAE) counts as SD 1.x."""
    if UNET_PREFIX + "input_blocks.0.0.weight" not in checkpoint:
        return "v1"
    return detect_variant(checkpoint)
