"""``diffusion-kernel verify PATH_OR_REPO``: check a saved folder, or the cached copy of a Hub
repo, against its recorded hashes (see ``integrity.py``)."""

from __future__ import annotations

import argparse
from collections import Counter


def add_command(subparsers) -> None:
    p = subparsers.add_parser(
        "verify", help="check a folder or a cached Hub repo against its recorded sha256 hashes",
        description="Check every file of a folder saved by diffusion-kernel against its "
                    "SHA256SUMS, or every cached file of a Hub repo against the hash the Hub "
                    "published for it. Exit status 0: all recorded files intact; 1: a file is "
                    "corrupt or missing, or nothing could be checked. --record writes the "
                    "SHA256SUMS of a folder saved by another tool.")
    p.add_argument("source", metavar="PATH_OR_REPO",
                   help="a folder, a Hub repo id, or the name of a shipped model")
    p.add_argument("--revision", help="branch, tag or commit of a Hub repo (default: main)")
    p.add_argument("--cache-dir", help="the huggingface_hub cache (default: HF_HUB_CACHE)")
    p.add_argument("--record", action="store_true",
                   help="instead, write the SHA256SUMS of a folder saved by another tool (one "
                        "you trust as it is now), for later checks")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from .cli_extensions import resolve_model
    from .hub import record_hashes, verify

    if args.record:
        print(f"recorded {record_hashes(args.source)}")
        return 0

    checks = verify(resolve_model(args.source), revision=args.revision,
                    cache_dir=args.cache_dir)
    labels = {"ok": "ok", "corrupt": "CORRUPT", "missing": "MISSING", "unrecorded": "unrecorded"}
    for check in checks:
        detail = check.describe() if check.status == "corrupt" else check.path
        kind = f" ({check.kind})" if check.status == "ok" else ""
        print(f"{labels[check.status]:<11} {detail}{kind}")
    counts = Counter(c.status for c in checks)
    print(", ".join(f"{counts[s]} {s}" for s in labels))
    if counts["corrupt"] or counts["missing"]:
        return 1
    if not counts["ok"]:
        print(f"nothing to verify in {args.source}: no file has a recorded hash")
        return 1
    return 0
