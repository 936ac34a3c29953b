"""PriorTransformer, UnCLIPTextProjModel, LDMBertModel and IFWatermarker: folders the reference
saved load here and give its outputs; what we save loads in the reference with no key left
over; bad inputs fail clearly."""

import numpy as np
import PIL.Image
import pytest
import torch
from diffusers import PriorTransformer as ReferencePrior
from diffusers.pipelines.deepfloyd_if import IFWatermarker as ReferenceWatermarker
from diffusers.pipelines.deprecated.unclip.text_proj import (
    UnCLIPTextProjModel as ReferenceTextProj,
)
from diffusers.pipelines.latent_diffusion.pipeline_latent_diffusion import (
    LDMBertConfig,
)
from diffusers.pipelines.latent_diffusion.pipeline_latent_diffusion import (
    LDMBertModel as ReferenceBert,
)
from diffusion_kernel import registry
from diffusion_kernel.errors import CheckpointError, ModelInputError
from diffusion_kernel.pipelines import library_of

from . import tiny
from .tiny import single_thread  # noqa: F401

TOL = 1e-5
PRIOR_VARIANTS = {
    "tiny": tiny.PRIOR,
    "norms_no_prd_token": dict(
        tiny.PRIOR, norm_in_type="layer", embedding_proj_norm_type="layer", added_emb_type=None,
        additional_embeddings=3,
        embedding_proj_dim=20, clip_embed_dim=40, time_embed_dim=48,
        num_layers=2, time_embed_act_fn="gelu"),
}


def _prior_inputs(config, batch=2):
    torch.manual_seed(2)
    text = config["num_embeddings"]
    mask = torch.ones(batch, text, dtype=torch.bool)
    mask[1, text // 2:] = False
    return dict(hidden_states=torch.randn(batch, config["embedding_dim"]),
                timestep=torch.tensor(321),
                proj_embedding=torch.randn(batch, config.get("embedding_proj_dim") or
                                           config["embedding_dim"]),
                encoder_hidden_states=torch.randn(batch, text, config["embedding_dim"]),
                attention_mask=mask)


@pytest.mark.parametrize("variant", sorted(PRIOR_VARIANTS))
def test_prior_matches_the_reference_both_ways(variant, tmp_path):
    config = PRIOR_VARIANTS[variant]
    torch.manual_seed(0)
    reference = tiny.randomised(ReferencePrior(**config)).eval()
    reference.save_pretrained(tmp_path / "ref")
    ours = registry.models.get("PriorTransformer").from_pretrained(tmp_path / "ref")
    inputs = _prior_inputs(config)
    with torch.no_grad():
        expected = reference(**inputs).predicted_image_embedding
        torch.testing.assert_close(ours(**inputs).predicted_image_embedding, expected,
                                   atol=TOL, rtol=0)
        unmasked = dict(inputs, attention_mask=None)  # no mask: no causal mask either
        torch.testing.assert_close(ours(**unmasked)[0], reference(**unmasked)[0], atol=TOL,
                                   rtol=0)
    latents = torch.randn(2, expected.shape[1])
    torch.testing.assert_close(ours.post_process_latents(latents),
                               reference.post_process_latents(latents))
    ours.save_pretrained(tmp_path / "ours")
    _, info = ReferencePrior.from_pretrained(tmp_path / "ours", output_loading_info=True)
    assert (info["missing_keys"], info["unexpected_keys"]) == ([], [])


def test_prior_mask_of_the_wrong_length_is_a_clear_error():
    prior = registry.models.get("PriorTransformer")(**tiny.PRIOR)
    inputs = _prior_inputs(tiny.PRIOR)
    inputs["attention_mask"] = inputs["attention_mask"][:, :5]
    with pytest.raises(ModelInputError, match="num_embeddings=16"):
        prior(**inputs)


@pytest.mark.parametrize("guidance", [True, False])
def test_text_projection_matches_the_reference_both_ways(guidance, tmp_path):
    torch.manual_seed(0)
    reference = tiny.randomised(ReferenceTextProj(**tiny.TEXT_PROJ, clip_extra_context_tokens=3))
    reference.save_pretrained(tmp_path / "ref")
    ours = registry.models.get("UnCLIPTextProjModel").from_pretrained(tmp_path / "ref")
    batch = 4 if guidance else 2
    inputs = dict(image_embeddings=torch.randn(2, 32), prompt_embeds=torch.randn(batch, 32),
                  text_encoder_hidden_states=torch.randn(batch, 9, 32),
                  do_classifier_free_guidance=guidance)
    with torch.no_grad():
        for got, expected in zip(ours(**inputs), reference(**inputs)):
            torch.testing.assert_close(got, expected, atol=TOL, rtol=0)
    assert ours(**inputs)[0].shape == (batch, 3 + 9, 100)
    ours.save_pretrained(tmp_path / "ours")
    _, info = ReferenceTextProj.from_pretrained(tmp_path / "ours", output_loading_info=True)
    assert (info["missing_keys"], info["unexpected_keys"]) == ([], [])


def test_text_projection_batch_mismatch_is_a_clear_error():
    proj = registry.models.get("UnCLIPTextProjModel")(**tiny.TEXT_PROJ)
    with pytest.raises(ModelInputError, match="2 image embeddings for 3 text embeddings"):
        proj(image_embeddings=torch.randn(2, 32), prompt_embeds=torch.randn(3, 32),
             text_encoder_hidden_states=torch.randn(3, 5, 32), do_classifier_free_guidance=False)


def test_ldm_bert_loads_the_reference_folder_and_saves_one_the_reference_loads(tmp_path):
    torch.manual_seed(0)
    reference = ReferenceBert(LDMBertConfig(**tiny.LDM_BERT)).eval()
    reference.save_pretrained(tmp_path / "ref")
    ours = registry.models.get("ldm-bert").from_pretrained(tmp_path / "ref")
    ids = torch.randint(0, 34, (2, 77), generator=torch.Generator().manual_seed(0))
    mask = torch.ones(2, 77, dtype=torch.long)
    mask[0, 20:] = 0
    with torch.no_grad():
        expected = reference(ids)[0]
        torch.testing.assert_close(ours(ids)[0], expected, atol=TOL, rtol=0)
        torch.testing.assert_close(ours(ids, attention_mask=mask).last_hidden_state,
                                   reference(ids, attention_mask=mask)[0], atol=TOL, rtol=0)
    ours.save_pretrained(tmp_path / "ours")
    back, info = ReferenceBert.from_pretrained(tmp_path / "ours", output_loading_info=True)
    assert not (info["missing_keys"] or info["unexpected_keys"])
    with torch.no_grad():
        torch.testing.assert_close(back.eval()(ids)[0], expected, atol=TOL, rtol=0)
    assert library_of(ours) == "latent_diffusion"


def test_ldm_bert_errors_name_the_problem(tmp_path):
    bert = registry.models.get("LDMBertModel")(**tiny.LDM_BERT)
    with pytest.raises(ModelInputError, match="at most 77 tokens"):
        bert(torch.zeros(1, 78, dtype=torch.long))
    bert.save_pretrained(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(Exception, match="model.safetensors"):
        registry.models.get("LDMBertModel").from_pretrained(tmp_path)
    other = registry.models.get("LDMBertModel")(**{**tiny.LDM_BERT, "d_model": 16})
    other.save_pretrained(tmp_path / "small")
    (tmp_path / "small" / "config.json").write_text((tmp_path / "config.json").read_text())
    with pytest.raises(CheckpointError, match="mis-shaped"):
        registry.models.get("LDMBertModel").from_pretrained(tmp_path / "small")


def test_watermark_matches_the_reference(tmp_path):
    reference = ReferenceWatermarker()
    reference.watermark_image.copy_(torch.randint(0, 256, (62, 62, 4),
                                                  generator=torch.Generator().manual_seed(0)))
    reference.save_pretrained(tmp_path)
    ours = registry.models.get("IFWatermarker").from_pretrained(tmp_path)
    rng = np.random.default_rng(0)
    images = [PIL.Image.fromarray(rng.integers(0, 256, (256, 256, 3), dtype=np.uint8))
              for _ in range(2)]
    mine = ours.apply_watermark([im.copy() for im in images], 64)
    theirs = reference.apply_watermark([im.copy() for im in images], 64)
    for a, b, original in zip(mine, theirs, images):
        assert np.array_equal(np.asarray(a), np.asarray(b))
        assert (np.asarray(a) != np.asarray(original)).any(axis=-1).sum() > 100  # it marks
    assert library_of(ours) == "deepfloyd_if"


def test_prior_attention_slicing_keeps_the_masked_outputs():
    torch.manual_seed(0)
    prior = tiny.randomised(registry.models.get("PriorTransformer")(**tiny.PRIOR)).eval()
    inputs = _prior_inputs(tiny.PRIOR)
    with torch.no_grad():
        full = prior(**inputs)[0]
        prior.set_attention_slice("max")
        torch.testing.assert_close(prior(**inputs)[0], full, atol=TOL, rtol=0)
