"""How good generated conformers are, as GeoDiff measures it (Xu et al. 2022, sec. 5.1, after
ConfGF), plus a validity check that needs no reference.

For one molecule with generated conformers g and reference conformers r, RMSD(g, r) is the
heavy-atom RMSD after the best alignment over the molecule's symmetries:

- COV-R(delta): the fraction of references with some generated conformer within delta Å;
- MAT-R: the mean over references of the smallest RMSD to a generated conformer;
- COV-P / MAT-P: the same with the roles swapped (precision: is each generated one near a
  reference?).

GeoDiff generates twice as many conformers as there are references and uses delta = 0.5 Å for
QM9-sized molecules.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from diffusion_kernel.errors import PipelineError
from rdkit import Chem
from rdkit.Chem import rdMolAlign


def rmsd_matrix(generated: Chem.Mol, reference: Chem.Mol) -> np.ndarray:
    """(num_generated, num_reference) symmetry-aware heavy-atom RMSDs between the conformers of
    two molecules with the same atoms in the same order."""
    same = Chem.MolToSmiles(Chem.RemoveHs(generated)) == Chem.MolToSmiles(Chem.RemoveHs(reference))
    if generated.GetNumAtoms() != reference.GetNumAtoms() or not same:
        raise PipelineError("generated and reference conformers belong to different molecules")
    if not generated.GetNumConformers() or not reference.GetNumConformers():
        raise PipelineError("both molecules need at least one conformer to compare")
    gen = [Chem.RemoveHs(Chem.Mol(generated, confId=c.GetId())) for c in generated.GetConformers()]
    ref = [Chem.RemoveHs(Chem.Mol(reference, confId=c.GetId())) for c in reference.GetConformers()]
    # GetBestRMS moves the probe; each probe is a private copy, so that is harmless.
    return np.array([[rdMolAlign.GetBestRMS(g, r) for r in ref] for g in gen])


@dataclass
class CoverageMatching:
    """COV (fraction in [0, 1]) and MAT (Å) of one molecule, recall (-R) and precision (-P)."""

    cov_r: float
    mat_r: float
    cov_p: float
    mat_p: float


def coverage_matching(rmsd: np.ndarray, threshold: float = 0.5) -> CoverageMatching:
    """COV-R, MAT-R, COV-P, MAT-P from a (generated, reference) RMSD matrix."""
    rmsd = np.asarray(rmsd, dtype=np.float64)
    if rmsd.ndim != 2 or 0 in rmsd.shape:
        raise PipelineError(f"need a (generated, reference) RMSD matrix, got shape {rmsd.shape}")
    best_per_reference, best_per_generated = rmsd.min(axis=0), rmsd.min(axis=1)
    return CoverageMatching(
        cov_r=float((best_per_reference <= threshold).mean()),
        mat_r=float(best_per_reference.mean()),
        cov_p=float((best_per_generated <= threshold).mean()),
        mat_p=float(best_per_generated.mean()))


def bond_lengths(mol: Chem.Mol) -> np.ndarray:
    """(num_conformers, num_bonds) bond lengths in Å, bonds in RDKit's order."""
    pairs = np.array([(b.GetBeginAtomIdx(), b.GetEndAtomIdx()) for b in mol.GetBonds()])
    if not len(pairs):
        return np.zeros((mol.GetNumConformers(), 0))
    pos = np.stack([c.GetPositions() for c in mol.GetConformers()])
    return np.linalg.norm(pos[:, pairs[:, 0]] - pos[:, pairs[:, 1]], axis=-1)


def bond_length_accuracy(generated: Chem.Mol, reference: Chem.Mol,
                         tolerance: float = 0.1) -> float:
    """The fraction of bonds (over all generated conformers, hydrogens included) whose length is
    within ``tolerance`` Å of its force-field length: the mean over the reference conformers,
    which are MMFF minima (their bond lengths differ by hundredths of an Å)."""
    target = bond_lengths(reference).mean(axis=0)
    return float((np.abs(bond_lengths(generated) - target) <= tolerance).mean())


def summarize(per_molecule: list[CoverageMatching]) -> dict[str, float]:
    """Mean and median over molecules of each metric: ``cov_r_mean``, ``cov_r_median``, ..."""
    if not per_molecule:
        raise PipelineError("no molecules to summarize")
    rows = [asdict(m) for m in per_molecule]
    out = {}
    for name in rows[0]:
        values = np.array([row[name] for row in rows])
        out[f"{name}_mean"] = float(values.mean())
        out[f"{name}_median"] = float(np.median(values))
    return out
