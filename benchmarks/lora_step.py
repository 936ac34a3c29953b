"""What an unfused LoRA adds to a U-Net step, and what a fused one does: ours (native adapters),
ours with peft's layers instead (the alternative considered), and the reference (diffusers +
peft), same weights, same inputs, same run.

    python benchmarks/lora_step.py [--sizes tiny,sd15] [--repeat N] [--batch B] [--rank R]

Models: the tests' tiny U-Net (16x16 latents) and ``UNet2DConditionModel(cross_attention_dim=768,
sample_size=64)`` (859.5M parameters, 64x64 latents, 77 text tokens). The reference builds and
initialises the weights; our two models are built on the meta device and take the very same
tensors. The LoRA (random, rank ``--rank``, alpha = rank) adapts what kohya's trainer adapts in
a transformer block: ``to_q, to_k, to_v, to_out.0, ff.net.0.proj, ff.net.2, proj_in,
proj_out``. One torch thread, float32, CPU, ``torch.inference_mode``; the variants run
alternately ``--repeat`` times after a warm-up each, and the table gives median step times,
the overhead over the base step (LoRA - base) and the ratio of our overhead to the reference's
(target: at most 1.0x). Fused LoRA is timed last (fusing changes the shared weights); target:
equal to the base step within noise.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

SIZES = {
    "tiny": dict(config=dict(block_out_channels=(16, 32), layers_per_block=1, sample_size=16,
                             norm_num_groups=8, cross_attention_dim=32, attention_head_dim=8,
                             down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                             up_block_types=("CrossAttnUpBlock2D", "UpBlock2D")),
                 tokens=16, repeat=30),
    "sd15": dict(config=dict(cross_attention_dim=768, sample_size=64), tokens=77, repeat=3),
}
TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2", "proj_in",
           "proj_out")


def build(config: dict):
    """The reference U-Net (initialised) and two of ours sharing its tensors."""
    from diffusers import UNet2DConditionModel as Reference
    from diffusion_kernel_vision.models.unet_2d_condition import UNet2DConditionModel

    torch.manual_seed(0)
    reference = Reference(**config).eval()
    ours = []
    for _ in range(2):
        with torch.device("meta"):
            model = UNet2DConditionModel(**config)
        model.load_state_dict(reference.state_dict(), strict=True, assign=True)
        ours.append(model.eval())
    return reference, ours[0], ours[1]


def lora_tensors(model, rank: int) -> dict[str, torch.Tensor]:
    """A random rank-``rank`` LoRA for ``TARGETS``, in the peft key format."""
    generator = torch.Generator().manual_seed(1)
    state = {}
    for path, module in model.named_modules():
        if not any(path.endswith("." + t) for t in TARGETS):
            continue
        weight = module.weight
        state[f"{path}.lora_A.weight"] = torch.randn(rank, *weight.shape[1:],
                                                     generator=generator) / rank
        state[f"{path}.lora_B.weight"] = torch.randn(weight.shape[0], rank,
                                                     *(1,) * (weight.ndim - 2),
                                                     generator=generator) * 0.01
    return state


def add_native(model, state, rank) -> None:
    from diffusion_kernel.nn.lora import LoRAWeights, inject_lora

    paths = {k.rsplit(".lora_", 1)[0] for k in state}
    inject_lora(model, "bench", {p: LoRAWeights(state[f"{p}.lora_A.weight"],
                                                state[f"{p}.lora_B.weight"], rank)
                                 for p in paths})


def add_peft(model, state, rank) -> None:
    from peft import LoraConfig, inject_adapter_in_model, set_peft_model_state_dict

    paths = sorted({k.rsplit(".lora_", 1)[0] for k in state})
    inject_adapter_in_model(LoraConfig(r=rank, lora_alpha=rank, target_modules=paths), model,
                            adapter_name="bench")
    set_peft_model_state_dict(model, state, adapter_name="bench")


def add_reference(model, state, rank) -> None:
    model.load_lora_adapter({f"unet.{k}": v for k, v in state.items()}, prefix="unet",
                            adapter_name="bench")


def timed(model, inputs) -> float:
    start = time.perf_counter()
    model(**inputs)
    return time.perf_counter() - start


def measure(size: str, repeat: int | None, batch: int, rank: int) -> dict[str, float]:
    spec = SIZES[size]
    config = spec["config"]
    reference, ours, ours_peft = build(config)
    width = config.get("sample_size", 64)
    torch.manual_seed(2)
    inputs = dict(sample=torch.randn(batch, 4, width, width), timestep=torch.tensor(500),
                  encoder_hidden_states=torch.randn(batch, spec["tokens"],
                                                    config["cross_attention_dim"]))
    state = lora_tensors(ours, rank)
    runs = repeat or spec["repeat"]
    times: dict[str, list[float]] = {}

    def rounds(variants):
        for model in variants.values():  # warm-up
            timed(model, inputs)
        for _ in range(runs):
            for name, model in variants.items():
                times.setdefault(name, []).append(timed(model, inputs))

    with torch.inference_mode():
        rounds({"ours base": ours, "reference base": reference})
        add_native(ours, state, rank)
        add_peft(ours_peft, state, rank)
        add_reference(reference, state, rank)
        rounds({"ours LoRA": ours, "ours with peft layers LoRA": ours_peft,
                "reference LoRA": reference})
        agreement = (ours(**inputs).sample - reference(**inputs).sample).abs().max().item()
        from diffusion_kernel.nn.lora import fuse_lora

        fuse_lora(ours)  # changes the weights all three share: timed last
        rounds({"ours fused": ours})
    medians = {name: statistics.median(values) for name, values in times.items()}
    medians["max |ours - reference|"] = agreement
    return medians


def report(size: str, medians: dict[str, float]) -> None:
    print(f"\n{size}: median step (ms)")
    print("| variant | step (ms) | overhead over base (ms) | overhead / reference's |")
    print("| --- | --- | --- | --- |")
    ref_overhead = medians["reference LoRA"] - medians["reference base"]
    for name in ("ours base", "reference base", "ours LoRA", "ours with peft layers LoRA",
                 "reference LoRA", "ours fused"):
        base = medians["reference base" if name.startswith("reference") else "ours base"]
        overhead = medians[name] - base
        ratio = (f"{overhead / ref_overhead:.2f}x" if "LoRA" in name and ref_overhead > 0
                 else "-")
        print(f"| {name} | {medians[name] * 1e3:,.1f} | {overhead * 1e3:+,.1f} | {ratio} |")
    ours_overhead = medians["ours LoRA"] - medians["ours base"]
    fused = medians["ours fused"] / medians["ours base"]
    print(f"unfused overhead, ours / reference: {ours_overhead / ref_overhead:.2f}x "
          f"(target <= 1.0x: {'met' if ours_overhead <= ref_overhead else 'MISSED'}); "
          f"fused / base: {fused:.3f}x; outputs agree to "
          f"{medians['max |ours - reference|']:.1e}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="tiny,sd15")
    parser.add_argument("--repeat", type=int, default=None)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--rank", type=int, default=64)
    args = parser.parse_args()
    torch.set_num_threads(1)
    for size in args.sizes.split(","):
        report(size, measure(size, args.repeat, args.batch, args.rank))


if __name__ == "__main__":
    main()
