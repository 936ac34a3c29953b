"""How recognisable generated spoken digits are: a small CNN "judge" trained on mel images of
real clips by voices the generator never heard, and the Frechet distance between feature sets.

The judge reports, for a set of mel images, the digit it hears, its confidence (the softmax
probability of that digit) and its penultimate-layer features; the Frechet distance between two
feature sets (Heusel et al. 2017, as FID) compares generated with real clips.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn


class DigitJudge(nn.Module):
    """Two conv/pool stages and a 128-unit layer over (B, 1, 32, 32) mel images in [-1, 1]."""

    def __init__(self, height: int = 32, width: int = 32, classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(64 * (height // 4) * (width // 4), 128), nn.ReLU())
        self.head = nn.Linear(128, classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))


def train_judge(images: torch.Tensor, labels: torch.Tensor, epochs: int = 8, seed: int = 0,
                batch_size: int = 64) -> DigitJudge:
    """Fit a judge with Adam; each batch is shifted by up to one frame in time, so a generator's
    slight misplacement of the onset does not fool it."""
    torch.manual_seed(seed)
    judge = DigitJudge(images.shape[2], images.shape[3])
    optimizer = torch.optim.Adam(judge.parameters(), lr=2e-3)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        order = torch.randperm(len(images), generator=generator)
        for start in range(0, len(images), batch_size):
            index = order[start:start + batch_size]
            shift = int(torch.randint(-1, 2, (1,), generator=generator))
            batch = torch.roll(images[index], shifts=shift, dims=3)
            loss = nn.functional.cross_entropy(judge(batch), labels[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return judge.eval()


@dataclass
class Verdict:
    """``digits`` (N,) heard, ``confidence`` (N,) in [0, 1], ``features`` (N, 128) float64."""

    digits: np.ndarray
    confidence: np.ndarray
    features: np.ndarray

    def shares(self, classes: int = 10) -> np.ndarray:
        """The fraction of the samples heard as each digit."""
        return np.bincount(self.digits, minlength=classes) / len(self.digits)


@torch.no_grad()
def judge_images(judge: DigitJudge, images: torch.Tensor) -> Verdict:
    features = judge.features(images)
    probabilities = torch.softmax(judge.head(features), dim=1)
    confidence, digits = probabilities.max(dim=1)
    return Verdict(digits.numpy(), confidence.numpy(), features.double().numpy())


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2)) between two feature sets."""
    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a, s_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    # Tr((S_a S_b)^(1/2)) from the eigenvalues of S_a^(1/2) S_b S_a^(1/2) (symmetric PSD)
    w, v = np.linalg.eigh(s_a)
    root_a = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    cross = np.sqrt(np.clip(np.linalg.eigvalsh(root_a @ s_b @ root_a), 0, None)).sum()
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(s_a) + np.trace(s_b) - 2 * cross)
