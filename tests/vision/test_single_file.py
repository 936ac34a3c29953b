"""Single-file checkpoints in the original (CompVis / A1111) layout: what this library writes loads
bit for bit in diffusers' ``from_single_file``; what it reads gives diffusers' weights and images
(SD 1.x, SD 2.x OpenCLIP, inpainting; config folder or original yaml, offline); EMA weights are
chosen when present; bad files get clear errors."""

import logging

import numpy as np
import pytest
import torch
import yaml
from diffusion_kernel.errors import CheckpointError, FileAccessError, UnsafeCheckpointError
from diffusion_kernel_vision.loaders import single_file
from diffusion_kernel_vision.loaders.checkpoint import Checkpoint, detect_variant
from diffusion_kernel_vision.loaders.files import save_weights_file
from diffusion_kernel_vision.loaders.original_config import unet_config, vae_config
from diffusion_kernel_vision.models.autoencoder_kl import AutoencoderKL
from diffusion_kernel_vision.models.unet_2d_condition import UNet2DConditionModel
from diffusion_kernel_vision.pipelines.stable_diffusion import StableDiffusionPipeline
from diffusion_kernel_vision.pipelines.stable_diffusion_img2img import (
    StableDiffusionImg2ImgPipeline,
)
from diffusion_kernel_vision.pipelines.stable_diffusion_inpaint import (
    StableDiffusionInpaintPipeline,
)
from safetensors.torch import load_file, save_file

from . import tiny
from .tiny import single_thread  # noqa: F401

TOL = 1e-4
MODELS = ("unet", "vae", "text_encoder")


def assert_same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert set(sa) == set(sb), set(sa) ^ set(sb)
    different = [k for k in sa if not torch.equal(sa[k], sb[k])]
    assert not different, different[:5]


def run(pipe, **kwargs):
    return pipe("a cat", num_inference_steps=2, output_type="np",
                generator=torch.Generator().manual_seed(0), **kwargs).images


@pytest.fixture(scope="module")
def folder():
    return tiny.stable_diffusion_folder()


@pytest.fixture(scope="module")
def ours(folder):
    return tiny.load_ours(StableDiffusionPipeline, folder)


@pytest.fixture(scope="module")
def sd1_file(ours, tmp_path_factory):
    return ours.save_single_file(tmp_path_factory.mktemp("single") / "sd1.safetensors")


def test_a_saved_single_file_loads_bit_for_bit_in_diffusers(ours, folder, sd1_file, caplog):
    import diffusers

    with caplog.at_level(logging.WARNING):
        ref = diffusers.StableDiffusionPipeline.from_single_file(
            str(sd1_file), config=str(folder), local_files_only=True)
    assert [r.getMessage() for r in caplog.records if "key" in r.getMessage().lower()] == []
    for name in MODELS:
        assert_same_weights(getattr(ours, name), getattr(ref, name))
    assert "model.diffusion_model.output_blocks.2.0.skip_connection.weight" in \
        load_file(sd1_file)  # the original layout's names


def test_a_single_file_loads_with_diffusers_weights_and_images(ours, folder, sd1_file):
    import diffusers

    ref = diffusers.StableDiffusionPipeline.from_single_file(str(sd1_file), config=str(folder),
                                                            local_files_only=True)
    ref.set_progress_bar_config(disable=True)
    mine = StableDiffusionPipeline.from_single_file(sd1_file, config=folder,
                                                    local_files_only=True)
    mine.set_progress_bar_config(disable=True)
    for name in MODELS:
        assert_same_weights(getattr(mine, name), getattr(ref, name))
    np.testing.assert_allclose(run(mine), run(ref), atol=TOL)
    with Checkpoint(sd1_file) as checkpoint:
        assert detect_variant(checkpoint) == "v1"


def test_img2img_and_model_classes_load_from_single_files(ours, folder, sd1_file, tmp_path):
    img2img = StableDiffusionImg2ImgPipeline.from_single_file(sd1_file, config=folder)
    assert_same_weights(img2img.unet, ours.unet)
    unet = UNet2DConditionModel.from_single_file(sd1_file, config=folder)
    assert_same_weights(unet, ours.unet)
    vae_only = {k.removeprefix("first_stage_model."): v for k, v in load_file(sd1_file).items()
                if k.startswith("first_stage_model.")}  # like vae-ft-mse-840000's file
    save_file(vae_only, tmp_path / "vae.safetensors")
    vae = AutoencoderKL.from_single_file(tmp_path / "vae.safetensors", config=folder)
    assert_same_weights(vae, ours.vae)


def test_inpainting_checkpoints_are_detected_and_load(tmp_path):
    inpaint = tiny.load_ours(StableDiffusionInpaintPipeline, tiny.inpaint_folder())
    path = inpaint.save_single_file(tmp_path / "inpaint.safetensors")
    with Checkpoint(path) as checkpoint:
        assert detect_variant(checkpoint) == "inpainting"
    loaded = StableDiffusionInpaintPipeline.from_single_file(path, config=tiny.inpaint_folder())
    for name in MODELS:
        assert_same_weights(getattr(loaded, name), getattr(inpaint, name))


def _sd2_folder(root):
    """A tiny SD 2.x-shaped checkpoint saved by diffusers: linear projections in the
    transformers, per-block head counts, a GELU (OpenCLIP) text encoder."""
    import diffusers
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(0)
    unet = diffusers.UNet2DConditionModel(
        block_out_channels=(16, 32), layers_per_block=1, sample_size=16, norm_num_groups=8,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=32,
        attention_head_dim=(2, 4), use_linear_projection=True)
    vae = diffusers.AutoencoderKL(block_out_channels=(16, 32), norm_num_groups=8,
                                  down_block_types=("DownEncoderBlock2D",) * 2,
                                  up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=58, hidden_size=32, intermediate_size=37, num_attention_heads=4,
        num_hidden_layers=2, max_position_embeddings=tiny.MAX_TOKENS, hidden_act="gelu",
        bos_token_id=56, eos_token_id=57, pad_token_id=57))
    tokenizer = CLIPTokenizer.from_pretrained(tiny.write_tiny_clip_tokenizer(root / "tok"))
    diffusers.StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
        scheduler=tiny._sd_scheduler(), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False).save_pretrained(root / "sd2")
    return root / "sd2"


def test_sd2_open_clip_checkpoints_round_trip_through_diffusers(tmp_path):
    import diffusers

    folder = _sd2_folder(tmp_path)
    ours = tiny.load_ours(StableDiffusionPipeline, folder)
    path = ours.save_single_file(tmp_path / "sd2.safetensors")
    keys = load_file(path)
    assert "cond_stage_model.model.transformer.resblocks.0.attn.in_proj_weight" in keys
    with Checkpoint(path) as checkpoint:
        assert detect_variant(checkpoint) == "v2"
    ref = diffusers.StableDiffusionPipeline.from_single_file(str(path), config=str(folder),
                                                            local_files_only=True)
    mine = StableDiffusionPipeline.from_single_file(path, config=folder)
    for name in MODELS:
        assert_same_weights(getattr(ref, name), getattr(ours, name))
        assert_same_weights(getattr(mine, name), getattr(ours, name))


def test_a_deeper_unet_maps_to_the_same_original_keys_as_diffusers_reads_them(tmp_path):
    import diffusers

    torch.manual_seed(0)  # three levels, two layers per block, an upsampler without attention
    reference = diffusers.UNet2DConditionModel(
        block_out_channels=(16, 32, 32), layers_per_block=2, norm_num_groups=8,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, attention_head_dim=4, sample_size=16)
    reference.save_pretrained(tmp_path / "unet")
    ours = UNet2DConditionModel.from_pretrained(tmp_path / "unet")
    tensors = single_file.original_state_dict(ours, None, None)
    save_weights_file(tensors, tmp_path / "unet.safetensors")
    theirs = diffusers.UNet2DConditionModel.from_single_file(
        str(tmp_path / "unet.safetensors"), config=str(tmp_path), subfolder="unet",
        local_files_only=True)
    assert_same_weights(theirs, reference)
    again = UNet2DConditionModel.from_single_file(tmp_path / "unet.safetensors",
                                                  config=tmp_path, subfolder="unet")
    assert_same_weights(again, ours)


def test_ema_weights_are_used_when_present(ours, folder, sd1_file, tmp_path):
    tensors = load_file(sd1_file)
    for key in [k for k in tensors if k.startswith("model.diffusion_model.")]:
        tensors["model_ema." + "".join(key.split(".")[1:])] = tensors[key] + 1.0
    save_file(tensors, tmp_path / "ema.safetensors")
    ema = UNet2DConditionModel.from_single_file(tmp_path / "ema.safetensors", config=folder)
    plain = UNet2DConditionModel.from_single_file(tmp_path / "ema.safetensors", config=folder,
                                                  extract_ema=False)
    assert_same_weights(plain, ours.unet)
    for key, value in ours.unet.state_dict().items():
        assert torch.equal(ema.state_dict()[key], value + 1.0), key


def test_an_original_yaml_config_loads_offline(ours, tmp_path, monkeypatch):
    import diffusers

    config = {"model": {"params": {
        "linear_start": 0.00085, "linear_end": 0.012, "scale_factor": 0.18215,
        "unet_config": {"params": {
            "in_channels": 4, "out_channels": 4, "model_channels": 32, "num_res_blocks": 1,
            "attention_resolutions": [2], "channel_mult": [1, 2], "num_heads": 2,
            "context_dim": 32, "transformer_depth": 1}},
        "first_stage_config": {"params": {"ddconfig": {
            "in_channels": 3, "out_ch": 3, "ch": 32, "ch_mult": [1, 2], "num_res_blocks": 1,
            "z_channels": 4}}}}}}
    (tmp_path / "v1-tiny.yaml").write_text(yaml.safe_dump(config))
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**unet_config(config, "v1"))
    vae = AutoencoderKL(**vae_config(config, "v1"))
    path = save_weights_file(single_file.original_state_dict(unet, vae, ours.text_encoder),
                             tmp_path / "model.safetensors")

    def no_hub(*args, **kwargs):
        raise AssertionError("nothing may be fetched when the yaml and the text encoder are given")

    monkeypatch.setattr(single_file, "ConfigSource", no_hub)
    mine = StableDiffusionPipeline.from_single_file(path, original_config=tmp_path / "v1-tiny.yaml",
                                                    text_encoder=ours.text_encoder,
                                                    tokenizer=ours.tokenizer)
    assert_same_weights(mine.unet, unet)
    assert_same_weights(mine.vae, vae)
    ref = diffusers.StableDiffusionPipeline.from_single_file(
        str(path), original_config=str(tmp_path / "v1-tiny.yaml"), local_files_only=True,
        text_encoder=ours.text_encoder, tokenizer=ours.tokenizer)
    assert_same_weights(mine.unet, ref.unet)
    assert_same_weights(mine.vae, ref.vae)
    for field in ("block_out_channels", "down_block_types", "attention_head_dim", "sample_size"):
        assert list(np.atleast_1d(mine.unet.config[field])) == \
            list(np.atleast_1d(ref.unet.config[field])), field


def test_clip_keys_without_text_model_and_pickles(ours, folder, sd1_file, tmp_path):
    tensors = {k.replace("cond_stage_model.transformer.text_model.",
                         "cond_stage_model.transformer."): v
               for k, v in load_file(sd1_file).items()}
    torch.save({"state_dict": tensors, "global_step": 10}, tmp_path / "old.ckpt")
    with pytest.raises(UnsafeCheckpointError, match="allow_pickle=True"):
        StableDiffusionPipeline.from_single_file(tmp_path / "old.ckpt", config=folder)
    loaded = StableDiffusionPipeline.from_single_file(tmp_path / "old.ckpt", config=folder,
                                                      allow_pickle=True)
    assert_same_weights(loaded.text_encoder, ours.text_encoder)


def test_bad_single_files_get_clear_errors(folder, sd1_file, tmp_path):
    data = sd1_file.read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 3])
    save_file({"lora_unet_conv_in.lora_down.weight": torch.zeros(4, 4)},
              tmp_path / "lora.safetensors")
    sdxl = dict(load_file(sd1_file))
    sdxl["conditioner.embedders.1.model.ln_final.weight"] = torch.zeros(4)
    save_file(sdxl, tmp_path / "sdxl.safetensors")
    save_file({"net.blocks.0.weight": torch.zeros(2)}, tmp_path / "unknown.safetensors")
    cases = [("cut.safetensors", {"config": folder}, CheckpointError, "truncated"),
             ("lora.safetensors", {"config": folder}, CheckpointError, "load_lora_weights"),
             ("sdxl.safetensors", {"config": folder}, CheckpointError, "Stable Diffusion XL"),
             ("unknown.safetensors", {"config": folder}, CheckpointError, "unknown model"),
             ("sd1.safetensors", {"config": tiny.inpaint_folder()}, CheckpointError,
              "do not fit"),  # a config of another model: 9 input channels
             ("sd1.safetensors", {"local_files_only": True, "cache_dir": tmp_path / "empty"},
              FileAccessError, "config=")]
    (tmp_path / "sd1.safetensors").write_bytes(data)
    for name, kwargs, error, message in cases:
        with pytest.raises(error, match=message):
            StableDiffusionPipeline.from_single_file(tmp_path / name, **kwargs)
