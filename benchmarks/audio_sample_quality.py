"""Sample quality of a spoken-digits model (default: the one shipped with the audio plugin), per
sampler and step count.

    python benchmarks/audio_sample_quality.py [--model PATH] [--num 500] [--runs ddpm:50,ddim:20]
        [--plot docs/audio_quality.png] [--json out.json]

The judge is a small CNN trained on mel images of real clips by the six voice variants the model
never heard (pitches 35 and 65); it is checked on those voices at pitch 50 and on the training
voices. For each run, ``--num`` samples (sample i from a generator seeded i) are judged on their
mel images: the mean confidence and the share of each digit, and the Frechet distance (FD) of
the judge's features to 500 real clips drawn from the training data (every training voice,
rate and pitch), against the floor: the FD between two disjoint random sets of 500 such clips.
Also reported: the FD to the held-out voices (and what real training-voice clips score there)
and what the judge hears in the samples' audio (the mel images of their Griffin-Lim waveforms).
Targets: mean confidence >= 0.8, every digit between 4 % and 20 % of the samples, FD within 2x
the floor.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch


def main() -> None:
    from diffusion_kernel import DiffusionPipeline
    from diffusion_kernel.cli_extensions import resolve_model
    from diffusion_kernel.scheduling import scheduler_from_name
    from diffusion_kernel_audio.evaluation import (
        generate_and_judge,
        quality_report,
        real_references,
    )
    from diffusion_kernel_audio.quality_plot import draw_samples_by_digit

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="spoken-digits")
    parser.add_argument("--num", type=int, default=500)
    parser.add_argument("--runs", default="ddpm:50,ddpm:100,ddpm:25,ddim:20,ddim:50,dpm++2m:20",
                        help="comma-separated scheduler:steps")
    parser.add_argument("--plot", help="draw the first run's samples by judged digit here")
    parser.add_argument("--json", help="write every run's figures here")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    pipe = DiffusionPipeline.from_pretrained(resolve_model(args.model))
    pipe.set_progress_bar_config(disable=True)
    started = time.perf_counter()
    references = real_references(pipe.mel)
    print(f"real clips rendered and judge trained in {time.perf_counter() - started:.0f} s")
    original = pipe.scheduler.config
    results = {}
    header = (f"{'sampler':>12s} {'steps':>5s} {'conf':>6s} {'min %':>6s} {'max %':>6s} "
              f"{'FD':>7s} {'floor':>6s} {'ratio':>6s} {'FD held-out':>11s} {'heard conf':>10s} "
              f"{'s':>5s}")
    for number, run in enumerate(args.runs.split(",")):
        name, steps = run.split(":")
        pipe.scheduler = scheduler_from_name(name, original)
        started = time.perf_counter()
        verdict, heard, pixels = generate_and_judge(pipe, references, args.num, int(steps))
        report = quality_report(verdict, references, heard)
        report["seconds"] = time.perf_counter() - started
        results[run] = report
        if number == 0:
            print(f"judge accuracy: held-out voices {report['judge_accuracy_heldout']:.3f}, "
                  f"training voices {report['judge_accuracy_training_voices']:.3f}; FD of real "
                  f"training-voice clips to the held-out voices "
                  f"{report['fd_training_voices_to_heldout']:.1f}")
            print(header)
            print("-" * len(header))
            if args.plot:
                draw_samples_by_digit(pixels, verdict, report).save(args.plot)
        shares = report["shares"]
        print(f"{name:>12s} {steps:>5s} {report['mean_confidence']:6.3f} "
              f"{100 * min(shares):6.1f} {100 * max(shares):6.1f} "
              f"{report['fd_to_training_voices']:7.1f} {report['fd_floor_training_voices']:6.1f} "
              f"{report['fd_ratio']:6.2f} {report['fd_to_heldout_voices']:11.1f} "
              f"{report['heard_mean_confidence']:10.3f} {report['seconds']:5.0f}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
