"""GeoDiffModel: the dual-encoder noise network of GeoDiff (Xu et al. 2022, "GeoDiff: a Geometric
Diffusion Model for Molecular Conformation Generation", sec. 4.2), in plain torch.

Two branches read a molecule's atoms and the distances between them:

- local: a GIN encoder over the bond graph extended to ``edge_order`` bonds (bond lengths,
  angles, torsions);
- global: a SchNet encoder over every pair closer than ``cutoff`` Å.

Each branch turns its node features into one invariant scalar per edge,
s_ij = MLP([h_i * h_j, e_ij]), and the scalars into an equivariant noise estimate per atom
(eq. 5-7):

    eps_i = sum_j (x_i - x_j) / d_ij * s_ij

Distances, types and products of node features are invariant under rotations, translations and
reorderings of the atoms; the difference vectors rotate with the molecule. So eps rotates with
the input, ignores translations and follows any permutation of the atoms.

As in the paper, the networks take no timestep: they read the noise from the geometry. The noise
level sigma (Å) of the positions only scales the output, s_ij = MLP(...) / sigma, the NCSNv2
parameterisation (Song & Ermon 2020, sec. 3.3) that the GeoDiff code applies in its score-matching
variant: the networks then estimate the displacement sigma * eps, a function of the geometry
alone (how far each bond, angle and pair is from where it belongs), and dividing by sigma gives
eps at every noise level.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from diffusion_kernel.errors import ConfigError, ModelInputError
from diffusion_kernel.modeling import ModelMixin
from diffusion_kernel.nn.outputs import ModelOutput

from ..graph import MoleculeGraph
from .encoders import GINEncoder, MLPEdgeEncoder, MultiLayerPerceptron, SchNetEncoder, aggregate

EDGE_ENCODERS = ("mlp",)


@dataclass
class GeoDiffModelOutput(ModelOutput):
    """``sample``: (N, 3) noise estimate, local + global term; ``local_sample`` and
    ``global_sample``: the two terms (``global_sample`` is None when the global branch was
    skipped), which samplers weigh and clip on their own (GeoDiff's ``w_global``)."""

    sample: torch.Tensor
    local_sample: torch.Tensor | None = None
    global_sample: torch.Tensor | None = None


@dataclass
class PairGeometry:
    """Difference vectors x_i - x_j (P, 3) and lengths (P,) of a graph's atom pairs."""

    vectors: torch.Tensor
    lengths: torch.Tensor


def pair_geometry(pos: torch.Tensor, graph: MoleculeGraph) -> PairGeometry:
    i, j = graph.pair_index
    vectors = pos[i] - pos[j]
    return PairGeometry(vectors, vectors.norm(dim=-1))


def eq_transform(scores: torch.Tensor, vectors: torch.Tensor, lengths: torch.Tensor,
                 targets: torch.Tensor, num_atoms: int) -> torch.Tensor:
    """eps_i = sum_j (x_i - x_j) / d_ij * s_ij (GeoDiff eq. 7) over the edges given: (N, 3)."""
    # Coinciding atoms have no direction; their pair adds nothing instead of NaN.
    directions = vectors / lengths.clamp_min(1e-8).unsqueeze(-1)
    return aggregate(directions * scores.unsqueeze(-1), targets, num_atoms)


def global_edge_mask(lengths: torch.Tensor, graph: MoleculeGraph, cutoff: float) -> torch.Tensor:
    """(P,) pairs read by the global encoder: local pairs and every pair within ``cutoff``."""
    return graph.local_mask | (lengths <= cutoff)


class GeoDiffModel(ModelMixin):
    """``GeoDiffModel(hidden_dim=128, num_convs=6, num_convs_local=4, cutoff=10.0, ...)``;
    ``model(pos, graph, sigma).sample`` is the (N, 3) noise estimate for the atoms of ``graph``
    (a ``MoleculeGraph``, one molecule or a batch) at positions ``pos`` (N, 3) in Ångström that
    carry Gaussian noise of standard deviation ``sigma`` (Å; one value, or one per molecule).

    Config (the GeoDiff notebook's keys): ``hidden_dim``, ``num_convs`` (SchNet interactions),
    ``num_convs_local`` (GIN convolutions), ``cutoff`` (Å, the global radius graph),
    ``mlp_act``, ``edge_order`` (local edges reach this many bonds), ``edge_encoder`` ("mlp"),
    ``smooth_conv`` (cosine cutoff in the SchNet filters); and ``elements``: the atomic numbers the
    weights were trained on (None: no check), so that an untrained element is refused instead of
    read through an untrained embedding; ``global_start_sigma``: the noise level (Å) below which
    the global term was trained and is added (None: at every level)."""

    def __init__(self, hidden_dim: int = 128, num_convs: int = 6, num_convs_local: int = 4,
                 cutoff: float = 10.0, mlp_act: str = "relu", edge_order: int = 3,
                 edge_encoder: str = "mlp", smooth_conv: bool = True,
                 elements: list[int] | None = None, global_start_sigma: float | None = None):
        super().__init__()
        if edge_encoder not in EDGE_ENCODERS:
            raise ConfigError(f"edge_encoder {edge_encoder!r} is not available; use one of "
                              f"{list(EDGE_ENCODERS)}")
        self.edge_encoder_global = MLPEdgeEncoder(hidden_dim, mlp_act)
        self.edge_encoder_local = MLPEdgeEncoder(hidden_dim, mlp_act)
        self.encoder_global = SchNetEncoder(hidden_dim, num_convs, cutoff, smooth_conv)
        self.encoder_local = GINEncoder(hidden_dim, num_convs_local, mlp_act)
        head = [hidden_dim, hidden_dim // 2, 1]
        self.grad_global_dist_mlp = MultiLayerPerceptron(2 * hidden_dim, head, mlp_act)
        self.grad_local_dist_mlp = MultiLayerPerceptron(2 * hidden_dim, head, mlp_act)
        self.cutoff = float(cutoff)
        self.global_start_sigma = math.inf if global_start_sigma is None else global_start_sigma
        self.allowed = None if elements is None else torch.tensor(sorted(set(elements)))

    def check_elements(self, atom_type: torch.Tensor) -> None:
        """Raise ``ModelInputError`` naming any atomic number the weights were not trained on."""
        if self.allowed is None:
            return
        unknown = sorted(set(atom_type.unique().tolist()) - set(self.allowed.tolist()))
        if unknown:
            from rdkit import Chem

            table = Chem.GetPeriodicTable()
            names = [table.GetElementSymbol(int(z)) for z in unknown]
            known = [table.GetElementSymbol(int(z)) for z in self.allowed.tolist()]
            raise ModelInputError(f"this model was trained on the elements {known} only; the "
                                  f"molecule contains {names}. Use a model trained on them")

    def forward(self, pos: torch.Tensor, graph: MoleculeGraph, sigma: float | torch.Tensor,
                global_branch: bool | torch.Tensor | None = None,
                return_dict: bool = True) -> GeoDiffModelOutput | tuple:
        """Noise estimate at ``pos`` (N, 3) with noise level ``sigma`` (a number or a
        (num_graphs,) tensor). ``global_branch``: which molecules get the global term (a bool,
        or one per molecule); by default those with sigma below the config's
        ``global_start_sigma`` (GeoDiff's samplers add it only there; None: always). Returns
        ``GeoDiffModelOutput`` (a tuple with ``return_dict=False``); ``global_sample`` is None
        when no molecule has the global term."""
        if pos.shape != (graph.num_atoms, 3):
            raise ModelInputError(f"positions of shape {tuple(pos.shape)} do not fit a graph of "
                                  f"{graph.num_atoms} atoms; expected ({graph.num_atoms}, 3)")
        self.check_elements(graph.atom_type)
        sigma = self._per_graph_sigma(sigma, graph, pos)
        if global_branch is None:
            global_branch = sigma < self.global_start_sigma
        with_global = torch.as_tensor(global_branch, device=pos.device).expand(graph.num_graphs)
        geometry = pair_geometry(pos, graph)
        inverse_sigma = sigma.reciprocal()[graph.batch].unsqueeze(-1)
        local = self._local_term(graph, geometry) * inverse_sigma
        glob = None
        if bool(with_global.any()):
            glob = self._global_term(graph, geometry, with_global) * inverse_sigma
        sample = local if glob is None else local + glob
        output = GeoDiffModelOutput(sample, local, glob)
        return output if return_dict else output.to_tuple()

    @staticmethod
    def _per_graph_sigma(sigma, graph: MoleculeGraph, pos: torch.Tensor) -> torch.Tensor:
        sigma = torch.as_tensor(sigma, dtype=pos.dtype, device=pos.device).reshape(-1)
        if sigma.numel() not in (1, graph.num_graphs) or not bool((sigma > 0).all()):
            raise ModelInputError(f"sigma must be one positive noise level or one per molecule "
                                  f"({graph.num_graphs}), got {sigma.tolist()}")
        return sigma.expand(graph.num_graphs)

    def _local_term(self, graph: MoleculeGraph, geometry: PairGeometry) -> torch.Tensor:
        mask = graph.local_mask
        index, lengths = graph.pair_index[:, mask], geometry.lengths[mask]
        edge_attr = self.edge_encoder_local(lengths, graph.pair_type[mask])
        h = self.encoder_local(graph.atom_type, index, edge_attr)
        scores = self.grad_local_dist_mlp(torch.cat([h[index[0]] * h[index[1]], edge_attr], -1))
        return eq_transform(scores.squeeze(-1), geometry.vectors[mask], lengths, index[0],
                            graph.num_atoms)

    def _global_term(self, graph: MoleculeGraph, geometry: PairGeometry,
                     with_global: torch.Tensor) -> torch.Tensor:
        mask = global_edge_mask(geometry.lengths, graph, self.cutoff)
        if not bool(with_global.all()):  # only the molecules that get the term
            mask &= with_global[graph.batch[graph.pair_index[0]]]
        index, lengths = graph.pair_index[:, mask], geometry.lengths[mask]
        edge_types = graph.pair_type[mask]
        edge_attr = self.edge_encoder_global(lengths, edge_types)
        h = self.encoder_global(graph.atom_type, index, lengths, edge_attr)
        # The global term speaks for the pairs the local one does not cover (eq. 7).
        far = edge_types == 0
        index, edge_attr = index[:, far], edge_attr[far]
        scores = self.grad_global_dist_mlp(torch.cat([h[index[0]] * h[index[1]], edge_attr], -1))
        return eq_transform(scores.squeeze(-1), geometry.vectors[mask][far], lengths[far],
                            index[0], graph.num_atoms)
