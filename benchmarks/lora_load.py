"""How long ``load_lora_weights`` takes for a rank-64 LoRA on a Stable-Diffusion-1.5-shape U-Net:
ours (native adapters), ours with peft's layers instead (the alternative considered: peft's
``inject_adapter_in_model`` + ``set_peft_model_state_dict`` on our U-Net), and the reference
(diffusers + peft), same file, same run.

    python benchmarks/lora_load.py [--repeat N] [--rank R]

The LoRA (random, diffusers format, written once to ``benchmarks/_work``) adapts what kohya's
trainer adapts in every transformer block of ``UNet2DConditionModel(cross_attention_dim=768)``:
``to_q, to_k, to_v, to_out.0, ff.net.0.proj, ff.net.2, proj_in, proj_out`` (192 layers, 51M
parameters at rank 64). Each measurement runs in a fresh interpreter: it builds the pipeline
(the SD-1.5-shape U-Net with uninitialised weights, a tiny VAE and CLIP text encoder), reads the
file once to warm the page cache, then times ``pipe.load_lora_weights(file)``. The three
variants alternate run by run; the table gives the median (and fastest) time and the ratio to
the reference (target for ours: at most 0.5x).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
CONFIG = {"cross_attention_dim": 768, "sample_size": 64}
TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2", "proj_in",
           "proj_out")
VARIANTS = ("ours", "ours with peft layers", "reference")


def prepare(work: Path, rank: int) -> Path:
    """Write the LoRA file (once): keys ``unet.<path>.lora_A.weight`` / ``lora_B.weight``."""
    path = work / f"sd15-lora-r{rank}.safetensors"
    if path.is_file():
        return path
    import torch
    from diffusion_kernel_vision.models.unet_2d_condition import UNet2DConditionModel
    from safetensors.torch import save_file

    with torch.device("meta"):
        unet = UNet2DConditionModel(**CONFIG)
    generator = torch.Generator().manual_seed(0)
    state = {}
    for name, module in unet.named_modules():
        if any(name.endswith("." + t) for t in TARGETS):
            shape = module.weight.shape
            state[f"unet.{name}.lora_A.weight"] = torch.randn(rank, *shape[1:],
                                                              generator=generator) / rank
            state[f"unet.{name}.lora_B.weight"] = torch.randn(shape[0], rank,
                                                              *(1,) * (len(shape) - 2),
                                                              generator=generator) * 0.01
    work.mkdir(parents=True, exist_ok=True)
    save_file(state, path)
    return path


# Children ----------------------------------------------------------------------------------------
def _tiny_parts():
    """A tiny text encoder, tokenizer and VAE: only the U-Net matters here."""
    import json as _json
    import string
    import tempfile

    import torch
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    folder = Path(tempfile.mkdtemp())
    vocab = {c: i for i, c in enumerate(string.ascii_lowercase)}
    vocab.update({"<|startoftext|>": 26, "<|endoftext|>": 27})
    (folder / "vocab.json").write_text(_json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"))
    torch.manual_seed(0)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=28, hidden_size=32, intermediate_size=37, num_attention_heads=4,
        num_hidden_layers=2, bos_token_id=26, eos_token_id=27, pad_token_id=27))
    return text_encoder, tokenizer


def child(variant: str, path: str) -> None:
    import torch

    torch.set_num_threads(1)
    text_encoder, tokenizer = _tiny_parts()
    Path(path).read_bytes()  # warm the page cache: the disk is not what is measured
    if variant == "reference":
        from accelerate import init_empty_weights
        from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline
        from diffusers import UNet2DConditionModel as UNet

        with init_empty_weights():
            unet = UNet(**CONFIG)
        unet.to_empty(device="cpu")
    else:
        from diffusion_kernel import (
            AutoencoderKL,
            DDIMScheduler,
            StableDiffusionPipeline,
            UNet2DConditionModel,
        )

        with torch.device("meta"):
            unet = UNet2DConditionModel(**CONFIG)
        unet.to_empty(device="cpu")
    vae = AutoencoderKL(block_out_channels=(32,), norm_num_groups=8)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                                   unet=unet, scheduler=DDIMScheduler(), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    start = time.perf_counter()
    if variant == "ours with peft layers":
        _load_with_peft(pipe.unet, path)
    else:
        pipe.load_lora_weights(path)
    seconds = time.perf_counter() - start
    print(json.dumps({"seconds": seconds}))


def _load_with_peft(unet, path: str) -> None:
    """What a peft-backed ``load_lora_weights`` would do on our U-Net."""
    from peft import LoraConfig, inject_adapter_in_model, set_peft_model_state_dict
    from safetensors.torch import load_file

    state = {k.removeprefix("unet."): v for k, v in load_file(path).items()}
    paths = sorted({k.rsplit(".lora_", 1)[0] for k in state})
    rank = next(iter(state.values())).shape[0]
    # low_cpu_mem_usage: adapters made on the meta device and filled, as diffusers does
    inject_adapter_in_model(LoraConfig(r=rank, lora_alpha=rank, target_modules=paths), unet,
                            adapter_name="default_0", state_dict=state, low_cpu_mem_usage=True)
    set_peft_model_state_dict(unet, state, adapter_name="default_0", low_cpu_mem_usage=True)


# Parent ----------------------------------------------------------------------------------------
def run_child(variant: str, path: Path) -> float:
    result = subprocess.run([sys.executable, __file__, "--child", variant, str(path)],
                            check=True, capture_output=True, text=True)
    return json.loads(result.stdout.strip().splitlines()[-1])["seconds"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--rank", type=int, default=64)
    parser.add_argument("--work", type=Path, default=HERE / "_work")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return
    path = prepare(args.work, args.rank)
    times: dict[str, list[float]] = {v: [] for v in VARIANTS}
    for _ in range(args.repeat):
        for variant in VARIANTS:
            times[variant].append(run_child(variant, path))
    reference = statistics.median(times["reference"])
    print(f"load_lora_weights, rank {args.rank}, SD-1.5-shape U-Net ({args.repeat} fresh "
          f"processes each)")
    print("| variant | median (s) | fastest (s) | vs reference |")
    print("| --- | --- | --- | --- |")
    for variant in VARIANTS:
        median = statistics.median(times[variant])
        print(f"| {variant} | {median:.3f} | {min(times[variant]):.3f} | "
              f"{median / reference:.3f}x |")
    ratio = statistics.median(times["ours"]) / reference
    print(f"ours / reference: {ratio:.3f}x (target <= 0.5x: {'met' if ratio <= 0.5 else 'MISSED'})")


if __name__ == "__main__":
    main()
