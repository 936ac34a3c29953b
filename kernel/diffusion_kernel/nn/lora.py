"""Low-rank adapters (LoRA, Hu et al. 2021, eq. 3) on the linear and convolution layers of any
model: a frozen weight ``W`` gains named low-rank updates, ``h = W x + sum_n s_n B_n A_n x`` with
``A_n`` (rank x in) and ``B_n`` (out x rank), ``s_n = weight_n * alpha_n / rank_n``.

A layer is adapted in place, the way ``torch.nn.utils.parametrize`` adapts one: its class becomes
a subclass of its own class (``nn.Linear`` -> ``LoRALinear``) that adds the adapters, so it keeps
its parameters, its key names (``to_q.weight``) and its behaviour, and any code that reads
``layer.weight`` still works. Adapter parameters live in ``layer.lora_A[name]`` /
``layer.lora_B[name]`` (``ParameterDict``): they move with ``model.to``, appear in
``model.parameters()`` for training and in ``model.state_dict()`` (so training checkpoints hold
them). Model files written by ``save_pretrained`` leave them out
(``lora_excluded_from_state_dict``): a saved model holds its own weights.

For a convolution ``A`` is a convolution with the layer's kernel, stride, padding and dilation and
``B`` a 1x1 convolution (as kohya's LoCon and peft do).

Fusing (``fuse_lora``) adds ``s B A`` to ``W`` for speed and records the scale used, so
``unfuse_lora`` subtracts exactly the same update.

Model-level functions (``inject_lora``, ``add_lora``, ``set_lora_adapters``, ``fuse_lora`` ...)
work on any ``nn.Module``; the Stable Diffusion loaders build on them.
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from ..errors import CheckpointError, ConfigError


@dataclass
class LoRAWeights:
    """One adapted layer's update: ``down`` = A (rank x in [x kernel]), ``up`` = B (out x rank
    [x 1 x 1]), ``alpha`` (``None``: the rank, i.e. scale 1), optional ``up_bias`` (out)."""

    down: torch.Tensor
    up: torch.Tensor
    alpha: float | None = None
    up_bias: torch.Tensor | None = None

    @property
    def rank(self) -> int:
        return self.down.shape[0]


class LoRALayer:
    """The adapters of one layer (a mixin put in front of ``nn.Linear`` / ``nn.ConvNd``)."""

    lora_A: nn.ParameterDict
    lora_B: nn.ParameterDict
    lora_B_bias: nn.ParameterDict

    def _lora_init(self) -> None:
        self.lora_A = nn.ParameterDict()
        self.lora_B = nn.ParameterDict()
        self.lora_B_bias = nn.ParameterDict()
        self.lora_alpha: dict[str, float] = {}
        self.lora_weight: dict[str, float] = {}  # set_adapters' weight per adapter
        self.lora_active: list[str] = []
        self.lora_fused: dict[str, float] = {}  # adapter -> the scale fused into the weight
        self.lora_call_scale = 1.0  # the per-call multiplier (cross_attention_kwargs["scale"])
        self.lora_enabled = True
        self._lora_live: tuple[tuple[str, float], ...] = ()

    # Adapters --------------------------------------------------------------------------------
    def lora_scale(self, name: str) -> float:
        """``weight * alpha / rank`` of adapter ``name``."""
        return self.lora_weight[name] * self.lora_alpha[name] / self.lora_A[name].shape[0]

    def _lora_refresh(self) -> None:
        # The forward pass reads this tuple only: active, unfused adapters with their scale.
        self._lora_live = tuple((n, self.lora_scale(n)) for n in self.lora_active
                                if n in self.lora_A and n not in self.lora_fused
                                and self.lora_enabled)

    def _lora_add(self, name: str, weights: LoRAWeights, copy: bool) -> None:
        like = self.weight
        tensors = {"lora_A": weights.down, "lora_B": weights.up, "lora_B_bias": weights.up_bias}
        for store, tensor in tensors.items():
            if tensor is not None:
                tensor = tensor.to(like.device, like.dtype, copy=copy)
                getattr(self, store)[name] = nn.Parameter(tensor, requires_grad=False)
        self.lora_alpha[name] = float(weights.rank if weights.alpha is None else weights.alpha)
        self.lora_weight[name] = 1.0
        self._lora_refresh()

    def _lora_delete(self, name: str) -> None:
        for store in (self.lora_A, self.lora_B, self.lora_B_bias):
            if name in store:
                del store[name]
        for table in (self.lora_alpha, self.lora_weight, self.lora_fused):
            table.pop(name, None)
        self.lora_active = [n for n in self.lora_active if n != name]
        self._lora_refresh()

    # Fusing ----------------------------------------------------------------------------------
    def lora_delta(self, name: str, scale: float) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``scale * B A`` shaped like the weight (and ``scale * b_B`` for a biased ``B``),
        computed in float32."""
        down = self.lora_A[name].float()
        up = self.lora_B[name].float()
        delta = (up.flatten(1) @ down.flatten(1)).view(self.weight.shape) * scale
        bias = self.lora_B_bias[name].float() * scale if name in self.lora_B_bias else None
        return delta, bias

    def _lora_apply_delta(self, name: str, scale: float, sign: float) -> None:
        delta, bias = self.lora_delta(name, scale)
        with torch.no_grad():
            self.weight.copy_((self.weight.float() + sign * delta).to(self.weight.dtype))
            if bias is not None:
                self.bias.copy_((self.bias.float() + sign * bias).to(self.bias.dtype))

    def _lora_fuse(self, name: str, scale: float) -> None:
        self._lora_apply_delta(name, scale, 1.0)
        self.lora_fused[name] = scale
        self._lora_refresh()

    def _lora_unfuse(self) -> None:
        for name, scale in list(self.lora_fused.items()):
            self._lora_apply_delta(name, scale, -1.0)
            del self.lora_fused[name]
        self._lora_refresh()

    # Forward ---------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = super().forward(x)
        for name, scale in self._lora_live:
            # In place on tensors made here, which no backward pass needs (a linear map saves
            # its input, not its output): no extra full-size allocation per adapter.
            hidden = self._lora_down(x, self.lora_A[name])
            bias = self.lora_B_bias[name] if name in self.lora_B_bias else None
            if bias is None:  # scale the rank-wide hidden state: cheaper than the output
                hidden = hidden.mul_(scale * self.lora_call_scale)
                out = out.add_(self._lora_up(hidden, self.lora_B[name], None))
            else:
                update = self._lora_up(hidden, self.lora_B[name], bias)
                out = out.add_(update.mul_(scale * self.lora_call_scale))
        return out


class LoRALinear(LoRALayer, nn.Linear):
    """``nn.Linear`` with LoRA adapters."""

    def _lora_down(self, x, down):
        return F.linear(x, down)

    def _lora_up(self, hidden, up, bias):
        return F.linear(hidden, up, bias)


class _LoRAConv(LoRALayer):
    # A: the layer's own convolution geometry (stride, padding, dilation, padding mode).
    def _lora_down(self, x, down):
        return self._conv_forward(x, down, None)


class LoRAConv1d(_LoRAConv, nn.Conv1d):
    """``nn.Conv1d`` with LoRA adapters."""

    def _lora_up(self, hidden, up, bias):
        return F.conv1d(hidden, up, bias)


class LoRAConv2d(_LoRAConv, nn.Conv2d):
    """``nn.Conv2d`` with LoRA adapters."""

    def _lora_up(self, hidden, up, bias):
        return F.conv2d(hidden, up, bias)


class LoRAConv3d(_LoRAConv, nn.Conv3d):
    """``nn.Conv3d`` with LoRA adapters."""

    def _lora_up(self, hidden, up, bias):
        return F.conv3d(hidden, up, bias)


LORA_CLASSES: dict[type, type] = {nn.Linear: LoRALinear, nn.Conv1d: LoRAConv1d,
                                  nn.Conv2d: LoRAConv2d, nn.Conv3d: LoRAConv3d}
_BASE_CLASSES = {lora: base for base, lora in LORA_CLASSES.items()}


# Checks ----------------------------------------------------------------------------------------
def check_adapter_name(name: str) -> str:
    if not isinstance(name, str) or not name or "." in name:
        raise ConfigError(f"adapter name {name!r} is not usable: give a non-empty string without "
                          f"'.' (it becomes part of parameter names)")
    if hasattr(nn.ParameterDict, name):  # the adapters are attributes of a ParameterDict
        raise ConfigError(f"adapter name {name!r} is the name of a torch Module attribute; "
                          f"choose another one")
    return name


def lora_shape_problem(layer: nn.Module, weights: LoRAWeights) -> str | None:
    """Why ``weights`` cannot adapt ``layer`` (``None`` if they can)."""
    base = _BASE_CLASSES.get(type(layer), type(layer))
    if base not in LORA_CLASSES:
        return f"it is a {type(layer).__name__}; LoRA adapts Linear and Conv1d/2d/3d layers"
    if base is not nn.Linear and layer.groups != 1:
        return f"it is a grouped convolution (groups={layer.groups})"
    down, up = weights.down, weights.up
    if not (down.is_floating_point() and up.is_floating_point()):
        return f"its LoRA weights are not floating point ({down.dtype}, {up.dtype})"
    if base is nn.Linear:
        want_down = (down.shape[0], layer.in_features)
        want_up = (layer.out_features, down.shape[0])
    else:
        kernel = tuple(layer.kernel_size)
        want_down = (down.shape[0], layer.in_channels, *kernel)
        want_up = (layer.out_channels, down.shape[0], *(1,) * len(kernel))
    if tuple(down.shape) != want_down or tuple(up.shape) != want_up:
        return (f"the LoRA down/up weights are {tuple(down.shape)} / {tuple(up.shape)} but this "
                f"layer needs {want_down} / {want_up}")
    if weights.up_bias is not None and tuple(weights.up_bias.shape) != (want_up[0],):
        return f"the LoRA up bias is {tuple(weights.up_bias.shape)}, not ({want_up[0]},)"
    return None


# Model-level functions -------------------------------------------------------------------------
def lora_layers(model: nn.Module) -> Iterator[tuple[str, LoRALayer]]:
    """``(path, layer)`` for every layer of ``model`` that holds LoRA adapters."""
    for path, module in model.named_modules():
        if isinstance(module, LoRALayer):
            yield path, module


def list_lora_adapters(model: nn.Module) -> list[str]:
    """Names of the adapters ``model`` holds, in the order they were added."""
    names: dict[str, None] = {}
    for _, layer in lora_layers(model):
        names.update(dict.fromkeys(layer.lora_A))
    return list(names)


def active_lora_adapters(model: nn.Module) -> list[str]:
    """Names of the adapters in use, in the order ``set_lora_adapters`` gave them."""
    names: set[str] = set()
    for _, layer in lora_layers(model):
        names.update(n for n in layer.lora_active if n in layer.lora_A)
    order = model.__dict__.get("_lora_order", [])
    return [n for n in order if n in names] + sorted(names - set(order))


def inject_lora(model: nn.Module, adapter_name: str, weights: dict[str, LoRAWeights],
                copy: bool = True) -> None:
    """Add adapter ``adapter_name`` with the given per-layer ``weights`` (keys: module paths in
    ``model``) and make it the only active one, as loading an adapter does in diffusers. Every
    layer is checked first: on an error nothing has changed. ``copy=False`` lets the adapters
    use the given tensors' memory (tensors read from a file for this call: no second copy)."""
    check_lora_weights(model, adapter_name, weights)
    modules = dict(model.named_modules())
    for path, layer_weights in weights.items():
        _as_lora_layer(modules[path])._lora_add(adapter_name, layer_weights, copy)
    set_lora_adapters(model, [adapter_name])


def check_lora_weights(model: nn.Module, adapter_name: str,
                       weights: dict[str, LoRAWeights]) -> None:
    """Raise ``CheckpointError`` naming the first problems if ``weights`` do not fit the model
    (``ConfigError`` for an adapter name in use)."""
    check_adapter_name(adapter_name)
    if adapter_name in list_lora_adapters(model):
        raise ConfigError(f"adapter name {adapter_name!r} is already in use in "
                          f"{type(model).__name__}; pass another adapter_name, or "
                          f"delete_adapters({adapter_name!r}) first")
    problems = []
    modules = dict(model.named_modules())
    for path, layer_weights in weights.items():
        layer = modules.get(path)
        if layer is None:
            problems.append(f"{path}: no such layer")
            continue
        problem = lora_shape_problem(layer, layer_weights)
        if problem:
            problems.append(f"{path}: {problem}")
    if problems:
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        raise CheckpointError(f"{len(problems)} LoRA layers do not fit {type(model).__name__}: "
                          f"{'; '.join(problems[:5])}{more}. The LoRA was made for a different "
                          f"model (another base model or size)")


def add_lora(model: nn.Module, adapter_name: str, rank: int, alpha: float | None = None,
             target_modules: Sequence[str] = ("to_q", "to_k", "to_v", "to_out.0"),
             init: str = "gaussian", generator: torch.Generator | None = None) -> list[str]:
    """Add a new trainable adapter on every Linear/Conv layer whose path ends with one of
    ``target_modules`` (``"to_q"`` matches ``...attn1.to_q``), and make it the only active one.
    ``B`` starts at zero so the model is unchanged; ``A`` is drawn from N(0, 1/rank)
    (``init="gaussian"``, as diffusers' training scripts) or Kaiming-uniform (``"kaiming"``, as
    peft's default). Only the new adapter's parameters require gradients. Returns the adapted
    layers' paths."""
    if not isinstance(rank, int) or rank < 1:
        raise ConfigError(f"LoRA rank must be a positive int, got {rank!r}")
    if init not in ("gaussian", "kaiming"):
        raise ConfigError(f"init must be 'gaussian' or 'kaiming', got {init!r}")
    weights = {}
    for path, module in model.named_modules():
        if not any(path == t or path.endswith("." + t) for t in target_modules):
            continue
        base = _BASE_CLASSES.get(type(module), type(module))
        if base not in LORA_CLASSES:
            continue
        weight = module.weight
        down = torch.empty(rank, *weight.shape[1:], device=weight.device, dtype=torch.float32)
        if init == "gaussian":
            down.normal_(0.0, 1.0 / rank, generator=generator)
        else:  # what nn.Linear does to its own weight (kaiming-uniform, a = sqrt(5))
            bound = 1.0 / math.sqrt(down[0].numel())
            down.uniform_(-bound, bound, generator=generator)
        up = torch.zeros(weight.shape[0], rank, *(1,) * (weight.ndim - 2), device=weight.device)
        weights[path] = LoRAWeights(down, up, alpha)
    if not weights:
        raise ConfigError(f"no Linear or Conv layer of {type(model).__name__} matches "
                          f"target_modules={list(target_modules)}")
    inject_lora(model, adapter_name, weights, copy=False)  # tensors made here
    for parameter in lora_parameters(model, adapter_name):
        parameter.requires_grad_(True)
    return list(weights)


def lora_parameters(model: nn.Module, adapter_name: str) -> list[nn.Parameter]:
    """The parameters of one adapter (for an optimizer)."""
    params = []
    for _, layer in lora_layers(model):
        for store in (layer.lora_A, layer.lora_B, layer.lora_B_bias):
            if adapter_name in store:
                params.append(store[adapter_name])
    return params


def get_lora_weights(model: nn.Module, adapter_name: str) -> dict[str, LoRAWeights]:
    """Adapter ``adapter_name`` as ``{layer path: LoRAWeights}`` (detached tensors)."""
    found = {}
    for path, layer in lora_layers(model):
        if adapter_name in layer.lora_A:
            bias = layer.lora_B_bias[adapter_name] if adapter_name in layer.lora_B_bias else None
            found[path] = LoRAWeights(layer.lora_A[adapter_name].detach(),
                                      layer.lora_B[adapter_name].detach(),
                                      layer.lora_alpha[adapter_name],
                                      None if bias is None else bias.detach())
    if not found:
        raise ConfigError(f"{type(model).__name__} has no adapter {adapter_name!r}; it has "
                          f"{list_lora_adapters(model)}")
    return found


def lora_state_dict(model: nn.Module, adapter_name: str) -> dict[str, torch.Tensor]:
    """Adapter ``adapter_name`` in the diffusers / peft key format: ``<path>.lora_A.weight``,
    ``<path>.lora_B.weight`` (and ``<path>.lora_B.bias``). Its alphas: ``lora_alphas``."""
    state = {}
    for path, weights in get_lora_weights(model, adapter_name).items():
        state[f"{path}.lora_A.weight"] = weights.down
        state[f"{path}.lora_B.weight"] = weights.up
        if weights.up_bias is not None:
            state[f"{path}.lora_B.bias"] = weights.up_bias
    return state


def lora_alphas(model: nn.Module, adapter_name: str) -> dict[str, float]:
    """``{layer path: alpha}`` of one adapter."""
    return {path: w.alpha for path, w in get_lora_weights(model, adapter_name).items()}


def set_lora_adapters(model: nn.Module, adapter_names: Sequence[str],
                      weights: Sequence[float] | None = None) -> None:
    """Use exactly ``adapter_names`` (others stay loaded, unused) with these ``weights``
    (default 1.0 each). A layer ignores names it does not hold."""
    weights = [1.0] * len(adapter_names) if weights is None else list(weights)
    model.__dict__["_lora_order"] = list(adapter_names)  # for active_lora_adapters
    for _, layer in lora_layers(model):
        layer.lora_active = [n for n in adapter_names if n in layer.lora_A]
        for name, weight in zip(adapter_names, weights):
            if name in layer.lora_A:
                layer.lora_weight[name] = float(weight)
        layer._lora_refresh()


def enable_lora(model: nn.Module, enabled: bool = True) -> None:
    """Switch every adapter of ``model`` off (``False``: the base model runs) or on again."""
    for _, layer in lora_layers(model):
        layer.lora_enabled = enabled
        layer._lora_refresh()


def check_finite(model: nn.Module, adapter_names: Sequence[str] | None = None) -> None:
    """Raise ``ConfigError`` if an active (or named) adapter holds NaN or infinite values."""
    for path, layer in lora_layers(model):
        names = layer.lora_active if adapter_names is None else adapter_names
        for name in (n for n in names if n in layer.lora_A):
            tensors = [layer.lora_A[name], layer.lora_B[name]]
            if not all(bool(torch.isfinite(t).all()) for t in tensors):
                raise ConfigError(f"adapter {name!r} holds NaN or infinite values on {path}; "
                                  f"it was not fused")


def delete_lora_adapter(model: nn.Module, adapter_name: str) -> None:
    """Remove an adapter; a layer left without adapters becomes a plain layer again. A fused
    adapter's update stays in the weights (``unfuse_lora`` first to take it out)."""
    for _, layer in list(lora_layers(model)):
        layer._lora_delete(adapter_name)
        if not layer.lora_A:
            _restore_base_layer(layer)


def unload_lora(model: nn.Module) -> None:
    """Remove every adapter (fused updates stay in the weights, as in diffusers)."""
    for _, layer in list(lora_layers(model)):
        _restore_base_layer(layer)


def fuse_lora(model: nn.Module, lora_scale: float = 1.0,
              adapter_names: Sequence[str] | None = None) -> list[str]:
    """Add ``lora_scale * s_n B_n A_n`` of the active (or the named) adapters to the weights, so
    the model runs at the speed of the base model. Returns the adapters fused."""
    todo = []
    for path, layer in lora_layers(model):
        names = layer.lora_active if adapter_names is None else adapter_names
        for name in names:
            if name in layer.lora_A and name not in layer.lora_fused:
                if name in layer.lora_B_bias and layer.bias is None:
                    raise ConfigError(f"adapter {name!r} has a bias on {path}, which has none, so "
                                      f"it cannot be fused; use it unfused")
                todo.append((layer, name))
    for layer, name in todo:
        layer._lora_fuse(name, layer.lora_scale(name) * lora_scale)
    return list(dict.fromkeys(name for _, name in todo))


def unfuse_lora(model: nn.Module) -> None:
    """Subtract every fused update again (the same tensors that were added)."""
    for _, layer in lora_layers(model):
        layer._lora_unfuse()


@contextlib.contextmanager
def lora_call_scale(model: nn.Module, scale: float) -> Iterator[None]:
    """Multiply every unfused adapter of ``model`` by ``scale`` while the block runs (what
    ``cross_attention_kwargs={"scale": s}`` does for one call)."""
    layers = [layer for _, layer in lora_layers(model)] if scale != 1.0 else []
    previous = [layer.lora_call_scale for layer in layers]
    for layer in layers:
        layer.lora_call_scale = float(scale)
    try:
        yield
    finally:
        for layer, value in zip(layers, previous):
            layer.lora_call_scale = value


def scales_lora(forward):
    """Decorator for a model's ``forward`` that takes ``cross_attention_kwargs``: its
    ``"scale"`` entry (passed by keyword) multiplies the model's adapters for the call and is not
    passed on, as in diffusers. Without it the call goes straight through."""

    @functools.wraps(forward)
    def scaled_forward(self, *args, **kwargs):
        options = kwargs.get("cross_attention_kwargs")
        if not options or "scale" not in options:
            return forward(self, *args, **kwargs)
        kwargs["cross_attention_kwargs"] = {k: v for k, v in options.items() if k != "scale"}
        with lora_call_scale(self, options["scale"]):
            return forward(self, *args, **kwargs)

    return scaled_forward


@contextlib.contextmanager
def lora_excluded_from_state_dict(*models: nn.Module | None) -> Iterator[None]:
    """While the block runs, ``state_dict()`` of these models leaves adapter parameters out (for
    writing model files: a saved model holds its own weights, fused updates included)."""
    handles = [layer.register_state_dict_post_hook(_drop_adapter_keys)
               for model in models if model is not None for _, layer in lora_layers(model)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def unfused_adapters(*models: nn.Module | None) -> list[str]:
    """Active adapters of these models that are not fused into the weights."""
    names: dict[str, None] = {}
    for model in models:
        if model is not None:
            for _, layer in lora_layers(model):
                names.update(dict.fromkeys(n for n, _ in layer._lora_live))
    return list(names)


def _drop_adapter_keys(module, state_dict, prefix, local_metadata) -> None:
    for key in [k for k in state_dict if k.startswith(prefix + "lora_")]:
        del state_dict[key]


def _as_lora_layer(layer: nn.Module) -> LoRALayer:
    if isinstance(layer, LoRALayer):
        return layer
    layer.__class__ = LORA_CLASSES[type(layer)]
    layer._lora_init()
    return layer


def _restore_base_layer(layer: LoRALayer) -> None:
    for name in ("lora_A", "lora_B", "lora_B_bias"):
        delattr(layer, name)
    for name in ("lora_alpha", "lora_weight", "lora_active", "lora_fused", "lora_call_scale",
                 "lora_enabled", "_lora_live"):
        layer.__dict__.pop(name, None)
    layer.__class__ = _BASE_CLASSES[type(layer)]


def adaptable_layers(model: nn.Module) -> list[str]:
    """Paths of the layers of ``model`` LoRA can adapt (Linear, Conv1d/2d/3d)."""
    return [path for path, m in model.named_modules()
            if _BASE_CLASSES.get(type(m), type(m)) in LORA_CLASSES]
