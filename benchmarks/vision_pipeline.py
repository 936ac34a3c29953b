"""End-to-end time of a tiny Stable Diffusion pipeline (20 steps, classifier-free guidance) at
64 and 128 px: ours against the reference implementation (diffusers), and the import time of the
pipeline class in a fresh process.

    python benchmarks/vision_pipeline.py [--repeat N] [--threads T] [--steps S]

One tiny checkpoint (CLIP text encoder 2 x 32, UNet (32, 64) with cross-attention, VAE with four
blocks: factor 8) is built and saved by the reference; ours loads the same folder through
``DiffusionPipeline.from_pretrained`` (our UNet, VAE and scheduler; transformers' CLIP). Both run
the same prompt with the same seed; after one warm-up call each they run alternately
``--repeat`` times and the table gives the median wall time, the ratio ours / reference (target:
at most 0.9x) and the largest difference between the images (they must agree within 1e-4).

Import time: ``from diffusion_kernel import StableDiffusionPipeline`` against
``from diffusers import StableDiffusionPipeline`` and ``import torch``, each in fresh processes
(median of ``--repeat`` runs); target: ours at most torch's time + 0.5 s.
"""

from __future__ import annotations

import argparse
import json
import statistics
import string
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

PROMPT = "a cat on the mat"


def build_checkpoint(folder: Path) -> Path:
    """A tiny SD checkpoint saved by the reference (sample size 16 latents = 128 px)."""
    from diffusers import (
        AutoencoderKL,
        DDIMScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    letters = string.ascii_lowercase
    vocab = {c: i for i, c in enumerate(letters)}
    vocab.update({f"{c}</w>": len(letters) + i for i, c in enumerate(letters)})
    vocab.update({"<|startoftext|>": len(vocab), "<|endoftext|>": len(vocab) + 1})
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"),
                              model_max_length=77)
    torch.manual_seed(0)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(vocab), hidden_size=32, intermediate_size=37, num_attention_heads=4,
        num_hidden_layers=2, max_position_embeddings=77, bos_token_id=52, eos_token_id=53,
        pad_token_id=53))
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=2, sample_size=16, in_channels=4,
        out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=32,
        attention_head_dim=8)
    vae = AutoencoderKL(block_out_channels=(32, 32, 64, 64), latent_channels=4,
                        down_block_types=("DownEncoderBlock2D",) * 4,
                        up_block_types=("UpDecoderBlock2D",) * 4, norm_num_groups=32)
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                                   unet=unet, scheduler=scheduler, safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(folder / "sd")
    return folder / "sd"


def timed(pipe, size: int, steps: int):
    generator = torch.Generator().manual_seed(0)
    start = time.perf_counter()
    images = pipe(PROMPT, height=size, width=size, num_inference_steps=steps,
                  guidance_scale=7.5, generator=generator, output_type="np").images
    return time.perf_counter() - start, images


def pipeline_rows(folder: Path, repeat: int, steps: int) -> list[tuple]:
    import diffusers
    from diffusion_kernel import DiffusionPipeline

    ours = DiffusionPipeline.from_pretrained(folder)
    reference = diffusers.StableDiffusionPipeline.from_pretrained(folder)
    assert type(ours.unet).__module__.startswith("diffusion_kernel"), "ours must use our UNet"
    for pipe in (ours, reference):
        pipe.set_progress_bar_config(disable=True)
    rows = []
    for size in (64, 128):
        _, expected = timed(reference, size, steps)  # warm-up, and the images to compare
        _, got = timed(ours, size, steps)
        times = {"reference": [], "ours": []}
        for _ in range(repeat):
            for name, pipe in (("reference", reference), ("ours", ours)):
                times[name].append(timed(pipe, size, steps)[0])
        rows.append((size, statistics.median(times["reference"]),
                     statistics.median(times["ours"]), float(abs(got - expected).max())))
    return rows


def import_seconds(statement: str) -> float:
    code = ("import time; t = time.perf_counter(); " + statement +
            "; print(time.perf_counter() - t)")
    result = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                            text=True)
    return float(result.stdout.split()[-1])


def import_rows(repeat: int) -> dict[str, list[float]]:
    """Fresh-process import times, the three statements interleaved so that load on the machine
    hits them alike."""
    statements = {"import torch": "import torch",
                  "from diffusion_kernel import StableDiffusionPipeline":
                      "from diffusion_kernel import StableDiffusionPipeline",
                  "from diffusers import StableDiffusionPipeline":
                      "from diffusers import StableDiffusionPipeline"}
    runs: dict[str, list[float]] = {name: [] for name in statements}
    for _ in range(repeat):
        for name, statement in statements.items():
            runs[name].append(import_seconds(statement))
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        rows = pipeline_rows(build_checkpoint(Path(tmp)), args.repeat, args.steps)
    print(f"\nthreads: {torch.get_num_threads()}; {args.steps} steps, guidance 7.5, batch 1")
    print("| size | reference (s) | ours (s) | ratio ours/ref | max abs image diff |")
    print("|---|---|---|---|---|")
    for size, ref_s, ours_s, diff in rows:
        print(f"| {size} px | {ref_s:.3f} | {ours_s:.3f} | {ours_s / ref_s:.2f}x | {diff:.1e} |")

    runs = import_rows(args.repeat)
    print("\n| import (fresh process) | median (s) | runs (s) |")
    print("|---|---|---|")
    for name, seconds in runs.items():
        print(f"| {name} | {statistics.median(seconds):.2f} | "
              f"{', '.join(f'{t:.2f}' for t in seconds)} |")
    extra = statistics.median(o - t for o, t in zip(
        runs["from diffusion_kernel import StableDiffusionPipeline"], runs["import torch"]))
    verdict = "meets" if extra <= 0.5 else "misses"
    print(f"\nours - torch (median of back-to-back pairs) = {extra:+.2f} s ({verdict} the "
          f"<= +0.5 s target)")


if __name__ == "__main__":
    main()
