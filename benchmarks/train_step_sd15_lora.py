"""Seconds per LoRA training step of a Stable-Diffusion-1.5-shape U-Net at 32x32 latents, batch 1:
ours (the kernel's LoRA adapters, the step of ``diffusion-kernel train text-to-image
--lora-rank``) against diffusers + peft (the inner loop of diffusers' train_text_to_image_lora.py),
same weights, same inputs, same run; and the peak memory of each in a process of its own.

    python benchmarks/train_step_sd15_lora.py [--repeat N] [--rank R] [--skip-memory]

The U-Net is ``UNet2DConditionModel(cross_attention_dim=768, sample_size=64)`` (859.5M
parameters). Weights are random: both models are built on the meta device and take the very same
tensors (one copy of the 3.4 GB in memory), drawn N(0, 0.02). Both get a rank-``--rank`` LoRA
(alpha = rank, A Gaussian, B zero, as diffusers' script) on ``to_q, to_k, to_v, to_out.0``.

A step, on each side: noise the latents at a random timestep (the DDPM scheduler's
``add_noise``), run the U-Net with 77 text tokens of width 768, mean squared error against the
noise, backward, clip the gradients' norm to 1 (both trainers' default), AdamW (lr 1e-4, weight
decay 1e-2) over the LoRA parameters, zero the gradients. One torch thread, float32, CPU. After one
warm-up step each, the two run alternately ``--repeat`` times; the table gives median step times
and the ratio ours / reference (target: at most 1.0x).

Memory: each side then runs alone in a fresh process (build, LoRA, 2 steps); the table gives its
peak resident memory (``VmHWM``) and what the steps added on top of the built model.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

import torch

CONFIG = {"cross_attention_dim": 768, "sample_size": 64}
TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
LATENT = 32


def _status_mib(field: str) -> float:
    """``VmRSS`` / ``VmHWM`` of this process in MiB. (Not ``ru_maxrss``: Linux keeps it across
    fork and exec, so a child started by this big parent would report the parent's size.)"""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def build(side: str, shared: dict | None = None):
    """A U-Net of ``side`` ("ours" / "reference") on random weights (or ``shared`` tensors)."""
    if side == "ours":
        from diffusion_kernel_vision.models.unet_2d_condition import UNet2DConditionModel
    else:
        from diffusers import UNet2DConditionModel
    with torch.device("meta"):
        unet = UNet2DConditionModel(**CONFIG)
    if shared is None:
        generator = torch.Generator().manual_seed(0)
        shared = {k: torch.empty(v.shape).normal_(0, 0.02, generator=generator)
                  for k, v in unet.state_dict().items()}
    unet.load_state_dict(shared, strict=True, assign=True)
    unet.requires_grad_(False)
    return unet.train(), shared


def add_lora(side: str, unet, rank: int) -> list[torch.nn.Parameter]:
    """The trainable LoRA parameters, added as each trainer adds them."""
    if side == "ours":
        from diffusion_kernel.nn.lora import add_lora, lora_parameters

        add_lora(unet, "default_0", rank, target_modules=TARGETS,
                 generator=torch.Generator().manual_seed(1))
        return lora_parameters(unet, "default_0")
    from peft import LoraConfig

    unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian",
                                target_modules=list(TARGETS)))
    return [p for p in unet.parameters() if p.requires_grad]


def make_step(side: str, unet, params):
    """One training step of ``side`` as a closure over its model, optimizer and scheduler."""
    import torch.nn.functional as F

    optimizer = torch.optim.AdamW(params, lr=1e-4, weight_decay=1e-2)
    if side == "ours":
        from diffusion_kernel import registry
        from diffusion_kernel.training import training_target

        scheduler = registry.schedulers.get("DDPMScheduler")(beta_schedule="scaled_linear",
                                                             beta_start=0.00085, beta_end=0.012)

        def loss_of(latents, noise, t, hidden):  # what StableDiffusionTrainer.denoising_losses does
            prediction = unet(scheduler.add_noise(latents, noise, t), t, hidden).sample
            target = training_target(scheduler, latents, noise, t)
            return ((prediction.float() - target.float()) ** 2).mean(dim=(1, 2, 3)).mean()
    else:
        from diffusers import DDPMScheduler

        scheduler = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085,
                                  beta_end=0.012)

        def loss_of(latents, noise, t, hidden):  # diffusers' train_text_to_image_lora.py
            noisy = scheduler.add_noise(latents, noise, t)
            prediction = unet(noisy, t, hidden, return_dict=False)[0]
            return F.mse_loss(prediction.float(), noise.float(), reduction="mean")

    def step(latents, noise, t, hidden) -> float:
        start = time.perf_counter()
        loss = loss_of(latents, noise, t, hidden)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return time.perf_counter() - start

    return step


def inputs(seed: int):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(1, 4, LATENT, LATENT, generator=g), torch.randn(1, 4, LATENT, LATENT,
                                                                        generator=g),
            torch.randint(0, 1000, (1,), generator=g), torch.randn(1, 77, 768, generator=g))


def child(side: str, rank: int) -> None:
    """Memory run: build, add LoRA, two steps; print peak and built RSS (MiB) as JSON."""
    torch.set_num_threads(1)
    unet, _ = build(side)
    params = add_lora(side, unet, rank)
    built = _status_mib("VmRSS")
    step = make_step(side, unet, params)
    times = [step(*inputs(i)) for i in range(2)]
    peak = _status_mib("VmHWM")
    print(json.dumps({"peak": peak, "built": built, "times": times}))


def memory(rank: int) -> dict[str, dict]:
    out = {}
    for side in ("ours", "reference"):
        result = subprocess.run([sys.executable, __file__, "--child", side, "--rank", str(rank)],
                                capture_output=True, text=True, check=True)
        out[side] = json.loads(result.stdout.strip().splitlines()[-1])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--rank", type=int, default=4)
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--child", choices=("ours", "reference"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.rank)
        return
    torch.set_num_threads(1)
    reference, shared = build("reference")
    ours, _ = build("ours", shared)
    steps = {side: make_step(side, model, add_lora(side, model, args.rank))
             for side, model in (("ours", ours), ("reference", reference))}
    print(f"parameters: {sum(t.numel() for t in shared.values()) / 1e6:.1f}M; LoRA rank "
          f"{args.rank}; latents {LATENT}x{LATENT}, batch 1; threads: {torch.get_num_threads()}")
    for step in steps.values():  # warm-up
        step(*inputs(0))
    times: dict[str, list[float]] = {"ours": [], "reference": []}
    for r in range(args.repeat):
        for side, step in steps.items():
            times[side].append(step(*inputs(r + 1)))
        print(f"round {r + 1}: " + ", ".join(f"{s} {t[-1]:.2f} s" for s, t in times.items()),
              flush=True)
    medians = {side: statistics.median(t) for side, t in times.items()}
    ratio = medians["ours"] / medians["reference"]
    mem = {} if args.skip_memory else memory(args.rank)
    print("\n| step | median (s) | runs (s) | peak memory (MiB) | added by the steps (MiB) |")
    print("| --- | --- | --- | --- | --- |")
    for side, label in (("ours", "ours (kernel LoRA)"), ("reference", "diffusers + peft")):
        m = mem.get(side)
        peak = f"{m['peak']:,.0f}" if m else "-"
        added = f"{m['peak'] - m['built']:,.0f}" if m else "-"
        runs = ", ".join(f"{t:.2f}" for t in times[side])
        print(f"| {label} | {medians[side]:.2f} | {runs} | {peak} | {added} |")
    verdict = "met" if ratio <= 1.0 else "MISSED"
    print(f"\nratio ours / reference: {ratio:.3f}x (target <= 1.0x: {verdict})")


if __name__ == "__main__":
    main()
