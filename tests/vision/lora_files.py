"""LoRA and embedding files for the loader tests, made the ways they are made in the wild:
by diffusers + peft (``save_lora_weights``, as diffusers' training scripts do) and by hand in the
kohya / A1111 layouts (random weights from a seed)."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

# Layers a kohya LoRA of a tiny Stable Diffusion U-Net adapts: attention, the transformer's 1x1
# projections and feed-forward, a 3x3 resnet convolution (LoCon) and a time projection.
UNET_LAYERS = [
    "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q",
    "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_k",
    "down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_v",
    "down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_out.0",
    "down_blocks.1.attentions.0.proj_in",
    "down_blocks.1.attentions.0.transformer_blocks.0.ff.net.0.proj",
    "mid_block.attentions.0.transformer_blocks.0.attn1.to_v",
    "mid_block.attentions.0.proj_out",
    "up_blocks.0.attentions.1.transformer_blocks.0.ff.net.2",
    "up_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k",
    "down_blocks.0.resnets.0.conv1",
    "up_blocks.1.resnets.1.time_emb_proj",
]
TEXT_LAYERS = ["encoder.layers.0.self_attn.q_proj", "encoder.layers.1.self_attn.out_proj",
               "encoder.layers.0.mlp.fc1", "encoder.layers.1.mlp.fc2"]
# The same U-Net layers in the original (SGM) layout, for layers_per_block=1, as kohya's SDXL
# and A1111 name them (the independent oracle is diffusers' own SGM mapping).
SGM_NAMES = {
    "down_blocks.0.resnets.0.conv1": "input_blocks.1.0.in_layers.2",
    "up_blocks.1.resnets.1.time_emb_proj": "output_blocks.3.0.emb_layers.1",
    "down_blocks.1.attentions.0": "input_blocks.3.1",
    "mid_block.attentions.0": "middle_block.1",
    "up_blocks.0.attentions.1": "output_blocks.1.1",
    "up_blocks.0.attentions.0": "output_blocks.0.1",
}


def diffusers_lora(folder: Path, out: Path, seed: int, rank: int = 4,
                   text_encoder: bool = True) -> Path:
    """A LoRA made with diffusers + peft on the checkpoint in ``folder`` (U-Net attention and,
    optionally, the text encoder's), random ``lora_B``, saved by ``save_lora_weights``."""
    import diffusers
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model

    pipe = diffusers.StableDiffusionPipeline.from_pretrained(folder)
    torch.manual_seed(seed)
    pipe.unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian",
                                     target_modules=["to_k", "to_q", "to_v", "to_out.0"]))
    layers = {"unet_lora_layers": pipe.unet}
    if text_encoder:  # transformers' add_adapter needs peft >= 0.22: inject with peft itself
        inject_adapter_in_model(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian",
                                           target_modules=["q_proj", "k_proj", "v_proj",
                                                           "out_proj"]), pipe.text_encoder)
        layers["text_encoder_lora_layers"] = pipe.text_encoder
    generator = torch.Generator().manual_seed(seed)
    for model in layers.values():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.data = torch.randn(param.shape, generator=generator) * 0.2
    pipe.save_lora_weights(out, **{k: convert_state_dict_to_diffusers(
        get_peft_model_state_dict(m)) for k, m in layers.items()})
    return out / "pytorch_lora_weights.safetensors"


def random_layers(unet, text_encoder, seed: int, rank: int = 4, alpha: float = 2.0,
                  other_alpha: float | None = None) -> dict[str, dict]:
    """``{component.path: {"down", "up", "alpha"}}`` for ``UNET_LAYERS`` and ``TEXT_LAYERS``:
    ``alpha`` on attention layers, ``other_alpha`` (default: the same) elsewhere."""
    generator = torch.Generator().manual_seed(seed)
    found = {}
    for component, model, paths in (("unet", unet, UNET_LAYERS),
                                    ("text_encoder", text_encoder, TEXT_LAYERS)):
        for path in paths:
            weight = model.get_submodule(path).weight
            down = torch.randn(rank, *weight.shape[1:], generator=generator) / weight[0].numel()
            up = torch.randn(weight.shape[0], rank, *(1,) * (weight.ndim - 2),
                             generator=generator) * 0.5
            attention = ".to_" in path or "self_attn" in path
            found[f"{component}.{path}"] = {"down": down, "up": up, "alpha": alpha if attention
                                            or other_alpha is None else other_alpha}
    return found


def kohya_lora(layers: dict[str, dict], out: Path, sgm: bool = False) -> Path:
    """The layers in kohya's format (``lora_unet_*`` / ``lora_te_text_model_*`` with
    ``.alpha``); ``sgm=True`` names the U-Net blocks in the original layout."""
    tensors = {}
    for key, entry in layers.items():
        component, path = key.split(".", 1)
        if component == "unet":
            if sgm:
                for diffusers_block, original in SGM_NAMES.items():
                    path = path.replace(diffusers_block, original)
            name = "lora_unet_" + path.replace(".", "_")
        else:
            name = "lora_te_text_model_" + path.replace(".", "_")
        tensors[f"{name}.lora_down.weight"] = entry["down"].contiguous()
        tensors[f"{name}.lora_up.weight"] = entry["up"].contiguous()
        tensors[f"{name}.alpha"] = torch.tensor(entry["alpha"])
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, out)
    return out
