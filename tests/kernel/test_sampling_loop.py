"""The sampling-loop helpers every pipeline uses: a scheduler's optional step arguments and the
tensor inside a model's output."""

import torch
from diffusion_kernel.base_output import BaseOutput
from diffusion_kernel.sampling_loop import sample_of, step_kwargs


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
