"""The Hub both ways with the reference: a pipeline diffusers pushes loads here by repo id, and one
pushed here loads in diffusers, with the same images (real plugin classes: UNet2DModel,
DDPMScheduler, DDIMScheduler, DDPMPipeline)."""

import numpy as np
import pytest
import torch
from diffusion_kernel import DiffusionPipeline

TOL = 1e-4  # float32 pixels in [0, 1] after 3 denoising steps of a tiny UNet
REPO = "tester/tiny-ddpm"


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models are fastest on one thread of a loaded machine
    yield
    torch.set_num_threads(threads)


def _reference_pipeline():
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

    torch.manual_seed(0)
    unet = UNet2DModel(block_out_channels=(8, 16), layers_per_block=1, sample_size=8,
                       in_channels=3, out_channels=3, norm_num_groups=4,
                       down_block_types=("DownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "UpBlock2D")).eval()
    return DDPMPipeline(unet=unet, scheduler=DDPMScheduler(num_train_timesteps=100))


def _images(pipe):
    pipe.set_progress_bar_config(disable=True)
    generator = torch.Generator().manual_seed(0)
    return pipe(generator=generator, num_inference_steps=3, output_type="np").images


def test_a_pipeline_pushed_by_diffusers_loads_here_by_repo_id(hub):
    reference = _reference_pipeline()
    reference.push_to_hub(REPO)
    hub.clear_log()
    ours = DiffusionPipeline.from_pretrained(REPO)
    assert type(ours).__module__.startswith("diffusion_kernel")
    assert type(ours.unet).__name__ == "UNet2DModel"
    assert "README.md" not in hub.downloaded_files(REPO)
    np.testing.assert_allclose(_images(ours), _images(reference), atol=TOL)


def test_a_pipeline_pushed_here_loads_in_diffusers(hub):
    from diffusers import DDPMPipeline as ReferenceDDPM

    ours = DiffusionPipeline.from_pretrained(_saved_reference(hub))
    ours.push_to_hub(REPO)
    reference = ReferenceDDPM.from_pretrained(REPO)
    np.testing.assert_allclose(_images(reference), _images(ours), atol=TOL)


def test_a_scheduler_swapped_and_pushed_here_loads_in_diffusers(hub):
    from diffusers import DDIMScheduler as ReferenceDDIM
    from diffusion_kernel import DDIMScheduler

    ours = DiffusionPipeline.from_pretrained(_saved_reference(hub))
    ddim = DDIMScheduler.from_config(ours.scheduler.config)
    ddim.push_to_hub(REPO)
    reference = ReferenceDDIM.from_pretrained(REPO)
    assert reference.config.num_train_timesteps == 100
    reference.set_timesteps(5)
    ddim.set_timesteps(5)
    assert reference.timesteps.tolist() == ddim.timesteps.tolist()


def _saved_reference(hub):
    """The reference pipeline as a local folder (no Hub involved)."""
    import tempfile

    folder = tempfile.mkdtemp(prefix="tiny-ddpm-")
    _reference_pipeline().save_pretrained(folder)
    return folder


def test_stable_diffusion_with_transformers_components_loads_by_repo_id(hub, upload):
    """Text encoder and tokenizer come through transformers from the same Hub snapshot."""
    import diffusers
    from vision import tiny

    upload(tiny.stable_diffusion_folder(), REPO)
    hub.clear_log()
    ours = DiffusionPipeline.from_pretrained(REPO)
    from huggingface_hub import HfApi

    transformers_files = {f for f in HfApi().list_repo_files(REPO)
                          if f.startswith(("text_encoder/", "tokenizer/"))}
    assert {"text_encoder/model.safetensors", "tokenizer/tokenizer_config.json"
            } <= transformers_files <= hub.downloaded_files(REPO)
    reference = diffusers.StableDiffusionPipeline.from_pretrained(REPO)
    for pipe in (ours, reference):
        pipe.set_progress_bar_config(disable=True)
    kwargs = dict(num_inference_steps=2, output_type="np")
    mine = ours("a cat", generator=torch.Generator().manual_seed(0), **kwargs).images
    theirs = reference("a cat", generator=torch.Generator().manual_seed(0), **kwargs).images
    np.testing.assert_allclose(mine, theirs, atol=TOL)
