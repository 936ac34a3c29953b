"""IFPipeline and IFSuperResolutionPipeline: folders saved by the reference load as our classes and
give its images for the same generators (stage I alone and chained into stage II), what we save
loads in the reference, schedulers swap, and bad input fails before any work."""

import json
import warnings

import numpy as np
import PIL.Image
import pytest
import torch
from diffusers import IFPipeline as ReferenceStage1
from diffusers import IFSuperResolutionPipeline as ReferenceStage2
from diffusion_kernel import registry
from diffusion_kernel.errors import PipelineError
from diffusion_kernel.pipelines import DiffusionPipeline

from . import tiny
from .tiny import seeded, single_thread  # noqa: F401

TOL = 1e-4


def _quiet(pipe):
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def stage_1():
    return _quiet(DiffusionPipeline.from_pretrained(tiny.if_stage_1_folder()))


@pytest.fixture(scope="module")
def stage_2():
    return _quiet(DiffusionPipeline.from_pretrained(tiny.if_stage_2_folder()))


@pytest.fixture(scope="module")
def reference_1():
    return _quiet(ReferenceStage1.from_pretrained(tiny.if_stage_1_folder()))


@pytest.fixture(scope="module")
def reference_2():
    return _quiet(ReferenceStage2.from_pretrained(tiny.if_stage_2_folder()))


def run(pipe, seeds=(0,), **kwargs):
    kwargs = {"prompt": "a cat", "num_inference_steps": 3, "generator": seeded(*seeds),
              "output_type": "np", "clean_caption": False, **kwargs}
    return pipe(**kwargs).images


def test_folders_load_as_our_classes_by_name_and_alias(stage_1, stage_2):
    assert type(stage_1) is registry.pipelines.get("if")
    assert type(stage_2) is registry.pipelines.get("IFSuperResolutionPipeline")
    assert type(stage_1.unet).__module__.startswith("diffusion_kernel_vision")
    assert type(stage_1.watermarker) is registry.models.get("IFWatermarker")
    assert stage_1.safety_checker is None and stage_1.feature_extractor is None


@pytest.mark.parametrize("kwargs", [
    {},
    {"prompt": ["a cat", "the dog"], "negative_prompt": ["dog", "cat"],
     "num_images_per_prompt": 2, "seeds": (1, 2, 3, 4), "guidance_scale": 4.0},
    {"guidance_scale": 1.0, "timesteps": [999, 600, 300, 0], "num_inference_steps": None},
], ids=["guided", "batch_negatives_generators", "unguided_custom_timesteps"])
def test_stage_1_images_match_reference(stage_1, reference_1, kwargs):
    mine, theirs = run(stage_1, **kwargs), run(reference_1, **kwargs)
    assert mine.shape[1:] == (16, 16, 3) and mine.std() > 0.05
    np.testing.assert_allclose(mine, theirs, atol=TOL, rtol=0)


def test_cascade_matches_reference_and_reuses_stage_1_embeddings(stage_1, stage_2, reference_1,
                                                                 reference_2):
    def cascade(first, second):
        embeds, negative = first.encode_prompt("a cat")
        small = first(prompt_embeds=embeds, negative_prompt_embeds=negative,
                      num_inference_steps=3, generator=seeded(0), output_type="pt").images
        assert small.min() < -0.5  # "pt" keeps the [-1, 1] range stage II takes
        assert not small.is_inference()  # an ordinary tensor, though the loop ran in inference
        return second(image=small, prompt_embeds=embeds, negative_prompt_embeds=negative,
                      num_inference_steps=3, noise_level=100, generator=seeded(5),
                      output_type="np").images

    mine, theirs = cascade(stage_1, stage_2), cascade(reference_1, reference_2)
    assert mine.shape == (1, 32, 32, 3) and mine.std() > 0.05
    # Bit for bit: dynamic thresholding spreads any round-off, so the U-Nets, the schedulers and
    # the loops (inference mode, text processed once, in-place elementwise steps) must do the
    # reference's float32 arithmetic exactly.
    np.testing.assert_array_equal(mine, theirs)


def test_stage_2_takes_pil_images_and_prompts_like_the_reference(stage_2, reference_2):
    pixels = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    kwargs = dict(image=[PIL.Image.fromarray(pixels)] * 2, prompt=["a cat", "the dog"],
                  seeds=(3, 4), num_inference_steps=2, guidance_scale=1.0)
    np.testing.assert_allclose(run(stage_2, **kwargs), run(reference_2, **kwargs), atol=TOL,
                               rtol=0)


def test_swapped_scheduler_with_learned_variance_matches_reference(stage_1, reference_1):
    import diffusers

    config = dict(reference_1.scheduler.config)
    saved = stage_1.scheduler, reference_1.scheduler
    try:
        name = "DPMSolverMultistepScheduler"
        stage_1.scheduler = registry.schedulers.get(name).from_config(config)
        reference_1.scheduler = getattr(diffusers, name).from_config(config)
        np.testing.assert_allclose(run(stage_1), run(reference_1), atol=TOL, rtol=0)
    finally:
        stage_1.scheduler, reference_1.scheduler = saved


def test_a_scheduler_without_learned_variance_gets_the_noise_channels_only(stage_1):
    # The reference passes all 6 channels to DDIM and fails; here DDIM gets the 3 noise ones.
    saved = stage_1.scheduler
    try:
        stage_1.scheduler = registry.schedulers.get("ddim").from_config(saved.config,
                                                                        thresholding=True)
        images = run(stage_1)
    finally:
        stage_1.scheduler = saved
    assert images.shape == (1, 16, 16, 3) and np.isfinite(images).all()
    assert np.abs(images - run(stage_1)).max() > 0.01  # another sampler, another image


def test_saved_folder_loads_in_the_reference_with_the_same_images(stage_1, tmp_path):
    stage_1.save_pretrained(tmp_path)
    index = json.loads((tmp_path / "model_index.json").read_text())
    assert index["watermarker"] == ["deepfloyd_if", "IFWatermarker"]
    assert index["unet"] == ["diffusers", "UNet2DConditionModel"]
    reference = _quiet(ReferenceStage1.from_pretrained(tmp_path))
    np.testing.assert_allclose(run(stage_1), run(reference), atol=TOL, rtol=0)


def test_pil_output_is_watermarked_with_the_stored_mark(stage_1):
    watermarker = stage_1.watermarker
    # the mark scales with the area: 3 x 3 pixels at 64 x 64 (one unguided step is enough here)
    size = dict(height=64, width=64, num_inference_steps=1, guidance_scale=1.0)
    plain = np.asarray(run(stage_1, output_type="pil", **size)[0])
    watermarker.watermark_image.fill_(255.0)  # opaque white
    watermarker._mark = None
    try:
        marked = np.asarray(run(stage_1, output_type="pil", **size)[0])
        tiny_images = run(stage_1, output_type="pil")  # 16 x 16: the mark rounds to nothing
    finally:
        watermarker.watermark_image.zero_()
        watermarker._mark = None
    changed = (marked != plain).any(axis=-1)
    assert changed.any() and not changed[:-3].any() and not changed[:, :-3].any()
    assert (marked[-3:, -3:] == 255).all()  # a 3 x 3 opaque white mark in the corner
    assert tiny_images[0].size == (16, 16)


def test_callbacks_see_every_step_and_may_replace_the_images(stage_1):
    seen, legacy = [], []

    def on_step_end(pipe, step, t, tensors):
        seen.append((step, int(t)))
        return {"intermediate_images": torch.zeros_like(tensors["intermediate_images"])}

    images = run(stage_1, callback=lambda i, t, x: legacy.append(i), callback_steps=2,
                 callback_on_step_end=on_step_end, output_type="pt")
    assert [s for s, _ in seen] == [0, 1, 2] and legacy == [0, 2]
    assert torch.equal(images, torch.zeros_like(images))


def test_clean_caption_falls_back_with_a_warning(stage_1):
    with pytest.warns(UserWarning, match="caption cleaner is not part of diffusion-kernel"):
        cleaned = run(stage_1, prompt="  A Cat ", clean_caption=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        np.testing.assert_array_equal(cleaned, run(stage_1, prompt="a cat"))


@pytest.mark.parametrize("kwargs,message", [
    ({"prompt_embeds": torch.zeros(2, 77, 32), "negative_prompt_embeds": torch.zeros(1, 77, 32),
      "prompt": None}, "must have the same shape"),
    ({"prompt": ["a", "b"], "negative_prompt": ["c"]}, "one negative prompt per prompt"),
    ({"seeds": (1, 2)}, "2 generators for 1 images"),
    ({"output_type": "latent"}, "unknown output_type"),
    ({"callback": print, "callback_steps": 0}, "callback_steps must be a positive int"),
])
def test_stage_1_bad_arguments_fail_before_any_work(stage_1, kwargs, message):
    with pytest.raises(PipelineError, match=message):
        run(stage_1, **kwargs)


@pytest.mark.parametrize("image,kwargs,message", [
    (torch.zeros(2, 3, 16, 16), {}, "2 images for 1 prompts"),
    (torch.zeros(1, 3, 64, 64), {}, "image is 64 x 64 but this stage makes 32 x 32"),
    (torch.zeros(1, 3, 16, 8), {}, "image is 16 x 8"),
    (torch.zeros(1, 4, 16, 16), {}, "3-channel images"),
    (None, {}, "needs image="),
    (torch.zeros(1, 3, 16, 16), {"noise_level": 1000}, r"noise_level must be an int in \[0, "),
])
def test_stage_2_bad_images_fail_before_any_work(stage_2, image, kwargs, message):
    with pytest.raises(PipelineError, match=message):
        run(stage_2, image=image, **kwargs)


def test_missing_or_wrong_components_are_named(stage_1, stage_2):
    components = stage_1.components
    without_text = type(stage_1)(**{**components, "tokenizer": None, "text_encoder": None})
    with pytest.raises(PipelineError, match="pass prompt_embeds"):
        run(without_text)
    with pytest.raises(PipelineError, match="is it a stage I U-Net"):
        type(stage_2)(**{**stage_2.components, "unet": stage_1.unet})
