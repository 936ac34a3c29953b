"""Sample quality of a digits DDPM (default: the shipped model), per scheduler and budget, judged
on held-out digits the model never saw (diffusion_kernel_vision/digits_quality.py): FD in an
independent classifier's feature space against 300 held-out digits, next to the real-vs-real floor
at the same set size; classifier confidence and class shares; and the memorisation check (distance
to the nearest training digit, over that of held-out digits; share of near-copies).

    python benchmarks/sample_quality.py [--model PATH] [--num 900] [--schedulers dpm++2m-sde]
        [--budgets 20] [--skip-ddpm-1000] [--plot docs/sample_quality.png] [--json out.json]

Budgets are model evaluations (NFE): a second-order solver (Heun) gets NFE/2 steps.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import asdict
from pathlib import Path

import torch
from diffusion_kernel.pipelines import DiffusionPipeline
from diffusion_kernel.scheduling import scheduler_from_name
from diffusion_kernel_vision.commands import SHIPPED_MODEL
from diffusion_kernel_vision.digits_quality import DigitsJudge, sample

SCHEDULERS = ["ddim", "euler", "heun", "dpm++2m", "dpm++3m", "unipc", "deis", "dpm++2m-karras",
              "dpm++2m-sde", "dpm++2m-sde-karras", "euler-a", "lms", "pndm"]
BUDGETS = [5, 10, 20, 50]


def generate(pipe, base_config, scheduler_name, nfe, num):
    """``num`` samples in [-1, 1] with ``scheduler_name`` at ``nfe`` model evaluations (DDPM with
    all its training steps for ``"ddpm-1000"``)."""
    if scheduler_name == "ddpm-1000":
        pipe.scheduler = scheduler_from_name("ddpm", base_config)
        steps = base_config["num_train_timesteps"]
    else:
        pipe.scheduler = scheduler_from_name(scheduler_name, base_config)
        steps = max(1, nfe // getattr(pipe.scheduler, "order", 1))
    return sample(pipe, num, steps)


def plot(results, floor, path):
    """Distance against evaluations, one line per scheduler (drawn with Pillow)."""
    from PIL import Image, ImageDraw

    width, height, margin = 1000, 560, 70
    img = Image.new("RGB", (width, height), "white")
    d = ImageDraw.Draw(img)
    values = [r["fd"] for rows in results.values() for r in rows.values()] + [floor]
    lo, hi = math.log10(max(min(values), 1e-3)), math.log10(max(values))
    span = (width - 3.5 * margin) / (len(BUDGETS) - 1)
    xs = {b: margin + i * span for i, b in enumerate(BUDGETS)}

    def y(v):
        return height - margin - (math.log10(max(v, 1e-3)) - lo) / max(hi - lo, 1e-9) * (
            height - 2 * margin)

    d.line([(margin, margin), (margin, height - margin), (width - 2.5 * margin, height - margin)],
           fill="black")
    for b, x in xs.items():
        d.text((x - 5, height - margin + 8), str(b), fill="black")
    d.text((width / 2 - 80, height - 30), "model evaluations (NFE)", fill="black")
    d.text((10, 10), "Frechet distance to held-out digits (log scale) vs NFE, shipped digits "
           "DDPM", fill="black")
    for k in range(5):
        v = 10 ** (lo + k * (hi - lo) / 4)
        d.text((5, y(v) - 6), f"{v:.2f}", fill="black")
    palette = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
               "#7f7f7f", "#bcbd22", "#17becf", "#000080", "#808000", "#008080", "#800000",
               "#00a000", "#ff00ff"]
    for i, (name, rows) in enumerate(sorted(results.items())):
        if name == "ddpm-1000":
            continue
        color = palette[i % len(palette)]
        pts = [(xs[b], y(rows[b]["fd"])) for b in BUDGETS if b in rows]
        d.line(pts, fill=color, width=2)
        d.text((width - 2.3 * margin, 40 + 16 * i), name, fill=color)
    if "ddpm-1000" in results:
        v = results["ddpm-1000"][1000]["fd"]
        d.line([(margin, y(v)), (width - 2.5 * margin, y(v))], fill="black", width=1)
        d.text((margin + 5, y(v) - 14), f"DDPM 1000 steps: {v:.3f}", fill="black")
    d.line([(margin, y(floor)), (width - 2.5 * margin, y(floor))], fill="#999999")
    d.text((margin + 5, y(floor) + 2), f"real vs held-out floor: {floor:.2f}", fill="#666666")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    img.save(path)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(SHIPPED_MODEL))
    parser.add_argument("--num", type=int, default=900, help="a multiple of 300")
    parser.add_argument("--schedulers", default=",".join(SCHEDULERS))
    parser.add_argument("--budgets", default=",".join(map(str, BUDGETS)))
    parser.add_argument("--skip-ddpm-1000", action="store_true")
    parser.add_argument("--plot", default=None, help="write the PNG plot here")
    parser.add_argument("--json", default=None, help="write the numbers here")
    args = parser.parse_args()
    budgets = [int(b) for b in args.budgets.split(",")]
    torch.set_grad_enabled(False)

    pipe = DiffusionPipeline.from_pretrained(args.model)
    pipe.set_progress_bar_config(disable=True)
    base = dict(pipe.scheduler.config)
    judge = DigitsJudge(pipe.unet.config.sample_size)
    floor = judge.floor
    print(f"classifier (trained on 300 held-out digits) accuracy on the 1,197 training digits: "
          f"{judge.accuracy:.3f}")
    print(f"FD floor (300 real training digits vs the 300 held-out reference digits): "
          f"{floor:.2f}\n")

    results: dict[str, dict[int, dict]] = {}
    print(f"{'scheduler':<20}{'NFE':>5}{'FD':>8}{'/floor':>8}{'conf':>7}{'min%':>6}{'max%':>6}"
          f"{'nn ratio':>9}{'copies%':>8}{'sec':>7}")
    runs = [(s, b) for s in args.schedulers.split(",") if s for b in budgets]
    if not args.skip_ddpm_1000:
        runs.append(("ddpm-1000", 1000))
    for name, nfe in runs:
        start = time.perf_counter()
        row = asdict(judge.score(generate(pipe, base, name, nfe, args.num)))
        row["seconds"] = time.perf_counter() - start
        results.setdefault(name, {})[nfe] = row
        print(f"{name:<20}{nfe:>5}{row['fd']:>8.2f}{row['fd'] / floor:>8.2f}"
              f"{row['confidence']:>7.3f}{100 * row['min_share']:>6.1f}"
              f"{100 * row['max_share']:>6.1f}{row['nearest_ratio']:>9.2f}"
              f"{100 * row['near_copies']:>8.1f}{row['seconds']:>7.0f}", flush=True)
    if args.plot:
        plot(results, floor, args.plot)
    if args.json:
        Path(args.json).write_text(json.dumps({"floor": floor, "accuracy": judge.accuracy,
                                               "results": results}, indent=2))


if __name__ == "__main__":
    main()
