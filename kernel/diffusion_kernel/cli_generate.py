"""``diffusion-kernel generate [INPUT]``: run any registered pipeline and save what it returns.

The model is a pipeline folder, a Hub repo id, or the name of a model a plugin ships (default:
the shipped model marked default, e.g. vision's ``digits``). How the pipeline is called comes
from the pipeline (``DiffusionPipeline.generate_arguments``); what it returns is saved by the
writer registered for its output field (``images`` -> PNG...). Every mistake a user can make on
the command line is found before sampling starts.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from .cli_extensions import positive_int as _positive
from .errors import ConfigError, PipelineError


def add_parser(subparsers) -> None:
    g = subparsers.add_parser(
        "generate", help="sample with any pipeline and save its outputs",
        description="Sample with a pipeline (default: the shipped default model) and save what "
                    "it returns with the writer its plugin registered (images: a PNG grid or a "
                    "folder of PNGs).")
    g.add_argument("input", nargs="?", metavar="INPUT",
                   help="the pipeline's input: a prompt for text-to-image pipelines (none for "
                        "unconditional ones)")
    g.add_argument("--prompt", help="the same as INPUT, for text-to-image pipelines")
    g.add_argument("--model", metavar="PATH_OR_REPO_OR_NAME",
                   help="a pipeline folder, a Hub repo id, or a shipped model's name (see "
                        "--list-models); default: the shipped default model")
    g.add_argument("--list-models", action="store_true", help="list the shipped models and exit")
    g.add_argument("--num", type=_positive, default=16, help="number of samples (default: 16)")
    g.add_argument("--seed", type=int, default=0,
                   help="sample i uses a generator seeded with seed+i, so a sample does not "
                        "depend on --num (default: 0)")
    g.add_argument("--steps", type=_positive,
                   help="denoising steps (default: the count the model folder recommends, 20 "
                        "for the shipped digits model; else its pipeline's own default)")
    g.add_argument("--scheduler", help="scheduler class name or alias, e.g. dpm++2m, euler-a "
                                       "(default: the model folder's)")
    g.add_argument("--device", default="cpu", help="torch device, e.g. cpu, cuda, cuda:1, mps "
                                                   "(default: cpu)")
    g.add_argument("--threads", type=_positive,
                   help="CPU threads (default: OMP_NUM_THREADS if set, else the idle cores)")
    g.add_argument("--out", default="samples.png",
                   help="a file (for images: .png, a grid of all samples) or a folder (one file "
                        "per sample, plus grid.png for images); default: samples.png")
    g.add_argument("--overwrite", action="store_true",
                   help="replace the samples of an earlier run in the --out folder")
    g.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from . import cli_extensions

    if args.list_models:
        return _list_models(cli_extensions.shipped_models())
    if args.input is not None and args.prompt is not None:
        raise ConfigError("give the prompt once: as INPUT or as --prompt, not both")
    source = cli_extensions.resolve_model(args.model)
    text = args.prompt if args.prompt is not None else args.input
    started = time.perf_counter()
    from .threads import command_threads

    with command_threads(args.threads) as threads:
        return _generate(args, source, text, threads, started)


def _generate(args: argparse.Namespace, source: str, text: str | None, threads: str,
              started: float) -> int:
    import torch

    from . import cli_extensions
    from .outputs import plan_output, write_output
    from .pipelines import DiffusionPipeline

    device = _check_device(args.device)
    pipe = DiffusionPipeline.from_pretrained(source)
    field, writer = _writer_for(type(pipe), cli_extensions.writers(), args.out)
    plan = plan_output(writer, args.out, args.overwrite)
    if args.scheduler:
        from .scheduling import scheduler_from_name

        pipe.scheduler = scheduler_from_name(args.scheduler, pipe.scheduler.config)
    steps = args.steps if args.steps is not None else pipe.default_num_inference_steps
    generators = [torch.Generator(device).manual_seed(args.seed + i) for i in range(args.num)]
    kwargs = pipe.generate_arguments(args.num, text, steps, generators)
    pipe.to(device)
    pipe.set_progress_bar_config(desc="sampling")
    scheduler = getattr(pipe, "scheduler", None)
    sampler = f" of {type(scheduler).__name__}" if scheduler is not None else ""
    print(f"{type(pipe).__name__} from {source}: {args.num} samples, "
          f"{kwargs.get('num_inference_steps', 'default')} steps{sampler} on {device}, "
          f"{threads}", file=sys.stderr)
    output = pipe(**kwargs)
    print(write_output(writer, writer.select(output, field), plan)
          + f" in {time.perf_counter() - started:.1f} s")
    return 0


def _list_models(shipped) -> int:
    if not shipped:
        print("no shipped models (pip install 'diffusion-kernel[vision]' ships 'digits')")
    for model in shipped.values():
        mark = " (default)" if model.default else ""
        print(f"{model.name}{mark}  [{model.plugin}]  {model.summary}\n    {model.source}")
    return 0


def _check_device(name: str):
    import torch

    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ConfigError(f"--device {name!r} is not a torch device ({exc}); use cpu, cuda, "
                          f"cuda:N or mps") from None
    available = {"cpu": True, "cuda": torch.cuda.is_available(),
                 "mps": torch.backends.mps.is_available()}
    if not available.get(device.type, True):
        raise ConfigError(f"--device {name}: this torch build or machine has no {device.type}; "
                          f"use --device cpu")
    return device


def _writer_for(pipeline_cls, writers, out: str = ""):
    """The output field to save: the one whose writer writes ``out``'s suffix (a pipeline that
    returns audios and mel images saves the images for ``--out mels.png``), else the first
    field of the pipeline that a plugin registered a writer for."""
    fields = pipeline_cls.generate_output_fields()
    found = [(field, writers[field].load()) for field in fields if field in writers]
    suffix = Path(out).suffix.lower()
    for field, writer in found:
        if suffix and suffix in writer.suffixes:
            return field, writer
    if found:
        return found[0]
    raise PipelineError(
        f"{pipeline_cls.__name__} returns {list(fields) or 'an output of unknown fields'}, and no "
        f"installed plugin registered a writer for {'any of them' if fields else 'it'} "
        f"(writers: {sorted(writers) or 'none'}); install the plugin for that kind of output, or "
        f"annotate __call__'s return with its PipelineOutput class")
