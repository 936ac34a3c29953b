"""Conformer data sets built offline from what ships with RDKit.

Molecules: RDKit's sample of the NCI database (``Data/NCI/first_5K.smi``), filtered to small,
neutral, single-fragment organic molecules (by default at most 9 heavy atoms of C, N, O, F: QM9's
chemistry). References: ETKDGv3 embeddings (Riniker & Landrum 2015, Wang et al. 2020) relaxed
with MMFF94 and de-duplicated at a heavy-atom RMSD threshold, standing in for GEOM's CREST
ensembles. The split is by molecule, so test molecules are never seen in training.

A data set saves to one ``.npz`` (SMILES, atomic numbers and positions) and loads back into RDKit
molecules whose conformers are the references.
"""

from __future__ import annotations

import functools
import io
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from diffusion_kernel.errors import ConfigError, FileAccessError
from rdkit import Chem, RDConfig
from rdkit.Chem import AllChem, rdMolAlign

from .processing.molecule_processor import MoleculeProcessor, conformer_positions, with_conformers

NCI_SMILES = Path(RDConfig.RDDataDir) / "NCI" / "first_5K.smi"
# ETKDG with randomSeed=0 gives identical conformers in RDKit 2026.09; any other seed is fine.
REFERENCE_SEED = 42
# The split the shipped model was trained and tested on: the NCI molecules of at most 9 heavy
# atoms (C, N, O, F), 20 % of them held out by a permutation seeded 0.
NCI_SPLIT = {"max_heavy_atoms": 9, "test_fraction": 0.2, "seed": 0}


@dataclass
class ConformerSet:
    """Molecules (RDKit ``Mol`` with hydrogens) whose conformers are reference structures."""

    molecules: list[Chem.Mol]

    @property
    def smiles(self) -> list[str]:
        return [Chem.MolToSmiles(Chem.RemoveHs(m)) for m in self.molecules]

    def __len__(self) -> int:
        return len(self.molecules)

    def subset(self, indices: Sequence[int]) -> ConformerSet:
        return ConformerSet([self.molecules[i] for i in indices])

    def save(self, path: str | os.PathLike) -> None:
        """Write the set to a ``.npz`` file (atomically)."""
        from diffusion_kernel.hub import atomic_write_bytes

        counts = [m.GetNumConformers() for m in self.molecules]
        buffer = io.BytesIO()
        np.savez_compressed(
            buffer, smiles=np.array(self.smiles),
            num_atoms=np.array([m.GetNumAtoms() for m in self.molecules]),
            num_conformers=np.array(counts),
            atomic_numbers=np.concatenate([[a.GetAtomicNum() for a in m.GetAtoms()]
                                           for m in self.molecules]),
            positions=np.concatenate([conformer_positions(m).reshape(-1, 3).numpy()
                                      for m in self.molecules]).astype(np.float32))
        atomic_write_bytes(path, buffer.getvalue())

    @classmethod
    def load(cls, path: str | os.PathLike) -> ConformerSet:
        """Read a set written by ``save``. Molecules are rebuilt from their SMILES; a different
        atom order (another RDKit version) is refused rather than silently mismatched."""
        if not os.path.isfile(path):
            raise FileAccessError(f"no conformer data set at {os.fspath(path)!r}; build one with "
                                  f"build_nci_dataset(...).save(path)")
        data = np.load(path)
        processor = MoleculeProcessor()
        molecules, atom_start, pos_start = [], 0, 0
        for smiles, n, k in zip(data["smiles"], data["num_atoms"], data["num_conformers"]):
            mol = processor.molecule(str(smiles))
            stored = data["atomic_numbers"][atom_start:atom_start + n]
            if mol.GetNumAtoms() != n or \
                    [a.GetAtomicNum() for a in mol.GetAtoms()] != stored.tolist():
                raise ConfigError(f"{os.fspath(path)}: the atoms of {smiles} are not in the order "
                                  f"this RDKit gives them; rebuild the data set")
            blocks = data["positions"][pos_start:pos_start + n * k].reshape(k, n, 3)
            molecules.append(with_conformers(mol, blocks.astype(np.float64)))
            atom_start, pos_start = atom_start + n, pos_start + n * k
        return cls(molecules)


def nci_smiles(max_heavy_atoms: int = 9, elements: Sequence[str] = ("C", "N", "O", "F"),
               source: str | os.PathLike = NCI_SMILES) -> list[str]:
    """Canonical SMILES of the neutral, single-fragment molecules of ``source`` with at most
    ``max_heavy_atoms`` heavy atoms, all of ``elements``; unique, in file order."""
    return list(_filtered_smiles(max_heavy_atoms, tuple(elements), os.fspath(source)))


@functools.cache  # parsing the 5,000 NCI SMILES takes seconds
def _filtered_smiles(max_heavy_atoms: int, elements: tuple[str, ...], source: str):
    allowed = set(elements)
    seen: dict[str, None] = {}
    from rdkit import rdBase

    with rdBase.BlockLogs():  # a few NCI entries have valences RDKit refuses
        for line in Path(source).read_text().splitlines():
            mol = Chem.MolFromSmiles(line.split()[0]) if line.strip() else None
            if mol is None or mol.GetNumAtoms() > max_heavy_atoms:
                continue
            if len(Chem.GetMolFrags(mol)) != 1:
                continue
            if any(a.GetFormalCharge() or a.GetSymbol() not in allowed for a in mol.GetAtoms()):
                continue
            seen.setdefault(Chem.MolToSmiles(mol))
    return tuple(seen)


def heavy_atom_rmsd(probe: Chem.Mol, reference: Chem.Mol, probe_id: int = -1,
                    reference_id: int = -1) -> float:
    """Heavy-atom RMSD after the best alignment over the molecule's symmetries (RDKit's
    ``GetBestRMS``). Works on copies: RDKit would move the probe in place, and comparing two
    conformers of the same ``Mol`` object returns 0."""
    p = Chem.RemoveHs(Chem.Mol(probe, confId=probe_id))
    r = Chem.RemoveHs(Chem.Mol(reference, confId=reference_id))
    return float(rdMolAlign.GetBestRMS(p, r))


def reference_conformers(smiles: str, num_embeddings: int = 20, seed: int = REFERENCE_SEED,
                         mmff_iterations: int = 2000, dedup_rmsd: float = 0.25) -> Chem.Mol:
    """The molecule with hydrogens and its reference ensemble: ``num_embeddings`` ETKDGv3
    embeddings, each relaxed with MMFF94, kept in order of energy unless within ``dedup_rmsd`` Å
    (heavy atoms) of a kept one."""
    if seed == 0:
        raise ConfigError("seed 0 makes ETKDG return identical conformers in this RDKit; use "
                          "another seed")
    mol = MoleculeProcessor().molecule(smiles)
    params = AllChem.ETKDGv3()
    params.randomSeed = seed
    ids = list(AllChem.EmbedMultipleConfs(mol, numConfs=num_embeddings, params=params))
    if not ids:
        raise ConfigError(f"ETKDG could not embed {smiles}")
    results = AllChem.MMFFOptimizeMoleculeConfs(mol, maxIters=mmff_iterations)
    order = sorted(range(len(ids)), key=lambda k: results[k][1])
    kept: list[int] = []
    for k in order:
        if all(heavy_atom_rmsd(mol, mol, ids[k], ids[j]) > dedup_rmsd for j in kept):
            kept.append(k)
    return with_conformers(mol, conformer_positions(mol, [ids[k] for k in kept]))


def split_by_molecule(count: int, test_fraction: float = 0.2, seed: int = 0):
    """(train, test) index lists: a seeded permutation of range(count), the last
    ``test_fraction`` of it held out."""
    order = np.random.default_rng(seed).permutation(count)
    num_test = round(count * test_fraction)
    return sorted(order[:count - num_test].tolist()), sorted(order[count - num_test:].tolist())


def build_nci_dataset(max_heavy_atoms: int = 9, limit: int | None = None,
                      num_embeddings: int = 20, seed: int = REFERENCE_SEED) -> ConformerSet:
    """Reference ensembles for the filtered NCI molecules (the first ``limit`` if given)."""
    return build_references(nci_smiles(max_heavy_atoms)[:limit], num_embeddings, seed)


def build_references(smiles: Sequence[str], num_embeddings: int = 20,
                     seed: int = REFERENCE_SEED) -> ConformerSet:
    """Reference ensembles (``reference_conformers``) of the given molecules, with a progress
    bar."""
    from tqdm.auto import tqdm

    return ConformerSet([reference_conformers(s, num_embeddings, seed)
                         for s in tqdm(smiles, desc="reference conformers", leave=False)])


def build_nci_split(part: str) -> ConformerSet:
    """The ``"train"`` or ``"test"`` part of the NCI split the shipped model used
    (``NCI_SPLIT``), with reference ensembles built here (about 0.5 s per molecule)."""
    if part not in ("train", "test"):
        raise ConfigError(f"part must be 'train' or 'test', got {part!r}")
    smiles = nci_smiles(NCI_SPLIT["max_heavy_atoms"])
    train, test = split_by_molecule(len(smiles), NCI_SPLIT["test_fraction"], NCI_SPLIT["seed"])
    return build_references([smiles[i] for i in (train if part == "train" else test)])
