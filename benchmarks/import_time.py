"""How cheap ``import diffusion_kernel`` is: importing it and listing all four registries, against
``import diffusers``, each in a fresh interpreter.

    python benchmarks/import_time.py [--repeat N]

Each case runs ``--repeat`` times (default 7) in a fresh ``python -c`` with the same environment;
a child reports the wall time of its own import statement(s) (``time.perf_counter`` around them,
so interpreter start-up is excluded from both sides) and whether ``torch`` ended up in
``sys.modules``. The table shows the median and the minimum; the ratio is ours over diffusers (by
median), against the target of 0.05x. All installed plugins are loaded (set
``DIFFUSION_KERNEL_PLUGINS`` to change that), so "list registries" includes reading the entry
points and importing each plugin's entry-point module.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

TARGET_RATIO = 0.05

CASES = {
    "import diffusion_kernel + list registries": (
        "import diffusion_kernel\n"
        "names = {reg.kind: reg.names() for reg in diffusion_kernel.registry}\n"
    ),
    "import diffusion_kernel": "import diffusion_kernel\n",
    "import diffusers": "import diffusers\n",
}

CHILD = """
import json, sys, time
start = time.perf_counter()
{body}
elapsed = time.perf_counter() - start
count = sum(len(v) for v in names.values()) if "names" in dir() else None
print(json.dumps({{"seconds": elapsed, "torch": "torch" in sys.modules, "names": count}}))
"""


def run_once(body: str) -> dict:
    result = subprocess.run([sys.executable, "-c", CHILD.format(body=body)], capture_output=True,
                            text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def measure(repeat: int) -> dict[str, dict]:
    rows = {}
    for name, body in CASES.items():
        run_once(body)  # warm the page cache for this case's files
        runs = [run_once(body) for _ in range(repeat)]
        seconds = [r["seconds"] for r in runs]
        rows[name] = {"median": statistics.median(seconds), "min": min(seconds),
                      "torch": any(r["torch"] for r in runs), "names": runs[0]["names"]}
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args(argv)
    rows = measure(args.repeat)
    reference = rows["import diffusers"]["median"]
    print(f"{'case':<44}{'median ms':>10}{'min ms':>9}{'vs diffusers':>14}{'torch':>7}")
    for name, row in rows.items():
        ratio = row["median"] / reference
        print(f"{name:<44}{row['median'] * 1e3:>10.1f}{row['min'] * 1e3:>9.1f}"
              f"{ratio:>13.3f}x{'yes' if row['torch'] else 'no':>7}")
    ours = rows["import diffusion_kernel + list registries"]
    ratio = ours["median"] / reference
    verdict = "meets" if ratio <= TARGET_RATIO else "misses"
    print(f"\nimport + listing {ours['names']} registered names: {ratio:.3f}x diffusers "
          f"({verdict} the {TARGET_RATIO}x target); torch imported: "
          f"{'yes' if ours['torch'] else 'no'}; {args.repeat} runs each, Python "
          f"{sys.version.split()[0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
