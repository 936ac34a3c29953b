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


def _as_images(pixels: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(pixels.astype(np.float32) / 255 * 2 - 1)[:, None]


def real_references(mel, judge_epochs: int = 8, seed: int = 0) -> dict:
    """Render the real clips the quality figures need and train the judge:

    - the judge learns the held-out voices at pitches 35 and 65 (1,920 clips);
    - ``heldout``: the held-out voices at pitch 50 (960 clips, never seen by the judge);
    - ``train_a`` / ``train_b``: two disjoint random sets of 500 clips of the training data
      (every training voice, rate and pitch: the distribution the generator learns), for the
      distance of generated to real clips and its real-vs-real floor. (A floor measured within
      one rate and pitch is far smaller than the spread of the data itself, so no model of the
      whole data could come near it.)
    """
    from .datasets.spoken_digits import spoken_digits

    heldout = spoken_digits("heldout", length=mel.slice_size)
    images = _as_images(mel.audio_to_bytes(heldout.audio))
    for_judge = heldout.pitches != 50
    judge = train_judge(images[for_judge], torch.from_numpy(heldout.labels[for_judge]),
                        epochs=judge_epochs, seed=seed)
    train = spoken_digits("train", length=mel.slice_size)
    order = np.random.RandomState(seed).permutation(len(train.labels))
    train_images = _as_images(mel.audio_to_bytes(train.audio))
    return {"judge": judge,
            "heldout": (images[~for_judge], heldout.labels[~for_judge]),
            "train_a": (train_images[order[:500]], train.labels[order[:500]]),
            "train_b": (train_images[order[500:1000]], train.labels[order[500:1000]])}


def quality_report(verdict: Verdict, references: dict, heard: Verdict | None = None) -> dict:
    """The figures of one set of generated samples (``verdict``: the judge on their mel images;
    ``heard``: on the mel images of their Griffin-Lim audio)."""
    judge = references["judge"]
    real = {name: judge_images(judge, references[name][0])
            for name in ("heldout", "train_a", "train_b")}
    report = {
        "samples": len(verdict.digits),
        "mean_confidence": float(verdict.confidence.mean()),
        "shares": verdict.shares().round(4).tolist(),
        "fd_to_training_voices": frechet_distance(verdict.features, real["train_a"].features),
        "fd_floor_training_voices": frechet_distance(real["train_b"].features,
                                                     real["train_a"].features),
        "fd_to_heldout_voices": frechet_distance(verdict.features, real["heldout"].features),
        "fd_training_voices_to_heldout": frechet_distance(real["train_a"].features,
                                                          real["heldout"].features),
        "judge_accuracy_heldout": float((real["heldout"].digits == references["heldout"][1])
                                        .mean()),
        "judge_accuracy_training_voices": float(
            (real["train_a"].digits == references["train_a"][1]).mean()),
    }
    report["fd_ratio"] = report["fd_to_training_voices"] / report["fd_floor_training_voices"]
    if heard is not None:
        report["heard_mean_confidence"] = float(heard.confidence.mean())
        report["heard_agreement"] = float((heard.digits == verdict.digits).mean())
    return report


def generate_and_judge(pipe, references: dict, num: int, steps: int, seed: int = 0,
                       batch_size: int = 64):
    """Sample ``num`` clips (sample i from a generator seeded ``seed + i``) and judge their mel
    images and the mel images of their audio. Returns (verdict, heard, pixels)."""
    pixels, heard_pixels = [], []
    for start in range(0, num, batch_size):
        count = min(batch_size, num - start)
        generators = [torch.Generator().manual_seed(seed + start + i) for i in range(count)]
        output = pipe(batch_size=count, generator=generators, steps=steps)
        pixels += [np.asarray(image, dtype=np.uint8) for image in output.images]
        audio = np.pad(output.audios[:, 0], ((0, 0), (0, pipe.mel.slice_size
                                                       - output.audios.shape[-1])))
        heard_pixels.append(pipe.mel.audio_to_bytes(audio))
    pixels = np.stack(pixels)
    judge = references["judge"]
    return (judge_images(judge, _as_images(pixels)),
            judge_images(judge, _as_images(np.concatenate(heard_pixels))), pixels)
