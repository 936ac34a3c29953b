"""AutoencoderKL: diffusers-format checkpoints load unchanged and encode/decode like the reference;
what we save loads in the reference; slicing and tiling behave as specified."""

import pytest
import torch
from diffusers import AutoencoderKL as ReferenceVAE
from diffusion_kernel.errors import CheckpointError, ModelInputError
from diffusion_kernel_vision.models.autoencoder_kl import AutoencoderKL

TOL = 1e-5


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """Tiny models run faster on one thread, above all on a shared, busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


VAE_TINY = dict(
    sample_size=32, block_out_channels=(32, 64), layers_per_block=1, norm_num_groups=8,
    latent_channels=4, down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
    up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
)
VARIANTS = {
    "sd_style": VAE_TINY,
    "no_mid_attention_no_quant_convs": dict(
        VAE_TINY, mid_block_add_attention=False, use_quant_conv=False,
        use_post_quant_conv=False),
    "attention_blocks_three_levels_two_layers": dict(
        VAE_TINY, block_out_channels=(16, 32, 32), layers_per_block=2, norm_num_groups=16,
        down_block_types=("DownEncoderBlock2D", "AttnDownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "AttnUpDecoderBlock2D", "UpDecoderBlock2D")),
}


def _images(batch=2, size=32):
    torch.manual_seed(1)
    return torch.rand(batch, 3, size, size) * 2 - 1


def _reference_checkpoint(config, folder):
    torch.manual_seed(0)
    reference = ReferenceVAE(**config).eval()
    reference.save_pretrained(folder)
    return reference


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_reference_checkpoint_reconstructs_like_reference(variant, tmp_path):
    reference = _reference_checkpoint(VARIANTS[variant], tmp_path)
    ours = AutoencoderKL.from_pretrained(tmp_path)
    with torch.no_grad():
        expected, got = reference(_images()).sample, ours(_images()).sample
    assert got.shape == (2, 3, 32, 32)
    assert torch.allclose(got, expected, atol=TOL), (got - expected).abs().max()


def test_posterior_sample_with_generator_matches_reference(tmp_path):
    reference = _reference_checkpoint(VAE_TINY, tmp_path)
    ours = AutoencoderKL.from_pretrained(tmp_path)
    with torch.no_grad():
        expected = reference.encode(_images()).latent_dist.sample(
            torch.Generator().manual_seed(3))
        posterior = ours.encode(_images()).latent_dist
        got = posterior.sample(torch.Generator().manual_seed(3))
        expected_kl = reference.encode(_images()).latent_dist.kl()
    assert got.shape == (2, 4, 16, 16)
    assert torch.allclose(got, expected, atol=TOL)
    assert torch.allclose(posterior.kl(), expected_kl, rtol=1e-5)
    assert not torch.allclose(got, posterior.mode(), atol=1e-3)


def test_per_sample_generators_make_noise_independent_of_the_batch(tmp_path):
    ours = AutoencoderKL(**VAE_TINY).eval()
    with torch.no_grad():
        posterior = ours.encode(_images())
        generators = [torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)]
        both = posterior.latent_dist.sample(generators)
        alone = ours.encode(_images()[1:]).latent_dist
        second = alone.sample([torch.Generator().manual_seed(2)])
    assert torch.allclose(both[1:], second, atol=TOL)


def test_our_checkpoint_loads_in_reference_and_decodes_the_same(tmp_path):
    ours = AutoencoderKL(**dict(VAE_TINY, scaling_factor=0.13025)).eval()
    ours.save_pretrained(tmp_path)
    reference = ReferenceVAE.from_pretrained(tmp_path).eval()
    latents = torch.randn(2, 4, 16, 16)
    with torch.no_grad():
        assert torch.allclose(ours.decode(latents).sample, reference.decode(latents).sample,
                              atol=TOL)
    assert reference.config.scaling_factor == ours.config.scaling_factor == 0.13025


def test_slicing_gives_the_same_encoding_and_decoding():
    ours = AutoencoderKL(**VAE_TINY).eval()
    latents = torch.randn(3, 4, 16, 16)
    with torch.no_grad():
        moments, decoded = ours.encode(_images(3)).latent_dist.mean, ours.decode(latents).sample
        ours.enable_slicing()
        assert torch.allclose(ours.encode(_images(3)).latent_dist.mean, moments, atol=TOL)
        assert torch.allclose(ours.decode(latents).sample, decoded, atol=TOL)


def test_tiling_matches_reference_tiling_on_large_inputs(tmp_path):
    reference = _reference_checkpoint(VAE_TINY, tmp_path)
    ours = AutoencoderKL.from_pretrained(tmp_path)
    reference.enable_tiling()
    ours.enable_tiling()
    images, latents = _images(1, size=64)[:, :, :, :48], torch.randn(1, 4, 40, 24)
    with torch.no_grad():
        expected_latents = reference.encode(images).latent_dist.mean
        got_latents = ours.encode(images).latent_dist.mean
        expected, got = reference.decode(latents).sample, ours.decode(latents).sample
    assert got_latents.shape == (1, 4, 32, 24) and got.shape == (1, 3, 80, 48)
    assert torch.allclose(got_latents, expected_latents, atol=TOL)
    assert torch.allclose(got, expected, atol=TOL)


def test_tiling_leaves_inputs_within_one_tile_unchanged():
    ours = AutoencoderKL(**VAE_TINY).eval()
    latents = torch.randn(1, 4, 16, 16)  # the latent tile size is 32 / 2 = 16
    with torch.no_grad():
        plain = ours.decode(latents).sample
        ours.enable_tiling()
        assert torch.equal(ours.decode(latents).sample, plain)


def test_tiled_decoding_blends_seams_close_to_untiled():
    """Tiles see their own borders, so tiled output differs from untiled; blending keeps the
    image statistics close."""
    ours = AutoencoderKL(**VAE_TINY).eval()
    latents = torch.randn(1, 4, 24, 24)
    with torch.no_grad():
        plain = ours.decode(latents).sample
        ours.enable_tiling()
        tiled = ours.decode(latents).sample
    assert tiled.shape == plain.shape
    assert abs(tiled.mean() - plain.mean()) < 0.05 and abs(tiled.std() - plain.std()) < 0.05


def test_return_dict_false_gives_tuples():
    ours = AutoencoderKL(**VAE_TINY).eval()
    with torch.no_grad():
        (posterior,) = ours.encode(_images(), return_dict=False)
        (decoded,) = ours.decode(posterior.mode(), return_dict=False)
    assert decoded.shape == (2, 3, 32, 32)


def test_half_precision_decode(tmp_path):
    _reference_checkpoint(VAE_TINY, tmp_path)
    ours = AutoencoderKL.from_pretrained(tmp_path, torch_dtype=torch.bfloat16)
    full = AutoencoderKL.from_pretrained(tmp_path)
    latents = torch.randn(1, 4, 16, 16)
    with torch.no_grad():
        got = ours.decode(latents.bfloat16()).sample
        expected = full.decode(latents).sample
    assert got.dtype == torch.bfloat16
    assert torch.allclose(got.float(), expected, atol=0.1)


def test_config_without_the_checkpoints_quant_conv_raises_checkpoint_error(tmp_path):
    _reference_checkpoint(VAE_TINY, tmp_path)
    with pytest.raises(CheckpointError, match="unexpected keys: .*quant_conv"):
        AutoencoderKL.from_pretrained(tmp_path, use_quant_conv=False)


def test_full_size_stable_diffusion_vae_keys_and_shapes_equal_reference():
    config = dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2, sample_size=512,
                  down_block_types=("DownEncoderBlock2D",) * 4,
                  up_block_types=("UpDecoderBlock2D",) * 4)
    with torch.device("meta"):
        reference, ours = ReferenceVAE(**config), AutoencoderKL(**config)
    assert {k: tuple(v.shape) for k, v in ours.state_dict().items()} == \
        {k: tuple(v.shape) for k, v in reference.state_dict().items()}


def test_latents_with_the_wrong_channel_count_raise_model_input_error():
    ours = AutoencoderKL(**VAE_TINY)
    with pytest.raises(ModelInputError, match="latent_channels=4"):
        ours.decode(torch.randn(1, 3, 16, 16))
