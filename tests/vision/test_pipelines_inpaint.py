"""StableDiffusionInpaintPipeline: parity with diffusers 0.42.1 for 9-channel inpainting UNets
and the legacy 4-channel blend, per-image generators, mask handling and argument errors."""

import numpy as np
import PIL.Image
import pytest
import torch
from diffusion_kernel.errors import PipelineError
from diffusion_kernel_vision.pipelines.stable_diffusion_inpaint import (
    StableDiffusionInpaintPipeline,
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


def square_mask(size=32, value=255):
    mask = np.zeros((size, size), dtype=np.uint8)
    mask[8:24, 8:24] = value  # white: repaint
    return PIL.Image.fromarray(mask)


@pytest.fixture(scope="module", params=["9-channel", "4-channel"])
def pair(request):
    folder = (tiny.inpaint_folder() if request.param == "9-channel"
              else tiny.stable_diffusion_folder())
    ours = tiny.load_ours(StableDiffusionInpaintPipeline, folder)
    ref = tiny.load_reference("StableDiffusionInpaintPipeline", folder)
    ours.checkpoint_scheduler_config = tiny.scheduler_config(folder)
    return ours, ref


@pytest.fixture(autouse=True)
def _fresh_schedulers(pair):
    ours, ref = pair
    ours.scheduler, ref.scheduler = tiny.scheduler_pair("DDIMScheduler",
                                                        ours.checkpoint_scheduler_config)


def run(pipe, prompt="a cat", **kwargs):
    kwargs = {"image": picture(), "mask_image": square_mask(), "num_inference_steps": 3,
              "output_type": "np", "generator": seeded(0), **kwargs}
    return pipe(prompt, **kwargs).images


@pytest.mark.parametrize("name,options", [
    ("DDIMScheduler", {}),
    ("EulerDiscreteScheduler", {}),
    ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++"}),
], ids=["DDIM", "Euler", "DPM++"])
def test_images_match_reference_for_scheduler(pair, name, options):
    ours, ref = pair
    ours.scheduler, ref.scheduler = tiny.scheduler_pair(name, ours.checkpoint_scheduler_config,
                                                        **options)
    mine, theirs = run(ours), run(ref)
    assert mine.shape == (1, 32, 32, 3)
    np.testing.assert_allclose(mine, theirs, atol=TOL)


def test_partial_strength_and_several_images_match_reference(pair):
    ours, ref = pair
    kwargs = dict(prompt=["a cat", "the dog"], num_images_per_prompt=2, strength=0.75,
                  num_inference_steps=4)
    np.testing.assert_allclose(run(ours, **kwargs), run(ref, **kwargs), atol=TOL)


def test_per_image_generators_make_images_independent_of_the_batch(pair):
    ours, _ = pair
    seeds = [3, 4]
    batch = run(ours, num_images_per_prompt=2, strength=0.75, num_inference_steps=4,
                generator=seeded(*seeds))
    alone = np.concatenate([run(ours, strength=0.75, num_inference_steps=4,
                                generator=[seeded(s)]) for s in seeds])
    np.testing.assert_allclose(batch, alone, atol=1e-5)


def test_mask_is_binarized_at_one_half(pair):
    ours, _ = pair
    grey = run(ours, mask_image=square_mask(value=140))  # 140/255 >= 0.5: repaint
    white = run(ours, mask_image=square_mask(value=255))
    np.testing.assert_allclose(grey, white, atol=1e-6)
    dark = run(ours, mask_image=square_mask(value=100))  # < 0.5: keep everything
    assert np.abs(dark - white).max() > 1e-3


def test_legacy_unet_keeps_the_known_region_from_the_image_latents():
    pipe = tiny.load_ours(StableDiffusionInpaintPipeline, tiny.stable_diffusion_folder())
    full_mask = run(pipe, mask_image=square_mask(value=0), output_type="latent")
    image = pipe.image_processor.preprocess(picture())
    dist = pipe.vae.encode(image).latent_dist
    expected = dist.sample(seeded(0)) * pipe.vae.config.scaling_factor
    # with nothing to repaint, the final latents are the image's latents (drawn first from the
    # generator, exactly as the reference draws them)
    torch.testing.assert_close(full_mask, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("kwargs,message", [
    (dict(mask_image=square_mask(size=16)), "mask_image is 16x16 but image is 32x32"),
    (dict(strength=2.0), r"strength must lie in \[0, 1\]"),
    (dict(mask_image=None), "image and mask_image are both required"),
    (dict(height=30), "multiples of 8"),
    (dict(generator=seeded(1, 2)), "2 generators for 1 images"),
    (dict(negative_prompt=["x", "y"]), "same kind as prompt"),
], ids=["mask-size", "strength", "no-mask", "size", "generators", "negative"])
def test_bad_arguments_raise_a_pipeline_error(pair, kwargs, message):
    ours, _ = pair
    with pytest.raises(PipelineError, match=message):
        run(ours, **kwargs)
