"""LoRA files as they come, read into one form: for each model (``unet``, ``text_encoder``),
``{layer path: LoRAWeights}``.

Formats (facts of each format):

- diffusers / peft: ``unet.<path>.lora_A.weight`` / ``.lora_B.weight`` (also ``lora.down`` /
  ``lora.up``, and ``lora_linear_layer.down`` / ``.up`` for the text encoder), optional
  ``lora_B.bias``; the scale comes from the safetensors metadata ``lora_adapter_metadata`` (peft's
  ``LoraConfig``: ``r``, ``lora_alpha``, ``rank_pattern``, ``alpha_pattern``), else alpha = rank.
- old diffusers attention processors: ``<path>.processor.to_q_lora.down.weight`` ...
- kohya / A1111: ``lora_unet_<path with _>.lora_down.weight``, ``.lora_up.weight``, ``.alpha``
  (scale = alpha / rank); ``lora_te_`` for the text encoder (``text_model`` included). U-Net
  paths are diffusers' or the original layout's (SGM: ``input_blocks_4_1_proj_in``).
- peft training output: the same keys under ``base_model.model.``.

Anything else (LyCORIS LoHa / LoKr / CP-decomposed LoCon, DoRA, OFT, full-weight differences, an
SDXL text encoder) cannot be turned into these adapters: ``CheckpointError`` names the keys and
what they look like, before any model is touched.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from typing import Any

import torch
from diffusion_kernel.errors import CheckpointError
from diffusion_kernel.nn.lora import LoRAWeights, adaptable_layers
from torch import nn

from .ldm_keys import unet_block_map, unet_module_to_ldm

METADATA_KEY = "lora_adapter_metadata"
COMPONENTS = ("unet", "text_encoder")

_KOHYA = re.compile(r"(lora_unet|lora_te1?|lora_te2)_([^.]+)\.(.+)")
_KOHYA_PARTS = {"lora_down.weight": "down", "lora_up.weight": "up", "alpha": "alpha"}
_DIFFUSERS = re.compile(
    r"(?:(unet|text_encoder)\.)?(.+?)\.(lora_A|lora_B|lora\.down|lora\.up|"
    r"lora_linear_layer\.down|lora_linear_layer\.up)(?:\.[^.]+)?\.(weight|bias)")
_DIFFUSERS_PARTS = {"lora_A": "down", "lora.down": "down", "lora_linear_layer.down": "down",
                    "lora_B": "up", "lora.up": "up", "lora_linear_layer.up": "up"}
_OLD = re.compile(r"(?:(unet|text_encoder)\.)?(.+?)\.(?:processor\.)?(to_q|to_k|to_v|to_out)_lora"
                  r"\.(down|up)\.weight")
_OLD_UNET = {"to_q": "to_q", "to_k": "to_k", "to_v": "to_v", "to_out": "to_out.0"}
_OLD_TEXT = {"to_q": "q_proj", "to_k": "k_proj", "to_v": "v_proj", "to_out": "out_proj"}
_ALPHA = re.compile(r"(unet|text_encoder)\.(.+)\.alpha")

# Markers of formats that are not plain LoRA, with what they are.
_OTHER_FORMATS = (
    ("hada_", "LyCORIS LoHa (Hadamard product)"),
    ("lokr_", "LyCORIS LoKr (Kronecker product)"),
    ("lora_mid", "LyCORIS LoCon with a CP-decomposed (Tucker) mid weight"),
    ("dora_scale", "DoRA (weight-decomposed LoRA)"),
    ("lora_magnitude_vector", "DoRA (weight-decomposed LoRA)"),
    ("oft_", "OFT / BOFT (orthogonal fine-tuning)"),
    ("lora_te2_", "a LoRA for SDXL (its second text encoder)"),
    (".diff", "a full-weight difference (LyCORIS 'full' / 'diff')"),
    ("w_norm", "LyCORIS weight-norm parameters"),
)


def describe(keys: list[str]) -> str:
    """What a set of unreadable keys looks like, for error messages."""
    for marker, what in _OTHER_FORMATS:
        if any(marker in k for k in keys):
            return what
    return "not a LoRA format this library knows"


def _unreadable(keys: list[str], where: str) -> CheckpointError:
    shown = ", ".join(keys[:5]) + (f" ... ({len(keys)} in all)" if len(keys) > 5 else "")
    return CheckpointError(
        f"{where} cannot be loaded as a LoRA: keys such as {shown} look like {describe(keys)}. "
        f"Supported: diffusers / peft LoRA files (lora_A / lora_B, lora.down / lora.up) and "
        f"kohya / A1111 ones (lora_unet_* / lora_te_* with lora_down / lora_up / alpha) for "
        f"Stable Diffusion 1.x / 2.x. Nothing was changed.")


# Parsing ---------------------------------------------------------------------------------------
def parse(tensors: dict[str, Any], metadata: dict[str, str], where: str) -> dict[str, dict]:
    """Group the file's tensors by model and layer: ``{component: {name: {"down", "up",
    "alpha", "bias"}}}``; names are dotted paths (diffusers formats) or kohya's underscored
    names (``kohya:<name>``), resolved against the models by ``resolve``."""
    tensors = {k.removeprefix("base_model.model."): v for k, v in tensors.items()}
    bad = [k for k, v in tensors.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise _unreadable(bad, where)
    groups: dict[str, dict[str, dict]] = {}
    unread = []
    for key, tensor in tensors.items():
        found = _read_key(key)
        if found is None:
            unread.append(key)
            continue
        component, name, part = found
        entry = groups.setdefault(component, {}).setdefault(name, {})
        entry[part] = tensor.item() if part == "alpha" else tensor
    if unread:
        raise _unreadable(unread, where)
    for component, layers in groups.items():
        for name, entry in layers.items():
            if "down" not in entry or "up" not in entry:
                missing = "up" if "down" in entry else "down"
                raise CheckpointError(f"{where}: layer {name!r} has no {missing} weight; the "
                                      f"file is incomplete or not a LoRA")
        if component in COMPONENTS:
            _apply_metadata(layers, _component_metadata(metadata, component, where))
    return groups


def _read_key(key: str) -> tuple[str, str, str] | None:
    """``(component, layer name, part)`` of one key, or ``None``."""
    match = _KOHYA.fullmatch(key)
    if match:
        prefix, name, part = match.groups()
        if part not in _KOHYA_PARTS or prefix == "lora_te2":
            return None
        component = "unet" if prefix == "lora_unet" else "text_encoder"
        return component, f"kohya:{name}", _KOHYA_PARTS[part]
    match = _OLD.fullmatch(key)
    if match:
        component, path, projection, part = match.groups()
        table = _OLD_TEXT if component == "text_encoder" else _OLD_UNET
        return component or "?", f"{path}.{table[projection]}", part
    match = _DIFFUSERS.fullmatch(key)
    if match:
        component, path, kind, param = match.groups()
        part = _DIFFUSERS_PARTS[kind]
        if param == "bias":
            if part != "up":
                return None
            part = "bias"
        return component or "?", path, part
    match = _ALPHA.fullmatch(key)
    if match:
        return match.group(1), match.group(2), "alpha"
    return None


def _component_metadata(metadata: dict[str, str], component: str, where: str) -> dict:
    raw = metadata.get(METADATA_KEY)
    if not raw:
        return {}
    try:
        config = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{where}: its {METADATA_KEY} metadata is not JSON ({exc})") from None
    prefix = f"{component}."
    return {k[len(prefix):]: v for k, v in config.items() if k.startswith(prefix)}


def _apply_metadata(layers: dict[str, dict], config: dict) -> None:
    """Alphas from peft's LoraConfig fields (patterns match a module path's end, as in peft)."""
    if not config:
        return
    if config.get("use_dora"):
        raise CheckpointError("this LoRA uses DoRA (use_dora in its metadata), which cannot be "
                              "loaded as plain LoRA adapters; nothing was changed")
    alpha_pattern = config.get("alpha_pattern") or {}
    for name, entry in layers.items():
        if "alpha" in entry:
            continue
        alpha = next((v for k, v in alpha_pattern.items()
                      if re.match(rf"(.*\.)?({k})$", name)), config.get("lora_alpha"))
        if alpha is None:
            continue
        rank = entry["down"].shape[0]
        # rsLoRA (Kalajdzievski 2023) scales by alpha / sqrt(rank): the same as alpha' / rank.
        entry["alpha"] = alpha * rank ** 0.5 if config.get("use_rslora") else alpha


# Resolving layer names against the models -----------------------------------------------------
def resolve(groups: dict[str, dict], models: dict[str, nn.Module | None],
            where: str) -> dict[str, dict[str, LoRAWeights]]:
    """``{component: {layer path: LoRAWeights}}``; a name that matches no layer of the model it
    is for raises ``CheckpointError`` (a LoRA for another base model)."""
    tables = {c: _name_table(c, m) for c, m in models.items() if m is not None}
    modules = {c: dict(m.named_modules()) for c, m in models.items() if m is not None}
    resolved: dict[str, dict[str, LoRAWeights]] = {}
    unknown = []
    for component, layers in groups.items():
        for name, entry in layers.items():
            target, path = _find(component, name, tables)
            if path is None:
                unknown.append(name.removeprefix("kohya:"))
                continue
            layer = modules[target][path]
            resolved.setdefault(target, {})[path] = LoRAWeights(
                _fit(entry["down"], layer), _fit(entry["up"], layer), entry.get("alpha"),
                entry.get("bias"))
    if unknown:
        shown = ", ".join(unknown[:5]) + (f" ... ({len(unknown)} in all)" if len(unknown) > 5
                                         else "")
        present = [c for c in tables]
        raise CheckpointError(
            f"{where}: {len(unknown)} LoRA layers name no layer of this pipeline's {present}: "
            f"{shown}. The LoRA was made for another base model (e.g. SDXL, or a different "
            f"U-Net layout); nothing was changed.")
    return resolved


def _fit(weight: torch.Tensor, layer: nn.Module) -> torch.Tensor:
    """kohya stores 1x1-convolution LoRAs as (out, in, 1, 1) and linear ones as (out, in); files
    made for a 1x1 ``proj_in`` convolution (SD 1.x) also fit SD 2.x's linear ``proj_in``."""
    if isinstance(layer, nn.Linear) and weight.ndim == 4 and weight.shape[2:] == (1, 1):
        return weight[:, :, 0, 0]
    if isinstance(layer, nn.Conv2d) and weight.ndim == 2 and tuple(layer.kernel_size) == (1, 1):
        return weight[:, :, None, None]
    return weight


def _find(component: str, name: str, tables: dict[str, dict[str, str]]):
    candidates = COMPONENTS if component == "?" else (component,)
    for target in candidates:
        table = tables.get(target, {})
        if name in table:
            return target, table[name]
    return component, None


def _name_table(component: str, model: nn.Module) -> dict[str, str]:
    """Every name a file may use for an adaptable layer -> its path in ``model``."""
    table = {}
    for path in adaptable_layers(model):
        names = [path]
        if component == "text_encoder":  # both CLIP layouts, with or without text_model.
            bare = path.removeprefix("text_model.")
            names = [bare, f"text_model.{bare}"]
        for name in names:
            table[name] = path
            table[f"kohya:{name.replace('.', '_')}"] = path
    if component == "unet" and hasattr(model, "config"):
        _add_original_names(model, table)
    return table


def _add_original_names(unet: nn.Module, table: dict[str, str]) -> None:
    """SGM / original-layout names (``input_blocks_4_1_proj_in``) of the U-Net's layers."""
    try:
        blocks = unet_block_map(unet.config)
    except (CheckpointError, KeyError, TypeError):
        return  # a U-Net the original layout cannot describe: diffusers names only
    for path in adaptable_layers(unet):
        original = unet_module_to_ldm(path, blocks)
        if original is not None:
            table.setdefault(f"kohya:{original.replace('.', '_')}", path)


# Saving ----------------------------------------------------------------------------------------
def adapter_metadata(weights: dict[str, LoRAWeights]) -> dict[str, Any] | None:
    """peft ``LoraConfig`` fields that give each layer its alpha (``None`` when every alpha
    equals its rank, the default a reader assumes)."""
    if all(w.alpha is None or w.alpha == w.rank for w in weights.values()):
        return None
    ranks = {p: w.rank for p, w in weights.items()}
    alphas = {p: float(w.rank if w.alpha is None else w.alpha) for p, w in weights.items()}
    r = Counter(ranks.values()).most_common(1)[0][0]
    alpha = Counter(alphas.values()).most_common(1)[0][0]
    return {"r": r, "lora_alpha": alpha, "target_modules": sorted(weights),
            "rank_pattern": {f"^{p}": v for p, v in ranks.items() if v != r},
            "alpha_pattern": {f"^{p}": v for p, v in alphas.items() if v != alpha},
            "use_dora": False, "lora_bias": any(w.up_bias is not None for w in weights.values())}
