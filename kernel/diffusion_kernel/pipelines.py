"""The pipeline base: components named in ``model_index.json``, loaded and saved in the diffusers
layout, moved together, with a progress bar and step-end callbacks.

``model_index.json`` maps each component to ``[library, class]``: classes of this project (written
as library ``"diffusers"`` so the reference loads what we save) resolve through the registry,
``transformers`` classes through ``transformers``' own ``from_pretrained``.
"""

from __future__ import annotations

import inspect
import json
import os
import re
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch

from .base_output import BaseOutput
from .configuration import FORMAT_VERSION, FrozenConfig, config_parameters, read_json
from .errors import NotRegisteredError, PipelineError, UnsafeCheckpointError
from .hub import (
    PushToHubMixin,
    atomic_directory,
    atomic_write_text,
    fetch,
    list_files,
    pin_revision,
)
from .integrity import MANIFEST as MANIFEST_NAME
from .weights import PICKLE_SUFFIXES

MODEL_INDEX = "model_index.json"
# The step count a pipeline folder recommends (see DiffusionPipeline.default_num_inference_steps).
# A private key: diffusers drops "_"-keys of model_index.json silently, so the folder still loads
# there (with the pipeline's own default step count).
DEFAULT_STEPS_KEY = "_default_num_inference_steps"
# Names of the __call__ argument that takes the number of samples, in diffusers' pipelines.
_COUNT_ARGUMENTS = ("batch_size", "num_images_per_prompt", "num_samples")
_OWN_LIBRARIES = ("diffusers", "diffusion_kernel")
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".ckpt", ".pt", ".pth", ".msgpack", ".h5", ".onnx",
                    ".pb", ".ot", ".gguf")


@dataclass
class PipelineOutput(BaseOutput):
    """Base of pipeline outputs: a read-only dict of its fields, also reachable by index, like a
    tuple (``diffusion_kernel.base_output``)."""


@dataclass
class ImagePipelineOutput(PipelineOutput):
    """``images``: a list of PIL images, a numpy array (N, H, W, C) or a tensor (N, C, H, W)."""

    images: Any


def library_of(component: Any) -> str:
    """The library name ``model_index.json`` records for a component: a class of ours may name
    the one the format gives it (``_library_name``, e.g. ``"latent_diffusion"`` for classes the
    format keeps beside one pipeline), else ``"diffusers"``."""
    named = getattr(type(component), "_library_name", None)
    if named:
        return named
    module = type(component).__module__.split(".")[0]
    return "diffusers" if module.startswith("diffusion_kernel") else module


class DiffusionPipeline(PushToHubMixin):
    """Base of every pipeline. A subclass's ``__init__`` takes its components by name and calls
    ``self.register_modules(...)``; ``__call__`` runs it."""

    config_name = MODEL_INDEX
    _optional_components: tuple[str, ...] = ()
    # Names a step-end callback may ask for (``callback_on_step_end_tensor_inputs``).
    _callback_tensor_inputs: tuple[str, ...] = ("latents",)
    # The order in which a call uses its models, e.g. "text_encoder->unet->vae": model CPU offload
    # keeps only the model in use on the accelerator and moves the previous one back.
    model_cpu_offload_seq: str | None = None
    # Components a model_index.json may name that this pipeline accepts but never loads or runs
    # (e.g. Stable Diffusion's safety checker): from_pretrained sets them to None.
    _components_not_loaded: tuple[str, ...] = ()
    # The step count a call uses when given none, recorded in model_index.json (None: the
    # pipeline's own default). Set it on a pipeline you save to ship a recommended sampler
    # budget with it (e.g. 20 for DPM-Solver++ 2M SDE).
    default_num_inference_steps: int | None = None
    # The __call__ argument that `diffusion-kernel generate`'s INPUT (or --prompt) fills; None:
    # "prompt" if __call__ takes one, else the pipeline takes no input.
    generate_input: str | None = None

    def register_modules(self, **components: Any) -> None:
        names = self.__dict__.setdefault("_component_names", [])
        for name, component in components.items():
            if name not in names:
                names.append(name)
            object.__setattr__(self, name, component)

    @property
    def components(self) -> dict[str, Any]:
        """The components by name, as ``__init__`` takes them (``Other(**pipe.components)``)."""
        return {n: getattr(self, n) for n in self.__dict__.get("_component_names", [])}

    @property
    def config(self) -> FrozenConfig:
        """The content of ``model_index.json``: each component's ``[library, class]``."""
        data: dict[str, Any] = {"_class_name": type(self).__name__,
                                "_diffusers_version": FORMAT_VERSION}
        for name, component in self.components.items():
            data[name] = ([None, None] if component is None
                          else [library_of(component), type(component).__name__])
        if self.default_num_inference_steps is not None:
            data[DEFAULT_STEPS_KEY] = self.default_num_inference_steps
        return FrozenConfig(data)

    def inference_steps(self, requested: int | None, fallback: int) -> int:
        """The step count of a call: ``requested`` if given, else the folder's recommended
        ``default_num_inference_steps``, else the pipeline's ``fallback`` (diffusers' default)."""
        if requested is not None:
            return requested
        return self.default_num_inference_steps or fallback

    # `diffusion-kernel generate` -----------------------------------------------------------
    def generate_arguments(self, num_samples: int, input: Any = None,
                           num_inference_steps: int | None = None,
                           generator: list | None = None) -> dict[str, Any]:
        """The keyword arguments ``diffusion-kernel generate`` calls this pipeline with, for
        ``num_samples`` samples from the command line's ``input`` (a prompt...; None if not
        given) with one generator per sample. Raises ``PipelineError`` for a request the pipeline
        cannot take, before any sampling.

        The default reads ``__call__``'s signature: ``input`` goes to ``generate_input`` (or
        ``prompt``), which is then required; the count to the first of ``batch_size``,
        ``num_images_per_prompt``, ``num_samples`` it takes. Override it for other signatures."""
        params = inspect.signature(self.__call__).parameters
        name = self.generate_input or ("prompt" if "prompt" in params else None)
        kwargs: dict[str, Any] = {}
        cls = type(self).__name__
        if name is None and input is not None:
            raise PipelineError(f"{cls} takes no input (no prompt: it samples unconditionally); "
                                f"drop the INPUT / --prompt")
        if name is not None:
            if input is None:
                raise PipelineError(f"{cls} needs an input for its {name!r} argument: "
                                    f"diffusion-kernel generate \"...\" (or --prompt \"...\")")
            kwargs[name] = input
        count = next((c for c in _COUNT_ARGUMENTS if c in params), None)
        if count is not None:
            kwargs[count] = num_samples
        elif num_samples != 1:
            names = ", ".join(_COUNT_ARGUMENTS)
            raise PipelineError(f"{cls}.__call__ takes no sample count (none of {names}); "
                                f"pass --num 1")
        if num_inference_steps is not None:
            if "num_inference_steps" not in params:
                raise PipelineError(f"{cls} takes no step count; drop --steps")
            kwargs["num_inference_steps"] = num_inference_steps
        if generator is not None and "generator" in params:
            kwargs["generator"] = generator
        return kwargs

    @classmethod
    def generate_output_fields(cls) -> tuple[str, ...]:
        """The fields of the output ``__call__`` returns, read from its return annotation (the
        first ``PipelineOutput`` dataclass in it); empty if it has none."""
        import sys
        import typing

        annotation = inspect.get_annotations(cls.__call__).get("return")
        if isinstance(annotation, str):
            try:
                annotation = eval(annotation, vars(sys.modules[cls.__call__.__module__]))
            except Exception:  # an annotation that does not evaluate names no fields
                return ()
        for candidate in (*typing.get_args(annotation), annotation):
            if isinstance(candidate, type) and issubclass(candidate, PipelineOutput):
                return tuple(f.name for f in fields(candidate))
        return ()

    # Devices and dtypes --------------------------------------------------------------------
    def _modules(self) -> Iterable[torch.nn.Module]:
        return [c for c in self.components.values() if isinstance(c, torch.nn.Module)]

    def to(self, *args: Any, **kwargs: Any) -> DiffusionPipeline:
        """Move every ``torch.nn.Module`` component: ``pipe.to("cuda")``,
        ``pipe.to(torch.float16)``."""
        for module in self._modules():
            module.to(*args, **kwargs)
        return self

    def _model_parameters(self) -> Iterator[torch.nn.Parameter]:
        return (p for module in self._modules() for p in module.parameters())

    @property
    def device(self) -> torch.device:
        """The device of the model components' first parameter (the CPU if they have none)."""
        return next((p.device for p in self._model_parameters()), torch.device("cpu"))

    @property
    def dtype(self) -> torch.dtype:
        """The first floating-point parameter's dtype (else float32)."""
        floating = (p for p in self._model_parameters() if p.is_floating_point())
        return next((p.dtype for p in floating), torch.float32)

    @property
    def _execution_device(self) -> torch.device:
        """Where a call computes: the offload device once model CPU offload is on."""
        return self.__dict__.get("_offload_device") or self.device

    def enable_model_cpu_offload(self, device: str | torch.device | None = None) -> None:
        """Keep models on the CPU and move each one to ``device`` (default: CUDA if available,
        else the CPU, where this changes nothing) only while it runs; the next model in
        ``model_cpu_offload_seq`` sends the previous one back. Uses accelerate's hooks."""
        if not self.model_cpu_offload_seq:
            raise PipelineError(f"{type(self).__name__} declares no model_cpu_offload_seq, so "
                                f"model CPU offload does not know the order of its models")
        try:
            from accelerate import cpu_offload_with_hook
        except ImportError as exc:
            raise PipelineError("model CPU offload needs accelerate: pip install accelerate") \
                from exc
        device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.remove_all_hooks()
        self.to("cpu")
        hooks, hook = [], None
        for name in self.model_cpu_offload_seq.split("->"):
            module = getattr(self, name.strip(), None)
            if isinstance(module, torch.nn.Module):
                _, hook = cpu_offload_with_hook(module, device, prev_module_hook=hook)
                hooks.append(hook)
        self.__dict__.update(_offload_hooks=hooks, _offload_device=device)

    def maybe_free_model_hooks(self) -> None:
        """After a call under model CPU offload: send the last model used back to the CPU."""
        for hook in self.__dict__.get("_offload_hooks", ()):
            hook.offload()

    def remove_all_hooks(self) -> None:
        """Undo ``enable_model_cpu_offload``."""
        for hook in self.__dict__.pop("_offload_hooks", ()):
            hook.remove()
        self.__dict__.pop("_offload_device", None)

    # Progress and callbacks ------------------------------------------------------------------
    def set_progress_bar_config(self, **kwargs: Any) -> None:
        """Options for the tqdm bars of loading and denoising, e.g. ``disable=True``."""
        self.__dict__["_progress_bar_config"] = kwargs

    def progress_bar(self, iterable: Iterable | None = None, total: int | None = None, **kw):
        from tqdm.auto import tqdm

        options = {**self.__dict__.get("_progress_bar_config", {}), **kw}
        return tqdm(iterable, total=total, **options)

    def check_callback_inputs(self, names: Iterable[str]) -> None:
        unknown = [n for n in names if n not in self._callback_tensor_inputs]
        if unknown:
            raise PipelineError(
                f"callback_on_step_end_tensor_inputs asks for {unknown}, which "
                f"{type(self).__name__} does not provide; choose from "
                f"{list(self._callback_tensor_inputs)}"
            )

    def step_end(self, callback: Callable | None, step: int, timestep: Any, names: Iterable[str],
                 values: dict[str, Any]) -> dict[str, Any]:
        """Call ``callback(pipe, step, timestep, {name: tensor})``; returns the tensors it
        replaced."""
        if callback is None:
            return {}
        result = callback(self, step, timestep, {n: values[n] for n in names})
        return dict(result or {})

    # Saving ------------------------------------------------------------------------------------
    def save_pretrained(self, save_directory: str | os.PathLike, variant: str | None = None,
                        safe_serialization: bool = True, push_to_hub: bool = False,
                        **push_kwargs: Any) -> None:
        """Write ``model_index.json`` and one subfolder per component, atomically.
        ``push_to_hub=True`` then uploads the folder to Hub repo ``repo_id=`` (default: the
        folder's name)."""
        with atomic_directory(save_directory, replaces=lambda n: n in self.components) as staging:
            atomic_write_text(staging / MODEL_INDEX,
                              json.dumps(self.config.to_dict(), indent=2) + "\n")
            for name, component in self.components.items():
                if component is None:
                    continue
                save = getattr(component, "save_pretrained", None)
                if save is None:
                    raise PipelineError(f"component {name!r} ({type(component).__name__}) has no "
                                        f"save_pretrained, so the pipeline cannot be saved")
                takes = inspect.signature(save).parameters
                kwargs = {}
                if variant and "variant" in takes:
                    kwargs["variant"] = variant
                if library_of(component) == "transformers" and "safe_serialization" in takes:
                    kwargs["safe_serialization"] = safe_serialization
                save(staging / name, **kwargs)
        if push_to_hub:
            self._push_saved_folder(save_directory, **push_kwargs)

    # Loading -----------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls,
        source: str | os.PathLike,
        torch_dtype: torch.dtype | None = None,
        variant: str | None = None,
        revision: str | None = None,
        cache_dir: str | os.PathLike | None = None,
        local_files_only: bool | None = None,
        token: str | bool | None = None,
        allow_pickle: bool = False,
        device: str | torch.device | None = None,
        use_safetensors: bool | None = None,
        low_cpu_mem_usage: bool = True,
        custom_pipeline: str | os.PathLike | None = None,
        custom_revision: str | None = None,
        trust_remote_code: bool = False,
        dtype: torch.dtype | None = None,
        verify: bool = False,
        **overrides: Any,
    ) -> DiffusionPipeline:
        """Load a pipeline folder or Hub repo; keyword arguments named like components replace
        them (``scheduler=EulerDiscreteScheduler.from_config(...)``). ``use_safetensors`` and
        ``low_cpu_mem_usage`` are taken for diffusers compatibility, as in
        ``ModelMixin.from_pretrained``. ``custom_pipeline``: a community pipeline name, a Hub
        repo id holding ``pipeline.py`` or a local ``.py`` file, whose class runs the components
        (``custom_revision``: its branch, tag or commit); code from the Hub, this and components
        defined in ``<component>/<module>.py``, runs only with ``trust_remote_code=True``
        (see ``remote_code.py``). ``verify=True`` checks every file the load reads against its
        recorded sha256 (``SHA256SUMS`` files, or the hashes the Hub published)."""
        from . import remote_code
        from .modeling import resolve_dtype

        torch_dtype = resolve_dtype(dtype, torch_dtype)  # dtype: diffusers' newer name
        allow_pickle = allow_pickle and not use_safetensors
        hub = dict(revision=revision, cache_dir=cache_dir, local_files_only=local_files_only,
                   token=token)
        hub["revision"] = pin_revision(source, **hub)  # every file from one commit
        files = list_files(source, **hub)
        if MODEL_INDEX not in files:
            raise PipelineError(f"no {MODEL_INDEX} in {os.fspath(source)!r}: not a pipeline folder "
                                f"(a single model loads with its class's from_pretrained)")
        root = fetch(source, [MODEL_INDEX], **hub)
        index = read_json(root / MODEL_INDEX)
        pipeline_cls = (cls._pipeline_class(index) if custom_pipeline is None else
                        remote_code.load_pipeline_class(custom_pipeline, custom_revision,
                                                        trust_remote_code, cache_dir=cache_dir,
                                                        local_files_only=local_files_only,
                                                        token=token))
        overrides = {**dict.fromkeys(pipeline_cls._components_not_loaded), **overrides}
        specs = {k: v for k, v in index.items() if not k.startswith("_")}
        bad = [k for k in specs if not k.isidentifier()]
        if bad:  # a component name is a folder name: "../x" would read outside the pipeline
            raise PipelineError(f"{MODEL_INDEX} in {os.fspath(source)!r} names components "
                                f"{bad}; component names must be Python identifiers")
        overrides = {**_check_components(pipeline_cls, specs, files, overrides, source),
                     **overrides}
        needed = [f for f in files if f.split("/")[0] in specs and f.split("/")[0] not in overrides]
        if variant and not any(_variant_of(f) == variant for f in needed):
            present = sorted({_variant_of(f) for f in needed if f.endswith(_WEIGHT_SUFFIXES)}
                             - {None})
            raise PipelineError(f"no component of {os.fspath(source)!r} has weights for variant "
                                f"{variant!r} (variants present: {present or 'none'}); drop "
                                f"variant= or pass one of those")
        root = fetch(source, [MODEL_INDEX, *select_files(needed, variant, allow_pickle)],
                     verify=verify, **hub)

        expected = pipeline_cls._expected_components()
        # Plain values beside the components ("requires_safety_checker": true) are constructor
        # arguments, as in diffusers; keyword arguments win over them.
        params = config_parameters(pipeline_cls)
        overrides = {**{k: v for k, v in specs.items() if k in params and k not in expected
                        and not isinstance(v, list | tuple)}, **overrides}
        remote_code.load_component_classes(source, specs, files, overrides, trust_remote_code,
                                           **hub)
        components: dict[str, Any] = {}
        names = [n for n in specs if n in overrides or n in expected or not expected]
        from tqdm.auto import tqdm

        for name in tqdm(names, desc="Loading components", disable=len(names) < 2 or None,
                         leave=False):
            components[name] = (overrides.pop(name) if name in overrides else _load_component(
                name, specs[name], root, torch_dtype, variant, allow_pickle))
        missing = [n for n in expected if n not in components
                   and n not in pipeline_cls._optional_components]
        if missing:
            raise PipelineError(f"{pipeline_cls.__name__} needs components {missing}, which "
                                f"{MODEL_INDEX} in {os.fspath(source)!r} does not list; pass "
                                f"them as keyword arguments")
        unknown = [k for k in overrides if k not in params]
        if unknown:
            raise PipelineError(f"{pipeline_cls.__name__}.from_pretrained got unknown arguments "
                                f"{unknown}; it takes components {expected}")
        pipe = pipeline_cls(**components, **overrides)
        pipe.default_num_inference_steps = _recommended_steps(index, source)
        if device is not None:
            pipe.to(device)
        return pipe

    @classmethod
    def _pipeline_class(cls, index: dict[str, Any]) -> type:
        if cls is not DiffusionPipeline:
            return cls
        name = index.get("_class_name")
        if not name:
            raise PipelineError(f"{MODEL_INDEX} has no _class_name; load it with the pipeline "
                                f"class directly")
        from .plugins import registry

        return registry.pipelines.get(name)

    @classmethod
    def _expected_components(cls) -> list[str]:
        """Constructor parameters without a plain default value are components."""
        return [k for k, p in config_parameters(cls).items()
                if p.default is inspect.Parameter.empty or k in cls._optional_components]

    def __repr__(self) -> str:
        parts = ", ".join(f"{k}={type(v).__name__}" for k, v in self.components.items())
        return f"{type(self).__name__}({parts})"


def _check_components(pipeline_cls: type, specs: dict[str, Any], files: list[str],
                      overrides: dict[str, Any], source: Any) -> dict[str, None]:
    """Before anything is downloaded: every component the pipeline takes and the caller did not
    pass must be named in ``model_index.json`` as ``[library, class]`` of a library this project
    loads from, with a class it can resolve and a folder that holds it. A component the
    pipeline declares optional is left out (``None``, with a warning) where it is not; any other
    is a ``PipelineError``. Returns the optional components to leave out."""
    from .plugins import registry

    left_out: dict[str, None] = {}
    for name in pipeline_cls._expected_components():
        if name in overrides or name not in specs:
            continue  # passed by the caller; or absent, which the load reports with the others
        spec, problem = specs[name], None
        optional = name in pipeline_cls._optional_components
        if spec is None or (isinstance(spec, list | tuple) and list(spec) == [None, None]):
            if optional:  # how a pipeline saved without this component records it
                continue
            problem = "is [null, null] (no component)"
        elif not (isinstance(spec, list | tuple) and len(spec) == 2
                  and all(isinstance(s, str) for s in spec)):
            problem = f"must be [library, class], got {spec!r}"
        elif not any(f.startswith(f"{name}/") for f in files):
            problem = f"is {list(spec)} but {os.fspath(source)!r} has no {name}/ folder for it"
        else:
            problem = _unresolvable(name, *spec, files, registry)
        if problem is None:
            continue
        message = f"{MODEL_INDEX} entry {name!r} of {os.fspath(source)!r} {problem}"
        if not optional:
            raise PipelineError(f"{message}; {pipeline_cls.__name__} needs it: fix the entry, or "
                                f"pass {name}=... to from_pretrained")
        warnings.warn(f"{message}; {pipeline_cls.__name__} declares it optional, so it is "
                      f"left out (None)", stacklevel=3)
        left_out[name] = None
    return left_out


def _unresolvable(name: str, library: str, class_name: str, files: list[str],
                  registry: Any) -> str | None:
    """Why ``[library, class_name]`` cannot be loaded, or None if it can: a transformers class,
    a class defined in ``<name>/<library>.py`` of the pipeline (remote code), or a class some
    installed plugin registers, whatever library the file names (a plugin may provide the
    classes of another library's checkpoints)."""
    if library == "transformers" or f"{name}/{library}.py" in files:  # checked when imported
        return None
    try:
        registry.find(class_name)
    except NotRegisteredError as exc:
        hint = ("" if library in _OWN_LIBRARIES else
                f"; the class comes from library {library!r}: install the diffusion-kernel "
                f"plugin that registers it")
        return (f"names [{library!r}, {class_name!r}], which cannot be loaded "
                f"({str(exc).rstrip('.')}){hint}")
    return None


def _recommended_steps(index: dict[str, Any], source: Any) -> int | None:
    steps = index.get(DEFAULT_STEPS_KEY)
    if steps is None or (isinstance(steps, int) and not isinstance(steps, bool) and steps > 0):
        return steps
    raise PipelineError(f"{MODEL_INDEX} in {os.fspath(source)!r}: {DEFAULT_STEPS_KEY} must be a "
                        f"positive integer, got {steps!r}; fix or remove it")


def _load_component(name: str, spec: Any, root: Path, torch_dtype, variant, allow_pickle) -> Any:
    if spec is None or (isinstance(spec, list) and None in spec):
        return None
    if not (isinstance(spec, list | tuple) and len(spec) == 2
            and all(isinstance(s, str) for s in spec)):
        raise PipelineError(f"{MODEL_INDEX} entry {name!r} must be [library, class], got {spec!r}")
    library, class_name = spec
    folder = root / name
    if library == "transformers":
        return _load_transformers(class_name, folder, torch_dtype, variant, allow_pickle)
    from .plugins import registry

    try:
        entry = registry.find(class_name)
    except NotRegisteredError as exc:
        hint = ("" if library in _OWN_LIBRARIES else
                f" The class comes from library {library!r}: install the diffusion-kernel plugin "
                f"that registers it.")
        raise PipelineError(f"component {name!r}: cannot load [{library!r}, {class_name!r}]: "
                            f"{exc}{hint}") from None
    component_cls = entry.load()
    if entry.kind == "models":  # a component without the variant loads its plain weights
        return component_cls.from_pretrained(folder, torch_dtype=torch_dtype,
                                             variant=variant if _has_variant(folder, variant)
                                             else None, allow_pickle=allow_pickle)
    return component_cls.from_pretrained(folder)


def _load_transformers(class_name: str, folder: Path, torch_dtype, variant, allow_pickle) -> Any:
    try:
        import transformers
    except ImportError as exc:
        raise PipelineError(f"this pipeline needs transformers ({class_name}); "
                            f"pip install transformers") from exc
    component_cls = getattr(transformers, class_name, None)
    if component_cls is None:
        raise PipelineError(f"transformers has no class {class_name!r} (installed version "
                            f"{transformers.__version__}); upgrade transformers")
    kwargs: dict[str, Any] = {}
    if issubclass(component_cls, transformers.PreTrainedModel):
        kwargs["use_safetensors"] = None if allow_pickle else True  # None: safetensors first
        if torch_dtype is not None:
            kwargs["dtype"] = torch_dtype
        if _has_variant(folder, variant):
            kwargs["variant"] = variant
    return component_cls.from_pretrained(folder, **kwargs)


def select_files(files: list[str], variant: str | None, allow_pickle: bool) -> list[str]:
    """Of a pipeline's files, those a load needs: every config/tokenizer file, and per folder
    the safetensors weights of the asked variant (else the plain ones; pickles only if allowed)."""
    by_folder: dict[str, list[str]] = {}
    chosen = []
    for f in files:
        if f.rpartition("/")[2] == MANIFEST_NAME:  # hashes recorded at save: only verify reads
            continue
        if f.endswith(_WEIGHT_SUFFIXES):
            by_folder.setdefault(f.rpartition("/")[0], []).append(f)
        else:
            chosen.append(f)
    for weights in by_folder.values():
        chosen += _pick_weights(weights, variant, allow_pickle)
    return chosen


def _variant_of(path: str) -> str | None:
    stem = path.rpartition("/")[2].rsplit(".", 1)[0]
    parts = stem.split(".")
    if len(parts) < 2:
        return None
    return re.sub(r"-\d{5}-of-\d{5}$", "", parts[-1])


def _has_variant(folder: Path, variant: str | None) -> bool:
    return bool(variant) and any(_variant_of(p.name) == variant for p in folder.iterdir())


def _pick_weights(weights: list[str], variant: str | None, allow_pickle: bool) -> list[str]:
    kinds = [[w for w in weights if w.endswith(".safetensors")]]
    pickles = [w for w in weights if w.endswith(PICKLE_SUFFIXES)]
    if allow_pickle:
        kinds.append(pickles)
    for group in kinds:
        for wanted in ([variant, None] if variant else [None]):
            picked = [w for w in group if _variant_of(w) == wanted]
            if picked:
                return picked
    if pickles:  # refused here, before anything is downloaded
        raise UnsafeCheckpointError(
            f"{pickles[0].rpartition('/')[0] or 'the pipeline'} has only pickle weights "
            f"({', '.join(pickles)}), which can run code when loaded; they are refused. Convert "
            f"them to safetensors, or pass allow_pickle=True if you trust their source.")
    return []
