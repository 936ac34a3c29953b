"""LoRA on the Stable Diffusion pipelines: the same files give diffusers' (+ peft's) images,
adapters combine, scale, fuse and unfuse as there, what is saved here loads in diffusers without
a key warning, and every bad file is refused with the pipeline left exactly as it was."""

import logging
import warnings

import numpy as np
import pytest
import torch
from diffusion_kernel.errors import CheckpointError, ConfigError, UnsafeCheckpointError
from diffusion_kernel.nn.lora import lora_state_dict
from diffusion_kernel_vision.loaders.lora_pipeline import lora_adapter_metadata
from diffusion_kernel_vision.pipelines.stable_diffusion import StableDiffusionPipeline
from safetensors.torch import load_file, save_file

from . import lora_files, tiny
from .tiny import single_thread  # noqa: F401

TOL = 1e-4


@pytest.fixture(scope="module")
def folder():
    return tiny.stable_diffusion_folder()


@pytest.fixture(scope="module")
def ours(folder):
    return tiny.load_ours(StableDiffusionPipeline, folder)


@pytest.fixture(scope="module")
def ref(folder):
    return tiny.load_reference("StableDiffusionPipeline", folder)


@pytest.fixture(scope="module")
def base(ours):
    return run(ours)


@pytest.fixture(scope="module")
def files(folder, ours, tmp_path_factory):
    root = tmp_path_factory.mktemp("lora")
    layers = lora_files.random_layers(ours.unet, ours.text_encoder, seed=3)
    return {"diffusers": lora_files.diffusers_lora(folder, root / "diffusers", seed=1),
            "kohya": lora_files.kohya_lora(layers, root / "kohya.safetensors"),
            "sgm": lora_files.kohya_lora(layers, root / "sgm.safetensors", sgm=True),
            "layers": layers, "root": root}


@pytest.fixture(autouse=True)
def _no_adapters_left(ours, ref):
    yield
    for pipe in (ours, ref):
        pipe.unfuse_lora()
        pipe.unload_lora_weights()
    # diffusers remembers the last call's cross_attention_kwargs scale and applies it to the
    # text-encoder adapters it loads next; start each test without it
    ref._lora_scale = 1.0


def run(pipe, **kwargs):
    return pipe("a cat", num_inference_steps=2, output_type="np",
                generator=torch.Generator().manual_seed(0), **kwargs).images


def test_a_diffusers_lora_file_gives_the_reference_image(ours, ref, files, base):
    ours.load_lora_weights(files["diffusers"].parent)
    ref.load_lora_weights(files["diffusers"].parent)
    mine = run(ours)
    np.testing.assert_allclose(mine, run(ref), atol=TOL)
    assert np.abs(mine - base).max() > 0.05  # the LoRA changes the image
    assert ours.get_list_adapters() == {"unet": ["default_0"], "text_encoder": ["default_0"]}


def test_a_kohya_file_with_alpha_and_conv_layers_gives_the_reference_image(ours, ref, files,
                                                                            base):
    ours.load_lora_weights(files["kohya"], adapter_name="k")
    ref.load_lora_weights(str(files["kohya"]), adapter_name="k")
    mine = run(ours)
    np.testing.assert_allclose(mine, run(ref), atol=TOL)
    assert np.abs(mine - base).max() > 0.02


def test_original_sgm_block_names_load_the_same_adapters(ours, ref, files):
    ours.load_lora_weights(files["kohya"], adapter_name="by_diffusers_names")
    by_names = run(ours)
    ours.unload_lora_weights()
    ours.load_lora_weights(files["sgm"], adapter_name="by_sgm_names")
    np.testing.assert_array_equal(run(ours), by_names)
    # diffusers maps SGM names itself when given the U-Net config
    ref.load_lora_weights(str(files["sgm"]), adapter_name="s", unet_config=ref.unet.config)
    np.testing.assert_allclose(run(ref), by_names, atol=TOL)


def test_two_weighted_adapters_and_the_call_scale_give_the_reference_image(ours, ref, files,
                                                                           base):
    for pipe in (ours, ref):
        pipe.load_lora_weights(str(files["diffusers"].parent), adapter_name="first")
        pipe.load_lora_weights(str(files["kohya"]), adapter_name="second")
    assert ours.get_active_adapters() == ["second"]  # loading makes the new one active
    for pipe in (ours, ref):
        pipe.set_adapters(["first", "second"], adapter_weights=[0.5, 1.0])
    assert ours.get_active_adapters() == ["first", "second"]
    mine = run(ours, cross_attention_kwargs={"scale": 0.5})
    np.testing.assert_allclose(mine, run(ref, cross_attention_kwargs={"scale": 0.5}), atol=TOL)
    assert np.abs(mine - run(ours)).max() > 0.01  # the scale matters
    np.testing.assert_array_equal(run(ours, cross_attention_kwargs={"scale": 0.0}), base)


def test_fused_lora_gives_the_reference_image_and_unfusing_restores_every_weight(ours, ref,
                                                                                 files):
    before = {n: {k: v.clone() for k, v in getattr(ours, n).state_dict().items()}
              for n in ("unet", "text_encoder")}
    for pipe in (ours, ref):
        pipe.load_lora_weights(files["kohya"], adapter_name="k")
    unfused_scaled = run(ours, cross_attention_kwargs={"scale": 0.7})
    ours.fuse_lora(lora_scale=0.7)
    ref.fuse_lora(lora_scale=0.7)
    fused = run(ours)
    np.testing.assert_allclose(fused, run(ref), atol=TOL)
    np.testing.assert_allclose(fused, unfused_scaled, atol=TOL)
    ours.unfuse_lora()
    for name, state in before.items():
        now = getattr(ours, name).state_dict()
        worst = max((now[k] - v).abs().max().item() for k, v in state.items())
        assert worst <= 1e-6, (name, worst)
        with torch.no_grad():  # back to the exact weights for the tests that follow
            for key, value in state.items():
                now[key].copy_(value)


def test_a_saved_lora_loads_in_diffusers_without_key_warnings(ours, ref, files, tmp_path,
                                                              caplog):
    ours.load_lora_weights(files["kohya"], adapter_name="k")  # alpha 2, rank 4: metadata
    ours.save_lora_weights(
        tmp_path, unet_lora_layers=lora_state_dict(ours.unet, "k"),
        text_encoder_lora_layers=lora_state_dict(ours.text_encoder, "k"),
        unet_lora_adapter_metadata=lora_adapter_metadata(ours.unet, "k"),
        text_encoder_lora_adapter_metadata=lora_adapter_metadata(ours.text_encoder, "k"))
    with caplog.at_level(logging.WARNING), warnings.catch_warnings():
        warnings.simplefilter("error")  # peft's "did not match" warnings become failures
        ref.load_lora_weights(tmp_path, adapter_name="saved")
    key_warnings = [r.message for r in caplog.records
                    if "key" in r.getMessage().lower() or "lora" in r.getMessage().lower()]
    assert key_warnings == []
    np.testing.assert_allclose(run(ref), run(ours), atol=TOL)
    ours.unload_lora_weights()
    ours.load_lora_weights(tmp_path / "pytorch_lora_weights.safetensors", adapter_name="back")
    np.testing.assert_allclose(run(ours), run(ref), atol=TOL)


def test_kohya_alphas_apply_per_layer(ours, files, tmp_path):
    layers = lora_files.random_layers(ours.unet, ours.text_encoder, seed=4, alpha=2.0,
                                      other_alpha=8.0)
    ours.load_lora_weights(lora_files.kohya_lora(layers, tmp_path / "mixed.safetensors"))
    for key in ("unet.down_blocks.1.attentions.0.proj_in",
                "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q"):
        component, path = key.split(".", 1)
        layer = getattr(ours, component).get_submodule(path)
        entry = layers[key]
        x = torch.randn(1, layer.weight.shape[1], 2, 2) if layer.weight.ndim == 4 \
            else torch.randn(3, layer.weight.shape[1])
        delta = (entry["up"].flatten(1) @ entry["down"].flatten(1)).view_as(layer.weight)
        weight = layer.weight + entry["alpha"] / 4 * delta
        expected = (torch.nn.functional.conv2d(x, weight, layer.bias) if x.ndim == 4
                    else torch.nn.functional.linear(x, weight, layer.bias))
        assert torch.allclose(layer(x), expected, atol=1e-5, rtol=1e-5)


def test_both_clip_key_layouts_load(ours, files, tmp_path):
    tensors = load_file(files["diffusers"])
    nested = {k.replace("text_encoder.encoder.", "text_encoder.text_model.encoder."): v
              for k, v in tensors.items()}
    assert nested != tensors
    ours.load_lora_weights(tensors, adapter_name="flat")
    flat = run(ours)
    ours.unload_lora_weights()
    ours.load_lora_weights(nested, adapter_name="nested")
    np.testing.assert_array_equal(run(ours), flat)


def test_text_encoder_layers_resolve_in_the_nested_clip_layout_too(ours, files):
    """transformers < 5.6 nests the CLIP layers under .text_model: the same file names them."""
    from diffusion_kernel_vision.loaders import lora_formats

    nested = torch.nn.Module()
    nested.text_model = ours.text_encoder
    for source in (files["kohya"], files["diffusers"]):
        groups = lora_formats.parse(load_file(source), {}, str(source))
        resolved = lora_formats.resolve({"text_encoder": groups["text_encoder"]},
                                        {"text_encoder": nested}, str(source))
        paths = sorted(resolved["text_encoder"])
        assert paths and all(p.startswith("text_model.encoder.layers.") for p in paths)


def test_delete_unload_disable_and_enable(ours, files, base):
    ours.load_lora_weights(files["kohya"], adapter_name="k")
    ours.load_lora_weights(files["diffusers"].parent, adapter_name="d")
    ours.disable_lora()
    np.testing.assert_array_equal(run(ours), base)
    ours.enable_lora()
    with_d = run(ours)
    ours.delete_adapters("d")
    assert ours.get_list_adapters() == {"unet": ["k"], "text_encoder": ["k"]}
    assert not np.array_equal(run(ours), with_d)
    ours.unload_lora_weights()
    assert ours.get_list_adapters() == {}
    assert type(ours.unet.down_blocks[1].attentions[0].proj_in) is torch.nn.Conv2d
    np.testing.assert_array_equal(run(ours), base)


def test_saving_the_pipeline_leaves_the_adapters_out(ours, files, tmp_path):
    ours.load_lora_weights(files["kohya"], adapter_name="k")
    with pytest.warns(UserWarning, match="unfused LoRA adapters"):
        ours.save_pretrained(tmp_path / "saved")
    saved = load_file(tmp_path / "saved" / "unet" / "diffusion_pytorch_model.safetensors")
    assert not any("lora" in k for k in saved) and set(saved) == {
        k for k in ours.unet.state_dict() if "lora" not in k}


# Bad input: a library error, nothing changed --------------------------------------------------
def _bad_files(files, tmp):
    good = files["diffusers"].read_bytes()
    (tmp / "truncated.safetensors").write_bytes(good[: len(good) // 2])
    layers = dict(files["layers"])
    key = "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q"
    layers[key] = dict(layers[key], down=torch.randn(4, 7))
    path = "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q"
    other = "lora_unet_down_blocks_3_attentions_0_transformer_blocks_0_attn1_to_q"
    pair = {f"{path}.lora_down.weight": torch.zeros(4, 32),
            f"{path}.lora_up.weight": torch.zeros(32, 4)}
    save_file(pair | {f"{path}.hada_w1_a": torch.zeros(32, 4), f"{path}.hada_w1_b":
                      torch.zeros(4, 32)}, tmp / "loha.safetensors")
    save_file(pair | {f"{path}.dora_scale": torch.ones(1, 32)}, tmp / "dora.safetensors")
    save_file({"lora_te2_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight":
               torch.zeros(4, 32)}, tmp / "sdxl.safetensors")
    save_file({f"{other}.lora_down.weight": torch.zeros(4, 32),
               f"{other}.lora_up.weight": torch.zeros(32, 4)}, tmp / "other.safetensors")
    save_file({"model.layer.weight": torch.zeros(2, 2)}, tmp / "unknown.safetensors")
    torch.save(load_file(files["diffusers"]), tmp / "pytorch_lora_weights.bin")
    return {
        "truncated file": (tmp / "truncated.safetensors", CheckpointError, "truncated"),
        "shapes that do not fit": (lora_files.kohya_lora(layers, tmp / "shape.safetensors"),
                                   CheckpointError, "(4, 7)"),
        "LyCORIS LoHa": (tmp / "loha.safetensors", CheckpointError, "LoHa"),
        "DoRA": (tmp / "dora.safetensors", CheckpointError, "DoRA"),
        "an SDXL LoRA": (tmp / "sdxl.safetensors", CheckpointError, "SDXL"),
        "another base model": (tmp / "other.safetensors", CheckpointError,
                               "another base model"),
        "an unknown format": (tmp / "unknown.safetensors", CheckpointError, "model.layer.weight"),
        "a pickle": (tmp / "pytorch_lora_weights.bin", UnsafeCheckpointError, "allow_pickle"),
    }


def test_bad_files_are_refused_and_change_nothing(ours, files, base, tmp_path):
    ours.load_lora_weights(files["diffusers"].parent, adapter_name="kept")
    before, adapters = run(ours), ours.get_list_adapters()
    for what, (path, error, message) in _bad_files(files, tmp_path).items():
        with pytest.raises(error, match=message):
            ours.load_lora_weights(path, adapter_name="bad")
        assert ours.get_list_adapters() == adapters, what
        np.testing.assert_array_equal(run(ours), before, err_msg=what)
    with pytest.raises(ConfigError, match="already in use"):
        ours.load_lora_weights(files["kohya"], adapter_name="kept")
    assert ours.get_active_adapters() == ["kept"]
    np.testing.assert_array_equal(run(ours), before)
