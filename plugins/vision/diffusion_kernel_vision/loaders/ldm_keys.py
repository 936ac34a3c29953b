"""The original (CompVis / Stability "LDM", also called SGM) layout of Stable Diffusion 1.x/2.x
weights next to the diffusers layout, as one map from diffusers module paths to original ones.

The same map converts a single-file checkpoint in both directions and resolves the SGM-style
module names of kohya / A1111 LoRA files (``lora_unet_input_blocks_4_1_proj_in``).

Facts of the original layout (``ldm/modules/diffusionmodules/openaimodel.py`` of the CompVis
code): the U-Net is ``input_blocks`` (block 0 = ``conv_in``; then per level ``layers_per_block``
entries of ``[resnet, attention?]`` and, except at the last level, one downsampler ``op``),
``middle_block`` (resnet, attention, resnet) and ``output_blocks`` (per level
``layers_per_block + 1`` entries of ``[resnet, attention?, upsampler?]``); a resnet names its
layers ``in_layers.0`` (norm), ``in_layers.2`` (conv), ``emb_layers.1``, ``out_layers.0``,
``out_layers.3``, ``skip_connection``. The VAE counts decoder levels from the bottom
(``decoder.up.{n-1-i}``) and its mid-block attention uses 1x1 convolutions ``q, k, v,
proj_out``. SD 1.x stores the transformers CLIP text model under
``cond_stage_model.transformer.``; SD 2.x the OpenCLIP one under ``cond_stage_model.model.``.
"""

from __future__ import annotations

import re
from typing import Any

from diffusion_kernel.errors import CheckpointError

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIXES = ("first_stage_model.", "vae.")
CLIP_PREFIXES = ("cond_stage_model.transformer.", "conditioner.embedders.0.transformer.")
OPEN_CLIP_PREFIX = "cond_stage_model.model."

_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
           "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}
_VAE_RESNET = {"conv_shortcut": "nin_shortcut"}
_VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v",
                  "to_out.0": "proj_out"}


def _layers(config: Any) -> int:
    layers = config["layers_per_block"]
    if not isinstance(layers, int):
        raise CheckpointError(f"the original layout has one layers_per_block for every level; "
                              f"this model has {layers}")
    return layers


def unet_block_map(config: Any) -> dict[str, str]:
    """Diffusers module prefix -> original prefix for a ``UNet2DConditionModel`` config."""
    n, layers = len(config["block_out_channels"]), _layers(config)
    pairs = {"conv_in": "input_blocks.0.0", "time_embedding.linear_1": "time_embed.0",
             "time_embedding.linear_2": "time_embed.2", "conv_norm_out": "out.0",
             "conv_out": "out.2", "class_embedding.linear_1": "label_emb.0.0",
             "class_embedding.linear_2": "label_emb.0.2", "add_embedding.linear_1": "label_emb.0.0",
             "add_embedding.linear_2": "label_emb.0.2",
             "mid_block.resnets.0": "middle_block.0", "mid_block.attentions.0": "middle_block.1",
             "mid_block.resnets.1": "middle_block.2"}
    if config.get("num_class_embeds") is not None:
        pairs["class_embedding"] = "label_emb"
    for i in range(n):
        for j in range(layers):
            entry = 1 + i * (layers + 1) + j
            pairs[f"down_blocks.{i}.resnets.{j}"] = f"input_blocks.{entry}.0"
            pairs[f"down_blocks.{i}.attentions.{j}"] = f"input_blocks.{entry}.1"
        if i < n - 1:
            pairs[f"down_blocks.{i}.downsamplers.0.conv"] = \
                f"input_blocks.{1 + i * (layers + 1) + layers}.0.op"
    for i, block_type in enumerate(config["up_block_types"]):
        has_attention = "Attn" in block_type
        for j in range(layers + 1):
            entry = i * (layers + 1) + j
            pairs[f"up_blocks.{i}.resnets.{j}"] = f"output_blocks.{entry}.0"
            pairs[f"up_blocks.{i}.attentions.{j}"] = f"output_blocks.{entry}.1"
        if i < n - 1:
            pairs[f"up_blocks.{i}.upsamplers.0.conv"] = \
                f"output_blocks.{i * (layers + 1) + layers}.{2 if has_attention else 1}.conv"
    return pairs


def vae_block_map(config: Any) -> dict[str, str]:
    """Diffusers module prefix -> original prefix for an ``AutoencoderKL`` config."""
    n, layers = len(config["block_out_channels"]), _layers(config)
    pairs = {"encoder.conv_norm_out": "encoder.norm_out",
             "decoder.conv_norm_out": "decoder.norm_out"}
    for part in ("encoder", "decoder"):
        pairs[f"{part}.mid_block.resnets.0"] = f"{part}.mid.block_1"
        pairs[f"{part}.mid_block.resnets.1"] = f"{part}.mid.block_2"
        pairs[f"{part}.mid_block.attentions.0"] = f"{part}.mid.attn_1"
    for i in range(n):
        for j in range(layers):
            pairs[f"encoder.down_blocks.{i}.resnets.{j}"] = f"encoder.down.{i}.block.{j}"
        pairs[f"encoder.down_blocks.{i}.downsamplers.0.conv"] = f"encoder.down.{i}.downsample.conv"
        for j in range(layers + 1):
            pairs[f"decoder.up_blocks.{i}.resnets.{j}"] = f"decoder.up.{n - 1 - i}.block.{j}"
        pairs[f"decoder.up_blocks.{i}.upsamplers.0.conv"] = f"decoder.up.{n - 1 - i}.upsample.conv"
    return pairs


def _longest_prefix(path: str, blocks: dict[str, str]) -> str | None:
    parts = path.split(".")
    for end in range(len(parts), 0, -1):
        prefix = ".".join(parts[:end])
        if prefix in blocks:
            return prefix
    return None


def unet_module_to_ldm(path: str, blocks: dict[str, str]) -> str | None:
    """The original path of a U-Net module (``None``: it has none)."""
    prefix = _longest_prefix(path, blocks)
    if prefix is None:
        return None
    rest = path[len(prefix) + 1:]
    if ".resnets." in prefix and rest:
        head, _, tail = rest.partition(".")
        rest = ".".join(filter(None, [_RESNET.get(head, head), tail]))
    return ".".join(filter(None, [blocks[prefix], rest]))


def vae_module_to_ldm(path: str, blocks: dict[str, str]) -> str | None:
    """The original path of a VAE module (same names outside the mapped blocks)."""
    prefix = _longest_prefix(path, blocks)
    if prefix is None:
        return path
    rest = path[len(prefix) + 1:]
    table = _VAE_ATTENTION if ".attentions." in prefix else _VAE_RESNET
    rest = table.get(rest, rest)
    return ".".join(filter(None, [blocks[prefix], rest]))


def key_to_ldm(key: str, module_to_ldm, blocks) -> str | None:
    """A parameter key (``<module>.<weight|bias>``) in the original layout."""
    module, _, name = key.rpartition(".")
    mapped = module_to_ldm(module, blocks)
    return None if mapped is None else f"{mapped}.{name}"


# Text encoders ---------------------------------------------------------------------------------
_OPEN_CLIP_LAYER = {"layer_norm1": "ln_1", "layer_norm2": "ln_2", "self_attn.out_proj":
                    "attn.out_proj", "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj"}
_OPEN_CLIP_TOP = {"embeddings.token_embedding.weight": "token_embedding.weight",
                  "embeddings.position_embedding.weight": "positional_embedding",
                  "final_layer_norm.weight": "ln_final.weight",
                  "final_layer_norm.bias": "ln_final.bias"}
_LAYER_KEY = re.compile(r"encoder\.layers\.(\d+)\.(.+)\.(weight|bias)")


def clip_key_to_ldm(key: str) -> str:
    """A transformers CLIP text model key (either layout) under SD 1.x's prefix."""
    key = key.removeprefix("text_model.")
    return f"{CLIP_PREFIXES[0]}text_model.{key}"


def open_clip_key_to_ldm(key: str) -> tuple[str, str | None]:
    """A transformers CLIP text model key in the OpenCLIP layout: ``(original key, part)`` where
    part is ``"q"``, ``"k"`` or ``"v"`` for the projections OpenCLIP stores concatenated in
    ``attn.in_proj_weight`` / ``in_proj_bias``."""
    key = key.removeprefix("text_model.")
    if key in _OPEN_CLIP_TOP:
        return OPEN_CLIP_PREFIX + _OPEN_CLIP_TOP[key], None
    match = _LAYER_KEY.fullmatch(key)
    if match is None:
        raise CheckpointError(f"text encoder key {key!r} has no place in the OpenCLIP layout")
    layer, module, kind = match.groups()
    base = f"{OPEN_CLIP_PREFIX}transformer.resblocks.{layer}."
    if module in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"):
        return f"{base}attn.in_proj_{kind}", module[len("self_attn.")]
    if module not in _OPEN_CLIP_LAYER:
        raise CheckpointError(f"text encoder key {key!r} has no place in the OpenCLIP layout")
    return f"{base}{_OPEN_CLIP_LAYER[module]}.{kind}", None
