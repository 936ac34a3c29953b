"""UNet1DModel (Dance Diffusion, Diffuser's temporal U-Net and value function): the same state-dict
keys and shapes as diffusers 0.42.1, weights loading both ways with strict=True, and the
reference's outputs for every kind of timestep."""

import copy
import functools
import json

import pytest
import torch
from diffusers import UNet1DModel as ReferenceUNet
from diffusion_kernel import registry
from diffusion_kernel.errors import ConfigError, ModelInputError

UNet1DModel = registry.models.get("UNet1DModel")
TOL = 1e-5


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """Small 1-D convolutions run fastest on one thread, above all on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


DANCE = dict(  # the Dance Diffusion test config of diffusers (fast test), 0.42.1 form
    block_out_channels=(32, 32, 64), extra_in_channels=16, sample_size=512, sample_rate=16000,
    in_channels=2, out_channels=2, flip_sin_to_cos=True, use_timestep_embedding=False,
    time_embedding_type="fourier", mid_block_type="UNetMidBlock1D", time_embedding_dim=16,
    down_block_types=("DownBlock1DNoSkip", "DownBlock1D", "AttnDownBlock1D"),
    up_block_types=("AttnUpBlock1D", "UpBlock1D", "UpBlock1DNoSkip"))
TEMPORAL = dict(  # Diffuser's hopper U-Net (hor32 layout), narrower
    in_channels=14, out_channels=14, block_out_channels=(8, 16, 32, 64),
    down_block_types=("DownResnetBlock1D",) * 4, up_block_types=("UpResnetBlock1D",) * 3,
    mid_block_type="MidResTemporalBlock1D", out_block_type="OutConv1DBlock",
    time_embedding_type="positional", flip_sin_to_cos=False, freq_shift=1,
    use_timestep_embedding=True, act_fn="mish", norm_num_groups=8, layers_per_block=1,
    sample_size=32)
CONFIGS = {
    "dance_diffusion": (DANCE, 64),
    "dance_diffusion_four_levels_default_embedding": (dict(
        DANCE, block_out_channels=(16, 32, 32, 64), extra_in_channels=32,
        time_embedding_dim=None, in_channels=1, out_channels=1,
        down_block_types=("DownBlock1DNoSkip", "DownBlock1D", "AttnDownBlock1D",
                          "AttnDownBlock1D"),
        up_block_types=("AttnUpBlock1D", "AttnUpBlock1D", "UpBlock1D", "UpBlock1DNoSkip")), 64),
    "temporal_unet": (TEMPORAL, 32),
    "temporal_unet_swish_two_layers_three_levels": (dict(
        TEMPORAL, block_out_channels=(16, 32, 64), act_fn="swish", layers_per_block=2,
        down_block_types=("DownResnetBlock1D",) * 3, up_block_types=("UpResnetBlock1D",) * 2,
        flip_sin_to_cos=True, freq_shift=0), 16),
    "value_function": (dict(
        TEMPORAL, up_block_types=(), out_block_type="ValueFunction",
        mid_block_type="ValueFunctionMidBlock1D", downsample_each_block=True,
        block_out_channels=(8, 16, 32, 64)), 32),
    "single_level_diffusion_policy": (dict(  # diffusers' diffusion-policy example layout
        sample_size=16, in_channels=6, out_channels=2, layers_per_block=2,
        block_out_channels=(32,), down_block_types=("DownBlock1D",),
        up_block_types=("UpBlock1D",)), 16),
    "fourier_time_through_mlp": (dict(
        TEMPORAL, time_embedding_type="fourier", time_embedding_dim=12, flip_sin_to_cos=True,
        block_out_channels=(8, 16), down_block_types=("DownResnetBlock1D",) * 2,
        up_block_types=("UpResnetBlock1D",)), 8),
}


@functools.cache
def _pair_named(name):
    return _pair(CONFIGS[name][0])


def _pair(config):
    torch.manual_seed(0)
    reference = ReferenceUNet(**config).eval()
    ours = UNet1DModel(**config).eval()
    ours.load_state_dict(reference.state_dict(), strict=True)
    return ours, reference


def _timesteps(config, batch):
    """Float (continuous t), int, 0-d and batched timesteps for the config's embedding."""
    if config.get("time_embedding_type", "fourier") == "fourier":
        return [torch.tensor([0.37] * batch), 0.0, torch.tensor(0.81),
                torch.tensor([0.05, 0.5, 0.95])[:batch], 1]
    return [torch.tensor([7.0] * batch), 3, torch.tensor(11), torch.tensor([0, 5, 19])[:batch],
            4.0]


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_state_dict_keys_and_shapes_equal_the_reference(name):
    ours, reference = _pair_named(name)
    expected = {k: tuple(v.shape) for k, v in reference.state_dict().items()}
    assert {k: tuple(v.shape) for k, v in ours.state_dict().items()} == expected
    assert ours.num_parameters() == sum(p.numel() for p in reference.parameters())


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_outputs_equal_the_reference_for_every_kind_of_timestep(name):
    config, length = CONFIGS[name]
    ours, reference = _pair_named(name)
    batch = 3
    sample = torch.randn(batch, config["in_channels"], length,
                         generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        for t in _timesteps(config, batch):
            got = ours(sample, t).sample
            single = not isinstance(t, torch.Tensor) or t.numel() == 1
            if single and config.get("out_block_type") == "ValueFunction":
                # the reference's value head cannot join a single timestep's embedding with a
                # batch: compare sample by sample
                expected = torch.cat([reference(sample[i:i + 1], t).sample for i in range(batch)])
            else:
                expected = reference(sample, t).sample
            assert got.shape == expected.shape
            torch.testing.assert_close(got, expected, atol=TOL, rtol=0, msg=f"timestep {t!r}")


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_saved_folders_load_both_ways_strictly(name, tmp_path):
    config, length = CONFIGS[name]
    torch.manual_seed(0)
    ours = UNet1DModel(**config).eval()
    ours.save_pretrained(tmp_path / "ours")
    reference = ReferenceUNet.from_pretrained(tmp_path / "ours").eval()
    reference.save_pretrained(tmp_path / "theirs")
    fields = [{k for k in json.loads((tmp_path / who / "config.json").read_text())
               if not k.startswith("_")} for who in ("ours", "theirs")]
    assert fields[0] == fields[1]
    back = UNet1DModel.from_pretrained(tmp_path / "theirs")
    for model in (reference, back):
        missing = model.load_state_dict(ours.state_dict(), strict=True)
        assert not missing.missing_keys and not missing.unexpected_keys
    sample = torch.randn(2, config["in_channels"], length)
    t = _timesteps(config, 2)[0]
    with torch.no_grad():
        torch.testing.assert_close(back(sample, t).sample, reference(sample, t).sample,
                                   atol=TOL, rtol=0)
        torch.testing.assert_close(ours(sample, t).sample, reference(sample, t).sample,
                                   atol=TOL, rtol=0)


def test_python_float_timestep_keeps_its_fraction():
    _, length = CONFIGS["dance_diffusion"]
    ours, reference = _pair_named("dance_diffusion")
    sample = torch.randn(2, 2, length)
    with torch.no_grad():
        # the reference turns 0.5 into the integer 0; ours keeps it (equal to a tensor 0.5)
        torch.testing.assert_close(ours(sample, 0.5).sample,
                                   reference(sample, torch.tensor([0.5])).sample, atol=TOL,
                                   rtol=0)
        assert not torch.allclose(ours(sample, 0.5).sample, ours(sample, 0).sample, atol=1e-3)


def _legacy_dance_folder(tmp_path, version):
    """A Dance Diffusion folder as diffusers < 0.36 wrote it: no time_embedding_dim, 8 Fourier
    frequencies (16 channels) whatever the width."""
    config = {k: v for k, v in DANCE.items() if k != "time_embedding_dim"}
    torch.manual_seed(0)
    reference = ReferenceUNet(**DANCE).eval()
    reference.save_pretrained(tmp_path)
    written = {"_class_name": "UNet1DModel", "_diffusers_version": version, **config}
    (tmp_path / "config.json").write_text(json.dumps(written))
    return reference


def test_legacy_config_without_time_embedding_dim_loads_with_its_16_channel_embedding(tmp_path):
    reference = _legacy_dance_folder(tmp_path, "0.10.0.dev0")
    with pytest.warns(UserWarning, match="time_embedding_dim=16"):
        ours = UNet1DModel.from_pretrained(tmp_path)
    assert ours.config.time_embedding_dim == 16
    assert ours.state_dict()["time_proj.weight"].shape == (8,)
    sample = torch.randn(1, 2, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours(sample, torch.tensor([0.3])).sample,
                                   reference(sample, torch.tensor([0.3])).sample, atol=TOL, rtol=0)
    ours.save_pretrained(tmp_path / "resaved")  # now loads in the reference too
    ReferenceUNet.from_pretrained(tmp_path / "resaved")


def test_config_from_0_36_on_without_time_embedding_dim_is_not_legacy(tmp_path):
    _legacy_dance_folder(tmp_path, "0.36.0")
    with pytest.raises(ConfigError, match="extra_in_channels=64, or time_embedding_dim=16"):
        UNet1DModel.from_pretrained(tmp_path)


@pytest.mark.parametrize("config, message", [
    (dict(DANCE, block_out_channels=(32, 32, 16), down_block_types=(
        "DownBlock1DNoSkip", "DownBlock1D", "DownBlock1D")), "mid block.*16 channels.*least 32"),
    (dict(DANCE, block_out_channels=(32, 16, 64)), "up block 0 .*16 channels.*at least 32"),
    (dict(DANCE, block_out_channels=(32, 16, 16), down_block_types=(
        "DownBlock1DNoSkip", "AttnDownBlock1D", "DownBlock1D")), "down block 1 .*16 channels"),
    (dict(DANCE, block_out_channels=(32, 32, 97)), "97 channels.*multiple of 3"),
])
def test_attention_with_too_few_channels_is_a_config_error(config, message):
    with pytest.raises(ConfigError, match=message):
        UNet1DModel(**config)


@pytest.mark.parametrize("config, message", [
    (dict(DANCE, time_embedding_dim=None), "set extra_in_channels=64"),
    (dict(DANCE, time_embedding_dim=15, extra_in_channels=15), "must be even"),
    (dict(DANCE, time_embedding_type="learned"), "use 'fourier' or 'positional'"),
    (dict(DANCE, down_block_types=("DownBlock1D", "DownBlock1DNoSkip", "AttnDownBlock1D")),
     "must be the first down block"),
    (dict(DANCE, mid_block_type="UNetMidBlock2D"), "unknown mid_block_type.*UNetMidBlock1D"),
    (dict(DANCE, up_block_types=("AttnUpBlock1D", "UpBlock2D", "UpBlock1DNoSkip")),
     "unknown up block type 'UpBlock2D'"),
    (dict(DANCE, block_out_channels=(32, 64)), "one width per down block"),
    (dict(TEMPORAL, use_timestep_embedding=False), "set use_timestep_embedding=True"),
    (dict(TEMPORAL, act_fn=None), "needs an act_fn"),
    (dict(TEMPORAL, block_out_channels=(8, 16, 36, 64)), "36 channels in 8 groups"),
])
def test_configs_that_could_not_run_are_config_errors(config, message):
    with pytest.raises(ConfigError, match=message):
        UNet1DModel(**config)


def test_wrong_inputs_are_model_input_errors():
    model = UNet1DModel(**DANCE)
    with pytest.raises(ModelInputError, match=r"shape \(batch, 2, length\)"):
        model(torch.randn(1, 3, 64), 0.5)
    with pytest.raises(ModelInputError, match="multiple of 8, got 60; pad or crop"):
        model(torch.randn(1, 2, 60), 0.5)
    with pytest.raises(ModelInputError, match="hold 1 or 2"):
        model(torch.randn(2, 2, 64), torch.tensor([0.1, 0.2, 0.3]))
    value = UNet1DModel(**CONFIGS["value_function"][0])
    with pytest.raises(ModelInputError, match="left 2 positions"):
        value(torch.randn(1, 14, 128), 3)


def test_found_through_the_registry_by_alias():
    assert registry.models.get("unet1d") is UNet1DModel


def test_mish_in_closed_form_equals_torchs_with_its_gradient():
    import importlib

    activations = importlib.import_module(UNet1DModel.__module__.rsplit(".", 1)[0]
                                          + ".activations")
    x = torch.cat([torch.linspace(-100, 100, 2001), torch.randn(1000) * 3])
    mish = activations.get_activation("mish")
    with torch.no_grad():
        torch.testing.assert_close(mish(x.clone()), torch.nn.functional.mish(x), atol=2e-6,
                                   rtol=1e-6)
        half = x.clamp(-10, 10).half()
        torch.testing.assert_close(mish(half.clone()), torch.nn.functional.mish(half),
                                   atol=2e-3, rtol=2e-3)
    leaf = x.clone().requires_grad_()
    mish(leaf).sum().backward()
    reference = x.clone().requires_grad_()
    torch.nn.functional.mish(reference).sum().backward()
    torch.testing.assert_close(leaf.grad, reference.grad, atol=1e-5, rtol=1e-5)
    assert type(activations.get_activation("silu")) is torch.nn.SiLU


TEMPORAL_NAMES = ["temporal_unet", "temporal_unet_swish_two_layers_three_levels",
                  "value_function", "fourier_time_through_mlp"]


@pytest.mark.parametrize("frozen", [False, True], ids=["training", "guidance"])
@pytest.mark.parametrize("name", TEMPORAL_NAMES)
def test_gradients_are_as_precise_as_the_references(name, frozen):
    """The temporal levels write their backward pass out (conv -> GroupNorm -> Mish as one
    node, the input gradient as a convolution with the flipped kernel). Against the reference
    run in float64, the input gradient and every parameter gradient are about as precise as
    the reference's own in float32 (measured: at most 3.3x its error, where float32 sums in
    another order differ; a wrong gradient is off by its own size); with frozen parameters
    (value guidance) only the input gradient is computed."""
    config, length = CONFIGS[name]
    ours, reference = _pair(config)
    exact = copy.deepcopy(reference).double()
    sample = torch.randn(4, config["in_channels"], length,
                         generator=torch.Generator().manual_seed(2))
    t = _timesteps(config, 4)[0]
    grads = []
    for model in (ours, reference, exact):
        for p in model.parameters():
            p.requires_grad_(not frozen)
        x = sample.to(next(model.parameters()).dtype).clone().requires_grad_()
        out = model(x, t).sample
        weights = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).reshape(out.shape)
        (out * weights).sum().backward()
        grads.append({"input": x.grad} | {k: p.grad for k, p in model.named_parameters()})
    got, ref32, truth = grads
    if frozen:
        assert all(g is None for k, g in got.items() if k != "input")
    for key, expected in truth.items():
        if expected is None:
            assert got[key] is None, key
            continue
        error = (got[key].double() - expected).norm()
        reference_error = (ref32[key].double() - expected).norm()
        assert error <= 5 * reference_error + 1e-7 * expected.norm() + 1e-12, \
            f"{key}: error {error:.2e}, the reference's {reference_error:.2e}"


def test_channels_last_weights_save_and_load_as_the_format(tmp_path):
    """A forward pass lays the convolution weights out channels-last in place; the state dict
    keeps the format's shapes and values, and a folder saved afterwards loads in the reference
    with the same outputs."""
    config, length = CONFIGS["temporal_unet"]
    ours, reference = _pair(config)
    before = {k: v.clone() for k, v in ours.state_dict().items()}
    sample = torch.randn(2, config["in_channels"], length)
    with torch.no_grad():
        got = ours(sample, 3).sample
    laid_out = ours.down_blocks[0].resnets[0].conv_in.conv1d.weight
    assert laid_out.stride(1) == 1  # channels-last: (O, C, K) with the channels innermost
    assert got.is_contiguous()
    state = ours.state_dict()
    assert state.keys() == before.keys()
    for key, value in before.items():
        assert torch.equal(state[key], value), key
    ours.save_pretrained(tmp_path)
    loaded = ReferenceUNet.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(sample, 3).sample, reference(sample, 3).sample,
                                   atol=TOL, rtol=0)
        torch.testing.assert_close(got, reference(sample, 3).sample, atol=TOL, rtol=0)
