"""The vision plugin's subcommands: ``diffusion-kernel train unconditional`` and
``diffusion-kernel generate``. Heavy imports happen inside the handlers, so ``--help`` is quick."""

from __future__ import annotations

import argparse
from pathlib import Path

SHIPPED_MODEL = Path(__file__).parent / "shipped" / "digits-ddpm"


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(",") if v.strip())


def add_commands(subparsers) -> None:
    train = subparsers.add_parser("train", help="train a model")
    kinds = train.add_subparsers(dest="train_kind", metavar="KIND", required=True)
    p = kinds.add_parser("unconditional", help="an unconditional image DDPM (UNet2DModel)",
                         formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data", required=True,
                   help="a folder of images, or 'digits' (scikit-learn's 8x8 digits)")
    p.add_argument("--output-dir", required=True, help="the pipeline folder to write")
    p.add_argument("--resolution", type=int, help="resize and crop images to this square size")
    p.add_argument("--mode", choices=("L", "RGB"), help="convert images to this mode")
    p.add_argument("--max-steps", type=int, default=1000)
    p.add_argument("--train-batch-size", type=int, default=64, help="global, over all processes")
    p.add_argument("--gradient-accumulation-steps", type=int, default=1)
    p.add_argument("--learning-rate", type=float, default=1e-3)
    p.add_argument("--lr-warmup-steps", type=int, default=100)
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
    p.set_defaults(func=run_train_unconditional)

    g = subparsers.add_parser("generate", help="generate samples with a pipeline",
                              formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g.add_argument("--model", default=None,
                   help="pipeline folder or Hub repo id (default: the shipped digits model)")
    g.add_argument("--scheduler", help="scheduler class name or alias, e.g. dpm++2m, euler-a")
    g.add_argument("--steps", type=int, default=None, help="inference steps")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--num", type=int, default=16, help="number of samples")
    g.add_argument("--prompt", help="text prompt, for text-to-image pipelines")
    g.add_argument("--out", default="samples.png",
                   help="a .png path gets a grid; a folder gets one PNG per sample plus grid.png")
    g.set_defaults(func=run_generate)


def run_train_unconditional(args: argparse.Namespace) -> int:
    from .train_unconditional import TrainConfig, train

    fields = TrainConfig.__dataclass_fields__
    cfg = TrainConfig(**{k: v for k, v in vars(args).items() if k in fields})
    out = train(cfg)
    print(f"saved the trained pipeline to {out}")
    return 0


def run_generate(args: argparse.Namespace) -> int:
    import torch
    from diffusion_kernel.errors import ConfigError, FileAccessError
    from diffusion_kernel.pipelines import DiffusionPipeline
    from diffusion_kernel.scheduling import scheduler_from_name

    from .grid import save_grid

    if args.num <= 0:
        raise ConfigError("--num must be positive")
    model = args.model
    if model is None:
        if not (SHIPPED_MODEL / "model_index.json").is_file():
            raise FileAccessError(f"the shipped model is not installed at {SHIPPED_MODEL}; "
                                  f"pass --model PATH_OR_REPO")
        model = str(SHIPPED_MODEL)
    pipe = DiffusionPipeline.from_pretrained(model)
    if args.scheduler:
        pipe.scheduler = scheduler_from_name(args.scheduler, pipe.scheduler.config)
    generators = [torch.Generator().manual_seed(args.seed + i) for i in range(args.num)]
    kwargs = {"generator": generators, "output_type": "pil"}
    if args.steps is not None:
        kwargs["num_inference_steps"] = args.steps
    if args.prompt is not None:
        images = pipe(prompt=[args.prompt] * args.num, **kwargs).images
    else:
        images = pipe(batch_size=args.num, **kwargs).images
    out = Path(args.out)
    if out.suffix.lower() == ".png":
        save_grid(images, out)
        print(f"wrote a grid of {len(images)} samples to {out}")
    else:
        out.mkdir(parents=True, exist_ok=True)
        for i, image in enumerate(images):
            image.save(out / f"{i:04d}.png")
        save_grid(images, out / "grid.png")
        print(f"wrote {len(images)} samples and grid.png to {out}")
    return 0
