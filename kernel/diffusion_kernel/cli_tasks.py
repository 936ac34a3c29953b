"""``diffusion-kernel train KIND`` and ``diffusion-kernel evaluate KIND``: verbs of the kernel whose
kinds plugins register (``register_train_kinds`` / ``register_evaluate_kinds``), e.g. vision's
``train unconditional``. A kind's runner is imported only when it runs; its argument function when
the parser is built (keep that module light)."""

from __future__ import annotations

import argparse

from . import cli_extensions
from .errors import NotRegisteredError

VERBS = {
    "train": ("train a model", "train a model; KIND is registered by a plugin"),
    "evaluate": ("evaluate a model", "evaluate a model; KIND is registered by a plugin"),
}


def add_parsers(subparsers) -> None:
    for verb, (short, long) in VERBS.items():
        kinds = cli_extensions.kinds(verb)
        p = subparsers.add_parser(verb, help=short, description=long)
        sub = p.add_subparsers(dest=f"{verb}_kind", metavar="KIND")
        p.set_defaults(func=_missing_kind(verb, kinds))
        for kind in kinds.values():
            k = sub.add_parser(kind.name, help=kind.help, description=kind.help,
                               formatter_class=argparse.ArgumentDefaultsHelpFormatter)
            if kind.arguments is not None:
                cli_extensions.load_target(kind.arguments, kind.plugin)(k)
            k.add_argument("--threads", type=cli_extensions.positive_int, default=None,
                           help="CPU threads of this process (default: OMP_NUM_THREADS if set, "
                                "else the idle cores; see docs/benchmarks.md, Threads)")
            k.set_defaults(func=_runner(kind))


def _runner(kind: cli_extensions.Kind):
    def run(args: argparse.Namespace) -> int:
        from .threads import command_threads

        with command_threads(args.threads):
            return int(cli_extensions.load_target(kind.run, kind.plugin)(args) or 0)

    return run


def _missing_kind(verb: str, kinds: dict):
    def fail(args: argparse.Namespace) -> int:
        if not kinds:
            raise NotRegisteredError(f"no installed plugin adds a kind to '{verb}'; install one "
                                     f"(pip install 'diffusion-kernel[vision]' adds 'train "
                                     f"unconditional')")
        listed = ", ".join(sorted(kinds))
        raise NotRegisteredError(f"'{verb}' needs a KIND: one of {listed} "
                                 f"(diffusion-kernel {verb} KIND --help)")

    return fail
