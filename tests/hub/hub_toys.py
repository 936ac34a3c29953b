"""Tiny model, scheduler and pipeline classes for the Hub tests, registered as an in-process
plugin (the way a third-party package would register its classes)."""

from __future__ import annotations

import torch
from diffusion_kernel import hookimpl
from diffusion_kernel.modeling import ModelMixin
from diffusion_kernel.pipelines import DiffusionPipeline
from diffusion_kernel.scheduling import SchedulerMixin
from torch import nn


class HubToyModel(ModelMixin):
    """A linear layer and a norm: enough parameters to check that weights travel intact."""

    def __init__(self, in_features: int = 4, out_features: int = 3, scale: float = 1.0):
        super().__init__()
        self.proj = nn.Linear(in_features, out_features)
        self.norm = nn.LayerNorm(out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(x)) * self.config.scale


class HubToyScheduler(SchedulerMixin):
    """A config-only scheduler: a linear beta schedule."""

    def __init__(self, num_train_timesteps: int = 10, beta_start: float = 0.001,
                 beta_end: float = 0.02, prediction_type: str = "epsilon"):
        self.betas = torch.linspace(beta_start, beta_end, num_train_timesteps)


class HubToyPipeline(DiffusionPipeline):
    """A pipeline of one model and one scheduler."""

    def __init__(self, unet: HubToyModel, scheduler: HubToyScheduler):
        self.register_modules(unet=unet, scheduler=scheduler)


class HubToysPlugin:
    @hookimpl
    def register_models(self, register):
        register(HubToyModel)

    @hookimpl
    def register_schedulers(self, register):
        register(HubToyScheduler)

    @hookimpl
    def register_pipelines(self, register):
        register(HubToyPipeline)


def toy_model(seed: int = 0, **config) -> HubToyModel:
    """A HubToyModel with distinct, seeded weights (so two versions differ)."""
    torch.manual_seed(seed)
    model = HubToyModel(**config)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_()
    return model


def same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
