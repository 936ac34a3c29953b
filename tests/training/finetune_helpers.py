"""What the Stable Diffusion fine-tuning tests share: the tiny base model, data folders the tests
make, the CLI call, and the two measures of learning (distance of generated latents to the
training latents, held-out denoising loss).

The base model is the vision tests' tiny Stable Diffusion (built by diffusers, saved once per
session) with one change: its VAE's ``scaling_factor`` is 3.0 instead of 0.18215, so that the
latents of the test images have about unit variance, as 0.18215 gives for Stable Diffusion's own
VAE (Rombach et al. 2022, Sec. 4.3.2). With the original factor this random VAE's latents are
0.06 in size and every image looks alike to the U-Net.
"""

from __future__ import annotations

import functools
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from vision.tiny import single_thread, stable_diffusion_folder  # noqa: F401

ROOT = Path(tempfile.mkdtemp(prefix="dk-finetune-"))
LATENT_SCALE = 3.0
RESOLUTION = 32  # the tiny model's images: 16 x 16 latents, VAE factor 2


@functools.cache
def tiny_sd() -> Path:
    """The tiny Stable Diffusion folder the fine-tuning tests start from (see the module doc)."""
    folder = ROOT / "tiny-sd"
    shutil.copytree(stable_diffusion_folder(), folder)
    config_path = folder / "vae" / "config.json"
    config = json.loads(config_path.read_text())
    config["scaling_factor"] = LATENT_SCALE
    config_path.write_text(json.dumps(config))
    return folder


def stripes(phase: int, vertical: bool = False) -> Image.Image:
    """A 32 x 32 picture of orange-on-blue stripes, 4 px wide, shifted by ``phase`` pixels."""
    x = np.arange(RESOLUTION)
    band = ((x + phase) // 4 % 2).astype(np.float32)
    a = np.broadcast_to(band[None, :] if vertical else band[:, None], (RESOLUTION, RESOLUTION))
    return Image.fromarray((np.stack([a, a * 0.5, 1 - a], -1) * 255).astype(np.uint8))


def captioned_data(folder: Path, captions=("a square", "a square", "a dog", "a dog")) -> Path:
    """A text-to-image data folder: striped pictures and ``metadata.jsonl``."""
    folder.mkdir(parents=True)
    lines = []
    for i, caption in enumerate(captions):
        stripes(2 * i, vertical=i % 2 == 1).save(folder / f"{i:02d}.png")
        lines.append(json.dumps({"file_name": f"{i:02d}.png", "text": caption}))
    (folder / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    return folder


def image_data(folder: Path, count: int = 4, vertical: bool = True) -> Path:
    """A folder of ``count`` striped pictures (no captions): instance or concept images."""
    folder.mkdir(parents=True)
    for i in range(count):
        stripes(2 * i, vertical).save(folder / f"{i:02d}.png")
    return folder


def train_cli(kind: str, *args: str) -> int:
    from diffusion_kernel.cli import main

    return main(["train", kind, "--model", str(tiny_sd()), *args])


def load_ours(folder: Path):
    from diffusion_kernel import registry

    pipe = registry.pipelines.get("StableDiffusionPipeline").from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def load_reference(folder: Path):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None,
                                                   requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def image(pipe, prompt: str, steps: int = 3) -> np.ndarray:
    """One image of ``prompt`` (seed 0, classifier-free guidance 7.5) as an array in [0, 1]."""
    return pipe(prompt, generator=torch.Generator().manual_seed(0), num_inference_steps=steps,
                output_type="np").images[0]


@torch.no_grad()
def data_latents(pipe, folder: Path) -> torch.Tensor:
    """The VAE posterior means (scaled) of the images of ``folder``, as the trainers see them."""
    from diffusion_kernel_vision.training.captioned_images import image_folder

    images = image_folder(folder)
    pixels = torch.stack([images.pixels(i, RESOLUTION) for i in range(len(images))])
    return pipe.vae.encode(pixels).latent_dist.mean * pipe.vae.config.scaling_factor


@torch.no_grad()
def generated_distance(pipe, prompt: str, targets: torch.Tensor, seeds=(100, 101, 102, 103),
                       steps: int = 10) -> float:
    """Mean over seeds of the RMS distance between the latents generated for ``prompt``
    (DDIM, ``steps`` steps, no guidance) and the nearest of ``targets``."""
    generators = [torch.Generator().manual_seed(s) for s in seeds]
    latents = pipe([prompt] * len(seeds), generator=generators, num_inference_steps=steps,
                   guidance_scale=1.0, output_type="latent").images
    rms = ((latents[:, None] - targets[None]) ** 2).mean(dim=(2, 3, 4)).sqrt()
    return rms.min(dim=1).values.mean().item()


@torch.no_grad()
def held_out_loss(pipe, latents: torch.Tensor, prompt: str, draws: int = 8) -> float:
    """The denoising loss of ``prompt`` on ``latents`` with noise and timesteps the training never
    drew: ``draws`` timesteps spread evenly over the schedule, noise from seed 12345."""
    from diffusion_kernel import registry

    scheduler = registry.schedulers.get("DDPMScheduler").from_config(pipe.scheduler.config)
    ids = pipe.tokenizer([prompt], padding="max_length",
                         max_length=pipe.tokenizer.model_max_length, return_tensors="pt")
    hidden = pipe.text_encoder(ids.input_ids)[0].expand(len(latents), -1, -1)
    generator = torch.Generator().manual_seed(12345)
    total = 0.0
    T = scheduler.config.num_train_timesteps
    for j in range(draws):
        t = torch.full((len(latents),), int(T * (j + 0.5) / draws))
        noise = torch.randn(latents.shape, generator=generator)
        prediction = pipe.unet(scheduler.add_noise(latents, noise, t), t, hidden).sample
        total += ((prediction - noise) ** 2).mean().item()
    return total / draws


def unet_weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(folder / "unet" / "diffusion_pytorch_model.safetensors")
