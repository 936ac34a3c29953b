"""UnCLIPPipeline: a folder the reference saved loads as our class and gives the reference's
images (prior, decoder and super-resolution, with and without guidance, several images per
prompt); what we save loads in the reference's classes with no key left over; bad input fails
before any work.

The reference pipeline is built from its components: diffusers 0.42.1 cannot reload its own
unCLIP folders (see tiny.unclip_components)."""

import json

import numpy as np
import pytest
import torch
from diffusers import UnCLIPPipeline as Reference
from diffusion_kernel import registry
from diffusion_kernel.errors import PipelineError
from diffusion_kernel.pipelines import DiffusionPipeline

from . import tiny
from .tiny import seeded, single_thread  # noqa: F401

TOL = 1e-4
STEPS = dict(prior_num_inference_steps=2, decoder_num_inference_steps=2,
             super_res_num_inference_steps=2)


@pytest.fixture(scope="module")
def ours():
    pipe = DiffusionPipeline.from_pretrained(tiny.unclip_folder())
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def reference():
    pipe = Reference(**tiny.unclip_components())
    pipe.set_progress_bar_config(disable=True)
    return pipe


def run(pipe, prompt="a cat", seeds=(0,), **kwargs):
    return pipe(prompt, generator=seeded(*seeds), **{"output_type": "np", **STEPS, **kwargs}).images


def test_folder_loads_as_our_classes(ours):
    assert type(ours) is registry.pipelines.get("UnCLIPPipeline")
    for name, cls in (("prior", "PriorTransformer"), ("text_proj", "UnCLIPTextProjModel"),
                      ("decoder", "UNet2DConditionModel"), ("super_res_first", "UNet2DModel"),
                      ("decoder_scheduler", "unclip")):
        assert type(getattr(ours, name)) is registry.find(cls).load(), name


@pytest.mark.parametrize("kwargs", [
    {},
    {"num_images_per_prompt": 2, "seeds": (1, 2), "prior_guidance_scale": 2.0,
     "decoder_guidance_scale": 3.0},
    {"prior_guidance_scale": 1.0, "decoder_guidance_scale": 1.0,
     "super_res_num_inference_steps": 3},
], ids=["guided", "batch_generators", "unguided_three_super_res_steps"])
def test_images_match_reference(ours, reference, kwargs):
    mine, theirs = run(ours, **kwargs), run(reference, **kwargs)
    assert mine.shape[1:] == (32, 32, 3) and mine.std() > 0.05
    np.testing.assert_allclose(mine, theirs, atol=TOL, rtol=0)


def test_given_text_encoder_output_and_latents_match_reference(ours, reference):
    tokens = ours.tokenizer(["a cat"], padding="max_length", return_tensors="pt")
    with torch.no_grad():
        output = ours.text_encoder(tokens.input_ids)
    given = dict(text_model_output=(output.text_embeds, output.last_hidden_state),
                 text_attention_mask=tokens.attention_mask.bool(),
                 prior_latents=torch.randn(1, 32), decoder_latents=torch.randn(1, 3, 16, 16),
                 super_res_latents=torch.randn(1, 3, 32, 32))
    mine, theirs = run(ours, prompt=None, **given), run(reference, prompt=None, **given)
    np.testing.assert_allclose(mine, theirs, atol=TOL, rtol=0)
    np.testing.assert_allclose(mine, run(ours, **{k: v for k, v in given.items()
                                                  if k.endswith("latents")}), atol=1e-6)


def test_saved_folder_loads_in_the_reference_classes(ours, reference, tmp_path):
    import diffusers
    from diffusers.pipelines.deprecated.unclip.text_proj import UnCLIPTextProjModel

    ours.save_pretrained(tmp_path)
    index = json.loads((tmp_path / "model_index.json").read_text())
    components = {}
    for name, (library, class_name) in ((k, v) for k, v in index.items()
                                        if not k.startswith("_")):
        if library == "transformers":
            components[name] = getattr(reference, name)
            continue
        cls = UnCLIPTextProjModel if class_name == "UnCLIPTextProjModel" else \
            getattr(diffusers, class_name)
        if class_name.endswith("Scheduler"):
            components[name] = cls.from_pretrained(tmp_path / name)
            continue
        components[name], info = cls.from_pretrained(tmp_path / name, output_loading_info=True)
        assert (info["missing_keys"], info["unexpected_keys"]) == ([], []), name
    loaded = Reference(**components)
    loaded.set_progress_bar_config(disable=True)
    np.testing.assert_allclose(run(loaded), run(ours), atol=TOL, rtol=0)


@pytest.mark.parametrize("kwargs,message", [
    ({"prompt": None}, "exactly one of prompt and text_model_output"),
    ({"prompt": 3}, "prompt must be a str or a list of str"),
    ({"seeds": (1, 2)}, "2 generators for 1 images"),
    ({"decoder_num_inference_steps": 0}, "decoder_num_inference_steps must be a positive int"),
    ({"decoder_latents": torch.zeros(1, 3, 8, 8)}, r"needs \(1, 3, 16, 16\)"),
    ({"output_type": "latent"}, "unknown output_type"),
])
def test_bad_arguments_fail_clearly(ours, kwargs, message):
    with pytest.raises(PipelineError, match=message):
        run(ours, **kwargs)


def test_a_missing_component_is_named(ours):
    with pytest.raises(PipelineError, match=r"missing: \['prior'\]"):
        type(ours)(**{**ours.components, "prior": None})
