"""Sample quality of a digits DDPM (default: the shipped model), per scheduler and budget.

A small CNN classifier is trained on one split of scikit-learn's digits (at the model's
resolution); on >= 1000 generated samples we report the Frechet distance between generated and
held-out real digits in the classifier's feature space (FD, lower is better), the mean classifier
confidence, and the share of each class. The floor is the FD between two halves of the real data.

    python benchmarks/sample_quality.py [--model PATH] [--num 1000] [--plot docs/sample_quality.png]

Budgets are model evaluations (NFE): a second-order solver (Heun) gets NFE/2 steps.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
from diffusion_kernel.pipelines import DiffusionPipeline
from diffusion_kernel.scheduling import scheduler_from_name
from diffusion_kernel_vision.commands import SHIPPED_MODEL
from diffusion_kernel_vision.datasets import load_digits
from torch import nn

SCHEDULERS = ["ddim", "euler", "heun", "dpm++2m", "dpm++3m", "unipc", "deis", "dpm++2m-karras",
              "dpm++2m-sde", "dpm++2m-sde-karras", "euler-a", "lms", "pndm"]
BUDGETS = [5, 10, 20, 50]


class DigitClassifier(nn.Module):
    def __init__(self, resolution: int):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(64 * (resolution // 4) ** 2, 128), nn.ReLU(),
        )
        self.head = nn.Linear(128, 10)

    def forward(self, x):
        return self.head(self.features(x))


def train_classifier(images, labels, resolution, seed=0, epochs=30):
    torch.manual_seed(seed)
    model = DigitClassifier(resolution)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        order = torch.randperm(len(images), generator=g)
        for i in range(0, len(images), 64):
            idx = order[i:i + 64]
            # small shifts make the features robust to the generator's slight misplacements
            x = torch.roll(images[idx], shifts=tuple(torch.randint(-1, 2, (2,), generator=g)),
                           dims=(2, 3))
            loss = nn.functional.cross_entropy(model(x), labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


@torch.no_grad()
def features_and_probs(classifier, images):
    feats = classifier.features(images)
    return feats.double().numpy(), torch.softmax(classifier.head(feats), dim=1)


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2)) (Heusel et al. 2017, FID eq.)."""
    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a, s_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    # Tr((S_a S_b)^(1/2)) from the eigenvalues of S_a^(1/2) S_b S_a^(1/2), which is symmetric PSD
    w, v = np.linalg.eigh(s_a)
    root_a = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    eig = np.linalg.eigvalsh(root_a @ s_b @ root_a)
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(s_a) + np.trace(s_b)
                 - 2 * np.sqrt(np.clip(eig, 0, None)).sum())


def generate(pipe, scheduler_name, nfe, num, seed=0, batch=500):
    base = pipe.scheduler.config
    if scheduler_name == "ddpm-1000":
        pipe.scheduler = scheduler_from_name("ddpm", base)
        steps = base["num_train_timesteps"]
    else:
        pipe.scheduler = scheduler_from_name(scheduler_name, base)
        steps = max(1, nfe // getattr(pipe.scheduler, "order", 1))
    out = []
    for start in range(0, num, batch):
        stop = min(num, start + batch)
        gens = [torch.Generator().manual_seed(seed + i) for i in range(start, stop)]
        images = pipe(batch_size=len(gens), generator=gens, num_inference_steps=steps,
                      output_type="pt").images
        out.append(images)
    pipe.scheduler = scheduler_from_name("ddpm", base)
    return torch.cat(out) * 2 - 1  # back to [-1, 1], the classifier's input range


def evaluate(classifier, images, real_feats):
    feats, probs = features_and_probs(classifier, images)
    conf, cls = probs.max(dim=1)
    shares = torch.bincount(cls, minlength=10).double() / len(cls)
    return {"fd": frechet_distance(feats, real_feats), "confidence": conf.mean().item(),
            "min_share": shares.min().item(), "max_share": shares.max().item()}


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
    d.text((10, 10), "Frechet distance (log scale) vs NFE, shipped digits DDPM", fill="black")
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
    d.text((margin + 5, y(floor) + 2), f"real vs real floor: {floor:.3f}", fill="#666666")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    img.save(path)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(SHIPPED_MODEL))
    parser.add_argument("--num", type=int, default=1000)
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
    resolution = pipe.unet.config.sample_size
    images, labels = load_digits(resolution)
    g = torch.Generator().manual_seed(1)
    order = torch.randperm(len(images), generator=g)
    train_idx, held_idx = order[: len(order) // 2], order[len(order) // 2:]
    with torch.enable_grad():
        classifier = train_classifier(images[train_idx], labels[train_idx], resolution)
    held_feats, held_probs = features_and_probs(classifier, images[held_idx])
    accuracy = (held_probs.argmax(1) == labels[held_idx]).double().mean().item()
    half = len(held_idx) // 2
    floor = frechet_distance(held_feats[:half], held_feats[half:])
    print(f"classifier accuracy on held-out real digits: {accuracy:.3f}")
    print(f"FD floor (two halves of held-out real data, {half} each): {floor:.4f}\n")

    results: dict[str, dict[int, dict]] = {}
    print(f"{'scheduler':<16}{'NFE':>6}{'FD':>10}{'conf':>8}{'min%':>7}{'max%':>7}{'sec':>8}")
    runs = [(s, b) for s in args.schedulers.split(",") if s for b in budgets]
    if not args.skip_ddpm_1000:
        runs.append(("ddpm-1000", 1000))
    for name, nfe in runs:
        start = time.perf_counter()
        samples = generate(pipe, name, nfe, args.num)
        row = evaluate(classifier, samples, held_feats)
        row["seconds"] = time.perf_counter() - start
        results.setdefault(name, {})[nfe] = row
        print(f"{name:<16}{nfe:>6}{row['fd']:>10.4f}{row['confidence']:>8.3f}"
              f"{100 * row['min_share']:>7.1f}{100 * row['max_share']:>7.1f}"
              f"{row['seconds']:>8.1f}", flush=True)
    at_20 = [(rows[20]["fd"], name) for name, rows in results.items() if 20 in rows]
    if "ddpm-1000" in results and at_20:
        best = min(at_20)
        ref = results["ddpm-1000"][1000]["fd"]
        print(f"\nbest solver at 20 NFE: {best[1]} FD {best[0]:.4f} = {best[0] / ref:.2f}x "
              f"DDPM-1000's {ref:.4f} (target: within 1.2x)")
    if args.plot:
        plot(results, floor, args.plot)
    if args.json:
        Path(args.json).write_text(json.dumps({"floor": floor, "accuracy": accuracy,
                                               "results": results}, indent=2))


if __name__ == "__main__":
    main()
