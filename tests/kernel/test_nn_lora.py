"""The kernel's LoRA adapters (diffusion_kernel.nn.lora) on plain torch layers: the update they
add, fusing, training only the adapter, what state dicts and saved models hold, bad shapes."""

import copy

import pytest
import torch
from diffusion_kernel.errors import CheckpointError, ConfigError
from diffusion_kernel.nn import lora
from torch import nn
from torch.nn import functional as F


class Toy(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.proj = nn.Linear(6, 5)
        self.conv1d = nn.Conv1d(3, 4, 3, padding=1)
        self.conv3d = nn.Conv3d(2, 3, 3, stride=2, padding=1)

    def forward(self, x, y, z):
        return self.proj(x), self.conv1d(y), self.conv3d(z)


def assert_close(got, expected, atol=1e-5):
    # (torch.testing.assert_close imports torch.distributed on first use: seconds)
    assert torch.allclose(got, expected, atol=atol, rtol=1e-5), (got - expected).abs().max()


def inputs():
    generator = torch.Generator().manual_seed(1)
    return (torch.randn(2, 6, generator=generator), torch.randn(2, 3, 7, generator=generator),
            torch.randn(1, 2, 5, 5, 5, generator=generator))


def weights(model, rank=2, alpha=4.0, seed=2):
    generator = torch.Generator().manual_seed(seed)
    found = {}
    for path in ("proj", "conv1d", "conv3d"):
        weight = model.get_submodule(path).weight
        found[path] = lora.LoRAWeights(
            torch.randn(rank, *weight.shape[1:], generator=generator),
            torch.randn(weight.shape[0], rank, *(1,) * (weight.ndim - 2), generator=generator),
            alpha)
    return found


def test_the_update_is_alpha_over_rank_times_b_a_for_linear_and_convolutions():
    model, plain = Toy(), Toy()
    given = weights(model)
    lora.inject_lora(model, "a", given)
    x, y, z = inputs()
    out = model(x, y, z)
    delta = {p: (w.up.flatten(1) @ w.down.flatten(1)).view_as(model.get_submodule(p).weight) * 2
             for p, w in given.items()}
    assert_close(out[0], F.linear(x, plain.proj.weight + delta["proj"],
                                                plain.proj.bias))
    assert_close(out[1], F.conv1d(y, plain.conv1d.weight + delta["conv1d"],
                                                plain.conv1d.bias, padding=1))
    assert_close(out[2], F.conv3d(z, plain.conv3d.weight + delta["conv3d"],
                                                plain.conv3d.bias, stride=2, padding=1))


def test_fusing_matches_unfused_and_unfusing_restores_the_weights():
    model = Toy()
    before = copy.deepcopy(model.state_dict())
    lora.inject_lora(model, "a", weights(model))
    lora.set_lora_adapters(model, ["a"], [0.5])
    with lora.lora_call_scale(model, 0.3):
        unfused = model(*inputs())
    assert lora.fuse_lora(model, lora_scale=0.3) == ["a"]
    for got, expected in zip(model(*inputs()), unfused):
        assert_close(got, expected)
    lora.unfuse_lora(model)
    lora.unload_lora(model)
    assert type(model.proj) is nn.Linear and not hasattr(model.proj, "lora_A")
    for key, value in before.items():
        assert (model.state_dict()[key] - value).abs().max() <= 1e-6, key


def test_training_an_added_adapter_changes_only_the_adapter():
    model = Toy()
    before = copy.deepcopy(model.state_dict())
    layers = lora.add_lora(model, "trained", rank=2, target_modules=("proj", "conv1d"))
    assert layers == ["proj", "conv1d"]
    for got, expected in zip(model(*inputs()), Toy()(*inputs())):  # B = 0: unchanged
        assert_close(got, expected)
    model.requires_grad_(False)
    params = lora.lora_parameters(model, "trained")
    for p in params:
        p.requires_grad_(True)
    for _ in range(2):  # plain gradient descent (a torch optimizer imports torch._dynamo)
        loss = sum(o.square().mean() for o in model(*inputs()))
        loss.backward()
        with torch.no_grad():
            for p in params:
                p -= 0.1 * p.grad
                p.grad = None
    state = model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in before.items())
    assert lora.lora_state_dict(model, "trained")["proj.lora_B.weight"].abs().max() > 0
    assert set(lora.lora_state_dict(model, "trained")) == {
        "proj.lora_A.weight", "proj.lora_B.weight", "conv1d.lora_A.weight",
        "conv1d.lora_B.weight"}


def test_state_dicts_hold_adapters_unless_excluded_and_copies_work():
    model = Toy()
    lora.inject_lora(model, "a", weights(model))
    assert "proj.lora_A.a" in model.state_dict()
    with lora.lora_excluded_from_state_dict(model):
        assert set(model.state_dict()) == set(Toy().state_dict())
    assert "proj.lora_A.a" in model.state_dict()  # only while the block runs
    clone = copy.deepcopy(model)
    for got, expected in zip(clone(*inputs()), model(*inputs())):
        assert_close(got, expected)


def test_disable_delete_and_order_of_active_adapters():
    model = Toy()
    lora.inject_lora(model, "a", weights(model, seed=2))
    lora.inject_lora(model, "b", weights(model, seed=3))
    assert lora.active_lora_adapters(model) == ["b"]
    lora.set_lora_adapters(model, ["b", "a"], [1.0, 0.5])
    assert lora.active_lora_adapters(model) == ["b", "a"]
    lora.enable_lora(model, False)
    assert_close(model(*inputs())[0], Toy()(*inputs())[0])
    lora.enable_lora(model, True)
    lora.delete_lora_adapter(model, "b")
    assert lora.list_lora_adapters(model) == ["a"]


def test_bad_weights_and_names_are_refused_before_any_change():
    model = Toy()
    bad = weights(model)
    bad["conv3d"] = lora.LoRAWeights(torch.zeros(2, 2, 1, 1, 1), torch.zeros(3, 2, 1, 1, 1))
    with pytest.raises(CheckpointError, match="conv3d"):
        lora.inject_lora(model, "a", bad)
    assert lora.list_lora_adapters(model) == [] and type(model.proj) is nn.Linear
    with pytest.raises(ConfigError, match="'.'"):
        lora.inject_lora(model, "a.b", weights(model))
    with pytest.raises(ConfigError, match="Module attribute"):
        lora.inject_lora(model, "train", weights(model))
    lora.inject_lora(model, "a", weights(model))
    with pytest.raises(ConfigError, match="already in use"):
        lora.inject_lora(model, "a", weights(model))
    with pytest.raises(ConfigError, match="no Linear or Conv"):
        lora.add_lora(model, "c", rank=2, target_modules=("missing",))
