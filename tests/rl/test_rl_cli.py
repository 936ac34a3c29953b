"""The RL commands end to end on a tiny planner: rl dataset, train planner, evaluate planner
(--json), generate (a plan as .npz, a PNG of the maze, a folder), and their errors."""

import json

import numpy as np
import pytest
from diffusion_kernel.cli import main
from PIL import Image


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A dataset file and a planner trained on it for a few steps (weights barely trained: the
    commands are under test here, not the planner)."""
    root = tmp_path_factory.mktemp("rl-cli")
    assert main(["rl", "dataset", "--steps", "3600", "--episode-steps", "72", "--seed", "1",
                 "--out", str(root / "data.npz")]) == 0
    assert main(["train", "planner", "--dataset", str(root / "data.npz"), "--output-dir",
                 str(root / "planner"), "--horizon", "16", "--block-out-channels", "8,16",
                 "--batch-size", "4", "--max-steps", "3", "--num-train-timesteps", "4",
                 "--threads", "1"]) == 0
    return root


def test_the_dataset_command_writes_a_loadable_file(tiny, capsys):
    from diffusion_kernel_rl.datasets import load_dataset

    data = load_dataset(tiny / "data.npz")
    assert data["observations"].shape == (3600, 4) and data["timeouts"].sum() == 50


def test_train_writes_a_planner_folder_that_names_its_maze(tiny):
    index = json.loads((tiny / "planner" / "model_index.json").read_text())
    assert index["_class_name"] == "DiffuserPlanningPipeline"
    assert index["environment"] == "maze2d-medium"
    assert index["normalizer"] == ["diffusers", "TrajectoryNormalizer"]


def test_evaluate_prints_json_with_the_references(tiny, capsys):
    assert main(["evaluate", "planner", "--model", str(tiny / "planner"), "--pairs", "4",
                 "--max-steps", "40", "--no-baselines", "--json", "--threads", "1"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["pairs"] == 4 and report["maze"] == "medium"
    rows = report["policies"]
    assert set(rows) == {"planner", "random", "controller (expert)"}
    assert rows["controller (expert)"]["normalized_score"] == pytest.approx(100.0)
    assert 0 <= rows["planner"]["success_rate"] <= 100
    assert report["num_candidates"] == 1 and report["selection"] is None


def test_evaluate_and_generate_take_several_candidates(tiny, tmp_path, capsys):
    from diffusion_kernel import DiffusionPipeline

    assert main(["evaluate", "planner", "--model", str(tiny / "planner"), "--pairs", "3",
                 "--max-steps", "20", "--no-baselines", "--candidates", "3", "--selection",
                 "medoid", "--threads", "1"]) == 0
    assert "the best of 3 plans per pair by medoid" in capsys.readouterr().out
    pipe = DiffusionPipeline.from_pretrained(tiny / "planner")
    pipe.num_candidates = 2  # a folder that recommends 2 candidates: generate and evaluate use it
    pipe.save_pretrained(tmp_path / "two")
    assert main(["evaluate", "planner", "--model", str(tmp_path / "two"), "--pairs", "2",
                 "--max-steps", "20", "--no-baselines", "--json", "--threads", "1"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["num_candidates"] == 2 and report["selection"] == "likelihood"
    assert main(["generate", "1,1:6,6", "--num", "2", "--out", str(tmp_path / "plan.npz"),
                 "--model", str(tmp_path / "two"), "--steps", "2", "--threads", "1"]) == 0
    with np.load(tmp_path / "plan.npz") as plan:
        assert plan["states"].shape == (2, 16, 4)
    assert main(["evaluate", "planner", "--model", str(tiny / "planner"), "--candidates", "0",
                 "--no-baselines"]) == 2
    assert "--candidates must be at least 1" in capsys.readouterr().err


def test_generate_writes_plans_as_npz_png_or_a_folder(tiny, tmp_path, capsys):
    planner = str(tiny / "planner")
    common = ["--model", planner, "--steps", "2", "--threads", "1"]
    assert main(["generate", "1,1:6,6", "--num", "2", "--out", str(tmp_path / "plan.npz"),
                 *common]) == 0
    with np.load(tmp_path / "plan.npz") as plan:
        assert plan["states"].shape == (2, 16, 4) and plan["actions"].shape == (2, 16, 2)
        np.testing.assert_allclose(plan["states"][:, 0], [[1, 1, 0, 0]] * 2, atol=1e-5)
        np.testing.assert_allclose(plan["states"][:, -1], [[6, 6, 0, 0]] * 2, atol=1e-5)
    assert main(["generate", "--num", "3", "--out", str(tmp_path / "plans.png"), *common]) == 0
    assert Image.open(tmp_path / "plans.png").size == (8 * 48, 8 * 48)
    assert main(["generate", "--num", "2", "--out", str(tmp_path / "folder"), *common]) == 0
    assert sorted(p.name for p in (tmp_path / "folder").iterdir()) == [
        "0000.npz", "0001.npz", "plans.png"]


def test_command_line_mistakes_are_refused_before_planning(tiny, tmp_path, capsys):
    planner = str(tiny / "planner")
    assert main(["generate", "0,0:6,6", "--model", planner, "--out",
                 str(tmp_path / "x.npz")]) == 2
    assert "the start (0.0, 0.0) lies in a wall" in capsys.readouterr().err
    assert main(["generate", "1,1", "--model", planner, "--out", str(tmp_path / "x.npz")]) == 2
    assert 'write them as "x,y:x,y"' in capsys.readouterr().err
    assert main(["generate", "1,1:6,6", "--model", planner, "--out",
                 str(tmp_path / "x.wav")]) == 2
    assert "not as .wav" in capsys.readouterr().err
    assert main(["rl", "dataset", "--out", str(tmp_path / "data.csv")]) == 2
    assert "end the name with .npz" in capsys.readouterr().err
    assert main(["train", "planner", "--dataset", str(tmp_path / "none.npz"),
                 "--output-dir", str(tmp_path / "p")]) == 2
    assert "no dataset file" in capsys.readouterr().err
