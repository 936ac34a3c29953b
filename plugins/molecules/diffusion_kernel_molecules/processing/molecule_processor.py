"""Molecules in and out: SMILES or RDKit molecules to graphs with hydrogens, positions to RDKit
conformers, conformers to SDF and XYZ files."""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from diffusion_kernel.errors import PipelineError
from diffusion_kernel.hub import atomic_write_text
from diffusion_kernel.processing import ProcessorMixin
from rdkit import Chem, rdBase
from rdkit.Geometry import Point3D

from ..graph import MoleculeGraph, batch_graphs, graph_from_arrays

MoleculeLike = str | Chem.Mol


class MoleculeProcessor(ProcessorMixin):
    """``MoleculeProcessor(edge_order=3)``: ``preprocess("CCO")`` gives the ``MoleculeGraph`` of
    ethanol with its hydrogens (pairs up to ``edge_order`` bonds apart are local edges);
    ``postprocess(positions, mol)`` gives ``mol`` with one conformer per (n_atoms, 3) block."""

    def __init__(self, edge_order: int = 3):
        if edge_order < 1:
            raise PipelineError(f"edge_order must be >= 1 (bonds only), got {edge_order}")
        self.edge_order = edge_order

    # In ------------------------------------------------------------------------------------
    def molecule(self, molecule: MoleculeLike) -> Chem.Mol:
        """The molecule with explicit hydrogens and no conformers, after checking that it parses,
        is sanitizable and is one connected fragment. A ``Mol`` keeps its atom order (hydrogens
        it lacks are appended)."""
        mol = _parse(molecule)
        name = molecule if isinstance(molecule, str) else Chem.MolToSmiles(mol)
        if mol.GetNumAtoms() == 0:
            raise PipelineError(f"molecule {name!r} has no atoms; pass a SMILES such as 'CCO'")
        fragments = len(Chem.GetMolFrags(mol))
        if fragments > 1:
            raise PipelineError(
                f"molecule {name!r} has {fragments} disconnected fragments ('.' in a SMILES); "
                f"the relative placement of separate molecules is not a conformer: pass each "
                f"fragment on its own")
        mol = Chem.AddHs(mol)
        mol.RemoveAllConformers()
        return mol

    def graph(self, mol: Chem.Mol) -> MoleculeGraph:
        """The graph of a molecule exactly as given (hydrogens included or not)."""
        bonds = np.array([(b.GetBeginAtomIdx(), b.GetEndAtomIdx()) for b in mol.GetBonds()],
                         dtype=np.int64).reshape(-1, 2)
        types = np.array([int(b.GetBondType()) for b in mol.GetBonds()], dtype=np.int64)
        atomic_numbers = np.array([a.GetAtomicNum() for a in mol.GetAtoms()], dtype=np.int64)
        return graph_from_arrays(atomic_numbers, bonds, types, Chem.GetDistanceMatrix(mol),
                                 self.edge_order)

    def preprocess(self, molecules: MoleculeLike | Sequence[MoleculeLike]) -> MoleculeGraph:
        """One molecule (SMILES or ``Mol``) or a list of them -> one batched graph, with
        hydrogens."""
        items = [molecules] if isinstance(molecules, str | Chem.Mol) else list(molecules)
        if not items:
            raise PipelineError("no molecule given; pass a SMILES string or an RDKit Mol")
        return batch_graphs([self.graph(self.molecule(m)) for m in items])

    # Out -----------------------------------------------------------------------------------
    def postprocess(self, positions: torch.Tensor | np.ndarray, mol: Chem.Mol,
                    **kwargs: Any) -> Chem.Mol:
        """A copy of ``mol`` with one conformer per block of ``positions`` (K, n_atoms, 3) in
        Ångström (a single (n_atoms, 3) block gives one conformer)."""
        return with_conformers(mol, positions)


def _parse(molecule: MoleculeLike) -> Chem.Mol:
    if isinstance(molecule, Chem.Mol):
        return Chem.Mol(molecule)
    if not isinstance(molecule, str):
        raise PipelineError(f"a molecule is a SMILES string or an RDKit Mol, got "
                            f"{type(molecule).__name__}")
    with rdBase.BlockLogs():  # RDKit would print its own complaint to stderr
        mol = Chem.MolFromSmiles(molecule, sanitize=False)
        if mol is None:
            raise PipelineError(f"cannot parse SMILES {molecule!r}; check its syntax "
                                f"(brackets, ring-closure digits, element symbols)")
        try:
            Chem.SanitizeMol(mol)
        except Exception as exc:  # RDKit raises its own MolSanitizeException subclasses
            raise PipelineError(f"SMILES {molecule!r} is not a valid molecule: {exc}") from None
    return mol


def conformer_positions(mol: Chem.Mol, conf_ids: Sequence[int] | None = None) -> torch.Tensor:
    """(K, n_atoms, 3) float64 positions of the molecule's conformers (all of them by default)."""
    ids = [c.GetId() for c in mol.GetConformers()] if conf_ids is None else list(conf_ids)
    if not ids:
        raise PipelineError(f"molecule {Chem.MolToSmiles(mol)!r} has no conformers")
    return torch.as_tensor(np.stack([mol.GetConformer(i).GetPositions() for i in ids]))


def with_conformers(mol: Chem.Mol, positions: torch.Tensor | np.ndarray) -> Chem.Mol:
    """A copy of ``mol`` whose conformers are the (K, n, 3) ``positions`` (old ones dropped)."""
    blocks = np.asarray(positions.detach().cpu() if isinstance(positions, torch.Tensor)
                        else positions, dtype=np.float64)
    if blocks.ndim == 2:
        blocks = blocks[None]
    n = mol.GetNumAtoms()
    if blocks.ndim != 3 or blocks.shape[1:] != (n, 3):
        raise PipelineError(f"positions of shape {tuple(blocks.shape)} do not fit a molecule of "
                            f"{n} atoms; expected (K, {n}, 3)")
    out = Chem.Mol(mol)
    out.RemoveAllConformers()
    for block in blocks:
        conformer = Chem.Conformer(n)
        for i, (x, y, z) in enumerate(block.tolist()):
            conformer.SetAtomPosition(i, Point3D(x, y, z))
        conformer.Set3D(True)
        out.AddConformer(conformer, assignId=True)
    return out


def _molecules(mols: Chem.Mol | Sequence[Chem.Mol]) -> list[Chem.Mol]:
    items = [mols] if isinstance(mols, Chem.Mol) else list(mols)
    if not items or not any(m.GetNumConformers() for m in items):
        raise PipelineError("nothing to write: no molecule with a conformer given")
    return items


def sdf_text(mols: Chem.Mol | Sequence[Chem.Mol]) -> str:
    """An SDF block per conformer of each molecule, named "<SMILES> conformer <k>" (k counts the
    conformers of one SMILES through the whole list)."""
    buffer = io.StringIO()
    writer = Chem.SDWriter(buffer)
    counts: dict[str, int] = {}
    for mol in _molecules(mols):
        named = Chem.Mol(mol)  # the caller's molecule keeps its own name
        name = Chem.MolToSmiles(Chem.RemoveHs(mol))
        for conformer in named.GetConformers():
            k = counts[name] = counts.get(name, -1) + 1
            named.SetProp("_Name", f"{name} conformer {k}")
            writer.write(named, confId=conformer.GetId())
    writer.close()
    return buffer.getvalue()


def xyz_text(mols: Chem.Mol | Sequence[Chem.Mol]) -> str:
    """The XYZ blocks of every conformer of each molecule, one after the other."""
    return "".join(Chem.MolToXYZBlock(mol, confId=c.GetId())
                   for mol in _molecules(mols) for c in mol.GetConformers())


def write_conformers(mols: Chem.Mol | Sequence[Chem.Mol], path: str | os.PathLike) -> str:
    """Write every conformer to ``path``: SDF for ``.sdf``/``.mol``, XYZ for ``.xyz``. The file
    appears whole or not at all. Returns the path."""
    suffix = os.path.splitext(os.fspath(path))[1].lower()
    writers = {".sdf": sdf_text, ".mol": sdf_text, ".xyz": xyz_text}
    if suffix not in writers:
        raise PipelineError(f"cannot write conformers to {os.fspath(path)!r}: use a .sdf or .xyz "
                            f"file name")
    atomic_write_text(path, writers[suffix](mols))
    return os.fspath(path)
