"""The yardstick of the shipped model's quality (diffusion_kernel_vision/digits_quality.py): the
fixed held-out split, the Frechet distance and the nearest-neighbour distances, and `evaluate
digits` refusing a sample count too small for its FD sets."""

import numpy as np
import pytest
import torch
from diffusion_kernel.cli import main
from diffusion_kernel_vision.datasets import load_digits, load_digits_split
from diffusion_kernel_vision.digits_quality import frechet_distance, nearest_distances


def test_the_split_is_fixed_disjoint_and_covers_every_digit():
    all_images, all_labels = load_digits(8)
    train, train_labels = load_digits_split("train", 8)
    held, held_labels = load_digits_split("test", 8)
    assert (len(train), len(held)) == (1197, 600)
    # The same 600 digits on every machine: the shipped model's "never saw them" depends on it.
    assert held_labels[:10].tolist() == [8, 5, 3, 6, 5, 7, 4, 1, 9, 2]
    assert torch.equal(held[0], all_images[1037])
    both = torch.cat([train, held]).reshape(1797, -1)
    assert torch.equal(torch.sort(both.sum(1)).values, torch.sort(all_images.reshape(1797, -1)
                                                                  .sum(1)).values)
    assert torch.equal(torch.bincount(torch.cat([train_labels, held_labels])),
                       torch.bincount(all_labels))


def test_frechet_distance_of_gaussians_is_the_squared_mean_shift_plus_the_covariance_term():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(20000, 3))
    b = rng.normal(size=(20000, 3)) * 2 + np.array([1.0, 0.0, 0.0])
    # ||(1,0,0)||^2 + Tr(I + 4I - 2 (4I)^(1/2)) = 1 + 3 * (1 + 4 - 4) = 4
    assert frechet_distance(a, b) == pytest.approx(4.0, abs=0.1)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)


def test_nearest_distances_find_the_closest_reference_row():
    reference = torch.tensor([[0.0, 0.0], [3.0, 4.0]])
    x = torch.tensor([[3.0, 5.0], [0.0, 0.5]])
    assert nearest_distances(x, reference).tolist() == [1.0, 0.5]


def test_evaluate_digits_refuses_too_few_samples_before_any_work(capsys):
    assert main(["evaluate", "digits", "--num", "100"]) == 2
    assert "the FD needs at least 300 samples" in capsys.readouterr().err
