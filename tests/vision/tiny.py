"""Tiny pipeline checkpoints for the vision pipeline tests, built and saved by the reference
(diffusers) into temporary folders, once per test session.

``load_ours(cls, folder)`` loads a folder with our pipeline class; a component whose class is
not (yet) provided by our registry is loaded with the reference class instead (duck typing), and
its name is recorded in ``REFERENCE_FALLBACKS`` so a test run can say what it really exercised.
"""

from __future__ import annotations

import functools
import json
import string
import tempfile
from pathlib import Path

import pytest
import torch

ROOT = Path(tempfile.mkdtemp(prefix="dk-vision-tiny-"))
REFERENCE_FALLBACKS: set[str] = set()
MAX_TOKENS = 16


@pytest.fixture(scope="module", autouse=True)
def single_thread():
    """Tiny models run fastest on one thread, above all on a shared, loaded machine (several
    threads contend and a 0.15 s call takes seconds). Import this fixture into a test module."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def write_tiny_clip_tokenizer(folder: Path) -> Path:
    """A CLIP BPE tokenizer over single letters plus a few merges ("the", "cat"), saved the way
    transformers saves it."""
    from transformers import CLIPTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    letters = string.ascii_lowercase
    vocab = {c: i for i, c in enumerate(letters)}
    vocab.update({f"{c}</w>": len(letters) + i for i, c in enumerate(letters)})
    for token in ("th", "the</w>", "ca", "cat</w>", "<|startoftext|>", "<|endoftext|>"):
        vocab[token] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\nt h\nth e</w>\nc a\nca t</w>\n")
    tokenizer = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"),
                              model_max_length=MAX_TOKENS)
    tokenizer.save_pretrained(folder)
    return folder


def _text_encoder():
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    config = CLIPTextConfig(vocab_size=58, hidden_size=32, intermediate_size=37,
                            num_attention_heads=4, num_hidden_layers=2,
                            max_position_embeddings=MAX_TOKENS, bos_token_id=56, eos_token_id=57,
                            pad_token_id=57)
    return CLIPTextModel(config).eval()


def _vae(blocks: int = 2):
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    return AutoencoderKL(block_out_channels=(16, 32, 32, 32)[:blocks], in_channels=3,
                         out_channels=3, down_block_types=("DownEncoderBlock2D",) * blocks,
                         up_block_types=("UpDecoderBlock2D",) * blocks, latent_channels=4,
                         norm_num_groups=8, sample_size=32).eval()


def _cond_unet(in_channels: int = 4, sample_size: int = 16):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    return UNet2DConditionModel(
        block_out_channels=(16, 32), layers_per_block=1, sample_size=sample_size,
        in_channels=in_channels, out_channels=4, norm_num_groups=8,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=32,
        attention_head_dim=8).eval()


def _sd_scheduler():
    from diffusers import DDIMScheduler

    return DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                         clip_sample=False, set_alpha_to_one=False, steps_offset=1)


def _save_sd(folder: Path, pipeline_name: str, unet_channels: int, vae_blocks: int = 2,
             sample_size: int = 16) -> Path:
    import diffusers
    from transformers import CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(write_tiny_clip_tokenizer(ROOT / "tokenizer"))
    pipe = getattr(diffusers, pipeline_name)(
        vae=_vae(vae_blocks), text_encoder=_text_encoder(), tokenizer=tokenizer,
        unet=_cond_unet(unet_channels, sample_size), scheduler=_sd_scheduler(),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(folder)
    return folder


@functools.cache
def stable_diffusion_folder() -> Path:
    """A tiny text-to-image checkpoint (VAE factor 2, 32 x 32 images by default)."""
    return _save_sd(ROOT / "sd", "StableDiffusionPipeline", 4)


@functools.cache
def stable_diffusion_folder_sized(vae_blocks: int, sample_size: int) -> Path:
    """A tiny text-to-image checkpoint with a deeper VAE (factor ``2 ** (vae_blocks - 1)``)."""
    return _save_sd(ROOT / f"sd-{vae_blocks}-{sample_size}", "StableDiffusionPipeline", 4,
                    vae_blocks, sample_size)


@functools.cache
def inpaint_folder() -> Path:
    """A tiny inpainting checkpoint: its UNet takes 9 channels (latents, mask, masked image)."""
    return _save_sd(ROOT / "inpaint", "StableDiffusionInpaintPipeline", 9)


@functools.cache
def ddpm_folder() -> Path:
    """A tiny pixel-space UNet2DModel (3 x 16 x 16) with a DDPM scheduler."""
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

    torch.manual_seed(0)
    unet = UNet2DModel(block_out_channels=(16, 32), layers_per_block=1, sample_size=16,
                       in_channels=3, out_channels=3, norm_num_groups=8,
                       down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                       up_block_types=("AttnUpBlock2D", "UpBlock2D")).eval()
    DDPMPipeline(unet=unet, scheduler=DDPMScheduler(num_train_timesteps=1000)).save_pretrained(
        ROOT / "ddpm")
    return ROOT / "ddpm"


@functools.cache
def ldm_folder() -> Path:
    """A tiny unconditional latent diffusion checkpoint: VQModel (3 latent channels, factor 2),
    UNet2DModel on 8 x 8 latents, DDIM scheduler."""
    from diffusers import DDIMScheduler, LDMPipeline, UNet2DModel, VQModel

    torch.manual_seed(0)
    vqvae = VQModel(block_out_channels=(16, 32), in_channels=3, out_channels=3,
                    down_block_types=("DownEncoderBlock2D",) * 2,
                    up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=3,
                    norm_num_groups=8, num_vq_embeddings=16, vq_embed_dim=3).eval()
    torch.manual_seed(0)
    unet = UNet2DModel(block_out_channels=(16, 32), layers_per_block=1, sample_size=8,
                       in_channels=3, out_channels=3, norm_num_groups=8,
                       down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                       up_block_types=("AttnUpBlock2D", "UpBlock2D")).eval()
    LDMPipeline(vqvae=vqvae, unet=unet, scheduler=DDIMScheduler()).save_pretrained(ROOT / "ldm")
    return ROOT / "ldm"


# Loading --------------------------------------------------------------------------------------
def _ours_available(class_name: str) -> bool:
    from diffusion_kernel import registry

    try:
        registry.find(class_name).load()
    except Exception:  # not registered, or its module does not import yet
        return False
    return True


def load_ours(pipeline_cls, folder: Path, **overrides):
    """Load ``folder`` with our ``pipeline_cls``; components our registry cannot provide yet are
    loaded with the reference's class and passed in (same call interface)."""
    import diffusers

    index = json.loads((Path(folder) / "model_index.json").read_text())
    for name, spec in index.items():
        if name.startswith("_") or not isinstance(spec, list) or None in spec:
            continue
        library, class_name = spec
        if library == "diffusers" and name not in overrides and not _ours_available(class_name):
            REFERENCE_FALLBACKS.add(class_name)
            overrides[name] = getattr(diffusers, class_name).from_pretrained(folder,
                                                                             subfolder=name)
    pipe = pipeline_cls.from_pretrained(folder, **overrides)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def load_reference(pipeline_name: str, folder: Path, **kwargs):
    import diffusers

    pipe = getattr(diffusers, pipeline_name).from_pretrained(folder, **kwargs)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def scheduler_config(folder: Path) -> dict:
    """The scheduler config a checkpoint folder was saved with."""
    return json.loads((Path(folder) / "scheduler" / "scheduler_config.json").read_text())


def scheduler_pair(class_name: str, config, **overrides):
    """The same scheduler built by us (or the reference while ours is missing) and by the
    reference, from one config."""
    import diffusers

    reference = getattr(diffusers, class_name).from_config(dict(config), **overrides)
    if _ours_available(class_name):
        from diffusion_kernel import registry

        ours = registry.find(class_name).load().from_config(dict(config), **overrides)
    else:
        REFERENCE_FALLBACKS.add(class_name)
        ours = getattr(diffusers, class_name).from_config(dict(config), **overrides)
    return ours, reference
