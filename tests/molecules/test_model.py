"""GeoDiffModel: E(3) equivariance, permutation equivariance, batching, the diffusers file format
and its input checks."""

import json

import pytest
import torch
from diffusion_kernel import registry
from diffusion_kernel.errors import ConfigError, ModelInputError
from diffusion_kernel_molecules.graph import batch_graphs
from diffusion_kernel_molecules.models.geodiff import GeoDiffModel

SMILES = "CC(=O)Nc1ccc(O)cc1"  # paracetamol: a ring, a chain, three elements besides H


@pytest.fixture
def processor():
    return registry.processors.get("MoleculeProcessor")()


def random_rotation(generator) -> torch.Tensor:
    q, r = torch.linalg.qr(torch.randn(3, 3, generator=generator, dtype=torch.float64))
    q = q * torch.sign(torch.diagonal(r))
    return q if torch.det(q) > 0 else -q


def noisy_positions(graph, seed=0, scale=1.5) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(graph.num_atoms, 3, generator=g, dtype=torch.float64) * scale


def test_registered_under_its_names():
    assert registry.models.get("GeoDiffModel") is GeoDiffModel
    assert registry.models.get("geodiff") is GeoDiffModel


@pytest.mark.parametrize("global_branch", [True, False])
def test_rotating_and_translating_the_input_rotates_the_noise(tiny_model, processor,
                                                              global_branch):
    model, graph = tiny_model.double(), processor.preprocess(SMILES)
    pos = noisy_positions(graph)
    g = torch.Generator().manual_seed(1)
    rotation, shift = random_rotation(g), torch.randn(3, generator=g, dtype=torch.float64) * 5
    out = model(pos, graph, 0.7, global_branch=global_branch).sample
    moved = model(pos @ rotation.T + shift, graph, 0.7, global_branch=global_branch).sample
    assert out.abs().max() > 1e-2  # a real, non-zero field
    assert (moved - out @ rotation.T).abs().max() < 1e-5


def test_float32_equivariance_error_is_below_1e_5(tiny_model, processor):
    graph = processor.preprocess(SMILES)
    pos = noisy_positions(graph).float()
    rotation = random_rotation(torch.Generator().manual_seed(2)).float()
    out = tiny_model(pos, graph, 0.7).sample
    moved = tiny_model(pos @ rotation.T + torch.tensor([3.0, -2.0, 1.0]), graph, 0.7).sample
    assert (moved - out @ rotation.T).abs().max() < 1e-5


def test_permuting_atoms_permutes_the_output(tiny_model, processor):
    from rdkit import Chem

    mol = processor.molecule(SMILES)
    order = torch.randperm(mol.GetNumAtoms(), generator=torch.Generator().manual_seed(3))
    permuted = Chem.RenumberAtoms(mol, order.tolist())  # new atom k is old atom order[k]
    graph, graph_p = processor.graph(mol), processor.graph(permuted)
    assert torch.equal(graph_p.atom_type, graph.atom_type[order])
    model = tiny_model.double()
    pos = noisy_positions(graph)
    out, out_p = model(pos, graph, 0.7).sample, model(pos[order], graph_p, 0.7).sample
    assert (out_p - out[order]).abs().max() < 1e-10


def test_a_batch_of_different_molecules_equals_them_one_by_one(tiny_model, processor):
    smiles = ["CCO", SMILES, "OCC(F)(F)C(F)F"]
    graphs = [processor.preprocess(s) for s in smiles]
    positions = [noisy_positions(g, seed=k) for k, g in enumerate(graphs)]
    model = tiny_model.double()
    sigmas = torch.tensor([0.3, 1.0, 2.5], dtype=torch.float64)  # one noise level per molecule
    batched = model(torch.cat(positions), batch_graphs(graphs), sigmas)
    alone = [model(p, g, s) for p, g, s in zip(positions, graphs, sigmas)]
    for name in ("sample", "local_sample", "global_sample"):
        expected = torch.cat([getattr(a, name) for a in alone])
        assert (getattr(batched, name) - expected).abs().max() < 1e-10


def test_the_output_has_no_net_translation(tiny_model, processor):
    graph = processor.preprocess(SMILES)
    out = tiny_model.double()(noisy_positions(graph), graph, 0.7).sample
    assert out.sum(0).abs().max() < 1e-10  # pair terms cancel: eps is centroid-free


def test_the_noise_level_divides_the_output(tiny_model, processor):
    graph = processor.preprocess("CCO")
    pos = noisy_positions(graph)
    model = tiny_model.double()
    assert torch.allclose(model(pos, graph, 0.5).sample, 2 * model(pos, graph, 1.0).sample)
    with pytest.raises(ModelInputError, match="one positive noise level or one per molecule"):
        model(pos, graph, torch.tensor([1.0, 2.0]))
    with pytest.raises(ModelInputError, match="positive"):
        model(pos, graph, 0.0)


def test_the_global_term_joins_below_global_start_sigma(processor):
    torch.manual_seed(0)
    model = GeoDiffModel(hidden_dim=16, num_convs=2, num_convs_local=2,
                         global_start_sigma=0.5).double()
    graphs = [processor.preprocess(s) for s in ("CCO", "CC(=O)O")]
    positions = [noisy_positions(g, seed=k) for k, g in enumerate(graphs)]
    assert model(positions[0], graphs[0], 1.0).global_sample is None
    assert model(positions[0], graphs[0], 0.3).global_sample.abs().max() > 0
    forced = model(positions[0], graphs[0], 1.0, global_branch=True).global_sample
    assert forced is not None
    # a batch at two noise levels: only the quieter molecule gets the term
    batched = model(torch.cat(positions), batch_graphs(graphs),
                    torch.tensor([0.3, 1.0], dtype=torch.float64))
    n = graphs[0].num_atoms
    assert (batched.sample[:n] - model(positions[0], graphs[0], 0.3).sample).abs().max() < 1e-10
    assert (batched.sample[n:] - model(positions[1], graphs[1], 1.0).sample).abs().max() < 1e-10
    assert batched.global_sample[n:].abs().max() == 0


def test_saved_in_the_diffusers_layout_and_loaded_back(tiny_model, processor, tmp_path):
    tiny_model.save_pretrained(tmp_path / "model")
    config = json.loads((tmp_path / "model" / "config.json").read_text())
    assert config["_class_name"] == "GeoDiffModel"
    assert {k: config[k] for k in ("hidden_dim", "num_convs", "num_convs_local", "cutoff",
                                   "mlp_act", "edge_order", "edge_encoder", "smooth_conv")} == \
        {"hidden_dim": 16, "num_convs": 2, "num_convs_local": 2, "cutoff": 10.0,
         "mlp_act": "relu", "edge_order": 3, "edge_encoder": "mlp", "smooth_conv": True}
    assert (tmp_path / "model" / "diffusion_pytorch_model.safetensors").is_file()
    loaded = GeoDiffModel.from_pretrained(tmp_path / "model")
    graph = processor.preprocess("CCO")
    pos = noisy_positions(graph).float()
    assert torch.equal(loaded(pos, graph, 0.7).sample, tiny_model(pos, graph, 0.7).sample)


def test_an_untrained_element_is_refused(tiny_model, processor):
    graph = processor.preprocess("CCS")
    with pytest.raises(ModelInputError, match=r"trained on the elements \['H', 'C', 'N', 'O', "
                                              r"'F'\] only; the molecule contains \['S'\]"):
        tiny_model(torch.zeros(graph.num_atoms, 3), graph, 1.0)


def test_positions_of_the_wrong_shape_are_refused(tiny_model, processor):
    graph = processor.preprocess("CCO")
    with pytest.raises(ModelInputError, match=r"do not fit a graph of 9 atoms"):
        tiny_model(torch.zeros(8, 3), graph, 1.0)


def test_an_unknown_edge_encoder_is_a_config_error():
    with pytest.raises(ConfigError, match="edge_encoder 'gaussian' is not available"):
        GeoDiffModel(edge_encoder="gaussian")
