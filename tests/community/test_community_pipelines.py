"""community/{interpolate,composable,panorama}_stable_diffusion.py on the tiny Stable Diffusion
checkpoint: each reduces to the plain pipeline in its trivial case, and does its own job."""

import numpy as np
import PIL.Image
import pytest
import torch

STEPS = 2


def plain_image(plain, prompt, seed, **kwargs):
    return plain(prompt, num_inference_steps=STEPS, generator=torch.Generator().manual_seed(seed),
                 **kwargs).images


# Interpolation -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def walked(community, tmp_path_factory):
    pipe = community("interpolate_stable_diffusion")
    folder = tmp_path_factory.mktemp("frames")
    paths = pipe.walk(["the cat", "a tea"], seeds=[3, 7], num_interpolation_steps=3,
                      output_dir=folder, interpolation="slerp", num_inference_steps=STEPS)
    return paths


def test_walk_writes_steps_plus_one_frames_in_order(walked):
    assert [p.name for p in walked] == [f"frame_{k:06d}.png" for k in range(4)]
    assert all(p.is_file() for p in walked)


def test_walk_endpoints_equal_the_plain_pipeline_for_those_seeds(walked, plain):
    first = np.asarray(PIL.Image.open(walked[0]))
    last = np.asarray(PIL.Image.open(walked[-1]))
    np.testing.assert_array_equal(first, np.asarray(plain_image(plain, "the cat", 3)[0]))
    np.testing.assert_array_equal(last, np.asarray(plain_image(plain, "a tea", 7)[0]))


def test_walk_middle_frames_differ_from_the_endpoints(walked):
    frames = [np.asarray(PIL.Image.open(p)).astype(int) for p in walked]
    assert np.abs(frames[1] - frames[0]).max() > 0
    assert np.abs(frames[1] - frames[3]).max() > 0


def test_slerp_keeps_the_norm_of_gaussian_noise(community):
    import sys

    pipe = community("interpolate_stable_diffusion")
    module = sys.modules[type(pipe).__module__]
    a = torch.randn(4096, generator=torch.Generator().manual_seed(0))
    b = torch.randn(4096, generator=torch.Generator().manual_seed(1))
    middle = module.slerp(0.5, a, b)
    assert middle.norm() == pytest.approx(float(a.norm() + b.norm()) / 2, rel=0.02)
    assert module.lerp(0.5, a, b).norm() < 0.8 * a.norm()  # what slerp avoids
    assert torch.equal(module.slerp(0.0, a, b), a) and torch.equal(module.slerp(1.0, a, b), b)


# Composable prompts ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def composable(community):
    return community("composable_stable_diffusion")


def test_composable_single_prompt_equals_the_plain_pipeline(composable, plain):
    ours = composable("the cat", num_inference_steps=STEPS, output_type="np",
                      generator=torch.Generator().manual_seed(0)).images
    np.testing.assert_allclose(ours, plain_image(plain, "the cat", 0, output_type="np"),
                               atol=1e-6)


def test_composable_prompt_syntax_splits_concepts_and_weights(composable):
    import sys

    split = sys.modules[type(composable).__module__].split_prompt
    assert split("a cat:1.5 | the tea :0.5| dog") == (["a cat", "the tea", "dog"],
                                                       [1.5, 0.5, 1.0])


def test_composable_guidance_is_the_weighted_sum_of_concept_directions(composable):
    """Two concepts with weights (1, 0) give the first concept alone; (0.5, 0.5) of the same
    concept twice equals it once (the directions add: Liu et al. Eq. 10)."""
    run = lambda prompt, **kw: composable(prompt, num_inference_steps=STEPS, output_type="np",
                                          generator=torch.Generator().manual_seed(0), **kw).images
    alone = run("the cat")
    np.testing.assert_allclose(run("the cat | a tea", weights=[1.0, 0.0]), alone, atol=1e-5)
    np.testing.assert_allclose(run("the cat:0.5 | the cat:0.5"), alone, atol=1e-5)
    assert np.abs(run("the cat | a tea") - alone).max() > 1e-3


# Panorama (MultiDiffusion) -----------------------------------------------------------------
@pytest.fixture(scope="module")
def panorama(community):
    return community("panorama_stable_diffusion")


def test_panorama_window_covering_the_latent_equals_the_plain_pipeline(panorama, plain):
    ours = panorama("the cat", height=32, width=32, num_inference_steps=STEPS, output_type="np",
                    generator=torch.Generator().manual_seed(0)).images
    np.testing.assert_array_equal(ours, plain_image(plain, "the cat", 0, output_type="np"))


def test_panorama_wide_image_has_the_requested_size(panorama):
    image = panorama("the cat", height=32, width=80, num_inference_steps=STEPS,
                     generator=torch.Generator().manual_seed(0)).images[0]
    assert image.size == (80, 32)


def test_panorama_windows_cover_every_latent_pixel(panorama):
    import sys

    windows = sys.modules[type(panorama).__module__].windows
    views = windows(16, 40, (16, 16), 8)
    assert [v[2] for v in views] == [0, 8, 16, 24]  # the last one flush with the border
    covered = torch.zeros(16, 40)
    for top, bottom, left, right in views:
        covered[top:bottom, left:right] += 1
    assert covered.min() >= 1


def test_panorama_tiles_without_overlap_are_each_the_plain_pipeline_on_their_noise(panorama,
                                                                                  plain):
    """stride = window: nothing is averaged, so each tile is denoised exactly as plain SD would
    denoise that crop of the initial noise (MultiDiffusion's fusion only acts on overlaps)."""
    noise = torch.randn(1, 4, 16, 32, generator=torch.Generator().manual_seed(5))
    wide = panorama("the cat", height=32, width=64, num_inference_steps=STEPS, stride=16,
                    latents=noise, output_type="latent").images
    for left in (0, 16):
        tile = plain("the cat", num_inference_steps=STEPS, latents=noise[..., left:left + 16],
                     output_type="latent").images
        torch.testing.assert_close(wide[..., left:left + 16], tile, rtol=0, atol=1e-6)


def test_panorama_overlapping_windows_differ_from_separate_tiles(panorama):
    noise = torch.randn(1, 4, 16, 32, generator=torch.Generator().manual_seed(5))
    run = lambda stride: panorama("the cat", height=32, width=64, num_inference_steps=STEPS,
                                  stride=stride, latents=noise, output_type="latent").images
    assert (run(8) - run(16)).abs().max() > 1e-3
