"""The offline data: seeded generation with D4RL's keys, files in and out, training windows, the
environment's get_dataset, and the normalisers."""

import json

import numpy as np
import pytest
import torch
from diffusion_kernel.errors import ConfigError, FileAccessError
from diffusion_kernel_rl import physics
from diffusion_kernel_rl.datasets import (
    REQUIRED_KEYS,
    generate_dataset,
    load_dataset,
    save_dataset,
    trajectories,
    window_starts,
)
from diffusion_kernel_rl.env import PointMazeEnv
from diffusion_kernel_rl.mazes import Maze
from diffusion_kernel_rl.normalization import TrajectoryNormalizer


@pytest.fixture(scope="module")
def data():
    """100 episodes of 72 steps (the default kind of data)."""
    return generate_dataset("medium", 7_200, seed=0)


@pytest.fixture(scope="module")
def streams():
    """20 D4RL-style runs of 1,000 steps."""
    return generate_dataset("medium", 20_000, seed=0, num_streams=20, episode_steps=None)


def test_generation_is_seeded_and_has_d4rls_keys(data):
    again = generate_dataset("medium", 7_200, seed=0)
    other = generate_dataset("medium", 7_200, seed=1)
    assert set(data) == set(REQUIRED_KEYS)
    for key in REQUIRED_KEYS:
        np.testing.assert_array_equal(data[key], again[key])
    assert np.abs(data["observations"] - other["observations"]).max() > 1
    assert data["observations"].shape == (7_200, 4) and data["actions"].shape == (7_200, 2)
    assert data["timeouts"].sum() == 100 and not data["terminals"].any()


@pytest.mark.parametrize("kind", ["data", "streams"])
def test_the_data_are_physical_trajectories(kind, request):
    data = request.getfixturevalue(kind)
    maze = Maze("medium")
    replay = physics.step(maze, data["observations"].astype(np.float64),
                          data["actions"].astype(np.float64))
    np.testing.assert_allclose(replay, data["next_observations"], atol=1e-5)
    inside = np.flatnonzero(~data["timeouts"])  # the last step is a timeout: inside + 1 exists
    np.testing.assert_array_equal(data["next_observations"][inside],
                                  data["observations"][inside + 1])
    assert physics.body_fits(maze, data["observations"][:, :2]).all()
    np.testing.assert_array_equal(data["rewards"],
                                  physics.reached(data["next_observations"], data["infos/goal"]))


def test_an_episode_goes_from_rest_to_rest_at_a_goal_in_another_cell(data):
    maze = Maze("medium")
    episodes = {k: v.reshape(100, 72, -1) for k, v in data.items() if v.ndim == 2}
    first, last = episodes["observations"][:, 0], episodes["next_observations"][:, -1]
    goals = episodes["infos/goal"]
    assert (goals == goals[:, :1]).all()  # one goal per episode
    np.testing.assert_array_equal(first[:, 2:], 0)  # starts at rest
    assert (maze.cell_of(first[:, :2]) != maze.cell_of(goals[:, 0])).any(1).all()
    assert physics.reached(last, goals[:, 0]).mean() >= 0.95  # there at the end
    assert np.median(np.abs(last[:, 2:])) < 0.5


def test_d4rl_style_runs_go_from_goal_to_goal_and_rest_at_each(streams):
    changes = (np.abs(np.diff(streams["infos/goal"], axis=0)).sum(1) > 0).sum()
    assert changes > 300 and streams["timeouts"].sum() == 20
    near = np.linalg.norm(streams["observations"][:, :2] - streams["infos/goal"], axis=1) < 0.25
    slow = np.linalg.norm(streams["observations"][:, 2:], axis=1) < 0.5
    assert (near & slow).mean() > 0.2


def test_windows_never_cross_the_end_of_a_trajectory(streams, data):
    starts = window_starts(streams, 64)
    ends = np.flatnonzero(streams["timeouts"])
    assert len(starts) == 20 * (1000 - 63)
    crossing = [(s <= e) & (e < s + 63) for s in starts[::97] for e in ends]
    assert not any(crossing)
    assert len(window_starts(data, 64)) == 100 * (72 - 63)
    x = trajectories(streams)
    np.testing.assert_array_equal(x[:, :2], streams["actions"])
    np.testing.assert_array_equal(x[:, 2:], streams["observations"])


def test_files_round_trip_and_bad_files_are_refused(data, tmp_path):
    path = save_dataset(data, tmp_path / "maze.npz")
    loaded = load_dataset(path)
    for key in REQUIRED_KEYS:
        np.testing.assert_array_equal(loaded[key], data[key])
    partial = {k: v for k, v in data.items() if k not in ("actions", "infos/goal")}
    np.savez(tmp_path / "partial.npz", **partial)
    with pytest.raises(ConfigError, match=r"lacks the keys \['actions', 'infos/goal'\]"):
        load_dataset(tmp_path / "partial.npz")
    with pytest.raises(FileAccessError, match="no dataset file.*rl dataset"):
        load_dataset(tmp_path / "missing.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(FileAccessError, match="not a readable .npz"):
        load_dataset(tmp_path / "junk.npz")


def test_get_dataset_rewards_follow_the_environments_goal(data, tmp_path):
    path = save_dataset(data, tmp_path / "maze.npz")
    own_goals = PointMazeEnv("medium", dataset=str(path)).get_dataset()
    np.testing.assert_array_equal(own_goals["rewards"], data["rewards"])
    fixed = PointMazeEnv("medium", goal=(6, 6), reward_type="geodesic", dataset=str(path))
    rewards = fixed.get_dataset()["rewards"]
    expected = -Maze("medium").geodesic_distance(data["next_observations"][:, :2], (6, 6))
    np.testing.assert_allclose(rewards, expected)
    assert rewards.max() <= 0 and rewards.min() < -8


def test_normalisers_global_as_diffusers_per_dimension_and_limits(streams):
    data = streams
    glob = TrajectoryNormalizer.fit(data, "global")
    obs = data["observations"][:5]
    # the reference normalises by one mean and std over all of a key's values
    expected = (obs - data["observations"].mean()) / data["observations"].std()
    np.testing.assert_array_equal(glob.normalize(obs, "observations"), expected)
    gauss = TrajectoryNormalizer.fit(data, "gaussian")
    z = gauss.normalize(trajectories(data))
    np.testing.assert_allclose(z.mean(0), 0, atol=1e-4)
    np.testing.assert_allclose(z.std(0), 1, atol=1e-4)
    limits = TrajectoryNormalizer.fit(data, "limits")
    u = limits.normalize(trajectories(data))
    np.testing.assert_allclose(u.min(0), -1, atol=1e-6)
    np.testing.assert_allclose(u.max(0), 1, atol=1e-6)
    back = limits.unnormalize(torch.as_tensor(u[:7]))
    np.testing.assert_allclose(back.numpy(), trajectories(data)[:7], atol=1e-5)


def test_a_normaliser_saves_as_a_processor_config(data, tmp_path):
    limits = TrajectoryNormalizer.fit(data, "limits")
    limits.save_pretrained(tmp_path / "normalizer")
    saved = json.loads((tmp_path / "normalizer" / "processor_config.json").read_text())
    assert saved["_class_name"] == "TrajectoryNormalizer" and saved["action_dim"] == 2
    loaded = TrajectoryNormalizer.from_pretrained(tmp_path / "normalizer")
    x = trajectories(data)[:9]
    np.testing.assert_array_equal(loaded.normalize(x), limits.normalize(x))
    with pytest.raises(ConfigError, match="unknown normalisation 'minmax'"):
        TrajectoryNormalizer.fit(data, "minmax")
    with pytest.raises(ConfigError, match="expected observations with 4 values"):
        limits.normalize(np.zeros(3), "observations")
