"""UNet2DModel (DDPM / LDM unconditional U-Net): diffusers-format checkpoints load unchanged and
give the reference's outputs; what we save loads in the reference."""

import pytest
import torch
from diffusers import UNet2DModel as ReferenceUNet
from diffusers.models.downsampling import downsample_2d as reference_downsample
from diffusers.models.upsampling import upsample_2d as reference_upsample
from diffusion_kernel.errors import CheckpointError, ConfigError, ModelInputError
from diffusion_kernel_vision.models.fir import fir_downsample_2d, fir_upsample_2d
from diffusion_kernel_vision.models.unet_2d import UNet2DModel
from safetensors.torch import load_file, save_file

TOL = 1e-5


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """Tiny models run faster on one thread, above all on a shared, busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


DDPM_TINY = dict(
    sample_size=16, block_out_channels=(32, 64), layers_per_block=2, norm_num_groups=8,
    down_block_types=("DownBlock2D", "AttnDownBlock2D"),
    up_block_types=("AttnUpBlock2D", "UpBlock2D"),
)
VARIANTS = {
    "ddpm": DDPM_TINY,
    "ldm_single_head_attention_everywhere": dict(
        DDPM_TINY, in_channels=4, out_channels=4, attention_head_dim=None, layers_per_block=1,
        down_block_types=("AttnDownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "AttnUpBlock2D")),
    "scale_shift_resnet_resampling_classes": dict(
        DDPM_TINY, resnet_time_scale_shift="scale_shift", downsample_type="resnet",
        upsample_type="resnet", num_class_embeds=10, attention_head_dim=16,
        mid_block_scale_factor=1.414, down_block_types=("AttnDownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "AttnUpBlock2D")),
    "no_mid_attention_own_attention_groups_center_input": dict(
        DDPM_TINY, add_attention=False, attn_norm_num_groups=4, center_input_sample=True,
        flip_sin_to_cos=False, freq_shift=1, downsample_padding=0),
    "learned_time_embedding_timestep_class_embedding": dict(
        DDPM_TINY, time_embedding_type="learned", num_train_timesteps=100,
        class_embed_type="timestep", time_embedding_dim=96),
    "ncsnpp_skip_blocks_fourier_time": dict(  # score-SDE (VE) NCSN++ layout
        DDPM_TINY, block_out_channels=(32, 64, 64), layers_per_block=1, norm_num_groups=None,
        time_embedding_type="fourier", mid_block_scale_factor=1.41421356237, norm_eps=1e-6,
        attention_head_dim=None, freq_shift=1,
        down_block_types=("SkipDownBlock2D", "AttnSkipDownBlock2D", "SkipDownBlock2D"),
        up_block_types=("SkipUpBlock2D", "AttnSkipUpBlock2D", "SkipUpBlock2D")),
}


def _inputs(config, batch=2):
    torch.manual_seed(1)
    timesteps = torch.tensor([5, 90])[:batch]
    if config.get("time_embedding_type") == "fourier":  # noise levels sigma
        timesteps = torch.tensor([0.3, 42.0])[:batch]
    kwargs = dict(sample=torch.randn(batch, config.get("in_channels", 3), 16, 16),
                  timestep=timesteps)
    if config.get("num_class_embeds"):
        kwargs["class_labels"] = torch.tensor([1, 7])[:batch]
    if config.get("class_embed_type") == "timestep":
        kwargs["class_labels"] = torch.tensor([3, 40])[:batch]
    return kwargs


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_reference_checkpoint_loads_and_matches_reference_outputs(variant, tmp_path):
    config = VARIANTS[variant]
    torch.manual_seed(0)
    reference = ReferenceUNet(**config).eval()
    reference.save_pretrained(tmp_path)
    ours = UNet2DModel.from_pretrained(tmp_path)
    with torch.no_grad():
        expected = reference(**_inputs(config)).sample
        got = ours(**_inputs(config)).sample
    assert torch.allclose(got, expected, atol=TOL), (got - expected).abs().max()


def test_our_checkpoint_loads_in_reference_with_same_outputs(tmp_path):
    ours = UNet2DModel(**DDPM_TINY).eval()
    ours.save_pretrained(tmp_path)
    reference = ReferenceUNet.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        assert torch.allclose(ours(**_inputs(DDPM_TINY)).sample,
                              reference(**_inputs(DDPM_TINY)).sample, atol=TOL)


def test_python_number_timestep_is_broadcast_over_the_batch():
    ours = UNet2DModel(**DDPM_TINY).eval()
    sample = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(ours(sample, 7).sample, ours(sample, torch.tensor([7, 7])).sample)


def test_legacy_attention_key_names_are_renamed_on_load(tmp_path):
    torch.manual_seed(0)
    reference = ReferenceUNet(**DDPM_TINY).eval()
    reference.save_pretrained(tmp_path)
    weights = tmp_path / "diffusion_pytorch_model.safetensors"
    legacy = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
    state = load_file(weights)
    renamed = {}
    for key, tensor in state.items():
        for new, old in legacy.items():
            if ".attentions." in key and f".{new}." in key:
                key = key.replace(f".{new}.", f".{old}.")
        renamed[key] = tensor
    assert any(".proj_attn." in k for k in renamed)
    save_file(renamed, weights)
    ours = UNet2DModel.from_pretrained(tmp_path)
    with torch.no_grad():
        assert torch.allclose(ours(**_inputs(DDPM_TINY)).sample,
                              reference(**_inputs(DDPM_TINY)).sample, atol=TOL)


def test_attention_slicing_gives_the_same_outputs():
    ours = UNet2DModel(**DDPM_TINY).eval()
    with torch.no_grad():
        expected = ours(**_inputs(DDPM_TINY)).sample
        ours.set_attention_slice("max")
        assert torch.allclose(ours(**_inputs(DDPM_TINY)).sample, expected, atol=TOL)


def test_gradient_checkpointing_keeps_gradients():
    ours = UNet2DModel(**DDPM_TINY).train()

    def gradients():
        ours.zero_grad()
        ours(**_inputs(DDPM_TINY)).sample.square().mean().backward()
        return [p.grad.clone() for p in ours.parameters()]

    plain = gradients()
    ours.enable_gradient_checkpointing()
    assert all(b.gradient_checkpointing for b in ours.down_blocks)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(plain, gradients()))


def test_config_that_does_not_match_weights_raises_checkpoint_error(tmp_path):
    ReferenceUNet(**DDPM_TINY).save_pretrained(tmp_path)
    with pytest.raises(CheckpointError, match="missing keys"):
        UNet2DModel.from_pretrained(tmp_path, layers_per_block=3)


def test_class_conditional_model_requires_class_labels():
    ours = UNet2DModel(**VARIANTS["scale_shift_resnet_resampling_classes"])
    with pytest.raises(ModelInputError, match="class_labels"):
        ours(torch.randn(1, 3, 16, 16), 3)


def test_unknown_time_embedding_type_is_a_config_error_naming_the_known_ones():
    with pytest.raises(ConfigError, match="'positional', 'fourier' or 'learned'"):
        UNet2DModel(**dict(DDPM_TINY, time_embedding_type="sinusoidal"))


def test_unknown_block_type_is_a_config_error_listing_supported_ones():
    with pytest.raises(ConfigError, match="KDownBlock2D.*AttnSkipDownBlock2D"):
        UNet2DModel(**dict(DDPM_TINY, down_block_types=("KDownBlock2D", "DownBlock2D")))


def test_fir_resampling_matches_reference_and_keeps_the_mean():
    x = torch.randn(2, 3, 8, 6)
    up, down = fir_upsample_2d(x), fir_downsample_2d(x)
    assert up.shape == (2, 3, 16, 12) and down.shape == (2, 3, 4, 3)
    assert torch.allclose(up, reference_upsample(x, kernel=(1, 3, 3, 1)), atol=1e-6)
    assert torch.allclose(down, reference_downsample(x, kernel=(1, 3, 3, 1)), atol=1e-6)
    constant = torch.ones(1, 1, 8, 8)
    assert torch.allclose(fir_upsample_2d(constant)[..., 2:-2, 2:-2], torch.ones(1, 1, 12, 12))
