"""What an unfused LoRA adds to a U-Net step, and what a fused one does: ours (native adapters),
ours with peft's layers instead (the alternative considered), and the reference (diffusers +
peft), same weights, same inputs, same run.

    python benchmarks/lora_step.py [--sizes tiny,sd15] [--repeat N] [--batch B] [--rank R]

Models: the tests' tiny U-Net (16x16 latents) and ``UNet2DConditionModel(cross_attention_dim=768,
sample_size=64)`` (859.5M parameters, 64x64 latents, 77 text tokens). The reference builds and
initialises the weights; a second reference model and three of ours (base, native LoRA, peft
LoRA) are built on the meta device and take the very same tensors. The LoRA (random, rank
``--rank``, alpha = rank) adapts what kohya's trainer adapts in a transformer block: ``to_q,
to_k, to_v, to_out.0, ff.net.0.proj, ff.net.2, proj_in, proj_out``.

One torch thread, float32, CPU, ``torch.inference_mode``; all variants run in turn, ``--repeat``
rounds after a warm-up each. The table gives median step times, the overhead over the base step
(the median of the per-round differences LoRA - base, robust to a busy machine) and the ratio
of our overhead to the reference's (target: at most 1.0x). Fused LoRA is timed last, against
the base model again (fusing changes the shared weights); target: equal to the base step within
noise.
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
                 tokens=16, repeat=100, warm_up=True),
    # a step takes seconds: no warm-up call, the first round's overhead is negligible
    "sd15": dict(config=dict(cross_attention_dim=768, sample_size=64), tokens=77, repeat=3,
                 warm_up=False),
}
TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2", "proj_in",
           "proj_out")


def build(config: dict):
    """The reference U-Net (initialised), a second reference and three of ours, all sharing its
    tensors: base and LoRA models run side by side, so every round times each of them."""
    from diffusers import UNet2DConditionModel as Reference
    from diffusion_kernel_vision.models.unet_2d_condition import UNet2DConditionModel

    torch.manual_seed(0)
    reference = Reference(**config).eval()
    state = reference.state_dict()
    models = {"reference base": reference}
    for name, cls in (("reference LoRA", Reference), ("ours base", UNet2DConditionModel),
                      ("ours LoRA", UNet2DConditionModel),
                      ("ours with peft layers LoRA", UNet2DConditionModel)):
        with torch.device("meta"):
            model = cls(**config)
        model.load_state_dict(state, strict=True, assign=True)
        models[name] = model.eval()
    return models


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
    models = build(config)
    width = config.get("sample_size", 64)
    torch.manual_seed(2)
    inputs = dict(sample=torch.randn(batch, 4, width, width), timestep=torch.tensor(500),
                  encoder_hidden_states=torch.randn(batch, spec["tokens"],
                                                    config["cross_attention_dim"]))
    state = lora_tensors(models["ours base"], rank)
    add_native(models["ours LoRA"], state, rank)
    add_peft(models["ours with peft layers LoRA"], state, rank)
    add_reference(models["reference LoRA"], state, rank)
    runs = repeat or spec["repeat"]
    times: dict[str, list[float]] = {}

    def rounds(variants):
        for model in variants.values() if spec["warm_up"] else ():
            timed(model, inputs)
        for number in range(runs):
            for name, model in variants.items():
                times.setdefault(name, []).append(timed(model, inputs))
            if size != "tiny":  # progress, for runs of many minutes
                print(f"round {number + 1}: " + ", ".join(
                    f"{n} {times[n][-1]:.2f}s" for n in variants), flush=True)

    with torch.inference_mode():
        outputs = {n: models[n](**inputs).sample for n in ("ours LoRA", "reference LoRA")}
        agreement = (outputs["ours LoRA"] - outputs["reference LoRA"]).abs().max().item()
        rounds(models)
        from diffusion_kernel.nn.lora import fuse_lora

        fuse_lora(models["ours LoRA"])  # changes the weights all share: timed last
        rounds({"ours fused": models["ours LoRA"], "ours base (again)": models["ours base"]})
    medians = {name: statistics.median(values) for name, values in times.items()}
    # overheads as the median of paired differences (same round), robust to a busy machine
    for lora_name, base_name in (("ours LoRA", "ours base"), ("reference LoRA", "reference base"),
                                 ("ours with peft layers LoRA", "ours base"),
                                 ("ours fused", "ours base (again)")):
        medians[f"{lora_name} overhead"] = statistics.median(
            a - b for a, b in zip(times[lora_name], times[base_name]))
    medians["max |ours - reference|"] = agreement
    return medians


def report(size: str, medians: dict[str, float]) -> None:
    print(f"\n{size}: median step (ms); overhead = median of (LoRA - base) paired per round")
    print("| variant | step (ms) | overhead over base (ms) | overhead / reference's |")
    print("| --- | --- | --- | --- |")
    ref_overhead = medians["reference LoRA overhead"]
    for name in ("ours base", "reference base", "ours LoRA", "ours with peft layers LoRA",
                 "reference LoRA", "ours fused"):
        overhead = medians.get(f"{name} overhead")
        ratio = (f"{overhead / ref_overhead:.2f}x" if overhead is not None and "LoRA" in name
                 else "-")
        shown = "-" if overhead is None else f"{overhead * 1e3:+,.1f}"
        print(f"| {name} | {medians[name] * 1e3:,.1f} | {shown} | {ratio} |")
    ours_overhead = medians["ours LoRA overhead"]
    fused = medians["ours fused"] / medians["ours base (again)"]
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
