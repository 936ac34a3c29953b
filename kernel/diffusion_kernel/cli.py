"""The ``diffusion-kernel`` command line: ``generate``, ``train KIND``, ``evaluate KIND``,
``plugins``, ``registry [KIND]``, ``info NAME``, ``community list|publish``, and subcommands that
plugins add through the ``register_commands`` hook. ``generate``, ``train`` and ``evaluate`` are the
kernel's verbs; plugins add kinds, output writers and shipped models to them (cli_extensions.py).
Heavy modules (torch) are imported inside the command that needs them, so ``--help`` is quick."""

from __future__ import annotations

import argparse
import json
import sys

from . import __version__, cli_generate, cli_tasks, cli_verify
from .errors import DiffusionKernelError
from .plugins import plugin_manager, registry
from .registry import KINDS


class _Version(argparse.Action):
    """``--version``: print ``version_text()`` as is (argparse's own action reflows it)."""

    def __init__(self, option_strings, dest, **kwargs):
        super().__init__(option_strings, dest, nargs=0,
                         help="print the kernel's and each plugin's version and exit")

    def __call__(self, parser, namespace, values, option_string=None):
        print(version_text())
        parser.exit()


def version_text() -> str:
    """``diffusion-kernel X`` and each loaded plugin's distribution and version."""
    plugin_manager.ensure_loaded()
    lines = [f"diffusion-kernel {__version__}"]
    for info in plugin_manager.plugins.values():
        dist = f"{info.distribution} {info.version}" if info.distribution else "(in-process)"
        lines.append(f"  {info.name}: {dist} [{info.status}]")
    return "\n".join(lines)


def cmd_plugins(args: argparse.Namespace) -> int:
    plugin_manager.ensure_loaded()
    if not plugin_manager.plugins:
        print("no plugins installed (pip install 'diffusion-kernel[all]')")
        return 0
    for info in plugin_manager.plugins.values():
        dist = f"{info.distribution} {info.version}" if info.distribution else "(in-process)"
        print(f"{info.name}: {dist} [{info.status}]")
        if info.error:
            print(f"  error: {info.error}")
        counts = {k: v for k, v in info.registered.items() if v}
        if info.status == "loaded" and not counts:
            print("  registers nothing")
        for kind, names in counts.items():
            print(f"  {kind} ({len(names)}): {', '.join(sorted(names))}")
    return 0


def cmd_registry(args: argparse.Namespace) -> int:
    for kind in [args.kind] if args.kind else KINDS:
        reg = registry[kind]
        print(f"{kind}:")
        if not reg.names():
            print("  (none)")
        for entry in reg.entries():
            aliases = f"  (aliases: {', '.join(entry.aliases)})" if entry.aliases else ""
            print(f"  {entry.name}{aliases}  [{entry.plugin}]")
            for alias, preset in entry.presets.items():
                values = ", ".join(f"{k}={v!r}" for k, v in preset.items()) or "defaults"
                print(f"    {alias}: {entry.name} with {values}")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    entry = registry.find(args.name)
    print(json.dumps(registry[entry.kind].describe(args.name), indent=2))
    return 0


def cmd_community(args: argparse.Namespace) -> int:
    from . import remote_code

    if args.action == "publish":
        print(remote_code.publish_community(args.folder, args.repo, args.names or None))
        return 0
    local = remote_code.local_community(args.folder)
    print(f"local ({args.folder}): {', '.join(local) or '(none)'}")
    if not args.local:
        repo = args.repo or remote_code.community_repo()
        print(f"hub ({repo}): {', '.join(remote_code.hub_community(repo)) or '(none)'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="diffusion-kernel",
                                     description="diffusion-kernel: models, schedulers, pipelines")
    parser.add_argument("--version", action=_Version)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    cli_generate.add_parser(sub)
    cli_tasks.add_parsers(sub)
    p = sub.add_parser("plugins", help="list installed plugins and what they registered")
    p.set_defaults(func=cmd_plugins)
    p = sub.add_parser("registry", help="list registered names (all kinds or one)")
    p.add_argument("kind", nargs="?", choices=KINDS)
    p.set_defaults(func=cmd_registry)
    p = sub.add_parser("info", help="describe one registered name or alias")
    p.add_argument("name")
    p.set_defaults(func=cmd_info)
    p = sub.add_parser("community", help="list or publish community pipelines")
    p.add_argument("action", choices=("list", "publish"))
    p.add_argument("names", nargs="*", help="publish only these (default: all)")
    p.add_argument("--folder", default="community", help="local folder of <name>.py files")
    p.add_argument("--repo", help="Hub repo (default: $DIFFUSION_KERNEL_COMMUNITY_REPO or "
                   "diffusion-kernel/community)")
    p.add_argument("--local", action="store_true", help="list the local folder only")
    p.set_defaults(func=cmd_community)
    cli_verify.add_command(sub)
    plugin_manager.ensure_loaded()
    plugin_manager.call_each("register_commands", subparsers=sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):  # no command: a usage error, as argparse's own are
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(args.func(args) or 0)
    except DiffusionKernelError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
