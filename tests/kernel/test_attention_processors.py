"""The attention processor API (diffusers names): processors written for diffusers run on our
layers and give the reference's numbers; ``attn_processors`` / ``set_attn_processor`` /
``set_default_attn_processor``; fused q/k/v projections equal the unfused ones."""

from __future__ import annotations

import pytest
import torch
from diffusion_kernel import registry
from diffusion_kernel.errors import ConfigError
from diffusion_kernel.nn import Attention, AttnProcessor
from torch import nn
from torch.nn import functional as F

TINY_SD = dict(sample_size=8, block_out_channels=(16, 32), layers_per_block=1,
               norm_num_groups=8, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
               up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=24,
               attention_head_dim=4)
TEXT_TOKENS, IMAGE_TOKENS = 5, 3


@pytest.fixture(scope="module")
def unets(tmp_path_factory):
    """A tiny reference UNet2DConditionModel and ours loaded from its checkpoint."""
    from diffusers import UNet2DConditionModel as Reference

    folder = tmp_path_factory.mktemp("unet")
    torch.manual_seed(0)
    reference = Reference(**TINY_SD).eval()
    reference.save_pretrained(folder)
    ours = registry.models.get("UNet2DConditionModel").from_pretrained(folder)
    return ours, reference


def _inputs(tokens: int = TEXT_TOKENS):
    generator = torch.Generator().manual_seed(3)
    return dict(sample=torch.randn(2, 4, 8, 8, generator=generator), timestep=torch.tensor(321),
                encoder_hidden_states=torch.randn(2, tokens, 24, generator=generator))


class IPAdapterStyleProcessor(nn.Module):
    """Decoupled cross-attention (Ye et al. 2023, IP-Adapter, eq. 5), written the way processors
    for diffusers are: the last ``num_tokens`` context tokens are image features with their own
    key/value projections; their attention is added with weight ``scale``. It uses only the
    layer's diffusers API (to_q/to_k/to_v/to_out, heads, prepare_attention_mask, residual...)."""

    def __init__(self, hidden_size: int, cross_attention_dim: int, num_tokens: int,
                 scale: float = 1.0):
        super().__init__()
        self.num_tokens, self.scale = num_tokens, scale
        self.to_k_ip = nn.Linear(cross_attention_dim, hidden_size, bias=False)
        self.to_v_ip = nn.Linear(cross_attention_dim, hidden_size, bias=False)

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None,
                 temb=None, **kwargs):
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        batch = hidden_states.shape[0]
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, hidden_states.shape[1],
                                                         batch)
        end = encoder_hidden_states.shape[1] - self.num_tokens
        text, image = encoder_hidden_states[:, :end], encoder_hidden_states[:, end:]
        if attn.norm_cross:
            text = attn.norm_encoder_hidden_states(text)

        def heads(x):
            return x.view(batch, -1, attn.heads, x.shape[-1] // attn.heads).transpose(1, 2)

        query = heads(attn.to_q(hidden_states))
        out = F.scaled_dot_product_attention(query, heads(attn.to_k(text)),
                                             heads(attn.to_v(text)))
        image_out = F.scaled_dot_product_attention(query, heads(self.to_k_ip(image)),
                                                   heads(self.to_v_ip(image)))
        out = out + self.scale * image_out
        out = out.transpose(1, 2).reshape(batch, -1, attn.heads * query.shape[-1])
        out = attn.to_out[1](attn.to_out[0](out))
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


def _ip_processors(model, scale: float, default):
    """IP processors on the cross-attention layers (the same seeded weights for any model built
    from TINY_SD), ``default()`` elsewhere."""
    torch.manual_seed(7)
    processors = {}
    for name in sorted(model.attn_processors):  # the same weights for the same layer name
        if name.endswith("attn2.processor"):
            layer = model.get_submodule(name[: -len(".processor")])
            processors[name] = IPAdapterStyleProcessor(layer.to_q.out_features, 24,
                                                       IMAGE_TOKENS, scale)
        else:
            processors[name] = default()
    return processors


def test_attn_processors_are_named_like_the_reference(unets):
    ours, reference = unets
    # the same names (module registration order differs: diffusers registers mid_block last)
    assert sorted(ours.attn_processors) == sorted(reference.attn_processors)
    assert len(ours.attn_processors) == 8
    assert all(isinstance(p, AttnProcessor) for p in ours.attn_processors.values())


def test_an_ip_adapter_style_processor_written_for_diffusers_gives_the_reference_numbers(unets):
    from diffusers.models.attention_processor import AttnProcessor2_0 as ReferenceDefault

    ours, reference = unets
    inputs = _inputs(TEXT_TOKENS + IMAGE_TOKENS)
    try:
        ours.set_attn_processor(_ip_processors(ours, 0.6, AttnProcessor))
        reference.set_attn_processor(_ip_processors(reference, 0.6, ReferenceDefault))
        with torch.no_grad():
            got, expected = ours(**inputs).sample, reference(**inputs).sample
        # the processors' weights are submodules, as in diffusers
        assert "down_blocks.0.attentions.0.transformer_blocks.0.attn2.processor.to_k_ip.weight" \
            in ours.state_dict()
        ours.set_attn_processor(_ip_processors(ours, 0.0, AttnProcessor))
        with torch.no_grad():
            text_only = ours(**inputs).sample
    finally:
        ours.set_default_attn_processor()
        reference.set_attn_processor(ReferenceDefault())
    assert (got - expected).abs().max() < 1e-5
    with torch.no_grad():  # scale 0: the image tokens change nothing
        plain = ours(**_inputs(TEXT_TOKENS + IMAGE_TOKENS) | dict(
            encoder_hidden_states=inputs["encoder_hidden_states"][:, :TEXT_TOKENS])).sample
    assert (text_only - plain).abs().max() < 1e-5
    assert (got - plain).abs().max() > 1e-3  # and with scale 0.6 they do
    assert not any("processor" in key for key in ours.state_dict())  # the default has no weights


@pytest.mark.parametrize("layer_kwargs", [
    dict(query_dim=16, heads=2, dim_head=8),  # self-attention on tokens
    dict(query_dim=16, cross_attention_dim=12, heads=4, dim_head=4, bias=True),
    dict(query_dim=16, heads=2, dim_head=8, bias=True, norm_num_groups=4, residual_connection=True,
         rescale_output_factor=2.0, upcast_softmax=True),  # the U-Net's pixel attention
])
def test_the_references_own_processors_run_on_our_layer(layer_kwargs):
    """diffusers' AttnProcessor (its classic bmm path, which calls prepare_attention_mask,
    head_to_batch_dim, get_attention_scores and batch_to_head_dim) and AttnProcessor2_0 give our
    default's output on our layer, with and without a key mask."""
    from diffusers.models.attention_processor import AttnProcessor as ReferenceClassic
    from diffusers.models.attention_processor import AttnProcessor2_0 as ReferenceSDPA

    torch.manual_seed(0)
    layer = Attention(**layer_kwargs).eval()
    feature_map = "norm_num_groups" in layer_kwargs
    x = torch.randn(2, 16, 3, 3) if feature_map else torch.randn(2, 9, 16)
    context = torch.randn(2, 5, 12) if "cross_attention_dim" in layer_kwargs else None
    keys = 5 if context is not None else 9
    mask = torch.zeros(2, 1, keys)
    mask[1, 0, :2] = -10000.0  # the second sample may not look at its first two keys
    for attention_mask in (None, mask):
        with torch.no_grad():
            expected = layer(x, context, attention_mask)
            for processor in (ReferenceClassic(), ReferenceSDPA()):
                layer.set_processor(processor)
                assert (layer(x, context, attention_mask) - expected).abs().max() < 1e-5
                layer.set_processor(AttnProcessor())


def test_fused_projections_give_the_unfused_outputs(unets):
    ours, _ = unets
    inputs = _inputs()
    keys = set(ours.state_dict())
    with torch.no_grad():
        plain = ours(**inputs).sample
        ours.fuse_qkv_projections()
        try:
            layers = [m for m in ours.modules() if isinstance(m, Attention)]
            assert all(m.fused_projections for m in layers)
            fused = ours(**inputs).sample
            ours.set_attention_slice(1)
            fused_sliced = ours(**inputs).sample
            ours.set_attention_slice(None)
        finally:
            ours.unfuse_qkv_projections()
        unfused = ours(**inputs).sample
    assert set(ours.state_dict()) == keys  # fused weights never reach a checkpoint
    assert (fused - plain).abs().max() < 1e-5 and (fused_sliced - plain).abs().max() < 1e-5
    assert torch.equal(unfused, plain)


def test_set_attn_processor_checks_what_it_is_given(unets):
    ours, _ = unets
    names = list(ours.attn_processors)
    partial = dict.fromkeys(names[1:], AttnProcessor())
    with pytest.raises(ConfigError, match=r"missing: \['down_blocks.0.attentions.0.transformer"
                                          r"_blocks.0.attn1.processor'\]"):
        ours.set_attn_processor(partial | {"mid_block.attn9.processor": AttnProcessor()})
    with pytest.raises(ConfigError, match=r"must be callable as processor\(attn, hidden_states"):
        ours.set_attn_processor("sdpa")
    assert all(isinstance(p, AttnProcessor) for p in ours.attn_processors.values())


def test_a_recording_processor_sees_every_call_and_the_default_comes_back(unets):
    ours, _ = unets
    calls = []

    def recording(attn, hidden_states, encoder_hidden_states=None, attention_mask=None,
                  temb=None, **kwargs):
        calls.append((hidden_states.shape[1], encoder_hidden_states is not None))
        return AttnProcessor()(attn, hidden_states, encoder_hidden_states, attention_mask)

    with torch.no_grad():
        plain = ours(**_inputs()).sample
        ours.set_attn_processor(recording)
        try:
            recorded = ours(**_inputs()).sample
        finally:
            ours.set_default_attn_processor()
    assert torch.equal(recorded, plain)
    # four transformer blocks (8x8, mid 4x4, two 8x8 going up), each a self- then a
    # cross-attention
    assert calls == [(64, False), (64, True), (16, False), (16, True)] + [(64, False),
                                                                          (64, True)] * 2
