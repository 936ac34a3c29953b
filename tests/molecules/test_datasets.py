"""The NCI data set builder: the molecule filter, ETKDG+MMFF reference ensembles, the split by
molecule, and the .npz round trip."""

import numpy as np
import pytest
import torch
from diffusion_kernel.errors import ConfigError, FileAccessError
from diffusion_kernel_molecules.commands import SHIPPED_TEST_SET
from diffusion_kernel_molecules.datasets import (
    NCI_SPLIT,
    ConformerSet,
    heavy_atom_rmsd,
    nci_smiles,
    reference_conformers,
    split_by_molecule,
)
from diffusion_kernel_molecules.processing.molecule_processor import conformer_positions
from rdkit import Chem


def test_the_nci_filter_keeps_small_neutral_cnof_molecules():
    smiles = nci_smiles(9)
    assert len(smiles) == 412 and len(set(smiles)) == 412
    for s in smiles:
        mol = Chem.MolFromSmiles(s)
        assert mol.GetNumAtoms() <= 9 and len(Chem.GetMolFrags(mol)) == 1
        assert {a.GetSymbol() for a in mol.GetAtoms()} <= {"C", "N", "O", "F"}
        assert all(a.GetFormalCharge() == 0 for a in mol.GetAtoms())


def test_references_are_distinct_force_field_minima():
    mol = reference_conformers("CCCCO", num_embeddings=8)
    k = mol.GetNumConformers()
    assert 2 <= k <= 8  # butanol has several rotamers
    for i in range(k):
        for j in range(i):
            assert heavy_atom_rmsd(mol, mol, i, j) > 0.25
    from rdkit.Chem import AllChem

    relaxed = Chem.Mol(mol)
    AllChem.MMFFOptimizeMoleculeConfs(relaxed, maxIters=2000)  # already minima: barely move
    assert (conformer_positions(relaxed) - conformer_positions(mol)).abs().max() < 0.02


def test_seed_0_is_refused():
    with pytest.raises(ConfigError, match="seed 0 makes ETKDG return identical conformers"):
        reference_conformers("CCO", seed=0)


def test_the_split_is_by_molecule_seeded_and_complete():
    train, test = split_by_molecule(100, 0.2, seed=0)
    assert len(test) == 20 and not set(train) & set(test)
    assert sorted(train + test) == list(range(100))
    assert (train, test) == split_by_molecule(100, 0.2, seed=0)
    assert test != split_by_molecule(100, 0.2, seed=1)[1]


def test_the_shipped_test_split_is_the_held_out_part_of_the_nci_molecules():
    shipped = ConformerSet.load(SHIPPED_TEST_SET)
    smiles = nci_smiles(NCI_SPLIT["max_heavy_atoms"])
    _, test = split_by_molecule(len(smiles), NCI_SPLIT["test_fraction"], NCI_SPLIT["seed"])
    assert shipped.smiles == [smiles[i] for i in test]
    assert len(shipped) == 82
    counts = [m.GetNumConformers() for m in shipped.molecules]
    assert min(counts) >= 1 and 3 < np.mean(counts) < 9


def test_a_set_round_trips_through_npz(small_references, tmp_path):
    small_references.save(tmp_path / "refs.npz")
    loaded = ConformerSet.load(tmp_path / "refs.npz")
    assert loaded.smiles == small_references.smiles
    for a, b in zip(loaded.molecules, small_references.molecules):
        assert torch.allclose(conformer_positions(a), conformer_positions(b), atol=1e-5)


def test_loading_refuses_missing_files_and_mismatched_atoms(small_references, tmp_path):
    with pytest.raises(FileAccessError, match="no conformer data set"):
        ConformerSet.load(tmp_path / "missing.npz")
    small_references.save(tmp_path / "refs.npz")
    data = dict(np.load(tmp_path / "refs.npz"))
    data["atomic_numbers"] = data["atomic_numbers"][::-1].copy()
    np.savez(tmp_path / "bad.npz", **data)
    with pytest.raises(ConfigError, match="not in the order this RDKit gives them"):
        ConformerSet.load(tmp_path / "bad.npz")
