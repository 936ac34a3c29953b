"""Seconds per training step of ``diffusion-kernel train text-to-image`` on a tiny Stable Diffusion,
full fine-tuning and LoRA, against the inner loop of diffusers' train_text_to_image.py and
train_text_to_image_lora.py (+ peft) on the same model folder, images and captions; and the peak
memory of each in a process of its own.

    python benchmarks/train_step_tiny_sd.py [--rounds N] [--steps N] [--batch B] [--skip-memory]

The model is the docs' tiny Stable Diffusion (U-Net (16, 32) channels, 2-level VAE, 2-layer CLIP
text encoder, 32x32 images), saved once to a temporary folder; the data are 8 striped 32x32
pictures with captions. Both sides: batch ``--batch``, AdamW (lr 1e-4, weight decay 1e-2), the
gradients' norm clipped to 1, float32, one thread, one process under accelerate; LoRA rank 4 on
``to_q, to_k, to_v, to_out.0`` (alpha = rank, A Gaussian, B zero).

Ours is the real command's trainer (``TextToImageTrainer``, its loop with progress bar and log):
a step is the time between the ends of two consecutive steps. The reference is diffusers'
script's loop as written there: ``vae.encode(...).latent_dist.sample()`` and the text encoder on
every step, ``accelerator.accumulate``, ``accelerator.gather`` of the loss for its log,
``accelerator.backward``, ``clip_grad_norm_``, the optimizer and LR-scheduler steps, its progress
bar; batches are prepared tensors (its data loader's work is not timed). Each round runs each side
for ``--steps`` steps after 4 warm-up steps (ours: the warm-up steps include encoding each image's
VAE latents once); the table gives the median step over all rounds and the ratio ours / reference
(target: at most 1.0x).

Memory: each side then runs 10 steps alone in a fresh process; the table gives its peak resident
memory (``VmHWM``) and what the run added to the process once torch, transformers' CLIP and that
side's library (diffusers + peft, or ours) were imported.
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

import numpy as np
import torch

WARMUP = 4
LR = 1e-4
TARGETS = ("to_q", "to_k", "to_v", "to_out.0")


def make_model_and_data(folder: Path) -> tuple[Path, Path]:
    """The tiny pipeline folder (built with this project's classes) and a captioned data folder."""
    from diffusion_kernel import (
        AutoencoderKL,
        DDIMScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from PIL import Image
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    vocab = {c: i for i, c in enumerate(string.ascii_lowercase)}
    vocab.update({f"{c}</w>": 26 + i for i, c in enumerate(string.ascii_lowercase)})
    vocab.update({"<|startoftext|>": 52, "<|endoftext|>": 53})
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"),
                              model_max_length=16)
    torch.manual_seed(0)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=54, hidden_size=32, intermediate_size=37, num_attention_heads=4,
        num_hidden_layers=2, max_position_embeddings=16, bos_token_id=52, eos_token_id=53,
        pad_token_id=53))
    unet = UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4, block_out_channels=(16, 32),
        layers_per_block=1, norm_num_groups=8, cross_attention_dim=32, attention_head_dim=8,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"))
    vae = AutoencoderKL(block_out_channels=(16, 32), norm_num_groups=8, latent_channels=4,
                        down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2)
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    model = folder / "tiny-sd"
    StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                            scheduler=scheduler).save_pretrained(model)
    data = folder / "data"
    data.mkdir()
    lines = []
    for i in range(8):
        band = ((np.arange(32) + i) // 4 % 2).astype(np.float32)
        a = np.broadcast_to(band[None, :] if i % 2 else band[:, None], (32, 32))
        Image.fromarray((np.stack([a, a * 0.5, 1 - a], -1) * 255).astype(np.uint8)).save(
            data / f"{i}.png")
        lines.append(json.dumps({"file_name": f"{i}.png",
                                 "text": "vertical stripes" if i % 2 else "horizontal stripes"}))
    (data / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    return model, data


def ours_steps(model: Path, data: Path, out: Path, lora: bool, steps: int,
               batch: int) -> list[float]:
    """Run the command's trainer for WARMUP + ``steps`` steps; the last ``steps`` step times."""
    from diffusion_kernel_vision.training.text_to_image import (
        TextToImageConfig,
        TextToImageTrainer,
    )

    ends: list[float] = []

    class Timed(TextToImageTrainer):
        def after_step(self, step):
            super().after_step(step)
            ends.append(time.perf_counter())

    cfg = TextToImageConfig(model=str(model), data=str(data), output_dir=str(out),
                            max_steps=WARMUP + steps, train_batch_size=batch, learning_rate=LR,
                            checkpointing_steps=0, lora_rank=4 if lora else None,
                            lora_target_modules=TARGETS)
    Timed(cfg).run()
    return list(np.diff(ends[WARMUP - 1:]))


class Reference:
    """diffusers' text-to-image training loop (full or LoRA) on the same folder and data."""

    def __init__(self, model: Path, data: Path, lora: bool, batch: int):
        import diffusers
        from accelerate import Accelerator
        from diffusers.optimization import get_scheduler
        from diffusion_kernel_vision.training.captioned_images import captioned_folder
        from tqdm.auto import tqdm

        pipe = diffusers.StableDiffusionPipeline.from_pretrained(model, safety_checker=None)
        self.vae, self.text_encoder, self.unet = pipe.vae, pipe.text_encoder, pipe.unet
        self.noise_scheduler = diffusers.DDPMScheduler.from_pretrained(model,
                                                                      subfolder="scheduler")
        self.vae.requires_grad_(False)
        self.text_encoder.requires_grad_(False)
        if lora:
            from peft import LoraConfig

            self.unet.requires_grad_(False)
            self.unet.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights="gaussian",
                                             target_modules=list(TARGETS)))
        self.params = [p for p in self.unet.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(self.params, lr=LR, weight_decay=1e-2)
        self.lr_scheduler = get_scheduler("constant", optimizer=optimizer)
        self.accelerator = Accelerator()
        self.unet, self.optimizer = self.accelerator.prepare(self.unet, optimizer)
        self.unet.train()
        images = captioned_folder(data)
        pixels = torch.stack([images.pixels(i, 32) for i in range(len(images))])
        ids = pipe.tokenizer([c[0] for c in images.captions], padding="max_length",
                             max_length=pipe.tokenizer.model_max_length, truncation=True,
                             return_tensors="pt").input_ids
        self.batches = [(pixels[i:i + batch], ids[i:i + batch])
                        for i in range(0, len(images) - batch + 1, batch)]
        self.batch = batch
        self.bar = tqdm(desc="reference")

    def step(self, k: int) -> None:
        import torch.nn.functional as F

        pixel_values, input_ids = self.batches[k % len(self.batches)]
        accelerator = self.accelerator
        with accelerator.accumulate(self.unet):
            latents = self.vae.encode(pixel_values).latent_dist.sample()
            latents = latents * self.vae.config.scaling_factor
            noise = torch.randn_like(latents)
            timesteps = torch.randint(0, self.noise_scheduler.config.num_train_timesteps,
                                      (latents.shape[0],)).long()
            noisy = self.noise_scheduler.add_noise(latents, noise, timesteps)
            hidden = self.text_encoder(input_ids, return_dict=False)[0]
            prediction = self.unet(noisy, timesteps, hidden, return_dict=False)[0]
            loss = F.mse_loss(prediction.float(), noise.float(), reduction="mean")
            accelerator.gather(loss.repeat(self.batch)).mean()
            accelerator.backward(loss)
            if accelerator.sync_gradients:
                accelerator.clip_grad_norm_(self.params, 1.0)
            self.optimizer.step()
            self.lr_scheduler.step()
            self.optimizer.zero_grad()
        self.bar.update(1)
        self.bar.set_postfix(step_loss=loss.detach().item(), lr=self.lr_scheduler.get_last_lr()[0])

    def steps(self, steps: int) -> list[float]:
        for k in range(WARMUP):
            self.step(k)
        ends = [time.perf_counter()]
        for k in range(steps):
            self.step(WARMUP + k)
            ends.append(time.perf_counter())
        return list(np.diff(ends))


def _status_mib(field: str) -> float:
    """``VmRSS`` / ``VmHWM`` of this process in MiB. (Not ``ru_maxrss``: Linux keeps it across
    fork and exec, so a child started by a big parent reports the parent's size.)"""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def child(variant: str, folder: Path, steps: int, batch: int) -> None:
    """Memory run of one variant in this fresh process; prints as JSON its peak resident memory
    and what the run added to the process with its side's modules imported (MiB)."""
    torch.set_num_threads(1)
    side, kind = variant.split("-")
    model, data = folder / "tiny-sd", folder / "data"
    import transformers.models.clip  # noqa: F401  (both sides' text encoder and tokenizer)

    if side == "ours":
        import diffusion_kernel_vision.training.text_to_image  # noqa: F401
    else:
        import diffusers  # noqa: F401
        import peft  # noqa: F401
    imported = _status_mib("VmRSS")
    if side == "ours":
        ours_steps(model, data, folder / f"mem-{variant}", kind == "lora", steps, batch)
    else:
        Reference(model, data, kind == "lora", batch).steps(steps)
    peak = _status_mib("VmHWM")
    print(json.dumps({"peak": peak, "added": peak - imported}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, Path(args.folder), args.steps, args.batch)
        return
    torch.set_num_threads(1)
    folder = Path(tempfile.mkdtemp(prefix="train-step-"))
    model, data = make_model_and_data(folder)
    rows = {}
    for lora in (False, True):
        kind = "LoRA" if lora else "full"
        reference = Reference(model, data, lora, args.batch)
        times: dict[str, list[float]] = {"ours": [], "reference": []}
        for r in range(args.rounds):
            times["ours"] += ours_steps(model, data, folder / f"{kind}-{r}", lora, args.steps,
                                        args.batch)
            times["reference"] += reference.steps(args.steps)
            print(f"{kind} round {r + 1}: ours {statistics.median(times['ours']) * 1e3:.1f} ms, "
                  f"reference {statistics.median(times['reference']) * 1e3:.1f} ms", flush=True)
        rows[kind] = {side: statistics.median(t) for side, t in times.items()}
    memory = {}
    if not args.skip_memory:
        for variant in ("ours-full", "reference-full", "ours-lora", "reference-lora"):
            result = subprocess.run([sys.executable, __file__, "--child", variant, "--folder",
                                     str(folder), "--steps", "10", "--batch", str(args.batch)],
                                    capture_output=True, text=True, check=True)
            memory[variant] = json.loads(result.stdout.strip().splitlines()[-1])
    print(f"\nbatch {args.batch}, {args.rounds} rounds x {args.steps} steps, threads "
          f"{torch.get_num_threads()}")
    print("| fine-tune | ours (ms/step) | diffusers (ms/step) | ratio | peak memory ours / "
          "diffusers (MiB) | added by the run ours / diffusers (MiB) |")
    print("| --- | --- | --- | --- | --- | --- |")
    for kind, medians in rows.items():
        key = kind.lower()
        mem = {field: (f"{memory[f'ours-{key}'][field]:,.0f} / "
                       f"{memory[f'reference-{key}'][field]:,.0f}" if memory else "-")
               for field in ("peak", "added")}
        ratio = medians["ours"] / medians["reference"]
        print(f"| {kind} | {medians['ours'] * 1e3:.1f} | {medians['reference'] * 1e3:.1f} | "
              f"{ratio:.2f}x | {mem['peak']} | {mem['added']} |")
    worst = max(m["ours"] / m["reference"] for m in rows.values())
    print(f"\nworst ratio {worst:.2f}x (target <= 1.0x: {'met' if worst <= 1.0 else 'MISSED'})")


if __name__ == "__main__":
    main()
