"""Training Diffuser's networks on the maze data (Janner et al. 2022, sec. 3 and appendix C).

The planner is a temporal ``UNet1DModel`` (Diffuser's residual temporal blocks, Mish, positional
time embedding) that predicts the clean trajectory x_0 from a noisy one x_t (``prediction_type
"sample"``, as Diffuser's ``predict_epsilon=False``), on windows of ``horizon`` transitions
(action, observation) of the data, normalised to [-1, 1] (``"limits"``, Diffuser's Maze2D setting).
As in Diffuser's goal-conditioned training, the states the planner will be given are written into
x_t before the model sees it, and left out of the loss: the first state always, the last one (the
goal) in ``goal_rate`` of the windows, so that the same network plans with and without a goal.

The value function is the ``UNet1DModel`` value configuration, regressed on noisy trajectories
(Diffuser's ``ValueDiffusion``) onto the discounted return of the window,
sum_k discount^k r_k, for a fixed goal with the geodesic reward (minus the distance through the
maze), standardised so its gradient has a unit scale.

Both loops draw everything from generators seeded by ``seed`` (windows, timesteps, noise), keep
an exponential moving average of the weights and save the average.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from diffusion_kernel import registry
from diffusion_kernel.errors import ConfigError
from diffusion_kernel.training import EMAModel, sample_timesteps

from .datasets import generate_dataset, load_dataset, trajectories, window_starts
from .env import PointMazeEnv
from .mazes import Maze
from .normalization import TrajectoryNormalizer

ACTION_DIM, OBSERVATION_DIM = 2, 4


@dataclass
class PlannerTrainConfig:
    """Everything a planner run depends on (the ``train`` command's options)."""

    output_dir: str
    maze: str = "medium"
    dataset: str | None = None  # an .npz; None: the environment's own data (below)
    dataset_size: int = 400_000
    dataset_seed: int = 0
    episode_steps: int | None = 72  # None: D4RL-style long runs (datasets.generate_dataset)
    init_from: str | None = None  # a planner folder to go on from: its weights and normaliser
    horizon: int = 64
    num_train_timesteps: int = 32
    block_out_channels: tuple[int, ...] = (32, 64, 128)
    goal_rate: float = 0.8
    batch_size: int = 32
    learning_rate: float = 1e-3
    warmup_steps: int = 500
    max_steps: int = 10_000
    max_minutes: float | None = None  # stop early (and save) after this much wall time
    ema_decay: float = 0.999
    seed: int = 0
    log_every: int = 250
    save_every: int = 2_000


@dataclass
class ValueTrainConfig:
    """Everything a value-function run depends on."""

    output_dir: str
    planner: str  # the planner's folder: its normaliser and scheduler are reused
    goal: tuple[float, float] = (6.0, 6.0)
    maze: str = "medium"
    dataset: str | None = None
    dataset_size: int = 400_000
    dataset_seed: int = 0
    episode_steps: int | None = 72
    horizon: int = 64
    discount: float = 0.97
    block_out_channels: tuple[int, ...] = (16, 32, 64, 128)
    batch_size: int = 32
    learning_rate: float = 1e-3
    warmup_steps: int = 200
    max_steps: int = 3_000
    max_minutes: float | None = None
    ema_decay: float = 0.995
    seed: int = 1
    log_every: int = 250
    save_every: int = 1_000


def planner_unet(horizon: int, block_out_channels, transition_dim: int = 6):
    """Diffuser's temporal UNet in the diffusers layout (its converted Maze2D/locomotion
    configs): residual temporal blocks, Mish, positional time embedding with an MLP."""
    unet_class = registry.models.get("UNet1DModel")
    depth = len(block_out_channels)
    return unet_class(
        sample_size=horizon, in_channels=transition_dim, out_channels=transition_dim,
        extra_in_channels=0, time_embedding_type="positional", flip_sin_to_cos=False,
        freq_shift=1.0, use_timestep_embedding=True, act_fn="mish", norm_num_groups=8,
        down_block_types=("DownResnetBlock1D",) * depth,
        up_block_types=("UpResnetBlock1D",) * (depth - 1),
        mid_block_type="MidResTemporalBlock1D", out_block_type="OutConv1DBlock",
        block_out_channels=tuple(block_out_channels), layers_per_block=1)


def value_unet(horizon: int, block_out_channels, transition_dim: int = 6):
    """The value configuration of the same family (diffusers' hopper value function layout)."""
    unet_class = registry.models.get("UNet1DModel")
    return unet_class(
        sample_size=horizon, in_channels=transition_dim, out_channels=transition_dim,
        extra_in_channels=0, time_embedding_type="positional", flip_sin_to_cos=False,
        freq_shift=1.0, use_timestep_embedding=True, act_fn="mish", norm_num_groups=8,
        down_block_types=("DownResnetBlock1D",) * len(block_out_channels), up_block_types=(),
        mid_block_type="ValueFunctionMidBlock1D", out_block_type="ValueFunction",
        block_out_channels=tuple(block_out_channels), layers_per_block=1,
        downsample_each_block=True)


def planner_scheduler(num_train_timesteps: int):
    """DDPM on Diffuser's cosine schedule, x_0-prediction clipped to the normalised box (its
    ``clip_denoised``); ``fixed_small_log`` as in the reference's value-guided checkpoints."""
    ddpm = registry.schedulers.get("DDPMScheduler")
    return ddpm(num_train_timesteps=num_train_timesteps, beta_schedule="squaredcos_cap_v2",
                prediction_type="sample", clip_sample=True, variance_type="fixed_small_log")


def maze_data(maze: str, dataset: str | None, size: int, seed: int,
              episode_steps: int | None = 72) -> dict[str, np.ndarray]:
    """A dataset file, or generated data (with the defaults, what ``PointMazeEnv.get_dataset``
    gives)."""
    if dataset is not None:
        return load_dataset(dataset)
    return generate_dataset(maze, size, seed=seed, episode_steps=episode_steps)


class WindowSampler:
    """Random windows of ``horizon`` consecutive normalised transitions, from one generator."""

    def __init__(self, data, normalizer: TrajectoryNormalizer, horizon: int, seed: int):
        self.x = torch.as_tensor(normalizer.normalize(trajectories(data)), dtype=torch.float32)
        self.starts = torch.as_tensor(window_starts(data, horizon))
        if len(self.starts) == 0:
            raise ConfigError(f"the dataset has no continuous stretch of {horizon} steps; use "
                              f"a shorter horizon or longer trajectories")
        self.offsets = torch.arange(horizon)
        self.generator = torch.Generator().manual_seed(seed)

    def __call__(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        pick = self.starts[torch.randint(len(self.starts), (batch_size,),
                                         generator=self.generator)]
        return self.x[pick[:, None] + self.offsets], pick


def _optimizer(model, config):
    """Adam with a linear warm-up then a cosine decay to a tenth."""
    optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate)

    def factor(step: int) -> float:
        if step < config.warmup_steps:
            return (step + 1) / config.warmup_steps
        progress = (step - config.warmup_steps) / max(1, config.max_steps - config.warmup_steps)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _loop(model, config, loss_of: Callable[[int], torch.Tensor], save: Callable[[], None],
          log: Callable[[str], None]) -> int:
    """The shared loop: Adam steps on ``loss_of(step)``, EMA, logs, periodic and final saves
    (with the averaged weights). Returns the number of steps done."""
    optimizer, schedule = _optimizer(model, config)
    ema = EMAModel(model.parameters(), decay=config.ema_decay)
    began, step, running = time.monotonic(), 0, 0.0

    def save_averaged():
        ema.store(model.parameters())
        ema.copy_to(model.parameters())
        save()
        ema.restore(model.parameters())

    while step < config.max_steps:
        if config.max_minutes is not None and time.monotonic() - began > 60 * config.max_minutes:
            log(f"stopping at step {step}: the {config.max_minutes} min budget is spent")
            break
        loss = loss_of(step)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        ema.step(model.parameters())
        step += 1
        running += float(loss.detach())
        if step % config.log_every == 0:
            log(f"step {step} loss {running / config.log_every:.5f} "
                f"({time.monotonic() - began:.0f} s)")
            running = 0.0
        if step % config.save_every == 0 and step < config.max_steps:
            save_averaged()
    save_averaged()
    return step


def _planner_start(config: PlannerTrainConfig, data):
    """(unet, scheduler, normaliser): fresh ones, or those of ``config.init_from``."""
    from .pipelines.diffuser_planning import DiffuserPlanningPipeline

    if config.init_from is None:
        torch.manual_seed(config.seed)
        return (planner_unet(config.horizon, config.block_out_channels),
                planner_scheduler(config.num_train_timesteps),
                TrajectoryNormalizer.fit(data, "limits"))
    start = DiffuserPlanningPipeline.from_pretrained(config.init_from)
    if start.normalizer is None or start.unet.config.sample_size != config.horizon:
        raise ConfigError(f"init_from={config.init_from} must be a planner with a normalizer "
                          f"and horizon {config.horizon}")
    return start.unet, start.scheduler, start.normalizer


def train_planner(config: PlannerTrainConfig, log: Callable[[str], None] = print) -> Path:
    """Train a goal-conditioned planner and save it as a ``DiffuserPlanningPipeline`` folder."""
    from .pipelines.diffuser_planning import DiffuserPlanningPipeline

    if not 0.0 <= config.goal_rate <= 1.0:
        raise ConfigError(f"goal_rate must lie in [0, 1], got {config.goal_rate}")
    data = maze_data(config.maze, config.dataset, config.dataset_size, config.dataset_seed,
                     config.episode_steps)
    unet, scheduler, normalizer = _planner_start(config, data)
    sampler = WindowSampler(data, normalizer, config.horizon, config.seed)
    generator = torch.Generator().manual_seed(config.seed + 1)
    log(f"planner: {unet.num_parameters():,} parameters, {len(sampler.starts):,} windows")

    def loss_of(step: int) -> torch.Tensor:
        x0, _ = sampler(config.batch_size)
        t = sample_timesteps(config.batch_size, scheduler, generator)
        noise = torch.randn(x0.shape, generator=generator)
        x_t = scheduler.add_noise(x0, noise, t)
        known = torch.zeros_like(x0, dtype=torch.bool)  # the states given at planning time
        known[:, 0, ACTION_DIM:] = True
        with_goal = torch.rand(config.batch_size, generator=generator) < config.goal_rate
        known[with_goal, -1, ACTION_DIM:] = True
        x_t = torch.where(known, x0, x_t)
        predicted = unet(x_t.permute(0, 2, 1), t).sample.permute(0, 2, 1)
        return ((predicted - x0) ** 2)[~known].mean()

    def save():
        pipe = DiffuserPlanningPipeline(unet=unet, scheduler=scheduler, normalizer=normalizer,
                                        environment=f"maze2d-{config.maze}")
        pipe.save_pretrained(config.output_dir)

    unet.train()
    steps = _loop(unet, config, loss_of, save, log)
    log(f"saved the planner after {steps} steps to {config.output_dir}")
    return Path(config.output_dir)


def window_returns(data, goal, horizon: int, discount: float, maze: str) -> np.ndarray:
    """Per step i, sum_k discount^k r_{i+k} over the window starting there, with the geodesic
    reward towards ``goal`` of the state each step lands in."""
    rewards = PointMazeEnv(maze, goal=goal, reward_type="geodesic").reward(
        data["next_observations"][:, :2], goal)
    padded = np.concatenate([rewards, np.zeros(horizon - 1)])
    return np.correlate(padded, discount ** np.arange(horizon), mode="valid")


def train_value_function(config: ValueTrainConfig, log: Callable[[str], None] = print) -> Path:
    """Train a value function for a fixed goal on the planner's normalised data; saves a
    ``UNet1DModel`` folder with the standardisation of the returns in ``value_scale.json``."""
    from diffusion_kernel.hub import atomic_write_text

    from .pipelines.diffuser_planning import DiffuserPlanningPipeline

    Maze(config.maze).check_free(config.goal, "goal")
    planner = DiffuserPlanningPipeline.from_pretrained(config.planner)
    data = maze_data(config.maze, config.dataset, config.dataset_size, config.dataset_seed,
                     config.episode_steps)
    sampler = WindowSampler(data, planner.normalizer, config.horizon, config.seed)
    returns = window_returns(data, config.goal, config.horizon, config.discount, config.maze)
    mean, std = float(returns.mean()), float(returns.std())
    targets = torch.as_tensor((returns - mean) / std, dtype=torch.float32)
    torch.manual_seed(config.seed)
    value = value_unet(config.horizon, config.block_out_channels)
    scheduler = planner.scheduler
    generator = torch.Generator().manual_seed(config.seed + 1)
    log(f"value function: {value.num_parameters():,} parameters, returns {mean:.2f} +- {std:.2f}")

    def loss_of(step: int) -> torch.Tensor:
        x0, starts = sampler(config.batch_size)
        t = sample_timesteps(config.batch_size, scheduler, generator)
        x_t = scheduler.add_noise(x0, torch.randn(x0.shape, generator=generator), t)
        x_t[:, 0, ACTION_DIM:] = x0[:, 0, ACTION_DIM:]  # the start is known when planning
        predicted = value(x_t.permute(0, 2, 1), t).sample.reshape(-1)
        return ((predicted - targets[starts]) ** 2).mean()

    def save():
        value.save_pretrained(config.output_dir)
        atomic_write_text(Path(config.output_dir) / "value_scale.json",
                          f'{{"mean": {mean}, "std": {std}, "config": {_json(asdict(config))}}}\n')

    value.train()
    steps = _loop(value, config, loss_of, save, log)
    log(f"saved the value function after {steps} steps to {config.output_dir}")
    return Path(config.output_dir)


def _json(value) -> str:
    import json

    return json.dumps(value)
