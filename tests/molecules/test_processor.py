"""MoleculeProcessor: SMILES/Mol -> graph with hydrogens and GeoDiff's edge types, batches of
different sizes, positions <-> conformers, SDF/XYZ files, and its errors."""

import numpy as np
import pytest
import torch
from diffusion_kernel import registry
from diffusion_kernel.errors import PipelineError
from diffusion_kernel_molecules.graph import batch_graphs
from diffusion_kernel_molecules.processing.molecule_processor import (
    conformer_positions,
    with_conformers,
    write_conformers,
)
from rdkit import Chem


@pytest.fixture
def processor():
    return registry.processors.get("MoleculeProcessor")()


def pair_types(graph):
    return {(i, j): t for (i, j), t in zip(graph.pair_index.T.tolist(), graph.pair_type.tolist())}


def test_ethanol_graph_has_its_hydrogens_bonds_and_hops(processor):
    graph = processor.preprocess("CCO")  # C0 C1 O2, then six H
    assert graph.atom_type.tolist() == [6, 6, 8, 1, 1, 1, 1, 1, 1]
    assert graph.bond_index.shape == (2, 16)  # 8 bonds, both directions
    assert graph.pair_index.shape == (2, 9 * 8)  # every ordered pair of distinct atoms
    types = pair_types(graph)
    assert types[0, 1] == types[1, 0] == 2  # single bond: int(SINGLE) + 1
    assert types[0, 2] == 23  # two bonds apart
    mol = processor.molecule("CCO")
    h_on_c0 = [a.GetIdx() for a in mol.GetAtomWithIdx(0).GetNeighbors() if a.GetAtomicNum() == 1]
    h_on_o = [a.GetIdx() for a in mol.GetAtomWithIdx(2).GetNeighbors() if a.GetAtomicNum() == 1]
    assert types[h_on_c0[0], 2] == 24  # H-C-C-O: three bonds apart
    assert types[h_on_c0[0], h_on_o[0]] == 0  # H-C-C-O-H: four, a global pair only
    assert types[h_on_c0[0], h_on_c0[1]] == 23


def test_bond_types_follow_rdkit_numbering_plus_one(processor):
    double = pair_types(processor.preprocess("C=O"))[0, 1]
    triple = pair_types(processor.preprocess("C#N"))[0, 1]
    aromatic = pair_types(processor.preprocess("c1ccccc1"))[0, 1]
    assert (double, triple, aromatic) == (3, 4, 13)


def test_pairs_beyond_the_edge_order_are_not_local(processor):
    graph = processor.preprocess("CCCCC")
    types = pair_types(graph)
    assert types[0, 3] == 24 and types[0, 4] == 0  # 3 bonds: local; 4 bonds: only global
    short = registry.processors.get("MoleculeProcessor")(edge_order=2).preprocess("CCCCC")
    assert pair_types(short)[0, 3] == 0


def test_a_batch_of_different_sizes_shifts_indices(processor):
    one, two = processor.preprocess("O"), processor.preprocess("CC")  # 3 and 8 atoms
    batch = processor.preprocess(["O", "CC"])
    assert batch.num_graphs == 2 and batch.num_atoms == 11
    assert batch.batch.tolist() == [0] * 3 + [1] * 8
    assert batch.atoms_per_graph.tolist() == [3, 8]
    assert torch.equal(batch.pair_index[:, one.pair_index.shape[1]:], two.pair_index + 3)
    assert torch.equal(batch.pair_type, torch.cat([one.pair_type, two.pair_type]))
    # no pair crosses molecules
    assert bool((batch.batch[batch.pair_index[0]] == batch.batch[batch.pair_index[1]]).all())
    assert torch.equal(batch_graphs([one, two]).bond_index, batch.bond_index)


def test_a_mol_keeps_its_atom_order_and_gets_missing_hydrogens(processor):
    mol = Chem.MolFromSmiles("OCC")
    out = processor.molecule(mol)
    assert [a.GetSymbol() for a in out.GetAtoms()][:3] == ["O", "C", "C"]
    assert out.GetNumAtoms() == 9 and mol.GetNumAtoms() == 3  # the caller's Mol is untouched


def test_positions_round_trip_through_conformers(processor):
    mol = processor.molecule("CCO")
    positions = torch.randn(3, 9, 3, dtype=torch.float64)
    with_confs = processor.postprocess(positions, mol)
    assert with_confs.GetNumConformers() == 3 and mol.GetNumConformers() == 0
    assert torch.equal(conformer_positions(with_confs), positions)
    with pytest.raises(PipelineError, match=r"expected \(K, 9, 3\)"):
        with_conformers(mol, torch.zeros(2, 8, 3))


def test_sdf_and_xyz_files_hold_every_conformer(processor, tmp_path):
    mols = [processor.postprocess(torch.randn(2, 9, 3), processor.molecule("CCO")),
            processor.postprocess(torch.randn(1, 3, 3), processor.molecule("O"))]
    write_conformers(mols, tmp_path / "out.sdf")
    records = list(Chem.SDMolSupplier(str(tmp_path / "out.sdf"), removeHs=False))
    assert [r.GetNumAtoms() for r in records] == [9, 9, 3]
    assert records[1].GetProp("_Name") == "CCO conformer 1"
    np.testing.assert_allclose(records[1].GetConformer().GetPositions(),
                               mols[0].GetConformer(1).GetPositions(), atol=1e-4)
    write_conformers(mols, tmp_path / "out.xyz")
    lines = (tmp_path / "out.xyz").read_text().splitlines()
    assert lines[0] == "9" and len(lines) == 2 * (9 + 2) + (3 + 2)


def test_writing_to_an_unknown_format_writes_nothing(processor, tmp_path):
    mol = processor.postprocess(torch.randn(1, 3, 3), processor.molecule("O"))
    with pytest.raises(PipelineError, match=r"\.sdf or \.xyz"):
        write_conformers(mol, tmp_path / "out.pdb")
    with pytest.raises(PipelineError, match="no molecule with a conformer"):
        write_conformers(processor.molecule("O"), tmp_path / "out.sdf")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("smiles,message", [
    ("C1CC", "cannot parse SMILES 'C1CC'"),
    ("C(C)(C)(C)(C)C", "not a valid molecule: Explicit valence"),
    ("CCO.O", "2 disconnected fragments"),
    ("", "has no atoms"),
])
def test_bad_molecules_get_clear_errors(processor, smiles, message):
    with pytest.raises(PipelineError, match=message):
        processor.preprocess(smiles)


def test_bad_input_types_and_empty_lists_are_refused(processor):
    with pytest.raises(PipelineError, match="SMILES string or an RDKit Mol, got int"):
        processor.preprocess([42])
    with pytest.raises(PipelineError, match="no molecule given"):
        processor.preprocess([])
