"""AudioDiffusionPipeline: the reference's mel images (recorded fixtures; directly when librosa is
installed) for generation, variations with in/out-painting, DDPM, and DDIM inversion; audios that
are the images' sound; the diffusers folder layout both ways; the errors."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from audio_diffusion_setup import (
    LATENT_RUNS,
    LATENT_UNET,
    MEL,
    RUNS,
    SCHEDULER,
    UNET,
    VAE,
    call_arguments,
    reference_unet,
    reference_vae,
)
from diffusion_kernel import DiffusionPipeline, registry
from diffusion_kernel.errors import PipelineError

FIXTURES = np.load(Path(__file__).with_name("fixtures") / "audio_diffusion.npz")
HAS_LIBROSA = importlib.util.find_spec("librosa") is not None
Pipeline = registry.pipelines.get("AudioDiffusionPipeline")


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _ours(scheduler_name="DDIMScheduler", latent=False):
    unet = registry.models.get("UNet2DModel")(**(LATENT_UNET if latent else UNET)).eval()
    unet.load_state_dict(reference_unet(latent).state_dict())
    vae = None
    if latent:
        vae = registry.models.get("AutoencoderKL")(**VAE).eval()
        vae.load_state_dict(reference_vae().state_dict())
    pipe = Pipeline(vqvae=vae, unet=unet, mel=registry.processors.get("Mel")(**MEL),
                    scheduler=registry.schedulers.get(scheduler_name)(**SCHEDULER))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _pixels(output) -> np.ndarray:
    return np.stack([np.asarray(i, dtype=np.uint8) for i in output.images])


def _assert_images_match(ours: np.ndarray, reference: np.ndarray) -> None:
    """Equal but for a grey level at a rounding boundary (the U-Nets agree within 1e-5)."""
    assert ours.shape == reference.shape
    difference = np.abs(ours.astype(int) - reference.astype(int))
    assert difference.max() <= 1 and (difference > 0).mean() < 1e-3


@pytest.mark.parametrize("run", sorted(RUNS))
def test_images_equal_the_recorded_reference(run):
    scheduler_name, arguments = RUNS[run]
    output = _ours(scheduler_name, latent=run in LATENT_RUNS)(**call_arguments(arguments))
    _assert_images_match(_pixels(output), FIXTURES[run])
    assert all(image.mode == "L" for image in output.images)


@pytest.mark.skipif(not HAS_LIBROSA, reason="the reference pipeline needs librosa; the recorded "
                                            "fixtures cover this")
def test_images_equal_the_live_reference():
    import diffusers

    scheduler_name, arguments = RUNS["ddim_eta_variation"]
    reference = diffusers.AudioDiffusionPipeline(
        vqvae=None, unet=reference_unet(), mel=diffusers.Mel(**MEL),
        scheduler=getattr(diffusers, scheduler_name)(**SCHEDULER))
    reference.set_progress_bar_config(disable=True)
    _assert_images_match(_pixels(_ours(scheduler_name)(**call_arguments(arguments))),
                         _pixels(reference(**call_arguments(arguments))))


def test_audios_are_the_sound_of_the_images():
    pipe = _ours()
    output = pipe(**call_arguments(RUNS["ddim_batch"][1]))
    assert output.audios.shape == (2, 1, MEL["hop_length"] * (MEL["x_res"] - 1))
    assert output.audios.dtype == np.float32
    for audio, image in zip(output.audios[:, 0], _pixels(output)):
        heard = pipe.mel.audio_to_bytes(np.pad(audio, (0, pipe.mel.slice_size - len(audio))))
        loud = image > 96
        assert np.abs(heard.astype(int) - image)[loud].mean() < 20


def test_the_tuple_form_is_the_formats():
    images, (rate, audios) = _ours()(batch_size=1, steps=2, return_dict=False)
    assert rate == MEL["sample_rate"] and len(images) == 1 and audios.shape[:2] == (1, 1)


def test_encode_inverts_ddim_as_the_reference_does():
    pipe = _ours()
    images = [image for image in FIXTURES["ddim_batch"]]
    noise = pipe.encode(images, steps=5)
    np.testing.assert_allclose(noise.numpy(), FIXTURES["ddim_batch_encoded"], atol=1e-4, rtol=0)


def test_slerp_keeps_the_norm_and_the_ends():
    x0, x1 = torch.randn(1, 1, 8, 8), torch.randn(1, 1, 8, 8)
    slerp = Pipeline.slerp
    torch.testing.assert_close(slerp(x0, x1, 0.0), x0)
    torch.testing.assert_close(slerp(x0, x1, 1.0), x1, atol=1e-5, rtol=0)
    middle = slerp(x0 / x0.norm(), x1 / x1.norm(), 0.5)
    assert middle.norm().item() == pytest.approx(1.0, abs=1e-5)


def test_saved_folder_is_the_diffusers_layout_and_loads_back(tmp_path):
    pipe = _ours()
    pipe.save_pretrained(tmp_path)
    index = json.loads((tmp_path / "model_index.json").read_text())
    assert index["_class_name"] == "AudioDiffusionPipeline"
    assert index["mel"] == ["diffusers", "Mel"] and index["unet"] == ["diffusers", "UNet2DModel"]
    assert index["vqvae"] == [None, None]
    assert (tmp_path / "mel" / "mel_config.json").is_file()
    loaded = DiffusionPipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    assert loaded.vqvae is None and loaded.mel.config == pipe.mel.config
    arguments = RUNS["ddim_batch"][1]
    np.testing.assert_array_equal(_pixels(loaded(**call_arguments(arguments))),
                                  _pixels(pipe(**call_arguments(arguments))))


def test_a_mel_config_that_does_not_fit_the_unet_names_the_fix():
    pipe = _ours()
    pipe.mel.set_resolution(x_res=64, y_res=32)
    with pytest.raises(PipelineError, match=r"32 x 64 images .* sample 32 x 32; set the mel "
                                            r"config to y_res=32, x_res=32"):
        pipe(steps=2)


def test_encode_needs_ddim():
    with pytest.raises(PipelineError, match="encode inverts DDIM.*DDPMScheduler"):
        _ours("DDPMScheduler").encode([FIXTURES["ddpm"][0]])


def test_start_step_past_the_run_is_an_error():
    with pytest.raises(PipelineError, match=r"start_step must be in \[0, 5\)"):
        _ours()(steps=5, start_step=5, raw_audio=np.ones(100, np.float32))


def test_kept_seconds_are_the_input_noised_with_the_noise_even_from_a_start_step():
    """With start_step > 0 and a mask, the kept columns at the end of the run are the input
    noised to the last step's level with the noise passed in (the reference would noise them
    with the noised input it wrote into its noise tensor; docs/audio.md)."""
    pipe = _ours()
    noise = torch.randn(1, 1, 32, 32, generator=torch.Generator().manual_seed(8))
    audio = call_arguments(RUNS["ddim_masked"][1])["raw_audio"]
    pipe.mel.load_audio(raw_audio=audio)
    pixels = np.asarray(pipe.mel.audio_slice_to_image(0), dtype=np.uint8)
    output = pipe(raw_audio=audio, noise=noise.clone(), steps=5, start_step=2,
                  mask_start_secs=0.1, generator=torch.Generator().manual_seed(9))
    image = torch.tensor(pixels / 255 * 2 - 1, dtype=torch.float)[None, None]
    kept = pipe.scheduler.add_noise(image, noise, pipe.scheduler.timesteps[-1:])
    columns = int(0.1 * 32 * MEL["sample_rate"] / MEL["x_res"] / MEL["hop_length"])
    expected = ((kept[0, 0, :, :columns] / 2 + 0.5).clamp(0, 1) * 255).round().numpy()
    got = np.asarray(output.images[0], dtype=np.uint8)[:, :columns]
    assert columns == 4 and np.abs(got.astype(int) - expected).max() <= 1
