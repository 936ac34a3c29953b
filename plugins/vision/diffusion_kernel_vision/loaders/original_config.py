"""Diffusers configs from an original LDM config file (``v1-inference.yaml``,
``v2-inference-v.yaml``): the U-Net, the VAE and a DDIM scheduler, as diffusers derives them.

Facts of the LDM yaml: ``model.params.unet_config.params`` has ``model_channels`` x
``channel_mult`` (block widths), ``num_res_blocks``, ``attention_resolutions`` (downsampling
factors that have attention), ``num_heads`` or ``num_head_channels``, ``context_dim``,
``use_linear_in_transformer`` (SD 2.x), ``transformer_depth``; ``first_stage_config.params.
ddconfig`` has ``ch`` x ``ch_mult``, ``num_res_blocks``, ``z_channels``; ``model.params`` has
``linear_start`` / ``linear_end`` (the beta range), ``scale_factor`` and, for v-prediction
models, ``parameterization: "v"``. The sample size is not in the file: diffusers uses 512 pixels
for SD 1.x and inpainting, 768 for SD 2.x, and so does this.
"""

from __future__ import annotations

import os
from typing import Any

from diffusion_kernel.errors import ConfigError

IMAGE_SIZE = {"v1": 512, "inpainting": 512, "inpainting_v2": 512, "v2": 768}
# The scheduler settings every Stable Diffusion 1.x / 2.x checkpoint was trained with.
SCHEDULER = {"_class_name": "DDIMScheduler", "num_train_timesteps": 1000,
             "beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012,
             "clip_sample": False, "set_alpha_to_one": False, "steps_offset": 1,
             "prediction_type": "epsilon", "timestep_spacing": "leading"}


def read_original_config(source: str | os.PathLike | dict) -> dict:
    """An original config: a yaml file or the parsed dict."""
    if isinstance(source, dict):
        return source
    import yaml

    try:
        with open(source, encoding="utf-8") as file:
            config = yaml.safe_load(file)
    except OSError as exc:
        raise ConfigError(f"cannot read original_config {os.fspath(source)!r}: {exc}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"original_config {os.fspath(source)!r} is not valid YAML: {exc}") \
            from exc
    if not isinstance(config, dict) or "model" not in config:
        raise ConfigError(f"original_config {os.fspath(source)!r} is not an LDM config (no "
                          f"'model' section)")
    return config


def _section(config: dict, *path: str) -> dict:
    node: Any = config
    for name in path:
        if not isinstance(node, dict) or name not in node:
            raise ConfigError(f"the original config has no {'.'.join(path)} section: it is not "
                              f"a Stable Diffusion 1.x / 2.x config")
        node = node[name]
    return node


def unet_config(config: dict, variant: str) -> dict:
    """``UNet2DConditionModel`` config."""
    unet = _section(config, "model", "params", "unet_config", "params")
    vae = _section(config, "model", "params", "first_stage_config", "params", "ddconfig")
    widths = [unet["model_channels"] * m for m in unet["channel_mult"]]
    attention = set(unet["attention_resolutions"])
    down, resolution = [], 1
    for i in range(len(widths)):
        down.append("CrossAttnDownBlock2D" if resolution in attention else "DownBlock2D")
        if i < len(widths) - 1:
            resolution *= 2
    up = []
    for _ in widths:
        up.append("CrossAttnUpBlock2D" if resolution in attention else "UpBlock2D")
        resolution //= 2
    linear = bool(unet.get("use_linear_in_transformer", False))
    heads = unet.get("num_heads")
    if heads is None or heads == -1:  # SD 2.x gives the head width instead
        per = unet["model_channels"] // unet["num_head_channels"]
        heads = [per * m for m in unet["channel_mult"]]
    context = unet.get("context_dim")
    depth = unet.get("transformer_depth") or 1
    return {"sample_size": IMAGE_SIZE[variant] // 2 ** (len(vae["ch_mult"]) - 1),
            "in_channels": unet["in_channels"], "out_channels": unet["out_channels"],
            "down_block_types": down, "up_block_types": up, "block_out_channels": widths,
            "layers_per_block": unet["num_res_blocks"],
            "cross_attention_dim": context if isinstance(context, int) else context[0],
            "attention_head_dim": heads, "use_linear_projection": linear,
            "transformer_layers_per_block": depth if isinstance(depth, int) else list(depth)}


def vae_config(config: dict, variant: str) -> dict:
    """``AutoencoderKL`` config."""
    params = _section(config, "model", "params")
    vae = _section(config, "model", "params", "first_stage_config", "params", "ddconfig")
    widths = [vae["ch"] * m for m in vae["ch_mult"]]
    return {"sample_size": IMAGE_SIZE[variant], "in_channels": vae["in_channels"],
            "out_channels": vae["out_ch"], "down_block_types": ["DownEncoderBlock2D"] * len(widths),
            "up_block_types": ["UpDecoderBlock2D"] * len(widths), "block_out_channels": widths,
            "latent_channels": vae["z_channels"], "layers_per_block": vae["num_res_blocks"],
            "scaling_factor": params.get("scale_factor", 0.18215)}


def scheduler_config(config: dict | None, prediction_type: str | None = None) -> dict:
    """A DDIM scheduler with the checkpoint's training betas (``linear_start`` /
    ``linear_end``) and prediction type (``parameterization: v`` -> ``v_prediction``)."""
    scheduler = dict(SCHEDULER)
    if config is not None:
        params = _section(config, "model", "params")
        scheduler["beta_start"] = params.get("linear_start", scheduler["beta_start"])
        scheduler["beta_end"] = params.get("linear_end", scheduler["beta_end"])
        if params.get("parameterization") == "v":
            scheduler["prediction_type"] = "v_prediction"
    if prediction_type is not None:
        scheduler["prediction_type"] = prediction_type
    return scheduler
