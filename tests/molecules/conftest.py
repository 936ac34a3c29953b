"""Fixtures of the molecule tests: a tiny GeoDiffModel, its pipeline, a small reference set."""

import pytest
import torch
from diffusion_kernel import registry


@pytest.fixture
def tiny_model():
    """A small random GeoDiffModel for H, C, N, O, F (seeded)."""
    torch.manual_seed(0)
    model = registry.models.get("GeoDiffModel")(hidden_dim=16, num_convs=2, num_convs_local=2,
                                                elements=[1, 6, 7, 8, 9])
    return model.eval()


@pytest.fixture
def geodiff_scheduler():
    return registry.schedulers.get("DDPMScheduler")(
        num_train_timesteps=5000, beta_schedule="sigmoid", beta_start=1e-7, beta_end=2e-3,
        clip_sample=False)


@pytest.fixture
def tiny_pipeline(tiny_model, geodiff_scheduler):
    pipe = registry.pipelines.get("MoleculeConformerPipeline")(model=tiny_model,
                                                                scheduler=geodiff_scheduler)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="session")
def small_references():
    """Reference ensembles of three small NCI molecules (4 embeddings each)."""
    from diffusion_kernel_molecules.datasets import ConformerSet, reference_conformers

    return ConformerSet([reference_conformers(s, num_embeddings=4)
                         for s in ("CCO", "CC(=O)N(C)C", "OCC(F)(F)C(F)F")])
