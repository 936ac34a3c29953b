"""COV/MAT and the bond-length check on hand-made cases, and the scoring of a generator."""

import numpy as np
import pytest
import torch
from diffusion_kernel.errors import PipelineError
from diffusion_kernel_molecules.evaluation import etkdg_generator, evaluate
from diffusion_kernel_molecules.metrics import (
    bond_length_accuracy,
    coverage_matching,
    rmsd_matrix,
    summarize,
)
from diffusion_kernel_molecules.processing.molecule_processor import (
    conformer_positions,
    with_conformers,
)


def test_identical_conformers_have_rmsd_0_and_full_coverage(small_references):
    reference = small_references.molecules[1]
    rmsd = rmsd_matrix(reference, reference)
    assert np.allclose(np.diag(rmsd), 0.0, atol=1e-6)
    score = coverage_matching(rmsd)
    assert (score.cov_r, score.cov_p) == (1.0, 1.0)
    assert score.mat_r == pytest.approx(0.0, abs=1e-6)


def test_rotated_and_shifted_copies_align_to_rmsd_0(small_references):
    reference = small_references.molecules[2]
    pos = conformer_positions(reference)
    q, _ = torch.linalg.qr(torch.randn(3, 3, generator=torch.Generator().manual_seed(0),
                                       dtype=torch.float64))
    moved = with_conformers(reference, pos @ q.T + torch.tensor([4.0, -1.0, 2.0]))
    assert np.allclose(np.diag(rmsd_matrix(moved, reference)), 0.0, atol=1e-6)


def test_swapping_symmetric_atoms_costs_nothing(small_references):
    """Isobutane-like symmetry in OCC(F)(F)C(F)F: its two F on one carbon are equivalent, so
    swapping their positions is the same conformer (a plain RMSD would see two moved atoms)."""
    reference = small_references.molecules[2]  # heavy atoms: O0 C1 C2 F3 F4 C5 F6 F7
    pos = conformer_positions(reference, [0])[0].clone()
    pos[[3, 4]] = pos[[4, 3]]
    swapped = with_conformers(reference, pos)
    naive = float(torch.sqrt(((pos[:8] - conformer_positions(reference, [0])[0][:8]) ** 2)
                             .sum(-1).mean()))
    assert naive > 0.5
    assert rmsd_matrix(swapped, with_conformers(reference, conformer_positions(reference, [0])))[
        0, 0] == pytest.approx(0.0, abs=1e-6)


def test_coverage_and_matching_of_a_hand_made_matrix():
    rmsd = np.array([[0.1, 0.9],   # 3 generated x 2 references
                     [0.6, 0.7],
                     [0.2, 0.4]])
    score = coverage_matching(rmsd, threshold=0.5)
    assert score.cov_r == 1.0 and score.mat_r == pytest.approx((0.1 + 0.4) / 2)
    assert score.cov_p == pytest.approx(2 / 3) and score.mat_p == pytest.approx(0.3)
    assert coverage_matching(rmsd, threshold=0.3).cov_r == 0.5


def test_summary_gives_mean_and_median_over_molecules():
    scores = [coverage_matching(np.array([[r]])) for r in (0.1, 0.2, 0.9)]
    summary = summarize(scores)
    assert summary["cov_r_mean"] == pytest.approx(2 / 3) and summary["cov_r_median"] == 1.0
    assert summary["mat_r_mean"] == pytest.approx(0.4) and summary["mat_r_median"] == 0.2


def test_bond_length_accuracy_counts_stretched_bonds(small_references):
    reference = small_references.molecules[0]  # ethanol: 8 bonds
    assert bond_length_accuracy(reference, reference) == 1.0
    pos = conformer_positions(reference, [0])[0].clone()
    pos[2] = pos[1] + (pos[2] - pos[1]) * 1.2  # the C-O bond 20 % longer (and O's H with it)
    pos[8] = pos[8] + (pos[2] - conformer_positions(reference, [0])[0][2])
    assert bond_length_accuracy(with_conformers(reference, pos), reference) == pytest.approx(7 / 8)


def test_bad_matrices_and_mismatched_molecules_are_refused(small_references):
    with pytest.raises(PipelineError, match="RMSD matrix"):
        coverage_matching(np.zeros((0, 2)))
    with pytest.raises(PipelineError, match="different molecules"):
        rmsd_matrix(small_references.molecules[0], small_references.molecules[1])


def test_evaluate_scores_etkdg_against_its_own_kind(small_references):
    result = evaluate(etkdg_generator(), small_references, ratio=2)
    s = result.summary
    assert s["conformers"] == 2 * sum(m.GetNumConformers() for m in small_references.molecules)
    assert s["cov_r_mean"] >= 0.6 and s["mat_r_mean"] < 0.5  # ETKDG finds these small ones
    assert [row["smiles"] for row in result.per_molecule] == small_references.smiles
