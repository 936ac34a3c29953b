"""The point maze: D4RL's layouts, seeded determinism, walls that block, the gymnasium API, and a
controller that reaches every goal."""

import numpy as np
import pytest
from diffusion_kernel.errors import ConfigError
from diffusion_kernel_rl import physics
from diffusion_kernel_rl.controller import WaypointController
from diffusion_kernel_rl.env import PointMazeEnv
from diffusion_kernel_rl.mazes import Maze


def test_the_layouts_are_d4rls_maze2d_ones():
    # D4RL maze_model.py, with its start/goal markers read as free cells
    assert Maze("umaze").rows == ("#####", "#OOO#", "###O#", "#OOO#", "#####")
    assert Maze("medium").rows == ("########", "#OO##OO#", "#OO#OOO#", "##OOO###", "#OO#OOO#",
                                   "#O#OO#O#", "#OOO#OO#", "########")
    assert len(Maze("medium").free_cells) == 26 and Maze("medium").distances.max() == 11


def test_shortest_paths_are_breadth_first_and_connected():
    maze = Maze("umaze")
    path = maze.path((1, 1), (3, 1))
    assert [tuple(c) for c in path.tolist()] == [(1, 1), (1, 2), (1, 3), (2, 3), (3, 3), (3, 2),
                                                 (3, 1)]
    assert (Maze("medium").distances >= 0).all()  # one connected region
    # a wall-respecting distance: (1,1) -> (3,1) is 6 cells round the wall, not 2 across it
    assert maze.geodesic_distance([(1, 1)], (3, 1))[0] == pytest.approx(6.0)


def test_the_same_seed_gives_the_same_episode():
    def episode(seed):
        env = PointMazeEnv("medium")
        obs, info = env.reset(seed=seed)
        rng = np.random.default_rng(seed)
        trace = [obs]
        for _ in range(50):
            trace.append(env.step(rng.uniform(-1, 1, 2))[0])
        return np.stack(trace), info["goal"]

    (a, goal_a), (b, goal_b), (c, _) = episode(3), episode(3), episode(4)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(goal_a, goal_b)
    assert np.abs(a - c).max() > 0.1


def test_a_wall_stops_the_body_flush_and_takes_its_velocity():
    maze = Maze("medium")
    state = np.array([[1.0, 1.0, 0.0, 0.0]])  # cell (1, 1); the wall row 0 is above it
    for _ in range(30):
        state = physics.step(maze, state, np.array([[-1.0, 0.0]]))
    assert state[0, 0] == pytest.approx(0.5 + physics.BODY_RADIUS, abs=1e-5)
    assert state[0, 2] == 0.0 and state[0, 1] == pytest.approx(1.0)


def test_random_pushes_never_put_the_body_in_a_wall():
    maze = Maze("medium")
    rng = np.random.default_rng(0)
    cells = maze.free_cells[rng.integers(len(maze.free_cells), size=200)].astype(float)
    state = np.concatenate([cells, np.zeros_like(cells)], axis=1)
    for _ in range(300):
        state = physics.step(maze, state, rng.choice([-1.0, 1.0], size=(200, 2)))
        assert physics.body_fits(maze, state[:, :2]).all()
    assert np.abs(state[:, 2:]).max() <= physics.TOP_SPEED


@pytest.mark.parametrize("name", ["umaze", "medium"])
def test_the_controller_reaches_every_goal_from_every_cell_and_rests_there(name):
    maze = Maze(name)
    n = len(maze.free_cells)
    a, b = np.divmod(np.arange(n * n), n)
    cells = maze.free_cells.astype(float)
    state = np.concatenate([cells[a], np.zeros((n * n, 2))], axis=1)
    goals = cells[b]
    controller = WaypointController(maze)
    arrived = np.zeros(n * n, dtype=bool)
    for _ in range(100):
        state = physics.step(maze, state, controller(state, goals))
        arrived |= physics.reached(state, goals)
    assert arrived.all()
    assert np.linalg.norm(state[:, :2] - goals, axis=1).max() < 0.05
    assert np.abs(state[:, 2:]).max() < 0.05


def test_the_environment_api_and_its_rewards():
    env = PointMazeEnv("umaze", goal=(3, 1))
    obs, info = env.reset(seed=0, options={"start": (3, 2)})
    assert obs.dtype == np.float32 and obs.shape == (4,)
    assert env.observation_space.contains(obs)
    np.testing.assert_array_equal(info["goal"], [3, 1])
    rewards, success = [], False
    for _ in range(300):
        obs, reward, terminated, truncated, info = env.step(np.array([0.0, -1.0]))
        rewards.append(reward)
        success |= info["success"]
        assert not terminated
    assert truncated and success and rewards[-1] == 1.0 and rewards[0] == 0.0
    geodesic = PointMazeEnv("umaze", goal=(3, 1), reward_type="geodesic")
    geodesic.reset(options={"start": (1, 1)})
    assert geodesic.step(np.zeros(2))[1] == pytest.approx(-6.0, abs=0.01)


def test_bad_input_gets_clear_errors():
    with pytest.raises(ConfigError, match="lies in a wall"):
        PointMazeEnv("medium", goal=(0, 0))
    env = PointMazeEnv("medium")
    with pytest.raises(ConfigError, match="before reset"):
        env.step(np.zeros(2))
    env.reset(seed=0)
    with pytest.raises(ConfigError, match="lies in a wall"):
        env.reset(options={"goal": (3.0, 1.2)})
    with pytest.raises(ConfigError, match="2 finite numbers"):
        env.step(np.zeros(3))
    with pytest.raises(ConfigError, match="unknown maze 'large'.*medium, umaze"):
        Maze("large")
    with pytest.raises(ConfigError, match="reward_type"):
        PointMazeEnv(reward_type="dense")


def test_gymnasium_makes_and_checks_it():
    gymnasium = pytest.importorskip("gymnasium")
    from diffusion_kernel_rl.env import register_with_gymnasium
    from gymnasium.utils.env_checker import check_env

    assert "diffusion-kernel/maze2d-medium-v0" in register_with_gymnasium()
    env = gymnasium.make("diffusion-kernel/maze2d-medium-v0")
    check_env(env.unwrapped, skip_render_check=True)
    obs, _ = env.reset(seed=1)
    steps = 0
    truncated = False
    while not truncated:
        obs, _, _, truncated, _ = env.step(env.action_space.sample())
        steps += 1
    assert steps == 300 and isinstance(env.observation_space, gymnasium.spaces.Box)


def test_seeding_gives_the_same_episode_with_or_without_gymnasium(monkeypatch):
    import diffusion_kernel_rl.env as env_module

    first = PointMazeEnv("medium").reset(seed=11)
    monkeypatch.setattr(env_module, "_gymnasium", None)
    second = PointMazeEnv("medium").reset(seed=11)
    np.testing.assert_array_equal(first[0], second[0])
    np.testing.assert_array_equal(first[1]["goal"], second[1]["goal"])
