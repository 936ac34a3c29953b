"""DanceDiffusionPipeline: the reference's audios for the same generator, folders that load both
ways, the length rounding and cropping, per-sample generators, and the errors."""

import warnings

import numpy as np
import pytest
import torch
from diffusion_kernel import DiffusionPipeline, registry
from diffusion_kernel.errors import PipelineError

TOL = 1e-5
DANCE = dict(  # the Dance Diffusion test config of diffusers (0.42.1 form)
    block_out_channels=(32, 32, 64), extra_in_channels=16, sample_size=512, sample_rate=16000,
    in_channels=2, out_channels=2, flip_sin_to_cos=True, use_timestep_embedding=False,
    time_embedding_type="fourier", mid_block_type="UNetMidBlock1D", time_embedding_dim=16,
    down_block_types=("DownBlock1DNoSkip", "DownBlock1D", "AttnDownBlock1D"),
    up_block_types=("AttnUpBlock1D", "UpBlock1D", "UpBlock1DNoSkip"))


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _reference_pipeline():
    from diffusers import DanceDiffusionPipeline, IPNDMScheduler, UNet1DModel

    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the reference marks the pipeline deprecated
        pipe = DanceDiffusionPipeline(unet=UNet1DModel(**DANCE).eval(),
                                      scheduler=IPNDMScheduler())
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def saved_by_reference(tmp_path_factory):
    folder = tmp_path_factory.mktemp("dance-reference")
    reference = _reference_pipeline()
    reference.save_pretrained(folder)
    return folder, reference


@pytest.fixture(scope="module")
def ours(saved_by_reference):
    pipe = DiffusionPipeline.from_pretrained(saved_by_reference[0])
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _run(pipe, seed=0, **kwargs):
    kwargs.setdefault("num_inference_steps", 4)
    generator = ([torch.Generator().manual_seed(s) for s in seed] if isinstance(seed, list)
                 else torch.Generator().manual_seed(seed))
    return pipe(generator=generator, **kwargs).audios


def test_the_reference_folder_loads_as_our_classes(ours):
    assert type(ours).__name__ == "DanceDiffusionPipeline"
    assert type(ours.unet) is registry.models.get("UNet1DModel")
    assert type(ours.scheduler) is registry.schedulers.get("IPNDMScheduler")


@pytest.mark.parametrize("kwargs", [
    dict(batch_size=2),
    dict(batch_size=1, audio_length_in_s=0.0301),  # 481.6 samples: sampled as 488, cut to 481
    dict(batch_size=2, seed=[3, 4], num_inference_steps=6),
])
def test_audios_equal_the_reference_for_the_same_generator(ours, saved_by_reference, kwargs):
    reference = saved_by_reference[1]
    got, expected = _run(ours, **kwargs), _run(reference, **kwargs)
    assert got.shape == expected.shape and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, atol=TOL, rtol=0)


def test_length_is_rounded_up_for_sampling_and_cut_back(ours):
    audios = _run(ours, audio_length_in_s=0.0301)
    assert audios.shape == (1, 2, 481)
    assert _run(ours).shape == (1, 2, 512)  # default: the U-Net's sample_size


def test_a_batch_with_one_generator_per_clip_equals_single_runs(ours):
    batch = _run(ours, batch_size=3, seed=[5, 6, 7])
    single = np.concatenate([_run(ours, seed=s) for s in (5, 6, 7)])
    np.testing.assert_allclose(batch, single, atol=TOL, rtol=0)  # batched kernels round apart


def test_our_folder_loads_in_the_reference_with_the_same_audios(ours, tmp_path):
    from diffusers import DanceDiffusionPipeline as Reference

    ours.save_pretrained(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = Reference.from_pretrained(tmp_path)
    reference.set_progress_bar_config(disable=True)
    np.testing.assert_allclose(_run(ours, batch_size=2), _run(reference, batch_size=2),
                               atol=TOL, rtol=0)


def test_a_length_too_short_for_the_unet_names_the_minimum(ours):
    with pytest.raises(PipelineError, match=r"halves the length 3 times: use at least 0.0015 s"):
        ours(audio_length_in_s=0.001)


def test_a_generator_list_of_the_wrong_length_is_an_error(ours):
    with pytest.raises(PipelineError, match="3 generators for batch_size=2"):
        _run(ours, batch_size=2, seed=[1, 2, 3])


def test_a_unet_without_sample_rate_needs_one_for_seconds(ours):
    unet = registry.models.get("UNet1DModel")(**dict(DANCE, sample_rate=None))
    pipe = type(ours)(unet=unet, scheduler=ours.scheduler)
    with pytest.raises(PipelineError, match="no sample_rate"):
        pipe(num_inference_steps=2)
