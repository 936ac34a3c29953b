"""StableDiffusionImg2ImgPipeline: parity with diffusers 0.42.1 (several schedulers, strength),
per-image generators, image formats, and argument errors."""

import numpy as np
import PIL.Image
import pytest
import torch
from diffusion_kernel.errors import PipelineError
from diffusion_kernel_vision.pipelines.stable_diffusion_img2img import (
    StableDiffusionImg2ImgPipeline,
)

from . import tiny
from .tiny import single_thread  # noqa: F401

TOL = 1e-4


def seeded(*seeds):
    gens = [torch.Generator().manual_seed(s) for s in seeds]
    return gens[0] if len(gens) == 1 else gens


def picture(seed=0, size=32):
    rng = np.random.default_rng(seed)
    return PIL.Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def ours():
    return tiny.load_ours(StableDiffusionImg2ImgPipeline, tiny.stable_diffusion_folder())


@pytest.fixture(scope="module")
def ref():
    return tiny.load_reference("StableDiffusionImg2ImgPipeline", tiny.stable_diffusion_folder())


@pytest.fixture(autouse=True)
def _fresh_schedulers(ours, ref):
    ours.scheduler, ref.scheduler = tiny.scheduler_pair(
        "DDIMScheduler", tiny.scheduler_config(tiny.stable_diffusion_folder()))


def run(pipe, prompt="a cat", **kwargs):
    kwargs = {"image": picture(), "num_inference_steps": 4, "strength": 0.6,
              "output_type": "np", "generator": seeded(0), **kwargs}
    return pipe(prompt, **kwargs).images


@pytest.mark.parametrize("name,options", [
    ("DDIMScheduler", {}),
    ("EulerDiscreteScheduler", {}),
    ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++"}),
    ("EulerAncestralDiscreteScheduler", {}),
], ids=["DDIM", "Euler", "DPM++", "EulerAncestral"])
def test_images_match_reference_for_scheduler(ours, ref, name, options):
    ours.scheduler, ref.scheduler = tiny.scheduler_pair(
        name, tiny.scheduler_config(tiny.stable_diffusion_folder()), **options)
    mine, theirs = run(ours), run(ref)
    assert mine.shape == (1, 32, 32, 3)
    np.testing.assert_allclose(mine, theirs, atol=TOL)


@pytest.mark.parametrize("strength", [0.3, 1.0])
def test_strength_matches_reference(ours, ref, strength):
    np.testing.assert_allclose(run(ours, strength=strength), run(ref, strength=strength),
                               atol=TOL)


def test_strength_sets_how_many_steps_run(ours):
    steps = []
    run(ours, strength=0.5, num_inference_steps=4,
        callback_on_step_end=lambda pipe, i, t, tensors: steps.append(int(t)) or {})
    assert steps == ours.scheduler.timesteps[2:].tolist()


def test_generator_list_and_several_images_match_reference(ours, ref):
    mine = run(ours, prompt=["a cat", "the dog"], generator=seeded(1, 2))
    theirs = run(ref, prompt=["a cat", "the dog"], generator=seeded(1, 2))
    np.testing.assert_allclose(mine, theirs, atol=TOL)


def test_per_image_generators_make_images_independent_of_the_batch(ours):
    seeds = [5, 6, 7]
    batch = run(ours, num_images_per_prompt=3, generator=seeded(*seeds))
    alone = np.concatenate([run(ours, generator=[seeded(s)]) for s in seeds])
    np.testing.assert_allclose(batch, alone, atol=1e-5)


def test_numpy_and_tensor_images_give_the_same_result_as_pil(ours):
    array = np.asarray(picture(), dtype=np.float32) / 255.0
    from_pil = run(ours)
    np.testing.assert_allclose(run(ours, image=array), from_pil, atol=1e-5)
    np.testing.assert_allclose(run(ours, image=torch.from_numpy(array).permute(2, 0, 1)),
                               from_pil, atol=1e-5)


@pytest.mark.parametrize("kwargs,message", [
    (dict(strength=1.5), r"strength must lie in \[0, 1\]"),
    (dict(strength=-0.1), r"strength must lie in \[0, 1\]"),
    (dict(strength=0.1, num_inference_steps=4), "leaves no denoising step"),
    (dict(image=None), "image is required"),
    (dict(image=[picture(), picture(1)], prompt=["a", "b", "c"]), "2 images for 3 images"),
    (dict(output_type="gif"), "unknown output_type"),
], ids=["strength-high", "strength-low", "no-steps", "no-image", "image-count", "output-type"])
def test_bad_arguments_raise_a_pipeline_error(ours, kwargs, message):
    prompt = kwargs.pop("prompt", "a cat")
    with pytest.raises(PipelineError, match=message):
        run(ours, prompt=prompt, **kwargs)
