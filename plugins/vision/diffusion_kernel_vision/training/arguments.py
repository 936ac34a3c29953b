"""Command-line options and runners of ``diffusion-kernel train text-to-image``,
``train textual-inversion`` and ``train dreambooth``. This module imports only argparse (so
``--help`` stays quick); a runner imports its trainer when it runs."""

from __future__ import annotations

import argparse

from diffusion_kernel.cli_extensions import config_from_args


def _names(text: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in text.split(",") if v.strip())


def _add_loop_options(p: argparse.ArgumentParser, max_steps: int, batch: int, lr: float,
                      weight_decay: float = 1e-2, max_grad_norm: float = 1.0) -> None:
    g = p.add_argument_group("training")
    g.add_argument("--max-steps", type=int, default=max_steps)
    g.add_argument("--train-batch-size", type=int, default=batch,
                   help="global, over all processes")
    g.add_argument("--gradient-accumulation-steps", type=int, default=1)
    g.add_argument("--learning-rate", type=float, default=lr)
    g.add_argument("--lr-warmup-steps", type=int, default=0)
    g.add_argument("--lr-scheduler", choices=("constant", "cosine"), default="constant",
                   help="after the warm-up: constant, or a half cosine down to 0 at --max-steps")
    g.add_argument("--weight-decay", type=float, default=weight_decay, help="AdamW's")
    g.add_argument("--max-grad-norm", type=float, default=max_grad_norm,
                   help="clip the gradients' global norm to this (0: no clipping)")
    g.add_argument("--mixed-precision", choices=("no", "fp16", "bf16"), default="no",
                   help="autocast the forward pass; frozen weights are held in this precision")
    g.add_argument("--gradient-checkpointing", action="store_true",
                   help="recompute U-Net activations in the backward pass: less memory, slower")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--checkpointing-steps", type=int, default=500,
                   help="write checkpoints/step-N every N steps (0: never)")
    g.add_argument("--checkpoints-total-limit", type=int, default=2,
                   help="keep this many newest checkpoints")
    g.add_argument("--resume", help="a checkpoint folder, or 'latest'")


def _add_model_options(p: argparse.ArgumentParser, data_help: str) -> None:
    p.add_argument("--model", required=True,
                   help="the base Stable Diffusion pipeline: a folder or Hub repo id")
    p.add_argument("--data", required=True, help=data_help)
    p.add_argument("--output-dir", required=True, help="where the result, logs, checkpoints, "
                                                       "validation images and loss curve go")
    p.add_argument("--resolution", type=int,
                   help="training image size (default: the model's own); images are resized "
                        "(shorter side) and centre-cropped")
    p.add_argument("--random-flip", action="store_true", help="mirror half the samples")


def _add_denoising_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("loss")
    g.add_argument("--snr-gamma", type=float, help="min-SNR-gamma loss weighting (5 is usual)")
    g.add_argument("--noise-offset", type=float, default=0.0,
                   help="offset noise scale (0.05-0.1 helps very dark or bright images)")
    g.add_argument("--prediction-type", choices=("epsilon", "v_prediction", "sample"),
                   help="train for this target (default: the model's scheduler's)")


def _add_lora_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("LoRA")
    g.add_argument("--lora-rank", type=int,
                   help="train LoRA adapters of this rank only (base weights stay as they are) "
                        "and write pytorch_lora_weights.safetensors; without it every U-Net "
                        "weight trains")
    g.add_argument("--lora-alpha", type=float, help="LoRA alpha (default: the rank)")
    g.add_argument("--lora-target-modules", type=_names,
                   default=("to_q", "to_k", "to_v", "to_out.0"),
                   help="comma-separated layer names to adapt")


def _add_validation_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("validation")
    g.add_argument("--validation-prompt",
                   help="every --validation-steps steps (and at the end) write "
                        "validation/step-N.png, images of this prompt")
    g.add_argument("--validation-steps", type=int, default=100)
    g.add_argument("--num-validation-images", type=int, default=4)
    g.add_argument("--validation-inference-steps", type=int, default=25)
    g.add_argument("--validation-guidance-scale", type=float, default=7.5)


def add_text_to_image_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``diffusion-kernel train text-to-image``."""
    _add_model_options(p, "a folder of images with metadata.jsonl (lines "
                          '{"file_name": ..., "text": ...}), or a Hub dataset folder in that '
                          "layout (images under train/)")
    p.add_argument("--caption-column", default="text", help="the metadata column of captions")
    p.add_argument("--use-ema", action="store_true",
                   help="keep an exponential moving average of the U-Net and save it")
    p.add_argument("--ema-decay", type=float, default=0.9999)
    _add_lora_options(p)
    _add_denoising_options(p)
    _add_validation_options(p)
    _add_loop_options(p, max_steps=1000, batch=4, lr=1e-4)


def add_textual_inversion_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``diffusion-kernel train textual-inversion``."""
    _add_model_options(p, "a folder of images of the concept (3-5 are usual)")
    p.add_argument("--placeholder-token", required=True,
                   help='the new token, e.g. "<cat-toy>"; it must not be in the vocabulary yet')
    p.add_argument("--initializer-token", required=True,
                   help="a word (one token) whose embedding starts the new one")
    p.add_argument("--num-vectors", type=int, default=1,
                   help="embedding vectors for the token (tok, tok_1, ...)")
    p.add_argument("--learnable-property", choices=("object", "style"), default="object",
                   help="prompt templates: 'a photo of a <tok>' or 'a painting in the style of "
                        "<tok>'")
    p.add_argument("--save-as-full-pipeline", action="store_true",
                   help="also write the whole pipeline with the new token")
    _add_denoising_options(p)
    _add_validation_options(p)
    _add_loop_options(p, max_steps=3000, batch=4, lr=5e-4, weight_decay=0.0, max_grad_norm=0.0)


def add_dreambooth_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``diffusion-kernel train dreambooth``."""
    _add_model_options(p, "a folder of images of the subject (instance images)")
    p.add_argument("--instance-prompt", required=True,
                   help='the prompt with the identifier, e.g. "a photo of sks dog"')
    g = p.add_argument_group("prior preservation")
    g.add_argument("--with-prior-preservation", action="store_true",
                   help="train on class images too, so the class keeps its meaning")
    g.add_argument("--class-prompt", help='e.g. "a photo of dog"')
    g.add_argument("--class-data-dir",
                   help="folder of class images; missing ones are generated there")
    g.add_argument("--num-class-images", type=int, default=100)
    g.add_argument("--prior-loss-weight", type=float, default=1.0)
    g.add_argument("--class-inference-steps", type=int, default=50,
                   help="denoising steps for generating class images")
    g.add_argument("--class-guidance-scale", type=float, default=7.5)
    _add_lora_options(p)
    _add_denoising_options(p)
    _add_validation_options(p)
    _add_loop_options(p, max_steps=400, batch=1, lr=5e-6)


def run_text_to_image(args: argparse.Namespace) -> int:
    from .text_to_image import TextToImageConfig, train_text_to_image

    out = train_text_to_image(config_from_args(TextToImageConfig, args))
    print(f"saved the result to {out}")
    return 0


def run_textual_inversion(args: argparse.Namespace) -> int:
    from .textual_inversion import TextualInversionConfig, train_textual_inversion

    out = train_textual_inversion(config_from_args(TextualInversionConfig, args))
    print(f"saved the learned embedding to {out}")
    return 0


def run_dreambooth(args: argparse.Namespace) -> int:
    from .dreambooth import DreamBoothConfig, train_dreambooth

    out = train_dreambooth(config_from_args(DreamBoothConfig, args))
    print(f"saved the result to {out}")
    return 0
