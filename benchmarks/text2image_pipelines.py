"""End-to-end time of each text-conditioned family's tiny pipeline (DeepFloyd IF stage I + stage
II, unCLIP, latent diffusion text-to-image, score-SDE VE): ours against the reference
implementation (diffusers) on the same folders, and the import time of ``IFPipeline`` in a fresh
process.

    python benchmarks/text2image_pipelines.py [--repeat N] [--threads T] [--scale S]
                                              [--imports-only | --profile NAME]

The tiny checkpoints are the test suite's (``tests/text2image/tiny.py``: built and saved by the
reference with T5 / CLIP / BERT encoders made offline); ours loads each folder through
``DiffusionPipeline.from_pretrained``. Both run the same call with the same seed; after one
warm-up call each they run alternately ``--repeat`` times and the table gives the median wall
time, the ratio ours / reference (target: at most 0.9x) and the largest difference between the
images (they must agree within 1e-4). ``--scale`` multiplies every step count.

``--profile NAME``: instead of the table, profile the family whose name contains NAME (e.g.
``IF``, ``unCLIP``) with ``torch.profiler``, three calls a side after the warm-up, and print each
side's operators by self CPU time (where the time goes: the kernels both sides share, and what
is left around them).

Import time: ``from diffusion_kernel import IFPipeline`` against ``from diffusers import
IFPipeline`` and ``import torch``, each in fresh processes (median of ``--repeat`` runs), and our
import timed after ``import torch`` in the same fresh process; target: ours at most torch's time
+ 0.5 s. ``--imports-only`` skips the pipelines.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

# The test suite's tiny checkpoints (tests/text2image/tiny.py), shared rather than copied.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def if_cascade(stage_1, stage_2, steps: int):
    embeds, negative = stage_1.encode_prompt("a red panda")
    small = stage_1(prompt_embeds=embeds, negative_prompt_embeds=negative,
                    num_inference_steps=steps, generator=seeded(), output_type="pt").images
    return stage_2(image=small, prompt_embeds=embeds, negative_prompt_embeds=negative,
                   num_inference_steps=steps, generator=seeded(1), output_type="np").images


def families(scale: int) -> dict:
    """Family name -> (load ours, load the reference, run(pipes) -> images), steps included."""
    import diffusers
    from diffusion_kernel import DiffusionPipeline
    from text2image import tiny
    from vision.test_pipelines_score_sde_ve import NCSNPP_TINY

    def ours(folder):
        return DiffusionPipeline.from_pretrained(folder)

    def score_sde_folder():
        torch.manual_seed(0)
        unet = diffusers.UNet2DModel(**NCSNPP_TINY)
        diffusers.ScoreSdeVePipeline(unet=unet, scheduler=diffusers.ScoreSdeVeScheduler(
            sigma_max=5.0)).save_pretrained(tiny.ROOT / "score-sde-ve")
        return tiny.ROOT / "score-sde-ve"

    ldm, sde = tiny.ldm_text2img_folder(), score_sde_folder()
    if_1, if_2, unclip = tiny.if_stage_1_folder(), tiny.if_stage_2_folder(), tiny.unclip_folder()
    return {
        f"DeepFloyd IF, stage I 16 px + stage II 32 px, {10 * scale} + {10 * scale} steps": (
            lambda: (ours(if_1), ours(if_2)),
            lambda: (diffusers.IFPipeline.from_pretrained(if_1),
                     diffusers.IFSuperResolutionPipeline.from_pretrained(if_2)),
            lambda pipes: if_cascade(*pipes, 10 * scale)),
        f"unCLIP, 32 px, {10 * scale} prior + {10 * scale} decoder + {5 * scale} super-res": (
            lambda: (ours(unclip),),
            lambda: (diffusers.UnCLIPPipeline(**tiny.unclip_components()),),
            lambda pipes: pipes[0]("a cat", prior_num_inference_steps=10 * scale,
                                   decoder_num_inference_steps=10 * scale,
                                   super_res_num_inference_steps=5 * scale,
                                   generator=seeded(), output_type="np").images),
        f"LDM text-to-image (LDMBert), 64 px asked, {20 * scale} DDIM steps, guidance": (
            lambda: (ours(ldm),),
            lambda: (diffusers.LDMTextToImagePipeline.from_pretrained(ldm),),
            lambda pipes: pipes[0]("a cat", height=64, width=64, guidance_scale=6.0,
                                   num_inference_steps=20 * scale, generator=seeded(),
                                   output_type="np").images),
        f"score-SDE VE (NCSN++), 16 px, {20 * scale} PC steps": (
            lambda: (ours(sde),),
            lambda: (diffusers.ScoreSdeVePipeline.from_pretrained(sde),),
            lambda pipes: pipes[0](num_inference_steps=20 * scale, generator=seeded(),
                                   output_type="np").images),
    }


def pipeline_rows(repeat: int, scale: int) -> list[tuple]:
    rows = []
    for name, (load_ours, load_reference, run) in families(scale).items():
        pipes = {"ours": load_ours(), "reference": load_reference()}
        for group in pipes.values():
            for pipe in group:
                pipe.set_progress_bar_config(disable=True)
        expected, got = run(pipes["reference"]), run(pipes["ours"])  # warm-up and comparison
        times = {"reference": [], "ours": []}
        for _ in range(repeat):
            for who in ("reference", "ours"):
                start = time.perf_counter()
                run(pipes[who])
                times[who].append(time.perf_counter() - start)
        rows.append((name, statistics.median(times["reference"]),
                     statistics.median(times["ours"]),
                     float(np.abs(np.asarray(got) - np.asarray(expected)).max())))
    return rows


def profile_family(name: str, scale: int, calls: int = 3) -> None:
    """torch.profiler tables, ours and the reference's, for the family whose name has ``name``."""
    from torch.profiler import profile

    matches = {k: v for k, v in families(scale).items() if name.lower() in k.lower()}
    if len(matches) != 1:
        raise SystemExit(f"--profile {name!r} matches {len(matches)} families; give a part of "
                         f"one name (IF, unCLIP, LDM, score-SDE)")
    (family, (load_ours, load_reference, run)), = matches.items()
    for who, load in (("ours", load_ours), ("reference", load_reference)):
        pipes = load()
        for pipe in pipes:
            pipe.set_progress_bar_config(disable=True)
        run(pipes)  # warm-up
        with profile() as prof:
            for _ in range(calls):
                run(pipes)
        print(f"\n== {who}: {family}, {calls} calls")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))


def import_seconds(statement: str) -> float:
    code = ("import time; t = time.perf_counter(); " + statement +
            "; print(time.perf_counter() - t)")
    result = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                            text=True)
    return float(result.stdout.split()[-1])


AFTER_TORCH = "import torch, then (timed) from diffusion_kernel import IFPipeline"


def import_rows(repeat: int) -> dict[str, list[float]]:
    """Fresh-process import times, the statements interleaved so that load on the machine hits
    them alike. The last row times our import in a process that has imported torch already:
    on a loaded machine torch's own time varies by seconds from process to process, which
    hides a difference of a few hundred milliseconds between the first rows."""
    statements = ("import torch", "from diffusion_kernel import IFPipeline",
                  "from diffusers import IFPipeline")
    runs: dict[str, list[float]] = {s: [] for s in (*statements, AFTER_TORCH)}
    for _ in range(repeat):
        for statement in statements:
            runs[statement].append(import_seconds(statement))
        runs[AFTER_TORCH].append(import_seconds(
            "t = time.perf_counter(); import torch; t = time.perf_counter(); "
            "from diffusion_kernel import IFPipeline"))
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--scale", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--imports-only", action="store_true")
    parser.add_argument("--profile", metavar="NAME", default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.profile:
        profile_family(args.profile, args.scale)
        return

    rows = [] if args.imports_only else pipeline_rows(args.repeat, args.scale)
    print(f"\nthreads: {torch.get_num_threads()}; median of {args.repeat} alternating runs")
    print("| pipeline | reference (s) | ours (s) | ratio ours/ref | max abs image diff |")
    print("|---|---|---|---|---|")
    for name, ref_s, ours_s, diff in rows:
        print(f"| {name} | {ref_s:.3f} | {ours_s:.3f} | {ours_s / ref_s:.2f}x | {diff:.1e} |")

    runs = import_rows(args.repeat)
    print("\n| import (fresh process) | median (s) | runs (s) |")
    print("|---|---|---|")
    for name, seconds in runs.items():
        print(f"| `{name}` | {statistics.median(seconds):.2f} | "
              f"{', '.join(f'{s:.2f}' for s in seconds)} |")
    torch_s = statistics.median(runs["import torch"])
    ours_s = statistics.median(runs["from diffusion_kernel import IFPipeline"])
    print(f"\nours - torch: {ours_s - torch_s:+.2f} s; ours after torch: "
          f"{statistics.median(runs[AFTER_TORCH]):.2f} s (target: at most +0.5 s)")


if __name__ == "__main__":
    main()
