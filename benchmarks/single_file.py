"""How fast, and in how much memory, a Stable-Diffusion-1.5-shape single-file checkpoint loads:
``StableDiffusionPipeline.from_single_file`` of ours against the reference's (diffusers), same
file, same config folder, same run.

    python benchmarks/single_file.py [--work DIR] [--repeat N]

The checkpoint is an original-layout (CompVis / A1111) float32 ``.safetensors`` file of
SD 1.5's shape: U-Net ``UNet2DConditionModel(cross_attention_dim=768, sample_size=64)``, the
SD VAE and a CLIP ViT-L/14 text encoder (1.07G parameters, 4.3 GB), with random weights,
written once by ours to ``benchmarks/_work`` with a diffusers-layout config folder beside it
(``config=``: nothing is downloaded). Every measurement runs in a fresh interpreter with the
page cache warm; a child reports the wall time of ``from_single_file``, the time to touch every
weight afterwards (a forward pass reads them all too) and its peak RSS minus the RSS after
imports ("peak"; transformers' CLIP classes are imported before, for both: the reference
imports them with its pipeline class, ours on first use). Ours and the reference alternate run
by run. Targets: load time at most the
reference's; peak at most 1.2x the weights the pipeline keeps.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
GB = 1e9
UNET = {"cross_attention_dim": 768, "sample_size": 64}
VAE = {"block_out_channels": [128, 256, 512, 512], "layers_per_block": 2, "latent_channels": 4,
       "sample_size": 512, "down_block_types": ["DownEncoderBlock2D"] * 4,
       "up_block_types": ["UpDecoderBlock2D"] * 4}
CLIP_L = {"vocab_size": 49408, "hidden_size": 768, "intermediate_size": 3072,
          "num_attention_heads": 12, "num_hidden_layers": 12, "max_position_embeddings": 77,
          "hidden_act": "quick_gelu", "projection_dim": 768}


def prepare(work: Path) -> tuple[Path, Path]:
    """The checkpoint and its config folder (written once, reused)."""
    path, config = work / "sd15-single-file.safetensors", work / "sd15-config"
    if path.is_file() and (config / "model_index.json").is_file():
        return path, config
    print(f"writing {path} and {config} (once) ...", flush=True)
    import string

    import torch
    from diffusion_kernel import (
        AutoencoderKL,
        DDIMScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    work.mkdir(parents=True, exist_ok=True)
    vocab = {c: i for i, c in enumerate(string.ascii_lowercase)}
    vocab.update({"<|startoftext|>": 26, "<|endoftext|>": 27})
    (work / "vocab.json").write_text(json.dumps(vocab))
    (work / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(str(work / "vocab.json"), str(work / "merges.txt"))
    torch.manual_seed(0)
    pipe = StableDiffusionPipeline(
        vae=AutoencoderKL(**VAE), text_encoder=CLIPTextModel(CLIPTextConfig(**CLIP_L)),
        tokenizer=tokenizer, unet=UNet2DConditionModel(**UNET),
        scheduler=DDIMScheduler(beta_start=0.00085, beta_end=0.012,
                                beta_schedule="scaled_linear"))
    pipe.save_single_file(path)
    config.mkdir(exist_ok=True)  # the configs only: the weights come from the single file
    (config / "model_index.json").write_text(json.dumps(pipe.config.to_dict(), indent=2))
    for name in ("unet", "vae", "scheduler"):
        getattr(pipe, name).save_config(config / name)
    pipe.text_encoder.config.save_pretrained(config / "text_encoder")
    tokenizer.save_pretrained(config / "tokenizer")
    return path, config


# One measurement, in a child interpreter -------------------------------------------------------
def rss_now() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def child(impl: str, path: str, config: str) -> None:
    import torch

    torch.set_num_threads(1)
    if impl == "ours":
        from diffusion_kernel import StableDiffusionPipeline
    else:
        from diffusers import StableDiffusionPipeline
    # The reference imports transformers' CLIP classes with its pipeline class, ours when a
    # pipeline first needs them: import them here for both, outside what is timed.
    from transformers import CLIPTextModel, CLIPTokenizer  # noqa: F401

    baseline = rss_now()
    start = time.perf_counter()
    pipe = StableDiffusionPipeline.from_single_file(path, config=config, local_files_only=True)
    load = time.perf_counter() - start
    start = time.perf_counter()
    models = [pipe.unet, pipe.vae, pipe.text_encoder]
    with torch.no_grad():
        for model in models:
            for p in model.parameters():
                p.sum()
    touch = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    kept = sum(p.numel() * p.element_size() for m in models for p in m.parameters())
    print(json.dumps({"load": load, "touch": touch, "peak": peak - baseline, "kept": kept}))


def measure(impl: str, path: Path, config: Path) -> dict:
    result = subprocess.run([sys.executable, __file__, "--child", impl, str(path), str(config)],
                            capture_output=True, text=True, cwd=HERE)
    if result.returncode != 0:
        raise RuntimeError(f"{impl} failed:\n{result.stderr[-4000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=HERE / "_work")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return
    path, config = prepare(args.work)
    with open(path, "rb") as f:  # warm the page cache: the disk is not what is measured
        while f.read(64 << 20):
            pass
    runs: dict[str, list[dict]] = {"ours": [], "reference": []}
    for _ in range(args.repeat):
        for impl in runs:
            runs[impl].append(measure(impl, path, config))
    print(f"from_single_file, SD-1.5-shape fp32 checkpoint ({path.stat().st_size / GB:.2f} GB), "
          f"median of {args.repeat} fresh interpreters")
    print("| implementation | load (s) | fastest (s) | touch (s) | peak (GB) | kept (GB) | "
          "peak / kept |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    summary = {}
    for impl, results in runs.items():
        load = statistics.median(r["load"] for r in results)
        peak = max(r["peak"] for r in results)
        kept = results[0]["kept"]
        summary[impl] = (load, peak, kept)
        print(f"| {impl} | {load:.2f} | {min(r['load'] for r in results):.2f} | "
              f"{statistics.median(r['touch'] for r in results):.2f} | {peak / GB:.2f} | "
              f"{kept / GB:.2f} | {peak / kept:.2f}x |")
    (ours, ours_peak, kept), (reference, _, _) = summary["ours"], summary["reference"]
    print(f"load ours / reference: {ours / reference:.2f}x (target <= 1.0x: "
          f"{'met' if ours <= reference else 'MISSED'}); peak / kept: {ours_peak / kept:.2f}x "
          f"(target <= 1.2x: {'met' if ours_peak <= 1.2 * kept else 'MISSED'})")


if __name__ == "__main__":
    main()
