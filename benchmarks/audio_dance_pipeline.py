"""DanceDiffusionPipeline end to end: ours against the reference (diffusers), the same folder, the
same generator, the same run.

    python benchmarks/audio_dance_pipeline.py [--repeat N] [--steps S] [--seconds L]
        [--skip-default-threads]

The pipeline is Dance Diffusion's test layout (UNet1DModel with 3 levels, 32-64 channels, 16 kHz
stereo; random weights, saved by the reference and loaded by both) with IPNDM, generating two
clips of ``--seconds`` in ``--steps`` steps. Rows as in audio_unet1d_forward.py: both on one
thread, then ours with the thread count the kernel's commands choose against the reference with
torch's default. The table gives median wall times, the ratio (target: at most 0.9x) and the
largest difference between the audios.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import warnings

import numpy as np
import torch

DANCE = dict(block_out_channels=(32, 32, 64), extra_in_channels=16, sample_size=16000,
             sample_rate=16000, in_channels=2, out_channels=2, time_embedding_dim=16)


def build(folder: str):
    from diffusers import DanceDiffusionPipeline, IPNDMScheduler, UNet1DModel
    from diffusion_kernel import DiffusionPipeline

    torch.manual_seed(0)
    reference = DanceDiffusionPipeline(unet=UNet1DModel(**DANCE).eval(),
                                       scheduler=IPNDMScheduler())
    reference.save_pretrained(folder)
    ours = DiffusionPipeline.from_pretrained(folder)
    for pipe in (ours, reference):
        pipe.set_progress_bar_config(disable=True)
    return ours, reference


def timed(pipe, steps: int, seconds: float, threads: int, into: list) -> np.ndarray:
    torch.set_num_threads(threads)
    start = time.perf_counter()
    audios = pipe(batch_size=2, num_inference_steps=steps, audio_length_in_s=seconds,
                  generator=torch.Generator().manual_seed(0)).audios
    into.append(time.perf_counter() - start)
    return audios


def main() -> None:
    from diffusion_kernel.threads import choose_threads

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=0.25)
    parser.add_argument("--skip-default-threads", action="store_true")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    default = torch.get_num_threads()
    chosen, why = choose_threads()
    with tempfile.TemporaryDirectory() as folder:
        ours, reference = build(folder)
        print(f"2 clips of {args.seconds} s at 16 kHz stereo, {args.steps} IPNDM steps; torch "
              f"default threads: {default}; chosen for ours: {chosen} ({why}); median of "
              f"{args.repeat}")
        header = (f"{'threads':>9s} {'ours s':>8s} {'diffusers s':>12s} {'ratio':>8s} "
                  f"{'max diff':>9s} {'target':>6s}")
        print(header)
        print("-" * len(header))
        settings = [(1, 1)] + ([] if args.skip_default_threads else [(chosen, default)])
        for mine, theirs in settings:
            times: dict[str, list[float]] = {"ours": [], "reference": []}
            timed(ours, 2, args.seconds, mine, [])  # warm-up
            timed(reference, 2, args.seconds, theirs, [])
            for _ in range(args.repeat):
                a = timed(ours, args.steps, args.seconds, mine, times["ours"])
                b = timed(reference, args.steps, args.seconds, theirs, times["reference"])
            t_ours, t_ref = (statistics.median(times[k]) for k in ("ours", "reference"))
            diff = float(np.abs(a - b).max())
            ok = "ok" if t_ours / t_ref <= 0.9 and diff < 1e-4 else "MISS"
            print(f"{f'{mine} / {theirs}':>9s} {t_ours:8.2f} {t_ref:12.2f} {t_ours / t_ref:7.2f}x "
                  f"{diff:9.1e} {ok:>6s}", flush=True)


if __name__ == "__main__":
    main()
