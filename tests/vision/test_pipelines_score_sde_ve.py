"""ScoreSdeVePipeline: predictor-corrector sampling with the NCSN++ U-Net gives the reference's
images for the same generators (one, or one per image; with and without corrector steps), loads
from and saves to the diffusers layout, and rejects bad arguments."""

import numpy as np
import pytest
import torch
from diffusers import ScoreSdeVePipeline as Reference
from diffusers import ScoreSdeVeScheduler as ReferenceScheduler
from diffusers import UNet2DModel as ReferenceUNet
from diffusion_kernel import registry
from diffusion_kernel.errors import PipelineError
from diffusion_kernel.pipelines import DiffusionPipeline

from .tiny import ROOT, single_thread  # noqa: F401

TOL = 1e-4
NCSNPP_TINY = dict(
    sample_size=16, block_out_channels=(32, 64, 64), layers_per_block=1, norm_num_groups=None,
    time_embedding_type="fourier", mid_block_scale_factor=1.41421356237, norm_eps=1e-6,
    attention_head_dim=None, freq_shift=1,
    down_block_types=("SkipDownBlock2D", "AttnSkipDownBlock2D", "SkipDownBlock2D"),
    up_block_types=("SkipUpBlock2D", "AttnSkipUpBlock2D", "SkipUpBlock2D"))


@pytest.fixture(scope="module")
def folder():
    torch.manual_seed(0)
    unet = ReferenceUNet(**NCSNPP_TINY).eval()
    # sigma_max lowered so that a few steps of a random network stay in a readable range
    Reference(unet=unet, scheduler=ReferenceScheduler(sigma_max=5.0)).save_pretrained(
        ROOT / "score-sde-ve")
    return ROOT / "score-sde-ve"


@pytest.fixture(scope="module")
def pipes(folder):
    ours, reference = DiffusionPipeline.from_pretrained(folder), Reference.from_pretrained(folder)
    for pipe in (ours, reference):
        pipe.set_progress_bar_config(disable=True)
    return ours, reference


def seeded(*seeds):
    gens = [torch.Generator().manual_seed(s) for s in seeds]
    return gens[0] if len(gens) == 1 else gens


@pytest.mark.parametrize("seeds,correct_steps", [((0,), 1), ((3, 4), 2), ((5,), 0)])
def test_images_match_reference(pipes, seeds, correct_steps):
    ours, reference = pipes
    config = dict(reference.scheduler.config, correct_steps=correct_steps)
    ours.scheduler = registry.schedulers.get("ScoreSdeVeScheduler").from_config(config)
    reference.scheduler = ReferenceScheduler.from_config(config)
    kwargs = dict(batch_size=len(seeds), num_inference_steps=3, output_type="np")
    mine = ours(generator=seeded(*seeds), **kwargs).images
    theirs = reference(generator=seeded(*seeds), **kwargs).images
    assert type(ours).__name__ == "ScoreSdeVePipeline" and mine.shape == (len(seeds), 16, 16, 3)
    assert mine.std() > 0.05
    np.testing.assert_allclose(mine, theirs, atol=TOL, rtol=0)


def test_saved_folder_loads_in_the_reference(pipes, tmp_path):
    ours, _ = pipes
    ours.save_pretrained(tmp_path)
    loaded = Reference.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    kwargs = dict(num_inference_steps=2, output_type="np")
    np.testing.assert_allclose(ours(generator=seeded(9), **kwargs).images,
                               loaded(generator=seeded(9), **kwargs).images, atol=TOL, rtol=0)


def test_output_types_and_callback(pipes):
    ours, _ = pipes
    seen = []
    images = ours(num_inference_steps=2, generator=seeded(1), output_type="pt",
                  callback_on_step_end=lambda pipe, i, t, x: seen.append(i)).images
    assert torch.is_tensor(images) and images.shape == (1, 3, 16, 16)
    assert 0.0 <= images.min() and images.max() <= 1.0 and seen == [0, 1]
    pil = ours(num_inference_steps=2, generator=seeded(1)).images
    assert pil[0].size == (16, 16)


@pytest.mark.parametrize("kwargs,message", [
    ({"batch_size": 0}, "batch_size must be a positive int"),
    ({"generator": seeded(1, 2)}, "2 generators for 1 images"),
    ({"output_type": "latent"}, "works in pixel space"),
])
def test_bad_arguments_fail_clearly(pipes, kwargs, message):
    with pytest.raises(PipelineError, match=message):
        pipes[0](num_inference_steps=2, **kwargs)
