"""The training utilities against the reference's own (EMA, SNR) and against the schedule math."""

import pytest
import torch
from diffusers.training_utils import EMAModel as ReferenceEMA
from diffusers.training_utils import compute_snr
from diffusion_kernel import ConfigError, registry
from diffusion_kernel.training import (
    EMAModel,
    diffusion_loss,
    min_snr_weights,
    sample_noise,
    sample_timesteps,
    snr,
    training_target,
)


@pytest.fixture
def scheduler():
    return registry.schedulers.get("DDPMScheduler")(num_train_timesteps=100)


def _net():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 2))


@pytest.mark.parametrize("warmup", [False, True])
def test_ema_matches_the_reference_average_over_twenty_steps(warmup):
    net = _net()
    ours = EMAModel(net.parameters(), decay=0.99, use_ema_warmup=warmup, power=0.75)
    ref = ReferenceEMA(net.parameters(), decay=0.99, use_ema_warmup=warmup, power=0.75)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    for _ in range(20):
        opt.zero_grad()
        net(torch.randn(3, 4)).square().sum().backward()
        opt.step()
        ours.step(net.parameters())
        ref.step(net.parameters())
    for a, b in zip(ours.shadow_params, ref.shadow_params):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_ema_state_round_trip_continues_identically():
    net = _net()
    ema = EMAModel(net.parameters(), decay=0.9)
    for _ in range(3):
        with torch.no_grad():
            for p in net.parameters():
                p.add_(0.1)
        ema.step(net.parameters())
    restored = EMAModel(_net().parameters(), decay=0.5)
    restored.load_state_dict(ema.state_dict())
    assert restored.optimization_step == 3 and restored.decay == 0.9
    ema.step(net.parameters())
    restored.step(net.parameters())
    for a, b in zip(ema.shadow_params, restored.shadow_params):
        assert torch.equal(a, b)


def test_ema_copy_to_store_and_restore():
    net = _net()
    ema = EMAModel(net.parameters())
    original = [p.detach().clone() for p in net.parameters()]
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(2)
    ema.store(net.parameters())
    ema.copy_to(net.parameters())
    assert all(torch.equal(p, o) for p, o in zip(net.parameters(), original))
    ema.restore(net.parameters())
    assert all(torch.equal(p, 2 * o) for p, o in zip(net.parameters(), original))


def test_ema_state_of_another_model_is_refused():
    ema = EMAModel(_net().parameters())
    other = EMAModel(torch.nn.Linear(2, 2).parameters())
    with pytest.raises(ConfigError, match="another model"):
        other.load_state_dict(ema.state_dict())


def test_v_target_is_the_velocity_of_the_noised_sample(scheduler):
    """x_t = a x0 + s eps and v = a eps - s x0 give x0 = a x_t - s v (Salimans & Ho 2022)."""
    x0, eps = torch.randn(4, 3, 5, 5), torch.randn(4, 3, 5, 5)
    t = torch.tensor([0, 10, 50, 99])
    x_t = scheduler.add_noise(x0, eps, t)
    v = training_target(scheduler, x0, eps, t, "v_prediction")
    a = scheduler.alphas_cumprod[t].sqrt().reshape(-1, 1, 1, 1)
    s = (1 - scheduler.alphas_cumprod[t]).sqrt().reshape(-1, 1, 1, 1)
    torch.testing.assert_close(a * x_t - s * v, x0, rtol=1e-5, atol=1e-5)
    assert training_target(scheduler, x0, eps, t, "epsilon") is eps
    assert training_target(scheduler, x0, eps, t, "sample") is x0


def test_min_snr_weights_match_the_reference_snr(scheduler):
    t = torch.tensor([1, 20, 60, 99])
    reference_snr = compute_snr(scheduler, t)
    torch.testing.assert_close(snr(scheduler, t), reference_snr)
    w = min_snr_weights(scheduler, t, gamma=5.0, prediction_type="epsilon")
    torch.testing.assert_close(w, torch.clamp(reference_snr, max=5.0) / reference_snr)
    w_v = min_snr_weights(scheduler, t, gamma=5.0, prediction_type="v_prediction")
    torch.testing.assert_close(w_v, torch.clamp(reference_snr, max=5.0) / (reference_snr + 1))
    assert w[0] < 1.0 and w[-1] == 1.0  # clean-ish steps are down-weighted, noisy ones not


def test_unknown_prediction_type_lists_valid_ones(scheduler):
    with pytest.raises(ConfigError, match="v_prediction"):
        min_snr_weights(scheduler, torch.tensor([1]), prediction_type="velocity")


def test_timesteps_cover_the_training_range_uniformly(scheduler):
    t = sample_timesteps(20000, scheduler, generator=torch.Generator().manual_seed(0))
    assert t.min() == 0 and t.max() == 99
    counts = torch.bincount(t, minlength=100).float()
    assert counts.std() / counts.mean() < 0.15


def test_offset_noise_adds_a_per_channel_constant():
    like = torch.zeros(2, 3, 16, 16)
    plain = sample_noise(like, torch.Generator().manual_seed(0))
    offset = sample_noise(like, torch.Generator().manual_seed(0), offset_noise=0.5)
    diff = offset - plain
    assert torch.allclose(diff, diff[:, :, :1, :1].expand_as(diff))
    assert diff.abs().mean() > 0.05


def test_weighted_loss_is_the_weighted_mean_of_per_sample_mse():
    out, target = torch.zeros(2, 1, 2, 2), torch.ones(2, 1, 2, 2)
    target[1] *= 2
    assert diffusion_loss(out, target).item() == pytest.approx(2.5)
    assert diffusion_loss(out, target, torch.tensor([1.0, 0.0])).item() == pytest.approx(0.5)
