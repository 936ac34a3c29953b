"""UNet2DConditionModel: diffusers-format checkpoints load unchanged and give the reference's
outputs; what we save loads in the reference; memory/speed features keep the outputs."""

import json

import pytest
import torch
from diffusers import UNet2DConditionModel as ReferenceUNet
from diffusion_kernel.errors import CheckpointError, ConfigError, ModelInputError
from diffusion_kernel_vision.models.unet_2d_condition import UNet2DConditionModel

TOL = 1e-5


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """Tiny models run faster on one thread, above all on a shared, busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)

SD1_TINY = dict(
    sample_size=16, block_out_channels=(32, 64), layers_per_block=2, norm_num_groups=8,
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32,
    attention_head_dim=8,
)
SD2_TINY = dict(  # per-block head counts, linear projections, fp32 attention flag
    SD1_TINY, attention_head_dim=(2, 4), use_linear_projection=True, upcast_attention=True,
    cross_attention_dim=48,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
)
VARIANTS = {
    "sd1": SD1_TINY,
    "sd2": SD2_TINY,
    "layers_per_block_per_block_and_two_transformer_layers": dict(
        SD1_TINY, layers_per_block=(1, 2), transformer_layers_per_block=2, norm_num_groups=16,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D")),
    "only_cross_attention_per_block": dict(SD2_TINY, only_cross_attention=(True, False)),
    "time_and_class_options": dict(
        SD1_TINY, resnet_time_scale_shift="scale_shift", class_embed_type="timestep",
        time_cond_proj_dim=6, time_embedding_act_fn="silu", timestep_post_act="mish",
        center_input_sample=True, flip_sin_to_cos=False, freq_shift=1,
        mid_block_type="UNetMidBlock2D", conv_in_kernel=1, conv_out_kernel=1),
    "sdxl_style_text_time_and_text_proj": dict(
        SD2_TINY, transformer_layers_per_block=(1, 2), addition_embed_type="text_time",
        addition_time_embed_dim=8, projection_class_embeddings_input_dim=6 * 8 + 16,
        encoder_hid_dim=20),
}


def _inputs(config, batch=2, size=16):
    torch.manual_seed(1)
    context_dim = config.get("encoder_hid_dim") or config["cross_attention_dim"]
    if isinstance(context_dim, tuple):
        context_dim = context_dim[0]
    kwargs = dict(sample=torch.randn(batch, 4, size, size), timestep=torch.tensor(37),
                  encoder_hidden_states=torch.randn(batch, 7, context_dim))
    if config.get("class_embed_type") == "timestep":
        kwargs["class_labels"] = torch.tensor([3, 800])[:batch]
    if config.get("time_cond_proj_dim"):
        kwargs["timestep_cond"] = torch.randn(batch, config["time_cond_proj_dim"])
    if config.get("addition_embed_type") == "text_time":
        kwargs["added_cond_kwargs"] = dict(text_embeds=torch.randn(batch, 16),
                                           time_ids=torch.randn(batch, 6) * 100)
    return kwargs


def _reference_checkpoint(config, folder):
    torch.manual_seed(0)
    reference = ReferenceUNet(**config).eval()
    reference.save_pretrained(folder)
    return reference


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_reference_checkpoint_loads_and_matches_reference_outputs(variant, tmp_path):
    config = VARIANTS[variant]
    reference = _reference_checkpoint(config, tmp_path)
    ours = UNet2DConditionModel.from_pretrained(tmp_path)
    inputs = _inputs(config)
    with torch.no_grad():
        expected = reference(**inputs).sample
        got = ours(**inputs).sample
    assert got.shape == expected.shape
    assert torch.allclose(got, expected, atol=TOL), (got - expected).abs().max()


@pytest.mark.parametrize("variant", ["sd1", "sd2"])
def test_training_gradients_match_the_reference(variant, tmp_path):
    # Residuals are added into fresh layer outputs and, without gradients, the GEGLU gate is
    # applied in place: backward through all of it gives the reference's gradients, and the
    # forward with gradients equals the one without.
    config = VARIANTS[variant]
    reference = _reference_checkpoint(config, tmp_path).train()
    ours = UNet2DConditionModel.from_pretrained(tmp_path).train()
    inputs = _inputs(config)
    reference(**inputs).sample.square().mean().backward()
    out = ours(**inputs).sample
    out.square().mean().backward()
    with torch.no_grad():
        assert torch.equal(ours(**inputs).sample, out.detach())
    grads = dict(reference.named_parameters())
    for name, parameter in ours.named_parameters():
        torch.testing.assert_close(parameter.grad, grads[name].grad, rtol=1e-4, atol=1e-6,
                                   msg=name)


@pytest.mark.parametrize("variant", ["sd1", "sd2"])
def test_our_checkpoint_loads_in_reference_with_same_outputs(variant, tmp_path):
    config = VARIANTS[variant]
    ours = UNet2DConditionModel(**config).eval()
    ours.save_pretrained(tmp_path)
    reference = ReferenceUNet.from_pretrained(tmp_path).eval()
    inputs = _inputs(config)
    with torch.no_grad():
        assert torch.allclose(ours(**inputs).sample, reference(**inputs).sample, atol=TOL)
    assert json.loads((tmp_path / "config.json").read_text())["_class_name"] == \
        "UNet2DConditionModel"


@pytest.mark.parametrize("name,config", [
    ("sd15", dict(cross_attention_dim=768, sample_size=64)),
    ("sd21", dict(cross_attention_dim=1024, sample_size=96, attention_head_dim=(5, 10, 20, 20),
                  use_linear_projection=True, upcast_attention=True)),
])
def test_full_size_stable_diffusion_keys_and_shapes_equal_reference(name, config):
    with torch.device("meta"):
        reference = ReferenceUNet(**config)
        ours = UNet2DConditionModel(**config)
    expected = {k: tuple(v.shape) for k, v in reference.state_dict().items()}
    assert {k: tuple(v.shape) for k, v in ours.state_dict().items()} == expected
    if name == "sd15":
        assert ours.num_parameters() == 859_520_964


def test_sample_size_not_divisible_by_downsampling_is_upsampled_to_skip_size(tmp_path):
    reference = _reference_checkpoint(SD1_TINY, tmp_path)
    ours = UNet2DConditionModel.from_pretrained(tmp_path)
    inputs = _inputs(SD1_TINY, size=15)
    with torch.no_grad():
        expected = reference(**inputs).sample
        got = ours(**inputs).sample
    assert got.shape == (2, 4, 15, 15)
    assert torch.allclose(got, expected, atol=TOL)


def test_encoder_attention_mask_and_python_float_timestep_match_reference(tmp_path):
    reference = _reference_checkpoint(SD2_TINY, tmp_path)
    ours = UNet2DConditionModel.from_pretrained(tmp_path)
    inputs = _inputs(SD2_TINY)
    inputs["timestep"] = 12.5
    inputs["encoder_attention_mask"] = torch.tensor([[1, 1, 1, 0, 0, 0, 0], [1] * 7])
    with torch.no_grad():
        expected = reference(**inputs).sample
        got = ours(**inputs).sample
        unmasked = ours(**{**inputs, "encoder_attention_mask": None}).sample
    assert torch.allclose(got, expected, atol=TOL)
    assert not torch.allclose(got[0], unmasked[0], atol=1e-3)  # the mask has an effect


def test_controlnet_residuals_are_added_like_reference(tmp_path):
    reference = _reference_checkpoint(SD1_TINY, tmp_path)
    ours = UNet2DConditionModel.from_pretrained(tmp_path)
    inputs = _inputs(SD1_TINY)
    shapes = [(2, 32, 16, 16)] * 3 + [(2, 32, 8, 8)] + [(2, 64, 8, 8)] * 2
    down = tuple(torch.randn(s) for s in shapes)
    mid = torch.randn(2, 64, 8, 8)
    with torch.no_grad():
        expected = reference(**inputs, down_block_additional_residuals=down,
                             mid_block_additional_residual=mid).sample
        got = ours(**inputs, down_block_additional_residuals=down,
                   mid_block_additional_residual=mid).sample
    assert torch.allclose(got, expected, atol=TOL)


def test_tuple_output_when_return_dict_false():
    ours = UNet2DConditionModel(**SD1_TINY).eval()
    with torch.no_grad():
        out = ours(**_inputs(SD1_TINY), return_dict=False)
        as_object = ours(**_inputs(SD1_TINY))
    assert isinstance(out, tuple) and torch.equal(out[0], as_object.sample)
    assert torch.equal(as_object[0], as_object.sample)


@pytest.mark.parametrize("slice_size", ["auto", "max", 3, None])
def test_attention_slicing_gives_the_same_outputs(slice_size):
    ours = UNet2DConditionModel(**SD2_TINY).eval()
    inputs = _inputs(SD2_TINY)
    with torch.no_grad():
        expected = ours(**inputs).sample
        ours.set_attention_slice(slice_size)
        got = ours(**inputs).sample
    assert torch.allclose(got, expected, atol=TOL)


def test_attention_slice_list_must_have_one_size_per_layer():
    ours = UNet2DConditionModel(**SD1_TINY)
    with pytest.raises(ConfigError, match="one per layer"):
        ours.set_attention_slice([1, 2])


def test_gradient_checkpointing_same_gradients_fewer_saved_activations():
    ours = UNet2DConditionModel(**SD1_TINY).train()
    inputs = _inputs(SD1_TINY)

    def gradients_and_saved_count():
        saved = []
        ours.zero_grad()
        with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(1) or t, lambda t: t):
            ours(**inputs).sample.square().mean().backward()
        return [p.grad.clone() for p in ours.parameters()], len(saved)

    plain, plain_saved = gradients_and_saved_count()
    ours.enable_gradient_checkpointing()
    checkpointed, checkpointed_saved = gradients_and_saved_count()
    assert checkpointed_saved < plain_saved
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(plain, checkpointed))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_load_and_forward(dtype, tmp_path):
    reference = _reference_checkpoint(SD1_TINY, tmp_path)
    ours = UNet2DConditionModel.from_pretrained(tmp_path, torch_dtype=dtype)
    inputs = _inputs(SD1_TINY)
    with torch.no_grad():
        expected = reference(**inputs).sample
        got = ours(**{k: v.to(dtype) if k != "timestep" else v for k, v in inputs.items()}).sample
    assert ours.dtype == dtype and got.dtype == dtype
    assert torch.allclose(got.float(), expected, atol=0.05)


def test_torch_compile_traces_without_graph_breaks():
    config = dict(SD1_TINY, layers_per_block=1)
    ours = UNet2DConditionModel(**config).eval()
    explanation = torch._dynamo.explain(ours)(**_inputs(config))
    assert explanation.graph_break_count == 0, explanation.break_reasons


FREEU = dict(s1=0.9, s2=0.2, b1=1.5, b2=1.6)


@pytest.mark.parametrize("variant", ["sd1", "sd2",
                                     "layers_per_block_per_block_and_two_transformer_layers"])
@pytest.mark.parametrize("size", [16, 12])
def test_freeu_matches_the_reference_and_switches_off_cleanly(variant, size, tmp_path):
    config = VARIANTS[variant]
    reference = _reference_checkpoint(config, tmp_path)
    ours = UNet2DConditionModel.from_pretrained(tmp_path)
    inputs = _inputs(config, size=size)
    with torch.no_grad():
        plain = ours(**inputs).sample
        ours.enable_freeu(**FREEU)
        reference.enable_freeu(**FREEU)
        got, expected = ours(**inputs).sample, reference(**inputs).sample
        assert torch.allclose(got, expected, atol=TOL), (got - expected).abs().max()
        assert (got - plain).abs().max() > 1e-2  # FreeU changes the output
        ours.disable_freeu()
        assert torch.equal(ours(**inputs).sample, plain)


def test_freeu_with_neutral_scales_changes_nothing_and_keeps_gradients():
    ours = UNet2DConditionModel(**SD1_TINY)
    inputs = _inputs(SD1_TINY)
    plain = ours(**inputs).sample
    ours.enable_freeu(s1=1.0, s2=1.0, b1=1.0, b2=1.0)
    neutral = ours(**inputs).sample
    assert torch.allclose(neutral, plain, atol=1e-5)
    ours.enable_freeu(**FREEU)
    ours(**inputs).sample.square().mean().backward()
    assert all(p.grad is not None for p in ours.up_blocks[0].parameters())


def test_freeu_scales_the_low_frequencies_only():
    from diffusion_kernel_vision.models.freeu import low_frequencies_scaled

    x = torch.randn(2, 3, 8, 6, dtype=torch.float64)
    mask = torch.ones(8, 6, dtype=torch.float64)
    mask[[0, 0, 7, 7], [0, 5, 0, 5]] = 0.25  # frequencies -1 and 0 on both axes
    # Keeping the real part averages each frequency's factor with its mirror's (-k).
    mirrored = mask[(-torch.arange(8)) % 8][:, (-torch.arange(6)) % 6]
    expected = torch.fft.fft2(x) * (mask + mirrored) / 2
    torch.testing.assert_close(torch.fft.fft2(low_frequencies_scaled(x, 0.25)), expected)
    assert ((mask + mirrored) / 2 != 1).sum() == 7  # the box and its mirror: 7 of 48 change
    half = low_frequencies_scaled(x.half(), 0.25)
    assert half.dtype == torch.float16


def test_freeu_refuses_values_that_are_not_numbers():
    ours = UNet2DConditionModel(**SD1_TINY)
    with pytest.raises(ModelInputError, match="finite numbers.*'b2': nan"):
        ours.enable_freeu(s1=0.9, s2=0.2, b1=1.5, b2=float("nan"))
    with pytest.raises(ModelInputError, match="'s1': '0.9'"):
        ours.enable_freeu(s1="0.9", s2=0.2, b1=1.5, b2=1.6)


def test_config_that_does_not_match_weights_raises_checkpoint_error(tmp_path):
    _reference_checkpoint(SD1_TINY, tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["block_out_channels"] = [32, 96]
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="mis-shaped keys.*config.json belongs"):
        UNet2DConditionModel.from_pretrained(tmp_path)


def test_unsupported_block_type_is_a_config_error_listing_supported_ones():
    with pytest.raises(ConfigError, match="KCrossAttnDownBlock2D.*CrossAttnDownBlock2D"):
        UNet2DConditionModel(**dict(SD1_TINY, down_block_types=("KCrossAttnDownBlock2D",
                                                                  "DownBlock2D")))


def test_num_attention_heads_is_rejected_like_the_reference():
    with pytest.raises(ConfigError, match="attention_head_dim"):
        UNet2DConditionModel(**dict(SD1_TINY, num_attention_heads=4))


def test_wrong_input_shapes_raise_model_input_errors_naming_the_config_field():
    ours = UNet2DConditionModel(**SD1_TINY)
    inputs = _inputs(SD1_TINY)
    with pytest.raises(ModelInputError, match=r"in_channels=4.*\(2, 3, 16, 16\)"):
        ours(**{**inputs, "sample": torch.randn(2, 3, 16, 16)})
    with pytest.raises(ModelInputError, match="cross_attention_dim=32"):
        ours(**{**inputs, "encoder_hidden_states": torch.randn(2, 7, 48)})
