"""VQModel: diffusers-format checkpoints load unchanged and quantise/decode like the reference; what
we save loads in the reference."""

import pytest
import torch
from diffusers import VQModel as ReferenceVQ
from diffusion_kernel.errors import ConfigError
from diffusion_kernel_vision.models.vq_model import VQModel

TOL = 1e-5


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """Tiny models run faster on one thread, above all on a shared, busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


VQ_TINY = dict(
    sample_size=32, block_out_channels=(32, 64), layers_per_block=1, norm_num_groups=8,
    latent_channels=3, num_vq_embeddings=16, vq_embed_dim=5,
    down_block_types=("DownEncoderBlock2D", "AttnDownEncoderBlock2D"),
    up_block_types=("AttnUpDecoderBlock2D", "UpDecoderBlock2D"),
)


def _images(batch=2):
    torch.manual_seed(1)
    return torch.rand(batch, 3, 32, 32) * 2 - 1


@pytest.fixture
def pair(tmp_path):
    torch.manual_seed(0)
    reference = ReferenceVQ(**VQ_TINY).eval()
    reference.save_pretrained(tmp_path)
    return reference, VQModel.from_pretrained(tmp_path)


def test_reference_checkpoint_reconstructs_like_reference_with_same_commit_loss(pair):
    reference, ours = pair
    with torch.no_grad():
        expected, got = reference(_images()), ours(_images())
    assert torch.allclose(got.sample, expected.sample, atol=TOL)
    assert torch.allclose(got.commit_loss, expected.commit_loss, atol=TOL)


def test_quantize_snaps_latents_to_the_reference_codebook_indices(pair):
    reference, ours = pair
    with torch.no_grad():
        latents = ours.encode(_images()).latents
        assert torch.allclose(latents, reference.encode(_images()).latents, atol=TOL)
        quantized, _, (_, _, indices) = ours.quantize(latents)
        expected_quantized, _, (_, _, expected_indices) = reference.quantize(latents)
    assert torch.equal(indices, expected_indices)
    assert torch.allclose(quantized, expected_quantized, atol=TOL)
    codebook = ours.quantize.embedding.weight
    assert torch.allclose(quantized.permute(0, 2, 3, 1).reshape(-1, 5), codebook[indices])


def test_decode_without_quantizing_matches_reference(pair):
    reference, ours = pair
    latents = torch.randn(2, 5, 16, 16)
    with torch.no_grad():
        got = ours.decode(latents, force_not_quantize=True)
        expected = reference.decode(latents, force_not_quantize=True)
    assert torch.allclose(got.sample, expected.sample, atol=TOL)
    assert torch.equal(got.commit_loss, torch.zeros(2))


def test_lookup_from_codebook_decodes_indices(tmp_path):
    torch.manual_seed(0)
    config = dict(VQ_TINY, lookup_from_codebook=True)
    reference = ReferenceVQ(**config).eval()
    reference.save_pretrained(tmp_path)
    ours = VQModel.from_pretrained(tmp_path)
    indices = torch.randint(0, 16, (2 * 16 * 16,))
    shape = (2, 16, 16, 5)
    with torch.no_grad():
        got = ours.decode(indices, force_not_quantize=True, shape=shape).sample
        expected = reference.decode(indices, force_not_quantize=True, shape=shape).sample
    assert got.shape == (2, 3, 32, 32)
    assert torch.allclose(got, expected, atol=TOL)


def test_our_checkpoint_loads_in_reference_with_same_outputs(tmp_path):
    ours = VQModel(**VQ_TINY).eval()
    ours.save_pretrained(tmp_path)
    reference = ReferenceVQ.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        assert torch.allclose(ours(_images()).sample, reference(_images()).sample, atol=TOL)


def test_spatial_norm_decoder_is_reported_as_unsupported():
    with pytest.raises(ConfigError, match="spatial"):
        VQModel(**dict(VQ_TINY, norm_type="spatial"))
