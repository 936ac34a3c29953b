"""A batch of molecules as tensors: atoms, bonds, and the atom pairs GeoDiff's encoders read.

GeoDiff (Xu et al. 2022, sec. 4.2) works on two edge sets of one molecule: the *local* edges (the
bond graph extended to neighbours 2 and 3 bonds apart, so that bond lengths, angles and torsions
are all edges) and the *global* edges (every pair closer than a cutoff, computed from the current
positions). Both are subsets of the ordered pairs (i, j), i != j, of atoms of one molecule, so a
graph stores those pairs once with a type per pair:

- 0 for a pair that is not local (it is a global edge when its atoms are within the cutoff);
- ``int(rdkit BondType) + 1`` for a bond (single 2, double 3, triple 4, aromatic 13), the
  numbering of the GeoDiff code;
- ``NUM_BOND_TYPES + hops - 1`` for atoms ``hops`` bonds apart (23 for 2, 24 for 3).

Molecules of different sizes batch by concatenation: ``batch[i]`` is the molecule of atom i.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields

import numpy as np
import torch

# RDKit's BondType enum has 22 members (UNSPECIFIED .. ZERO); GeoDiff gives extended edges the
# types after them.
NUM_BOND_TYPES = 22


def hop_edge_type(hops: int) -> int:
    """The pair type of atoms ``hops`` >= 2 bonds apart."""
    return NUM_BOND_TYPES + hops - 1


@dataclass(frozen=True)
class MoleculeGraph:
    """One molecule or a batch of them. Index tensors are int64; atoms of one molecule are
    contiguous.

    ``atom_type`` (N,): atomic numbers. ``bond_index`` (2, B) and ``bond_type`` (B,): every bond in
    both directions. ``pair_index`` (2, P) and ``pair_type`` (P,): every ordered pair of distinct
    atoms of one molecule, typed as the module docstring says. ``batch`` (N,): molecule of each
    atom. ``num_graphs``: molecules in the batch."""

    atom_type: torch.Tensor
    bond_index: torch.Tensor
    bond_type: torch.Tensor
    pair_index: torch.Tensor
    pair_type: torch.Tensor
    batch: torch.Tensor
    num_graphs: int

    @property
    def num_atoms(self) -> int:
        return int(self.atom_type.shape[0])

    @property
    def atoms_per_graph(self) -> torch.Tensor:
        """(num_graphs,) atom counts."""
        return torch.bincount(self.batch, minlength=self.num_graphs)

    @property
    def local_mask(self) -> torch.Tensor:
        """(P,) True for local pairs: bonds and neighbours up to the edge order apart."""
        return self.pair_type > 0

    def to(self, device: torch.device | str) -> MoleculeGraph:
        return MoleculeGraph(**{f.name: _moved(getattr(self, f.name), device)
                                for f in fields(self)})

    def repeat(self, copies: int) -> MoleculeGraph:
        """A batch of ``copies`` copies of this graph (e.g. one per conformer to generate)."""
        return batch_graphs([self] * copies)


def _moved(value, device):
    return value.to(device) if isinstance(value, torch.Tensor) else value


def batch_graphs(graphs: Sequence[MoleculeGraph]) -> MoleculeGraph:
    """Concatenate graphs into one batch, shifting atom indices; graph k's molecules keep their
    order after those of graphs 0..k-1."""
    offsets = np.cumsum([0] + [g.num_atoms for g in graphs[:-1]])
    graph_offsets = np.cumsum([0] + [g.num_graphs for g in graphs[:-1]])
    return MoleculeGraph(
        atom_type=torch.cat([g.atom_type for g in graphs]),
        bond_index=torch.cat([g.bond_index + int(o) for g, o in zip(graphs, offsets)], dim=1),
        bond_type=torch.cat([g.bond_type for g in graphs]),
        pair_index=torch.cat([g.pair_index + int(o) for g, o in zip(graphs, offsets)], dim=1),
        pair_type=torch.cat([g.pair_type for g in graphs]),
        batch=torch.cat([g.batch + int(o) for g, o in zip(graphs, graph_offsets)]),
        num_graphs=sum(g.num_graphs for g in graphs),
    )


def graph_from_arrays(atomic_numbers: np.ndarray, bonds: np.ndarray, bond_types: np.ndarray,
                      hops: np.ndarray, edge_order: int = 3) -> MoleculeGraph:
    """A one-molecule graph from plain arrays: atomic numbers (n,), bonds (B, 2) each once,
    their RDKit ``BondType`` values (B,), and the (n, n) matrix of bond counts between atoms
    (the topological distance; anything > n for atoms not connected)."""
    n = len(atomic_numbers)
    bonds = np.asarray(bonds, dtype=np.int64).reshape(-1, 2)
    bond_types = np.asarray(bond_types, dtype=np.int64) + 1
    i, j = np.nonzero(~np.eye(n, dtype=bool))
    pair_hops = np.asarray(hops)[i, j]
    pair_type = np.where((pair_hops >= 2) & (pair_hops <= edge_order),
                         NUM_BOND_TYPES + pair_hops - 1, 0).astype(np.int64)
    bond_lookup = np.zeros((n, n), dtype=np.int64)
    bond_lookup[bonds[:, 0], bonds[:, 1]] = bond_types
    bond_lookup[bonds[:, 1], bonds[:, 0]] = bond_types
    pair_type = np.where(pair_hops == 1, bond_lookup[i, j], pair_type)
    both = np.concatenate([bonds, bonds[:, ::-1]]).T
    return MoleculeGraph(
        atom_type=torch.as_tensor(np.asarray(atomic_numbers, dtype=np.int64)),
        bond_index=torch.as_tensor(np.ascontiguousarray(both)),
        bond_type=torch.as_tensor(np.concatenate([bond_types, bond_types])),
        pair_index=torch.as_tensor(np.stack([i, j]).astype(np.int64)),
        pair_type=torch.as_tensor(pair_type),
        batch=torch.zeros(n, dtype=torch.int64),
        num_graphs=1,
    )
