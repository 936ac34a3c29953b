"""The GLIDE-style U-Net levels (DeepFloyd IF, the unCLIP decoder and super-resolution U-Nets) on
UNet2DConditionModel and UNet2DModel: reference checkpoints load and give the reference's outputs,
what we save loads in the reference with no missing or unexpected keys, and configs outside what
is built fail clearly."""

import pytest
import torch
from diffusers import UNet2DConditionModel as ReferenceUNet
from diffusers import UNet2DModel as ReferenceUNet2D
from diffusion_kernel.errors import ConfigError, ModelInputError
from diffusion_kernel_vision.models.unet_2d import UNet2DModel
from diffusion_kernel_vision.models.unet_2d_condition import UNet2DConditionModel
from text2image.tiny import IF_STAGE_1, IF_STAGE_2, UNCLIP_DECODER, UNCLIP_SUPER_RES

from .tiny import single_thread  # noqa: F401

TOL = 1e-5
VARIANTS = {
    "if_stage_1": IF_STAGE_1,
    "if_stage_2_timestep_class_embedding": IF_STAGE_2,
    "unclip_decoder_masked": UNCLIP_DECODER,
    "only_cross_attention_layer_norm_head_dim_16": dict(
        IF_STAGE_1, block_out_channels=(32, 32), only_cross_attention=True,
        cross_attention_norm="layer_norm", attention_head_dim=16, layers_per_block=2,
        resnet_skip_time_act=True, resnet_out_scale_factor=0.5),
    "attention_everywhere_no_cross_norm_no_text_proj": dict(
        UNCLIP_DECODER, class_embed_type=None, cross_attention_dim=24,
        down_block_types=("SimpleCrossAttnDownBlock2D",) * 2,
        up_block_types=("SimpleCrossAttnUpBlock2D",) * 2, addition_embed_type="text",
        addition_embed_type_num_heads=4, act_fn="silu", norm_num_groups=16),
}


def _inputs(config, batch=2, size=16):
    torch.manual_seed(1)
    width = config.get("encoder_hid_dim") or config["cross_attention_dim"]
    kwargs = dict(sample=torch.randn(batch, config["in_channels"], size, size),
                  timestep=torch.tensor(37), encoder_hidden_states=torch.randn(batch, 7, width))
    if config.get("class_embed_type") == "timestep":
        kwargs["class_labels"] = torch.tensor([3, 250])[:batch]
    if config.get("class_embed_type") == "identity":
        kwargs["class_labels"] = torch.randn(batch, 4 * config["block_out_channels"][0])
        kwargs["attention_mask"] = torch.tensor([[1] * 5 + [0] * 2, [1] * 7])[:batch]
    return kwargs


def _reference(config, folder):
    torch.manual_seed(0)
    reference = ReferenceUNet(**config).eval()
    reference.save_pretrained(folder)
    return reference


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_reference_checkpoint_loads_and_gives_reference_outputs(variant, tmp_path):
    config = VARIANTS[variant]
    reference = _reference(config, tmp_path)
    ours = UNet2DConditionModel.from_pretrained(tmp_path)
    inputs = _inputs(config)
    with torch.no_grad():
        expected, got = reference(**inputs).sample, ours(**inputs).sample
    assert got.shape == (2, config["out_channels"], 16, 16)
    assert expected.std() > 0.05  # a real output, not a constant
    torch.testing.assert_close(got, expected, atol=TOL, rtol=0)


@pytest.mark.parametrize("variant", ["if_stage_2_timestep_class_embedding",
                                     "unclip_decoder_masked"])
def test_our_checkpoint_loads_in_reference_with_no_key_left_over(variant, tmp_path):
    config = VARIANTS[variant]
    torch.manual_seed(0)
    ours = UNet2DConditionModel(**config).eval()
    ours.save_pretrained(tmp_path)
    reference, info = ReferenceUNet.from_pretrained(tmp_path, output_loading_info=True)
    assert (info["missing_keys"], info["unexpected_keys"]) == ([], [])
    inputs = _inputs(config)
    with torch.no_grad():
        torch.testing.assert_close(ours(**inputs).sample, reference.eval()(**inputs).sample,
                                   atol=TOL, rtol=0)


def test_text_mask_changes_the_output_as_in_the_reference(tmp_path):
    # A masked text token must not be attended to: changing it changes nothing.
    reference = _reference(UNCLIP_DECODER, tmp_path)
    ours = UNet2DConditionModel.from_pretrained(tmp_path)
    inputs = _inputs(UNCLIP_DECODER)
    changed = dict(inputs, encoder_hidden_states=inputs["encoder_hidden_states"].clone())
    changed["encoder_hidden_states"][0, 6] += 10.0  # masked out for sample 0
    with torch.no_grad():
        assert torch.equal(ours(**inputs).sample[0], ours(**changed).sample[0])
        unmasked = dict(inputs, attention_mask=None)
        difference = (ours(**unmasked).sample - ours(**inputs).sample).abs().max()
        reference_difference = (reference(**unmasked).sample - reference(**inputs).sample)
    assert difference > 1e-3
    torch.testing.assert_close(difference, reference_difference.abs().max(), atol=TOL, rtol=0)


def test_unclip_super_resolution_unet_2d_matches_reference_both_ways(tmp_path):
    torch.manual_seed(0)
    reference = ReferenceUNet2D(**UNCLIP_SUPER_RES).eval()
    reference.save_pretrained(tmp_path / "ref")
    ours = UNet2DModel.from_pretrained(tmp_path / "ref")
    ours.save_pretrained(tmp_path / "ours")
    back, info = ReferenceUNet2D.from_pretrained(tmp_path / "ours", output_loading_info=True)
    assert (info["missing_keys"], info["unexpected_keys"]) == ([], [])
    sample = torch.randn(2, 6, 32, 32)
    with torch.no_grad():
        expected = reference(sample, 10).sample
        torch.testing.assert_close(ours(sample, 10).sample, expected, atol=TOL, rtol=0)
        torch.testing.assert_close(back.eval()(sample, 10).sample, expected, atol=TOL, rtol=0)


def test_gradients_match_the_reference(tmp_path):
    reference = _reference(IF_STAGE_1, tmp_path).train()
    ours = UNet2DConditionModel.from_pretrained(tmp_path).train()
    inputs = _inputs(IF_STAGE_1)
    reference(**inputs).sample.square().mean().backward()
    ours(**inputs).sample.square().mean().backward()
    grads = dict(reference.named_parameters())
    for name, parameter in ours.named_parameters():
        torch.testing.assert_close(parameter.grad, grads[name].grad, rtol=1e-4, atol=1e-6,
                                   msg=name)


def test_gradient_checkpointing_keeps_outputs_and_gradients():
    torch.manual_seed(0)
    model = UNet2DConditionModel(**IF_STAGE_1).train()
    inputs = _inputs(IF_STAGE_1)
    plain = model(**inputs).sample
    plain.square().mean().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    model.enable_gradient_checkpointing()
    checkpointed = model(**inputs).sample
    checkpointed.square().mean().backward()
    torch.testing.assert_close(checkpointed, plain)
    for grad, parameter in zip(grads, model.parameters()):
        torch.testing.assert_close(parameter.grad, grad)


def test_attention_slicing_keeps_the_outputs():
    torch.manual_seed(0)
    model = UNet2DConditionModel(**IF_STAGE_1).eval()
    inputs = _inputs(IF_STAGE_1)
    with torch.no_grad():
        full = model(**inputs).sample
        model.set_attention_slice("max")
        torch.testing.assert_close(model(**inputs).sample, full, atol=1e-5, rtol=0)


@pytest.mark.parametrize("change,message", [
    (dict(down_block_types=("ResnetDownsampleBlock2D", "KCrossAttnDownBlock2D")),
     "unsupported down block type 'KCrossAttnDownBlock2D'"),
    (dict(addition_embed_type="image"), "addition_embed_type='image' is not supported"),
    (dict(cross_attention_norm="batch_norm"), "cross_attention_norm='batch_norm'"),
    (dict(attention_head_dim=12), "multiple of the head size"),
    (dict(cross_attention_norm="layer_norm"), "needs cross_attention_dim=64"),
])
def test_unsupported_configs_fail_naming_the_field(change, message):
    with pytest.raises(ConfigError, match=message):
        UNet2DConditionModel(**{**IF_STAGE_1, **change})


def test_simple_cross_attention_in_unet_2d_needs_a_text_width():
    with pytest.raises(ConfigError, match="SimpleCrossAttnDownBlock2D needs cross_attention_dim"):
        UNet2DModel(**{**UNCLIP_SUPER_RES, "down_block_types": (
            "ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D")})


def test_missing_text_states_are_a_clear_error():
    torch.manual_seed(0)
    model = UNet2DConditionModel(**{**UNCLIP_DECODER, "class_embed_type": None}).eval()
    with pytest.raises(ModelInputError, match="encoder_hidden_states"):
        model(torch.randn(1, 3, 16, 16), 3, encoder_hidden_states=None)


def test_processor_api_covers_the_added_kv_layers_and_takes_the_references_processor(tmp_path):
    from diffusers.models.attention_processor import AttnAddedKVProcessor as ReferenceProcessor
    from diffusion_kernel_vision.models.attention_added_kv import AttnAddedKVProcessor

    reference = _reference(UNCLIP_DECODER, tmp_path)
    ours = UNet2DConditionModel.from_pretrained(tmp_path)
    processors = ours.attn_processors
    assert len(processors) == 4 and all(isinstance(p, AttnAddedKVProcessor)
                                        for p in processors.values())
    inputs = _inputs(UNCLIP_DECODER)  # with a text mask
    with torch.no_grad():
        expected = reference(**inputs).sample
        ours.set_attn_processor(ReferenceProcessor())  # the reference's own, on our layers
        torch.testing.assert_close(ours(**inputs).sample, expected, atol=TOL, rtol=0)
        ours.set_default_attn_processor()
        assert all(isinstance(p, AttnAddedKVProcessor) for p in ours.attn_processors.values())
        ours.fuse_qkv_projections()  # nothing to fuse in these layers: same outputs
        torch.testing.assert_close(ours(**inputs).sample, expected, atol=TOL, rtol=0)


def _counting_text_projections(unet):
    """Forward hooks counting the calls of every attention layer's text-key projection."""
    calls = []
    layers = [m for name, m in unet.named_modules() if name.endswith("add_k_proj")]
    for layer in layers:
        layer.register_forward_hook(lambda *_: calls.append(1))
    return calls, len(layers)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_reuse_conditioning_gives_the_same_outputs_and_processes_the_text_once(variant):
    config = VARIANTS[variant]
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**config).eval()
    inputs = _inputs(config)
    calls, layers = _counting_text_projections(unet)
    assert layers > 0
    steps = [dict(inputs, sample=inputs["sample"] * (1 + k), timestep=torch.tensor(t))
             for k, t in enumerate((999, 500, 37))]  # a loop: new sample and timestep each step
    with torch.no_grad():
        fresh = [unet(**step).sample for step in steps]
    assert len(calls) == 3 * layers
    calls.clear()
    with torch.inference_mode(), unet.reuse_conditioning():
        reused = [unet(**step).sample for step in steps]
    assert len(calls) == layers  # once per layer, at the first step
    for expected, got in zip(fresh, reused):
        assert torch.equal(got, expected)  # bit for bit
    with torch.no_grad():  # outside the block: computed at every call again
        unet(**steps[0])
    assert len(calls) == 2 * layers


def test_reuse_conditioning_recomputes_for_other_or_modified_text_and_under_autograd():
    config = VARIANTS["if_stage_2_timestep_class_embedding"]
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**config).eval()
    inputs = _inputs(config)
    calls, layers = _counting_text_projections(unet)
    other = dict(inputs, encoder_hidden_states=inputs["encoder_hidden_states"].flip(1))
    with torch.no_grad():
        expected_other = unet(**other).sample
    calls.clear()
    with torch.no_grad(), unet.reuse_conditioning():
        unet(**inputs)
        assert torch.equal(unet(**other).sample, expected_other)  # another tensor: recomputed
        assert len(calls) == 2 * layers
        states = other["encoder_hidden_states"].clone()
        first = unet(**dict(other, encoder_hidden_states=states)).sample
        states.mul_(2)  # the same tensor modified in place: recomputed, not reused
        second = unet(**dict(other, encoder_hidden_states=states)).sample
        assert len(calls) == 4 * layers and not torch.equal(first, second)
    expected_second = unet(**dict(other, encoder_hidden_states=states)).sample.detach()
    torch.testing.assert_close(second, expected_second, atol=0, rtol=0)
    calls.clear()
    with unet.reuse_conditioning():  # gradients recorded: nothing is kept, backward works
        for _ in range(2):
            unet.zero_grad()
            unet(**inputs).sample.square().mean().backward()
    assert len(calls) == 2 * layers
    assert unet.conv_in.weight.grad.abs().sum() > 0
