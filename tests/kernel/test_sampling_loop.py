"""The sampling-loop helpers every pipeline uses: a scheduler's optional step arguments, the
tensor inside a model's output, and the loop's context (inference mode, models' conditioning
reuse, ordinary tensors out)."""

import contextlib

import pytest
import torch
from diffusion_kernel.base_output import BaseOutput
from diffusion_kernel.nn import activate_fresh
from diffusion_kernel.sampling_loop import ordinary, sample_of, sampling, step_kwargs
from torch import nn


class _Deterministic:
    def step(self, model_output, timestep, sample, return_dict=True):
        return sample


class _Stochastic:
    def step(self, model_output, timestep, sample, eta=0.0, generator=None, return_dict=True):
        return sample


def test_step_kwargs_gives_only_what_the_step_names_and_drops_none():
    g = torch.Generator().manual_seed(0)
    assert step_kwargs(_Deterministic(), g, eta=0.5) == {}
    assert step_kwargs(_Stochastic(), g, eta=0.5) == {"generator": g, "eta": 0.5}
    assert step_kwargs(_Stochastic(), None, eta=None) == {}
    assert step_kwargs(_Stochastic(), g, unknown=1, eta=0.0) == {"generator": g, "eta": 0.0}


def test_sample_of_reads_tensors_outputs_and_tuples():
    from dataclasses import dataclass

    @dataclass
    class Out(BaseOutput):
        sample: torch.Tensor | None = None

    x = torch.arange(3.0)
    assert sample_of(x) is x
    assert sample_of(Out(sample=x)) is x
    assert sample_of((x, torch.zeros(1))) is x


def test_step_kwargs_follows_a_step_replaced_on_the_instance():
    scheduler = _Deterministic()
    assert step_kwargs(scheduler, torch.Generator()) == {}
    scheduler.step = _Stochastic().step  # the cached signature is the function's, not the class's
    assert set(step_kwargs(scheduler, torch.Generator(), eta=0.1)) == {"generator", "eta"}


class _Reuser(nn.Module):
    def __init__(self):
        super().__init__()
        self.entered = self.exited = 0

    @contextlib.contextmanager
    def reuse_conditioning(self):
        self.entered += 1
        try:
            yield
        finally:
            self.exited += 1


def test_sampling_runs_in_inference_mode_enters_reuse_and_ordinary_gives_a_plain_tensor():
    model, plain = _Reuser(), nn.Linear(2, 2)  # the second has no reuse_conditioning
    with sampling(model, plain):
        assert torch.is_inference_mode_enabled() and model.entered == 1 and model.exited == 0
        made = plain(torch.ones(1, 2))
    assert model.exited == 1 and not torch.is_inference_mode_enabled()
    assert made.is_inference()
    with pytest.raises(RuntimeError, match="[Ii]nference"):
        made.add_(1)
    out = ordinary(made)
    assert not out.is_inference() and torch.equal(out, made)
    out.add_(1)  # an ordinary tensor: in place works, and autograd can use it
    w = torch.ones(2, requires_grad=True)
    (out * w).sum().backward()
    assert torch.equal(w.grad, out.detach().sum(0))
    ordinary_already = torch.zeros(2)
    assert ordinary(ordinary_already) is ordinary_already


@pytest.mark.parametrize("activation", [nn.GELU(), nn.GELU(approximate="tanh"), nn.SiLU(),
                                        nn.Mish(), nn.ReLU()])
def test_activate_fresh_matches_the_module_bit_for_bit_in_place_only_without_gradients(
        activation):
    torch.manual_seed(0)
    x = torch.randn(2, 8, 5, 7) * 3
    for layout in (torch.contiguous_format, torch.channels_last):
        fresh = x.contiguous(memory_format=layout)
        expected = activation(fresh)
        with torch.no_grad():
            got = activate_fresh(activation, fresh.clone())
            same = fresh.clone()
            assert activate_fresh(activation, same) is same  # written in place
        assert torch.equal(got, expected) and got.stride() == expected.stride()
    # with gradients: the plain call (the backward needs the input), gradients flow
    leaf = x.clone().requires_grad_()
    y = leaf * 1.0
    out = activate_fresh(activation, y)
    assert out is not y
    out.sum().backward()
    assert leaf.grad is not None and leaf.grad.abs().sum() > 0
