"""GeoDiff's building blocks in plain torch (Xu et al. 2022, sec. 4.2 and appendix): an edge
encoder, the SchNet-style global encoder (Schütt et al. 2017, continuous-filter convolutions) and
the GIN-style local encoder (Xu et al. 2019, with edge features as in Hu et al. 2020).

Messages run over an edge list ``index`` (2, E): edge e carries information from atom
``index[1, e]`` (j) to atom ``index[0, e]`` (i), summed at i with ``index_add_``. Module and
parameter names follow the GeoDiff notebook's ``MoleculeGNN`` where they correspond.
"""

from __future__ import annotations

import math

import torch
from diffusion_kernel.nn.activations import get_activation
from torch import nn
from torch.nn import functional as F

# Atoms are embedded by atomic number, edges by pair type (graph.py): both tables have 100 rows,
# as in GeoDiff.
NUM_EMBEDDINGS = 100


def aggregate(messages: torch.Tensor, targets: torch.Tensor, num_atoms: int) -> torch.Tensor:
    """Sum the (E, F) ``messages`` into their target atoms: (num_atoms, F)."""
    out = messages.new_zeros((num_atoms, messages.shape[1]))
    return out.index_add_(0, targets, messages)


class MultiLayerPerceptron(nn.Module):
    """Linear layers with an activation between them (none after the last)."""

    def __init__(self, input_dim: int, hidden_dims: list[int], activation: str = "relu"):
        super().__init__()
        dims = [input_dim, *hidden_dims]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))
        self.activation = get_activation(activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for k, layer in enumerate(self.layers):
            x = layer(x)
            if k < len(self.layers) - 1:
                x = self.activation(x)
        return x


class MLPEdgeEncoder(nn.Module):
    """e_ij = MLP(d_ij) * Embedding(type_ij): an edge feature from its length and its type."""

    def __init__(self, hidden_dim: int, activation: str = "relu"):
        super().__init__()
        self.bond_emb = nn.Embedding(NUM_EMBEDDINGS, hidden_dim)
        self.mlp = MultiLayerPerceptron(1, [hidden_dim, hidden_dim], activation)

    def forward(self, edge_length: torch.Tensor, edge_type: torch.Tensor) -> torch.Tensor:
        return self.mlp(edge_length.unsqueeze(-1)) * self.bond_emb(edge_type)


class ShiftedSoftplus(nn.Module):
    """softplus(x) - log 2 (SchNet): zero at zero, smooth."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.softplus(x) - math.log(2.0)


class CFConv(nn.Module):
    """Continuous-filter convolution: h_i' = W2 sum_j (W1 h_j) * filter(e_ij) * C(d_ij), with the
    cosine cutoff C(d) = (cos(pi d / cutoff) + 1) / 2 for d <= cutoff (``smooth``), else 1."""

    def __init__(self, hidden_dim: int, num_filters: int, cutoff: float, smooth: bool):
        super().__init__()
        self.lin1 = nn.Linear(hidden_dim, num_filters, bias=False)
        self.lin2 = nn.Linear(num_filters, hidden_dim)
        self.nn = nn.Sequential(nn.Linear(hidden_dim, num_filters), ShiftedSoftplus(),
                                nn.Linear(num_filters, num_filters))
        self.cutoff = cutoff
        self.smooth = smooth

    def forward(self, h, index, edge_length, edge_attr):
        inside = (edge_length <= self.cutoff).to(h.dtype)
        if self.smooth:
            inside = inside * 0.5 * (torch.cos(edge_length * math.pi / self.cutoff) + 1.0)
        weights = self.nn(edge_attr) * inside.unsqueeze(-1)
        messages = self.lin1(h)[index[1]] * weights
        return self.lin2(aggregate(messages, index[0], h.shape[0]))


class InteractionBlock(nn.Module):
    """One SchNet interaction: CFConv, shifted softplus, linear (added to h by the encoder)."""

    def __init__(self, hidden_dim: int, num_filters: int, cutoff: float, smooth: bool):
        super().__init__()
        self.conv = CFConv(hidden_dim, num_filters, cutoff, smooth)
        self.act = ShiftedSoftplus()
        self.lin = nn.Linear(hidden_dim, hidden_dim)

    def forward(self, h, index, edge_length, edge_attr):
        return self.lin(self.act(self.conv(h, index, edge_length, edge_attr)))


class SchNetEncoder(nn.Module):
    """Global encoder: atom embeddings refined by residual interaction blocks over the radius
    graph."""

    def __init__(self, hidden_dim: int, num_interactions: int, cutoff: float, smooth: bool):
        super().__init__()
        self.embedding = nn.Embedding(NUM_EMBEDDINGS, hidden_dim)
        self.interactions = nn.ModuleList(
            InteractionBlock(hidden_dim, hidden_dim, cutoff, smooth)
            for _ in range(num_interactions))

    def forward(self, atom_type, index, edge_length, edge_attr):
        h = self.embedding(atom_type)
        for interaction in self.interactions:
            h = h + interaction(h, index, edge_length, edge_attr)
        return h


class GINEConv(nn.Module):
    """h_i' = MLP(h_i + sum_j act(h_j + e_ij)): graph isomorphism convolution with edge
    features."""

    def __init__(self, hidden_dim: int, activation: str = "relu"):
        super().__init__()
        self.nn = MultiLayerPerceptron(hidden_dim, [hidden_dim, hidden_dim], activation)
        self.activation = get_activation(activation)

    def forward(self, h, index, edge_attr):
        messages = self.activation(h[index[1]] + edge_attr)
        return self.nn(h + aggregate(messages, index[0], h.shape[0]))


class GINEncoder(nn.Module):
    """Local encoder: residual GIN convolutions over the extended bond graph."""

    def __init__(self, hidden_dim: int, num_convs: int, activation: str = "relu"):
        super().__init__()
        self.node_emb = nn.Embedding(NUM_EMBEDDINGS, hidden_dim)
        self.convs = nn.ModuleList(GINEConv(hidden_dim, activation) for _ in range(num_convs))
        self.activation = get_activation(activation)

    def forward(self, atom_type, index, edge_attr):
        h = self.node_emb(atom_type)
        for k, conv in enumerate(self.convs):
            out = conv(h, index, edge_attr)
            if k < len(self.convs) - 1:
                out = self.activation(out)
            h = h + out
        return h
