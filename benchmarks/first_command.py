"""Wall time of the README's first command, ``diffusion-kernel generate`` (16 digits from the
shipped model, with the sampler and step count its folder recommends), against the same job in
diffusers.

Each run is a fresh process, timed from start to exit: imports, model load, sampling, writing the
PNG grid. Conditions: the machine as it is ("idle"), and with one extra busy-loop process per
core but one ("busy": on a 2-core machine, the other core loaded), and with torch on 1 or 2 threads
(OMP_NUM_THREADS) or, for ours, the command's own choice ("auto": the idle cores). The reference
loads the same folder with diffusers' DDPMPipeline and samples the same 16 per-sample seeds.

    python benchmarks/first_command.py [--repeats 3] [--conditions idle,busy]

Target (issue 11): at most 15 s on a busy 2-core machine, including the model load.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REFERENCE = """
import torch
from diffusers import DDPMPipeline
from diffusion_kernel_vision.commands import SHIPPED_MODEL
from diffusion_kernel_vision.grid import save_grid
pipe = DDPMPipeline.from_pretrained(SHIPPED_MODEL)
images = pipe(batch_size=16, generator=[torch.Generator().manual_seed(i) for i in range(16)],
              num_inference_steps=20).images
save_grid(images, "samples.png")
"""


def run_once(command: list[str], threads: str | None, cwd: str) -> float:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    if threads is not None:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = threads
    start = time.perf_counter()
    subprocess.run(command, cwd=cwd, env=env, check=True, capture_output=True, timeout=1800)
    return time.perf_counter() - start


def busy_loops(n: int) -> list[subprocess.Popen]:
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="runs per cell (median reported)")
    parser.add_argument("--conditions", default="idle,busy")
    parser.add_argument("--threads", default="1,2,auto")
    args = parser.parse_args()
    ours = [str(Path(sys.executable).with_name("diffusion-kernel")), "generate"]
    reference = [sys.executable, "-c", REFERENCE]
    cores = len(os.sched_getaffinity(0))
    print(f"{cores} cores; load average before: {os.getloadavg()[0]:.2f}")
    print(f"{'machine':<8}{'threads':>8}{'ours s':>10}{'diffusers s':>13}{'ours/diffusers':>16}")
    with tempfile.TemporaryDirectory() as cwd:
        for condition in args.conditions.split(","):
            loops = busy_loops(cores - 1) if condition == "busy" else []
            try:
                time.sleep(2 if loops else 0)  # let the loops take their cores
                for threads in args.threads.split(","):
                    env_threads = None if threads == "auto" else threads
                    mine = statistics.median(run_once(ours, env_threads, cwd)
                                             for _ in range(args.repeats))
                    ref = (statistics.median(run_once(reference, env_threads, cwd)
                                             for _ in range(args.repeats))
                           if threads != "auto" else float("nan"))
                    print(f"{condition:<8}{threads:>8}{mine:>10.1f}{ref:>13.1f}"
                          f"{mine / ref:>16.2f}", flush=True)
            finally:
                for p in loops:
                    p.kill()
                    p.wait()
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
