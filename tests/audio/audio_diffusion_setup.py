"""The tiny Audio Diffusion setup shared by the recorded fixtures and the pipeline tests: a
reference (diffusers) UNet2DModel built from a fixed seed, the mel config it fits, the runs."""

import numpy as np
import torch
from audio_signals import SIGNALS

MEL = dict(x_res=32, y_res=32, sample_rate=11025, n_fft=512, hop_length=256, top_db=80,
           n_iter=32)
UNET = dict(sample_size=32, in_channels=1, out_channels=1, block_out_channels=(16, 32),
            layers_per_block=1, norm_num_groups=8, attention_head_dim=8,
            down_block_types=("DownBlock2D", "AttnDownBlock2D"),
            up_block_types=("AttnUpBlock2D", "UpBlock2D"))
SCHEDULER = dict(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2")
# the latent variant: a 2-level autoencoder (32 x 32 mel images <-> 16 x 16 latents)
VAE = dict(in_channels=1, out_channels=1, latent_channels=1, block_out_channels=(8, 16),
           down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
           norm_num_groups=4, layers_per_block=1, sample_size=32)
LATENT_UNET = dict(UNET, sample_size=16)


def reference_unet(latent: bool = False):
    from diffusers import UNet2DModel

    torch.manual_seed(0)
    return UNet2DModel(**(LATENT_UNET if latent else UNET)).eval()


def reference_vae():
    from diffusers import AutoencoderKL

    torch.manual_seed(1)
    return AutoencoderKL(**VAE).eval()


def input_audio() -> np.ndarray:
    """A clip of a bit more than one slice for the variation and in-painting runs."""
    return SIGNALS["tone_in_noise"](9000, MEL["sample_rate"]) * np.float32(0.5)


# name -> (scheduler class name, call arguments; "seed" becomes a generator)
RUNS = {
    "ddim_batch": ("DDIMScheduler", dict(batch_size=2, steps=5, seed=0)),
    "ddim_eta_variation": ("DDIMScheduler", dict(
        batch_size=1, steps=6, seed=1, eta=0.5, start_step=2, raw_audio=True)),
    # in/out-painting from pure noise (start_step 0): with start_step > 0 the reference writes
    # the noised input into its noise tensor before noising the kept seconds with it (docs/audio.md)
    "ddim_masked": ("DDIMScheduler", dict(
        batch_size=1, steps=6, seed=3, mask_start_secs=0.1, mask_end_secs=0.2, raw_audio=True)),
    "ddpm": ("DDPMScheduler", dict(batch_size=1, steps=4, seed=2)),
    "latent_variation": ("DDIMScheduler", dict(batch_size=1, steps=5, seed=4, start_step=1,
                                               raw_audio=True)),
}
LATENT_RUNS = {"latent_variation"}


def call_arguments(arguments: dict) -> dict:
    arguments = dict(arguments)
    arguments["generator"] = torch.Generator().manual_seed(arguments.pop("seed"))
    if arguments.pop("raw_audio", False):
        arguments["raw_audio"] = input_audio()
    return arguments
