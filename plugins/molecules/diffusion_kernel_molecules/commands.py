"""The molecules plugin's kinds of the kernel's verbs: ``diffusion-kernel train molecules`` and
``diffusion-kernel evaluate molecules``, and the shipped model's location. Argument functions
import only argparse (``--help`` stays quick); runners import the rest."""

from __future__ import annotations

import argparse
from pathlib import Path

from diffusion_kernel.cli_extensions import config_from_args

from .plugin import SHIPPED_NAME, SHIPPED_TEST_SET


def add_evaluate_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``diffusion-kernel evaluate molecules``."""
    p.add_argument("--model", default=SHIPPED_NAME,
                   help="pipeline folder, Hub repo id or shipped model name")
    p.add_argument("--baseline", choices=("etkdg", "etkdg-mmff"),
                   help="score RDKit's ETKDG (optionally MMFF-relaxed) instead of a model")
    p.add_argument("--data", default=str(SHIPPED_TEST_SET),
                   help="reference conformers (.npz); default: the shipped held-out NCI split")
    p.add_argument("--limit", type=int, help="only the first N molecules")
    p.add_argument("--steps", type=int, help="inference steps (default: the model's)")
    p.add_argument("--scheduler", help="scheduler class name or alias (default: the model's)")
    p.add_argument("--ratio", type=int, default=2, help="generated conformers per reference")
    p.add_argument("--threshold", type=float, default=0.5, help="COV threshold in Å")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--w-global", type=float, help="weight of the global term (GeoDiff)")
    p.add_argument("--global-start-sigma", type=float,
                   help="add the global term only below this noise level (Å)")
    p.add_argument("--refine-steps", type=int,
                   help="noise-free denoising steps after the last scheduler step (default: "
                        "the pipeline's, 0: none)")
    p.add_argument("--json", help="also write the summary and per-molecule rows to this file")


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``diffusion-kernel train molecules``."""
    p.add_argument("--data", default="nci",
                   help="reference conformers (.npz), or 'nci': build the training split of "
                        "RDKit's NCI molecules (the shipped test molecules left out)")
    p.add_argument("--output-dir", required=True, help="the pipeline folder to write")
    p.add_argument("--max-steps", type=int, default=4000)
    p.add_argument("--max-minutes", type=float, help="also stop after this many minutes")
    p.add_argument("--batch-size", type=int, default=32, help="molecules per step")
    p.add_argument("--learning-rate", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--hidden-dim", type=int, default=64)
    p.add_argument("--num-convs", type=int, default=4, help="SchNet interactions (global)")
    p.add_argument("--num-convs-local", type=int, default=3, help="GIN convolutions (local)")
    p.add_argument("--cutoff", type=float, default=10.0, help="global radius graph, Å")
    p.add_argument("--save-steps", type=int, default=500)
    p.add_argument("--low-noise-fraction", type=float, default=0.0,
                   help="share of each batch whose timestep is drawn among the low-noise ones "
                        "(sigma below --low-noise-sigma), where bond lengths are decided")
    p.add_argument("--low-noise-sigma", type=float, default=0.2,
                   help="noise level (Å) below which --low-noise-fraction draws")
    p.add_argument("--init-from", help="start from the weights of this pipeline folder "
                                       "(same architecture flags; a fresh optimizer)")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted run from the training state in --output-dir")


def run_evaluate(args: argparse.Namespace) -> int:
    """Score the model (or an RDKit baseline) on reference conformers and print the table."""
    import json

    from diffusion_kernel.hub import atomic_write_text

    from .datasets import ConformerSet
    from .evaluation import etkdg_generator, evaluate

    references = ConformerSet.load(args.data)
    if args.limit is not None:
        references = references.subset(range(min(args.limit, len(references))))
    if args.baseline:
        generate, name = etkdg_generator(mmff=args.baseline == "etkdg-mmff"), args.baseline
    else:
        generate, name = _model_generator(args), args.model
    result = evaluate(generate, references, args.ratio, args.threshold, args.seed)
    print(format_summary(name, result.summary, args.threshold))
    if args.json:
        atomic_write_text(args.json, json.dumps({"model": name, "summary": result.summary,
                                                 "molecules": result.per_molecule}, indent=2))
    return 0


def _model_generator(args: argparse.Namespace):
    from diffusion_kernel.cli_extensions import resolve_model
    from diffusion_kernel.pipelines import DiffusionPipeline

    from .evaluation import pipeline_generator

    pipe = DiffusionPipeline.from_pretrained(resolve_model(args.model))
    if args.scheduler:
        from diffusion_kernel.scheduling import scheduler_from_name

        pipe.scheduler = scheduler_from_name(args.scheduler, pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    options = {k: v for k, v in (("w_global", args.w_global),
                                 ("global_start_sigma", args.global_start_sigma),
                                 ("refine_steps", args.refine_steps)) if v is not None}
    return pipeline_generator(pipe, args.steps, **options)


def format_summary(name: str, summary: dict, threshold: float = 0.5) -> str:
    """The evaluation as a few aligned lines (COV in %, MAT in Å)."""
    s = summary
    return "\n".join([
        f"{name}: {s['molecules']} molecules, {s['conformers']} conformers, "
        f"{s['conformers_per_second']:.1f} conformers/s",
        f"  COV-R@{threshold} Å  mean {100 * s['cov_r_mean']:5.1f} %  median "
        f"{100 * s['cov_r_median']:5.1f} %",
        f"  MAT-R         mean {s['mat_r_mean']:.3f} Å  median {s['mat_r_median']:.3f} Å",
        f"  COV-P@{threshold} Å  mean {100 * s['cov_p_mean']:5.1f} %  median "
        f"{100 * s['cov_p_median']:5.1f} %",
        f"  MAT-P         mean {s['mat_p_mean']:.3f} Å  median {s['mat_p_median']:.3f} Å",
        f"  bonds within 0.1 Å of their force-field length: {100 * s['bonds_within_0.1']:.1f} %",
    ])


def run_train(args: argparse.Namespace) -> int:
    """Train a GeoDiffModel and save the pipeline."""
    from .training import TrainConfig, train

    data = args.data
    if data == "nci":  # built once, beside the output folder, and reused
        output = Path(args.output_dir)
        data = str(output.with_name(output.name + "-nci-train.npz"))
        if not Path(data).is_file():
            _build_nci_training_split(data)
    config = config_from_args(TrainConfig, args, data=data)
    out = train(config)
    print(f"saved the trained pipeline to {out}")
    return 0


def _build_nci_training_split(path: str) -> None:
    from .datasets import build_nci_split

    print(f"building reference conformers of the NCI training molecules into {path} "
          f"(a few minutes)")
    build_nci_split("train").save(path)
