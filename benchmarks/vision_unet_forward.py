"""Forward-pass time of a Stable-Diffusion-1.5-shape U-Net: ours against the reference
implementation (diffusers), same weights, same inputs, same run.

    python benchmarks/vision_unet_forward.py [--repeat N] [--batch B] [--threads T]

The model is ``UNet2DConditionModel(cross_attention_dim=768, sample_size=64)`` (every other
argument at its default: 859.5M parameters) with random weights: the reference builds and
initialises it, ours is built on the meta device and takes the very same tensors (shared, so one
copy of the 3.4 GB of weights is in memory). Input: a batch of 64x64 latents with 77 text tokens
of width 768, float32, CPU, under ``torch.inference_mode``. After one warm-up call each, the two
models run alternately ``--repeat`` times; the table gives the median wall time of each, the
ratio ours / reference (target: at most 1.0x) and the largest absolute difference between the
outputs (they must agree to float32 round-off).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

CONFIG = {"cross_attention_dim": 768, "sample_size": 64}


def build_models():
    from diffusers import UNet2DConditionModel as Reference
    from diffusion_kernel_vision.models.unet_2d_condition import UNet2DConditionModel

    torch.manual_seed(0)
    reference = Reference(**CONFIG).eval()
    with torch.device("meta"):
        ours = UNet2DConditionModel(**CONFIG)
    ours.load_state_dict(reference.state_dict(), strict=True, assign=True)
    return reference.eval(), ours.eval()


def timed(model, inputs) -> tuple[float, torch.Tensor]:
    start = time.perf_counter()
    out = model(**inputs).sample
    return time.perf_counter() - start, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    reference, ours = build_models()
    print(f"parameters: {ours.num_parameters() / 1e6:.1f}M; threads: {torch.get_num_threads()}")
    generator = torch.Generator().manual_seed(1)
    inputs = dict(sample=torch.randn(args.batch, 4, 64, 64, generator=generator),
                  timestep=torch.tensor(500),
                  encoder_hidden_states=torch.randn(args.batch, 77, 768, generator=generator))
    times = {"ours": [], "reference": []}
    with torch.inference_mode():
        _, expected = timed(reference, inputs)  # warm-up
        _, got = timed(ours, inputs)
        max_diff = (got - expected).abs().max().item()
        for _ in range(args.repeat):
            for name, model in (("reference", reference), ("ours", ours)):
                seconds, _ = timed(model, inputs)
                times[name].append(seconds)

    ours_s, ref_s = statistics.median(times["ours"]), statistics.median(times["reference"])
    print()
    print("| model (SD 1.5 UNet, fp32, CPU, batch "
          f"{args.batch}, 64x64) | median forward (s) | runs (s) |")
    print("|---|---|---|")
    for name, seconds in (("reference (diffusers)", ref_s), ("ours", ours_s)):
        runs = times["ours" if name == "ours" else "reference"]
        print(f"| {name} | {seconds:.2f} | {', '.join(f'{t:.2f}' for t in runs)} |")
    verdict = "meets" if ours_s <= ref_s else "misses"
    print(f"\nratio ours / reference: {ours_s / ref_s:.3f}x ({verdict} the <= 1.0x target); "
          f"max |ours - reference| = {max_diff:.2e}")
    if max_diff > 1e-4:
        raise SystemExit(f"outputs differ by {max_diff}: not the same computation")


if __name__ == "__main__":
    main()
