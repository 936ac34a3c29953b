"""The audio plugin's additions to the kernel's command verbs: ``diffusion-kernel train mel`` (an
Audio Diffusion model on mel-spectrogram images) and ``diffusion-kernel evaluate spoken-digits``
(how recognisable a spoken-digits model's samples are). This module imports only argparse, so
``--help`` stays quick; the runners import the trainer and the judge."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from diffusion_kernel.cli_extensions import config_from_args

SHIPPED_MODEL = Path(__file__).parent / "shipped" / "spoken-digits-mel"


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(",") if v.strip())


def add_train_mel_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``diffusion-kernel train mel``."""
    p.add_argument("--data", default="spoken-digits",
                   help="a folder of 16-bit WAV files at --sample-rate (every mel slice of "
                        "every file is an image), or 'spoken-digits' (rendered with eSpeak NG: "
                        "pip install 'diffusion-kernel-audio[train]')")
    p.add_argument("--output-dir", required=True,
                   help="the AudioDiffusionPipeline folder to write (and to resume from)")
    p.add_argument("--max-steps", type=int, default=3000)
    p.add_argument("--max-minutes", type=float, help="stop (and save) after this wall time")
    p.add_argument("--train-batch-size", type=int, default=32, help="global, over all processes")
    p.add_argument("--learning-rate", type=float, default=1e-3)
    p.add_argument("--lr-warmup-steps", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--block-out-channels", type=_ints, default=(16, 32, 64))
    p.add_argument("--layers-per-block", type=int, default=1)
    p.add_argument("--attention-levels", type=_ints, default=(2,),
                   help="indices of the resolution levels with self-attention")
    p.add_argument("--norm-num-groups", type=int, default=8)
    p.add_argument("--snr-gamma", type=float, help="min-SNR-gamma loss weighting (e.g. 5)")
    p.add_argument("--ema-decay", type=float, default=0.999)
    p.add_argument("--checkpointing-steps", type=int, default=250)
    for name, default in (("x-res", 32), ("y-res", 32), ("sample-rate", 11025), ("n-fft", 512),
                          ("hop-length", 256), ("top-db", 80), ("n-iter", 32)):
        p.add_argument(f"--{name}", type=int, default=default, help="mel config")


def run_train_mel(args: argparse.Namespace) -> int:
    from .train_mel import MelTrainConfig, train

    config = config_from_args(MelTrainConfig, args)
    state = train(config)
    print(f"saved the pipeline after step {state['step']} to {config.output_dir}")
    return 0


def add_evaluate_spoken_digits_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``diffusion-kernel evaluate spoken-digits``."""
    p.add_argument("--model", help="a pipeline folder, Hub repo or shipped model name "
                                   "(default: the shipped spoken-digits model)")
    p.add_argument("--num", type=int, default=500, help="samples to generate and judge")
    p.add_argument("--steps", type=int, help="denoising steps (default: the folder's)")
    p.add_argument("--scheduler", help="scheduler class name or alias (default: the folder's)")
    p.add_argument("--seed", type=int, default=0, help="sample i uses seed + i")
    p.add_argument("--judge-epochs", type=int, default=8)
    p.add_argument("--json", help="also write the figures to this JSON file")
    p.add_argument("--plot", help="also draw the samples by judged digit into this PNG")


def run_evaluate_spoken_digits(args: argparse.Namespace) -> int:
    from diffusion_kernel.cli_extensions import resolve_model
    from diffusion_kernel.pipelines import DiffusionPipeline
    from diffusion_kernel.scheduling import scheduler_from_name

    from .evaluation import generate_and_judge, quality_report, real_references

    pipe = DiffusionPipeline.from_pretrained(resolve_model(args.model or "spoken-digits"))
    pipe.set_progress_bar_config(disable=True)
    if args.scheduler:
        pipe.scheduler = scheduler_from_name(args.scheduler, pipe.scheduler.config)
    references = real_references(pipe.mel, args.judge_epochs, args.seed)
    verdict, heard, pixels = generate_and_judge(pipe, references, args.num, args.steps,
                                                args.seed)
    report = quality_report(verdict, references, heard)
    for key, value in report.items():
        print(f"{key:32s} {value}")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    if args.plot:
        from .quality_plot import draw_samples_by_digit

        draw_samples_by_digit(pixels, verdict, report).save(args.plot)
    return 0
