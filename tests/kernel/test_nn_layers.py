"""The shared layers in ``diffusion_kernel.nn`` against the reference implementation's layers."""

import pytest
import torch
from diffusers.models.attention_processor import Attention as ReferenceAttention
from diffusers.models.embeddings import GaussianFourierProjection as ReferenceFourier
from diffusers.models.embeddings import TimestepEmbedding as ReferenceTimestepEmbedding
from diffusers.models.embeddings import get_timestep_embedding as reference_embedding
from diffusion_kernel.errors import ConfigError
from diffusion_kernel.nn import (
    Attention,
    FeedForward,
    GaussianFourierProjection,
    ModelOutput,
    TimestepEmbedding,
    get_activation,
    get_timestep_embedding,
    set_attention_slice,
)


@pytest.mark.parametrize("dim", [32, 33])
@pytest.mark.parametrize("flip,shift,scale,max_period",
                         [(True, 0, 1, 10000), (False, 1, 1, 10000), (True, 1, 25.0, 1000)])
def test_timestep_embedding_matches_reference(dim, flip, shift, scale, max_period):
    timesteps = torch.tensor([0, 1, 17.5, 999])
    expected = reference_embedding(timesteps, dim, flip, shift, scale, max_period)
    got = get_timestep_embedding(timesteps, dim, flip, shift, scale, max_period)
    assert got.shape == (4, dim)
    assert torch.allclose(got, expected, atol=1e-6)


def test_timestep_embedding_starts_with_sin_then_cos_unless_flipped():
    t = torch.tensor([3.0])
    assert torch.allclose(get_timestep_embedding(t, 4, flip_sin_to_cos=False)[0, 0],
                          torch.sin(t))
    assert torch.allclose(get_timestep_embedding(t, 4, flip_sin_to_cos=True)[0, 0], torch.cos(t))


@pytest.mark.parametrize("log,flip", [(True, False), (False, True)])
def test_gaussian_fourier_projection_has_reference_keys_and_outputs(log, flip):
    reference = ReferenceFourier(8, scale=16, log=log, flip_sin_to_cos=flip)
    ours = GaussianFourierProjection(8, scale=16, log=log, flip_sin_to_cos=flip)
    ours.load_state_dict(reference.state_dict())
    sigmas = torch.tensor([0.01, 1.0, 50.0])
    assert torch.allclose(ours(sigmas), reference(sigmas), atol=1e-5)


def test_timestep_mlp_has_reference_keys_and_outputs():
    torch.manual_seed(0)
    reference = ReferenceTimestepEmbedding(8, 16, cond_proj_dim=3, post_act_fn="silu")
    ours = TimestepEmbedding(8, 16, cond_proj_dim=3, post_act_fn="silu")
    ours.load_state_dict(reference.state_dict())
    x, cond = torch.randn(2, 8), torch.randn(2, 3)
    assert torch.allclose(ours(x, cond), reference(x, cond), atol=1e-6)


@pytest.mark.parametrize("spatial", [False, True])
@pytest.mark.parametrize("cross", [False, True])
def test_attention_matches_reference(spatial, cross):
    torch.manual_seed(0)
    options = dict(heads=4, dim_head=8, bias=True)
    if spatial:
        options.update(norm_num_groups=4, residual_connection=True, rescale_output_factor=2.0)
    reference = ReferenceAttention(16, cross_attention_dim=12 if cross else None, **options)
    ours = Attention(16, cross_attention_dim=12 if cross else None, **options)
    ours.load_state_dict(reference.state_dict())
    x = torch.randn(2, 16, 4, 5) if spatial else torch.randn(2, 20, 16)
    context = torch.randn(2, 7, 12) if cross else None
    assert torch.allclose(ours(x, context), reference(x, context), atol=1e-5)


def test_attention_mask_bias_matches_reference():
    torch.manual_seed(0)
    reference = ReferenceAttention(16, cross_attention_dim=12, heads=2, dim_head=8)
    ours = Attention(16, cross_attention_dim=12, heads=2, dim_head=8)
    ours.load_state_dict(reference.state_dict())
    x, context = torch.randn(2, 9, 16), torch.randn(2, 5, 12)
    bias = torch.tensor([[0.0, 0, -10000, -10000, 0], [0.0] * 5])[:, None]
    assert torch.allclose(ours(x, context, bias), reference(x, context, bias), atol=1e-5)


@pytest.mark.parametrize("slice_size", [1, 3, 8])
def test_sliced_attention_equals_unsliced(slice_size):
    torch.manual_seed(0)
    attention = Attention(16, heads=4, dim_head=4)
    x = torch.randn(2, 10, 16)
    expected = attention(x)
    attention.set_attention_slice(slice_size)
    assert torch.allclose(attention(x), expected, atol=1e-6)


def test_set_attention_slice_auto_uses_half_the_heads_and_none_turns_it_off():
    model = torch.nn.Sequential(Attention(16, heads=4, dim_head=4), Attention(16, heads=1,
                                                                              dim_head=16))
    set_attention_slice(model, "auto")
    assert [m.slice_size for m in model] == [2, 1]
    set_attention_slice(model, None)
    assert [m.slice_size for m in model] == [None, None]


def test_feed_forward_geglu_keys_and_outputs():
    from diffusers.models.attention import FeedForward as ReferenceFeedForward

    torch.manual_seed(0)
    reference = ReferenceFeedForward(16, activation_fn="geglu")
    ours = FeedForward(16, activation_fn="geglu")
    ours.load_state_dict(reference.state_dict())
    x = torch.randn(2, 5, 16)
    assert torch.allclose(ours(x), reference(x), atol=1e-6)


def test_unknown_activation_is_a_config_error_listing_known_ones():
    with pytest.raises(ConfigError, match="silu"):
        get_activation("swishy")


def test_model_output_is_reachable_by_name_index_and_unpacking():
    from dataclasses import dataclass

    @dataclass
    class Out(ModelOutput):
        sample: torch.Tensor
        extra: torch.Tensor | None = None

    out = Out(sample=torch.ones(1))
    assert out[0] is out.sample and out["sample"] is out.sample
    assert out.to_tuple() == (out.sample,) and len(out) == 1


def test_add_to_fresh_adds_in_place_only_when_the_result_fits():
    from diffusion_kernel.nn import add_to_fresh

    fresh, bias = torch.ones(2, 3, 4, 4), torch.full((2, 3, 1, 1), 2.0)
    out = add_to_fresh(fresh, bias)
    assert out.data_ptr() == fresh.data_ptr() and torch.equal(out, torch.full_like(out, 3.0))
    small = torch.ones(2, 3, 1, 1)  # the result would be larger than ``small``
    grown = add_to_fresh(small, torch.ones(2, 3, 4, 4))
    assert grown.shape == (2, 3, 4, 4) and torch.equal(small, torch.ones(2, 3, 1, 1))
    half = torch.ones(2, 3, dtype=torch.float16)  # float16 + float32 is float32: a new tensor
    promoted = add_to_fresh(half, torch.ones(2, 3))
    assert promoted.dtype == torch.float32 and torch.equal(half, torch.ones_like(half))


def test_dropout_runs_in_training_only():
    torch.manual_seed(0)
    x = torch.randn(2, 5, 16)
    for layer in (FeedForward(16, dropout=0.5), Attention(16, heads=2, dim_head=8, dropout=0.5)):
        layer.eval()
        with torch.no_grad():
            assert torch.equal(layer(x), layer(x))  # eval: deterministic, no dropout
        layer.train()
        assert not torch.equal(layer(x), layer(x))  # training: a new mask each call
