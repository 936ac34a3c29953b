"""The digits DDPM shipped inside the vision plugin: it loads offline, samples recognisable digits,
and works with every scheduler that fits a discrete-time epsilon model; `generate` end to end."""

import numpy as np
import pytest
import torch
from diffusion_kernel import DiffusionPipeline
from diffusion_kernel.cli import main
from diffusion_kernel.scheduling import scheduler_from_name
from diffusion_kernel_vision.commands import SHIPPED_MODEL
from diffusion_kernel_vision.datasets import load_digits_split
from PIL import Image

# Schedulers for other model families are not meant for a DDPM epsilon UNet: score-SDE VE/VP
# need a score model in continuous time, flow matching a velocity model, EDM-Euler a model with
# the EDM preconditioning (c_noise = ln(sigma)/4 instead of the timestep); DDIM inversion runs
# towards noise; IPNDM samples the continuous v-diffusion process with a velocity model.
NOT_FOR_DDPM = {"ScoreSdeVeScheduler", "ScoreSdeVpScheduler", "FlowMatchEulerDiscreteScheduler",
                "EDMEulerScheduler", "DDIMInverseScheduler", "IPNDMScheduler",
                # unCLIP's fixed cosine schedule, stepped by a caller that names the next timestep
                "UnCLIPScheduler"}


@pytest.fixture(scope="module")
def pipe():
    pipeline = DiffusionPipeline.from_pretrained(SHIPPED_MODEL)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


@pytest.fixture(scope="module")
def digit_classifier():
    """Logistic regression on the 600 held-out digits, which the shipped model never saw; its
    accuracy is checked on the 1,197 training digits, which it never saw."""
    from sklearn.linear_model import LogisticRegression

    held, held_labels = load_digits_split("test")
    train, train_labels = load_digits_split("train")
    model = LogisticRegression(max_iter=2000).fit(held.reshape(len(held), -1).numpy(),
                                                  held_labels.numpy())
    assert model.score(train.reshape(len(train), -1).numpy(), train_labels.numpy()) > 0.9
    return model


# DPM-Solver singlestep starts at t = T-1, where the cosine schedule's log-SNR is about -20; like
# the reference, it needs lambda(t) clipped there (lambda_min_clipped) on a cosine schedule.
# The shipped folder's scheduler is DPM-Solver++ 2M SDE: its algorithm_type 'sde-dpmsolver++'
# carries over on a swap, and DEIS takes only 'deis' (the reference's DEIS raises for it too).
OPTIONS = {"DPMSolverSinglestepScheduler": {"lambda_min_clipped": -5.1},
           "DEISMultistepScheduler": {"algorithm_type": "deis"}}


def _sample(pipe, scheduler, steps, n=16):
    pipe.scheduler = scheduler_from_name(scheduler, pipe.scheduler.config,
                                         **OPTIONS.get(scheduler, {}))
    generators = [torch.Generator().manual_seed(i) for i in range(n)]
    images = pipe(batch_size=n, generator=generators, num_inference_steps=steps,
                  output_type="np").images
    return images[..., 0] * 2 - 1  # (n, 16, 16) in [-1, 1], like the training data


def test_the_shipped_model_is_a_small_diffusers_format_pipeline():
    files = {p.relative_to(SHIPPED_MODEL).as_posix() for p in SHIPPED_MODEL.rglob("*")
             if p.is_file()}
    assert files == {"model_index.json", "scheduler/scheduler_config.json", "unet/config.json",
                     "unet/diffusion_pytorch_model.safetensors", "SHA256SUMS"}
    size = (SHIPPED_MODEL / "unet" / "diffusion_pytorch_model.safetensors").stat().st_size
    assert size < 10 * 2**20


@pytest.fixture(scope="module")
def plain_samples():
    """64 samples of the plain call (the folder's own sampler and step count), (64, 256) in
    [-1, 1]."""
    shipped = DiffusionPipeline.from_pretrained(SHIPPED_MODEL)
    shipped.set_progress_bar_config(disable=True)
    images = shipped(batch_size=64, generator=[torch.Generator().manual_seed(i) for i in range(64)],
                     output_type="np").images
    return images[..., 0].reshape(64, -1) * 2 - 1


def test_plain_call_samples_are_recognisable_digits_of_every_class(plain_samples,
                                                                   digit_classifier):
    probs = digit_classifier.predict_proba(plain_samples)
    assert probs.max(axis=1).mean() > 0.85
    assert len(set(probs.argmax(axis=1))) == 10


def test_samples_are_new_digits_not_copies_of_training_ones(plain_samples, nearest_real_distance):
    # Memorisation check: a model that copies its training digits puts its samples much closer to
    # them than unseen (held-out) digits are; ours sit about as far as held-out digits do.
    distance, held_out = nearest_real_distance
    ratio = distance(plain_samples).item() / held_out
    assert 0.8 < ratio < 1.3


def test_the_folder_recommends_dpm_solver_sde_with_20_steps_which_the_plain_call_uses():
    shipped = DiffusionPipeline.from_pretrained(SHIPPED_MODEL)
    assert type(shipped.scheduler).__name__ == "DPMSolverMultistepScheduler"
    assert shipped.scheduler.config.algorithm_type == "sde-dpmsolver++"
    assert shipped.scheduler.config.solver_order == 2
    assert shipped.default_num_inference_steps == 20
    steps = []
    shipped.set_progress_bar_config(disable=True)
    shipped(callback_on_step_end=lambda p, i, t, kw: steps.append(i) or {})
    assert steps == list(range(20))


def test_the_reference_loads_the_shipped_folder_and_samples_it_identically():
    from diffusers import DDPMPipeline

    ours = DiffusionPipeline.from_pretrained(SHIPPED_MODEL)
    ref = DDPMPipeline.from_pretrained(SHIPPED_MODEL)
    ref.set_progress_bar_config(disable=True)
    ours.set_progress_bar_config(disable=True)
    assert type(ref.scheduler).__name__ == "DPMSolverMultistepScheduler"
    a = ours(batch_size=2, generator=[torch.Generator().manual_seed(i) for i in range(2)],
             output_type="np").images  # the recommended 20 steps
    b = ref(batch_size=2, generator=[torch.Generator().manual_seed(i) for i in range(2)],
            num_inference_steps=20, output_type="np").images
    assert np.abs(a - b).max() < 1e-4


def _ddpm_schedulers():
    from diffusion_kernel import registry

    return [n for n in registry.schedulers.names() if n not in NOT_FOR_DDPM]


@pytest.fixture(scope="module")
def nearest_real_distance():
    """Mean L2 distance from a sample to its nearest training digit, and that of the held-out
    digits (about 3 at 16x16 in [-1, 1]; uniform noise is about 14)."""
    train = load_digits_split("train")[0].reshape(-1, 256)
    held = load_digits_split("test")[0].reshape(-1, 256)

    def distance(x):
        return torch.cdist(torch.as_tensor(x).reshape(len(x), -1), train).min(dim=1).values.mean()

    return distance, distance(held).item()


@pytest.mark.parametrize("name", _ddpm_schedulers())
def test_every_scheduler_samples_digits_from_the_shipped_model(pipe, digit_classifier,
                                                               nearest_real_distance, name):
    samples = _sample(pipe, name, 12, n=8)
    assert np.isfinite(samples).all()
    distance, real = nearest_real_distance
    # Samples lie near the data manifold: close to some training digit, as held-out digits are.
    assert distance(samples) < 1.6 * real
    probs = digit_classifier.predict_proba(samples.reshape(len(samples), -1))
    assert probs.max(axis=1).mean() > 0.6


def test_generate_without_arguments_writes_a_grid_of_the_shipped_model(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["generate", "--steps", "10", "--num", "4"]) == 0
    grid = Image.open(tmp_path / "samples.png")
    assert grid.size == (2 * 16 + 3 * 2, 2 * 16 + 3 * 2)


def test_generate_into_a_folder_writes_each_sample_and_a_grid(tmp_path):
    out = tmp_path / "digits"
    assert main(["generate", "--scheduler", "euler-a", "--steps", "8", "--num", "3", "--seed", "7",
                 "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["0000.png", "0001.png", "0002.png",
                                                      "grid.png"]
    assert Image.open(out / "0000.png").size == (16, 16)


def test_generate_with_the_same_seed_is_reproducible(tmp_path):
    for name in ("a", "b"):
        assert main(["generate", "--steps", "5", "--num", "2", "--seed", "3",
                     "--out", str(tmp_path / name)]) == 0
    assert (tmp_path / "a" / "0001.png").read_bytes() == (tmp_path / "b" / "0001.png").read_bytes()


def test_generate_with_an_unknown_scheduler_is_a_clear_error(tmp_path, capsys):
    assert main(["generate", "--scheduler", "dpm++2n", "--out", str(tmp_path / "x.png")]) == 2
    assert "Did you mean" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()


def test_generate_from_a_missing_model_folder_is_a_clear_error(tmp_path, capsys):
    assert main(["generate", "--model", str(tmp_path / "nowhere"), "--out",
                 str(tmp_path / "x.png")]) == 2
    assert "nowhere" in capsys.readouterr().err


def test_generate_refuses_a_prompt_for_the_digits_model_before_sampling(tmp_path, capsys):
    assert main(["generate", "a seven", "--out", str(tmp_path / "x.png")]) == 2
    assert "DDPMPipeline takes no input" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_generate_says_what_the_image_writer_writes(tmp_path, capsys):
    assert main(["generate", "--out", str(tmp_path / "x.jpg")]) == 2
    assert ("written as a .png file or a folder of .png files, not as .jpg"
            in capsys.readouterr().err)
    assert list(tmp_path.iterdir()) == []


def test_generate_replaces_an_earlier_runs_samples_only_with_overwrite(tmp_path, capsys):
    out = tmp_path / "digits"
    assert main(["generate", "--steps", "2", "--num", "3", "--out", str(out)]) == 0
    assert main(["generate", "--steps", "2", "--num", "2", "--out", str(out)]) == 2
    assert "already holds 4 samples" in capsys.readouterr().err
    assert main(["generate", "--steps", "2", "--num", "2", "--out", str(out),
                 "--overwrite"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["0000.png", "0001.png", "grid.png"]
