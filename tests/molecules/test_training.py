"""The denoising objective and the training loop."""

import pytest
import torch
from diffusion_kernel.errors import ConfigError
from diffusion_kernel_molecules.training import (
    ConformerBatches,
    TrainConfig,
    antithetic_timesteps,
    centred,
    denoising_loss,
    low_noise_timesteps,
    train,
)


def test_timesteps_come_in_antithetic_pairs():
    t = antithetic_timesteps(6, 5000, torch.Generator().manual_seed(0))
    assert t.shape == (6,)
    assert torch.equal(t[4:6], 4999 - t[:2])  # 4 drawn, then their mirror images, cut to 6


def test_a_low_noise_fraction_redraws_the_last_timesteps_below_the_noise_level(
        geodiff_scheduler):
    abar = geodiff_scheduler.alphas_cumprod.double()
    sigma = ((1 - abar) / abar).sqrt()
    t = antithetic_timesteps(8, 5000, torch.Generator().manual_seed(0))
    assert torch.equal(low_noise_timesteps(t, abar, 0.0, 0.2), t)
    mixed = low_noise_timesteps(t, abar, 0.25, 0.2, torch.Generator().manual_seed(1))
    assert torch.equal(mixed[:6], t[:6])  # round(0.25 * 8) = 2 redrawn, the rest kept
    assert (sigma[mixed[6:]] < 0.2).all()
    draws = low_noise_timesteps(torch.zeros(4000, dtype=torch.long), abar, 1.0, 0.2,
                                torch.Generator().manual_seed(2))
    assert (sigma[draws] < 0.2).all() and sigma[draws].max() > 0.19  # the whole range below
    with pytest.raises(ConfigError, match="no training timestep has sigma below 0.001"):
        low_noise_timesteps(t, abar, 0.5, 0.001)


def test_centring_moves_each_molecule_to_its_centroid(processor_batch):
    graph, pos = processor_batch
    moved = centred(pos + torch.tensor([5.0, 0.0, -2.0]), graph)
    sums = torch.zeros(graph.num_graphs, 3).index_add_(0, graph.batch, moved)
    assert sums.abs().max() < 1e-4


def test_the_loss_is_zero_for_a_model_that_knows_the_noise(processor_batch, geodiff_scheduler):
    """A stand-in model that returns (x_t - x_0) / sigma, the noise itself, scores 0: the loss
    compares against exactly the noise that was added (centroid-free)."""
    graph, pos = processor_batch
    clean = centred(pos, graph)

    class Oracle(torch.nn.Module):
        def forward(self, noisy, graph, sigma):
            from types import SimpleNamespace

            return SimpleNamespace(sample=(noisy - clean) / sigma[graph.batch].unsqueeze(-1))

    loss = denoising_loss(Oracle(), graph, pos, geodiff_scheduler.alphas_cumprod,
                          torch.Generator().manual_seed(0))
    assert loss.item() < 1e-8


def test_a_few_steps_learn_more_than_predicting_zero(processor_batch, tiny_model,
                                                     geodiff_scheduler):
    graph, pos = processor_batch
    optimizer = torch.optim.Adam(tiny_model.parameters(), lr=3e-3)
    timesteps = torch.tensor([1500, 2500, 3500])  # the same noise levels and noise every step

    def loss_of(model):
        return denoising_loss(model, graph, pos, geodiff_scheduler.alphas_cumprod,
                              torch.Generator().manual_seed(0), timesteps)

    class Zero(torch.nn.Module):
        def forward(self, noisy, graph, sigma):
            from types import SimpleNamespace

            return SimpleNamespace(sample=torch.zeros_like(noisy))

    for _ in range(30):
        optimizer.zero_grad()
        loss_of(tiny_model).backward()
        torch.nn.utils.clip_grad_norm_(tiny_model.parameters(), 10.0)
        optimizer.step()
    assert loss_of(tiny_model).item() < 0.6 * loss_of(Zero()).item()


def test_train_saves_a_loadable_pipeline_with_the_data_elements(small_references, tmp_path):
    from diffusion_kernel.pipelines import DiffusionPipeline

    small_references.save(tmp_path / "refs.npz")
    config = TrainConfig(data=str(tmp_path / "refs.npz"), output_dir=str(tmp_path / "out"),
                         max_steps=2, batch_size=2, hidden_dim=8, num_convs=1,
                         num_convs_local=1, save_steps=1)
    logged = []
    train(config, log=logged.append)
    pipe = DiffusionPipeline.from_pretrained(tmp_path / "out")
    assert pipe.model.config.elements == (1, 6, 7, 8, 9)
    assert pipe.scheduler.config.beta_schedule == "sigmoid"
    assert pipe.scheduler.config.num_train_timesteps == 5000
    assert logged[-1].startswith("step 2 loss")
    from diffusion_kernel.hub import verify

    checks = verify(tmp_path / "out")  # two saves: the record matches every file, the state too
    assert checks and [c.describe() for c in checks if c.status != "ok"] == []


def test_bad_training_settings_are_refused(small_references, tmp_path):
    with pytest.raises(ConfigError, match="positive"):
        train(TrainConfig(data="x.npz", output_dir=str(tmp_path), max_steps=0))
    with pytest.raises(ConfigError, match="low_noise_fraction must be in"):
        train(TrainConfig(data="x.npz", output_dir=str(tmp_path), low_noise_fraction=1.5))


@pytest.fixture
def processor_batch(small_references):
    batches = ConformerBatches(small_references.molecules, 3, torch.Generator().manual_seed(1))
    return batches.sample(3)


def test_a_resumed_run_ends_where_an_uninterrupted_one_does(small_references, tmp_path):
    """Interrupted after the save at step 2 and resumed, a run reaches the same weights as one
    that was never stopped: the optimizer, EMA, schedule and batches all continue."""
    from diffusion_kernel.pipelines import DiffusionPipeline

    small_references.save(tmp_path / "refs.npz")
    settings = dict(data=str(tmp_path / "refs.npz"), max_steps=4, batch_size=2, hidden_dim=8,
                    num_convs=1, num_convs_local=1, save_steps=2, log_steps=1)
    train(TrainConfig(output_dir=str(tmp_path / "whole"), **settings), log=lambda line: None)

    def stop_at_step_3(line):
        if line.startswith("step 3 "):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(TrainConfig(output_dir=str(tmp_path / "split"), **settings), log=stop_at_step_3)
    logged = []
    train(TrainConfig(output_dir=str(tmp_path / "split"), resume=True, **settings),
          log=logged.append)
    assert logged[0].startswith("resuming at step 3")
    whole = DiffusionPipeline.from_pretrained(tmp_path / "whole").model.state_dict()
    split = DiffusionPipeline.from_pretrained(tmp_path / "split").model.state_dict()
    assert all(torch.equal(whole[k], split[k]) for k in whole)


def test_resume_without_a_saved_state_and_a_mismatched_start_are_refused(small_references,
                                                                         tmp_path):
    small_references.save(tmp_path / "refs.npz")
    settings = dict(data=str(tmp_path / "refs.npz"), max_steps=1, batch_size=2, hidden_dim=8,
                    num_convs=1, num_convs_local=1)
    with pytest.raises(ConfigError, match="nothing to resume"):
        train(TrainConfig(output_dir=str(tmp_path / "new"), resume=True, **settings))
    train(TrainConfig(output_dir=str(tmp_path / "a"), **settings), log=lambda line: None)
    with pytest.raises(ConfigError, match="same architecture flags"):
        train(TrainConfig(output_dir=str(tmp_path / "b"), init_from=str(tmp_path / "a"),
                          **{**settings, "hidden_dim": 16}))
