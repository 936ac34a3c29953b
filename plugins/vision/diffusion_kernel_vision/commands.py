"""The vision plugin's additions to the kernel's command verbs: the ``unconditional`` kind of
``diffusion-kernel train`` (its arguments and its runner), the ``digits`` kind of ``evaluate`` (its
arguments; the runner is ``digits_quality.run``) and the shipped digits model. This module imports
only argparse, so ``--help`` stays quick; the runners import torch."""

from __future__ import annotations

import argparse
from pathlib import Path

from diffusion_kernel.cli_extensions import config_from_args

SHIPPED_MODEL = Path(__file__).parent / "shipped" / "digits-ddpm"


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(",") if v.strip())


def add_train_unconditional_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``diffusion-kernel train unconditional``."""
    p.add_argument("--data", required=True,
                   help="a folder of images, or a built-in set: 'digits' (scikit-learn's 1,797 "
                        "8x8 digits), 'digits-train' / 'digits-test' (its fixed 1,197 / 600 "
                        "split)")
    p.add_argument("--output-dir", required=True, help="the pipeline folder to write")
    p.add_argument("--resolution", type=int, help="resize and crop images to this square size")
    p.add_argument("--mode", choices=("L", "RGB"), help="convert images to this mode")
    p.add_argument("--max-steps", type=int, default=1000)
    p.add_argument("--train-batch-size", type=int, default=64, help="global, over all processes")
    p.add_argument("--gradient-accumulation-steps", type=int, default=1)
    p.add_argument("--learning-rate", type=float, default=1e-3)
    p.add_argument("--lr-warmup-steps", type=int, default=100)
    p.add_argument("--lr-scheduler", choices=("constant", "cosine"), default="constant",
                   help="after the warm-up: constant, or a half cosine down to 0 at --max-steps")
    p.add_argument("--mixed-precision", choices=("no", "fp16", "bf16"), default="no")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--block-out-channels", type=_ints, default=(32, 64, 64))
    p.add_argument("--layers-per-block", type=int, default=1)
    p.add_argument("--attention-levels", type=_ints, default=(2,),
                   help="indices of the resolution levels with self-attention")
    p.add_argument("--norm-num-groups", type=int, default=8)
    p.add_argument("--num-train-timesteps", type=int, default=1000)
    p.add_argument("--beta-schedule", default="squaredcos_cap_v2")
    p.add_argument("--prediction-type", default="epsilon",
                   choices=("epsilon", "v_prediction", "sample"))
    p.add_argument("--snr-gamma", type=float, help="min-SNR-gamma loss weighting (e.g. 5)")
    p.add_argument("--no-ema", dest="use_ema", action="store_false")
    p.add_argument("--ema-decay", type=float, default=0.999)
    p.add_argument("--checkpointing-steps", type=int, default=500)
    p.add_argument("--checkpoints-total-limit", type=int, default=2)
    p.add_argument("--save-images-steps", type=int, default=0,
                   help="write a sample grid every N steps (0: never)")
    p.add_argument("--sample-scheduler", default="ddim")
    p.add_argument("--sample-steps", type=int, default=50)
    p.add_argument("--resume", help="a checkpoint folder, or 'latest'")


def run_train_unconditional(args: argparse.Namespace) -> int:
    from .train_unconditional import TrainConfig, train

    cfg = config_from_args(TrainConfig, args)
    out = train(cfg)
    print(f"saved the trained pipeline to {out}")
    return 0


def add_evaluate_digits_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``diffusion-kernel evaluate digits`` (see ``digits_quality.py``)."""
    p.add_argument("--model", default="digits",
                   help="a digits pipeline folder, Hub repo id or shipped model name")
    p.add_argument("--scheduler", help="scheduler name or alias (default: the folder's)")
    p.add_argument("--steps", type=int, help="denoising steps (default: the folder's)")
    p.add_argument("--num", type=int, default=900,
                   help="samples; the FD is averaged over disjoint sets of 300")
    p.add_argument("--seed", type=int, default=0, help="sample i uses seed + i")
