"""How good a digits model's samples are, judged on digits it never saw: ``diffusion-kernel evaluate
digits`` and ``benchmarks/sample_quality.py``.

The 600 held-out digits (``load_digits_split("test")``) are cut in two halves of 300. A small CNN
classifier is trained on the first half only (independent of the generator and of its training
digits; its accuracy is measured on the 1,197 training digits, which it never saw). Scores:

- FD: the Frechet distance (Heusel et al. 2017) between 300 samples and the second held-out half
  in the classifier's 128-dimensional feature space, averaged over disjoint sets of 300 samples.
  FD is biased upwards for small sets, so the floor is measured at the same sizes: real digits
  (300 from the training split, disjoint sets, averaged) against the same held-out half.
- confidence (mean top class probability) and the smallest and largest share of a class;
- memorisation: each sample's pixel distance to its nearest training digit, against the same for
  the held-out digits. A model that copies its training set has samples much closer to training
  digits than unseen real digits are (ratio well below 1, many "near-copies": samples closer than
  the 5 % closest held-out digits).
"""

from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass

import numpy as np
import torch
from diffusion_kernel.errors import ConfigError
from torch import nn

from .datasets import load_digits_split

SET_SIZE = 300  # samples per FD set, the size of the held-out reference half


class DigitClassifier(nn.Module):
    """Two conv layers and a 128-unit feature layer (the FD's feature space), then 10 classes."""

    def __init__(self, resolution: int):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(64 * (resolution // 4) ** 2, 128), nn.ReLU(),
        )
        self.head = nn.Linear(128, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def train_classifier(images: torch.Tensor, labels: torch.Tensor, seed: int = 0,
                     epochs: int = 60) -> DigitClassifier:
    """Adam on cross-entropy, with random shifts of up to one pixel (so the features do not
    hinge on a sample's exact placement)."""
    torch.manual_seed(seed)
    model = DigitClassifier(images.shape[-1])
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    g = torch.Generator().manual_seed(seed)
    with torch.enable_grad():
        for _ in range(epochs):
            order = torch.randperm(len(images), generator=g)
            for i in range(0, len(images), 64):
                idx = order[i:i + 64]
                shift = tuple(torch.randint(-1, 2, (2,), generator=g).tolist())
                loss = nn.functional.cross_entropy(model(torch.roll(images[idx], shift, (2, 3))),
                                                   labels[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
    return model.eval()


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


def nearest_distances(x: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Each row's Euclidean (pixel) distance to its nearest row of ``reference``."""
    return torch.cdist(x.reshape(len(x), -1).double(),
                       reference.reshape(len(reference), -1).double()).min(dim=1).values


@dataclass
class Scores:
    fd: float
    confidence: float
    min_share: float
    max_share: float
    nearest_ratio: float  # mean nearest-training distance, samples over held-out digits
    near_copies: float  # share of samples closer to a training digit than 95 % of held-out ones


class DigitsJudge:
    """The held-out reference and classifier of one resolution; ``score(samples)`` in [-1, 1]."""

    def __init__(self, resolution: int = 16, seed: int = 0):
        self.train_images, train_labels = load_digits_split("train", resolution)
        held, held_labels = load_digits_split("test", resolution)
        half = len(held) // 2
        self.classifier = train_classifier(held[:half], held_labels[:half], seed)
        self.reference = held[half:]
        self.reference_features = self._features(self.reference)
        with torch.no_grad():
            predicted = self.classifier(self.train_images).argmax(1)
        self.accuracy = (predicted == train_labels).double().mean().item()
        held_nearest = nearest_distances(self.reference, self.train_images)
        self.held_nearest_mean = held_nearest.mean().item()
        self.copy_threshold = torch.quantile(held_nearest, 0.05).item()
        sets = [self.train_images[i:i + SET_SIZE]
                for i in range(0, len(self.train_images) - SET_SIZE + 1, SET_SIZE)]
        self.floor = float(np.mean([frechet_distance(self._features(s), self.reference_features)
                                    for s in sets]))

    @torch.no_grad()
    def _features(self, images: torch.Tensor) -> np.ndarray:
        return self.classifier.features(images).double().numpy()

    @torch.no_grad()
    def score(self, samples: torch.Tensor) -> Scores:
        """Scores of ``samples`` (N, 1, R, R) in [-1, 1]; FD over the disjoint sets of 300 (N
        at least 300)."""
        if len(samples) < SET_SIZE:
            raise ConfigError(f"the FD needs at least {SET_SIZE} samples, got {len(samples)}")
        fds = [frechet_distance(self._features(samples[i:i + SET_SIZE]), self.reference_features)
               for i in range(0, len(samples) - SET_SIZE + 1, SET_SIZE)]
        probs = torch.softmax(self.classifier(samples), dim=1)
        confidence, classes = probs.max(dim=1)
        shares = torch.bincount(classes, minlength=10).double() / len(classes)
        nearest = nearest_distances(samples, self.train_images)
        return Scores(fd=float(np.mean(fds)), confidence=confidence.mean().item(),
                      min_share=shares.min().item(), max_share=shares.max().item(),
                      nearest_ratio=nearest.mean().item() / self.held_nearest_mean,
                      near_copies=(nearest < self.copy_threshold).double().mean().item())


def sample(pipe, num: int, steps: int | None = None, seed: int = 0,
           batch: int = 300) -> torch.Tensor:
    """``num`` samples in [-1, 1] with per-sample generators seeded ``seed + i``."""
    out = []
    for start in range(0, num, batch):
        stop = min(num, start + batch)
        gens = [torch.Generator().manual_seed(seed + i) for i in range(start, stop)]
        images = pipe(batch_size=len(gens), generator=gens, num_inference_steps=steps,
                      output_type="pt").images
        out.append(images * 2 - 1)
    return torch.cat(out)


def run(args: argparse.Namespace) -> int:
    """``diffusion-kernel evaluate digits``: print the scores of a digits pipeline."""
    from diffusion_kernel import DiffusionPipeline
    from diffusion_kernel.cli_extensions import resolve_model
    from diffusion_kernel.scheduling import scheduler_from_name

    if args.num < SET_SIZE:
        raise ConfigError(f"--num {args.num}: the FD needs at least {SET_SIZE} samples")
    pipe = DiffusionPipeline.from_pretrained(resolve_model(args.model))
    pipe.set_progress_bar_config(disable=True)
    if args.scheduler:
        pipe.scheduler = scheduler_from_name(args.scheduler, pipe.scheduler.config)
    judge = DigitsJudge(pipe.unet.config.sample_size)
    with torch.no_grad():
        scores = judge.score(sample(pipe, args.num, args.steps, args.seed))
    print(f"classifier accuracy on the training digits: {judge.accuracy:.3f}")
    print(f"FD floor (real vs held-out, sets of {SET_SIZE}): {judge.floor:.2f}")
    for key, value in asdict(scores).items():
        print(f"{key}: {value:.4f}")
    print(f"FD / floor: {scores.fd / judge.floor:.2f}")
    return 0
