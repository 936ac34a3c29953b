"""The molecules kinds of the kernel's verbs: generate conformers of a SMILES into SDF/XYZ,
evaluate against reference conformers, train a model."""

import json

import pytest
from diffusion_kernel.cli import main
from rdkit import Chem


@pytest.fixture
def tiny_folder(tiny_pipeline, tmp_path):
    tiny_pipeline.save_pretrained(tmp_path / "tiny")
    return str(tmp_path / "tiny")


def test_generate_writes_every_conformer_to_one_sdf(tiny_folder, tmp_path, capsys):
    out = tmp_path / "confs.sdf"
    assert main(["generate", "CCO", "--model", tiny_folder, "--num", "3", "--steps", "4",
                 "--out", str(out), "--threads", "1"]) == 0
    records = list(Chem.SDMolSupplier(str(out), removeHs=False))
    assert [r.GetProp("_Name") for r in records] == [f"CCO conformer {k}" for k in range(3)]
    assert all(r.GetNumAtoms() == 9 for r in records)
    assert "wrote 3 conformers" in capsys.readouterr().out


def test_generate_into_a_folder_writes_one_sdf_per_conformer(tiny_folder, tmp_path):
    out = tmp_path / "confs"
    assert main(["generate", "c1ccccc1O", "--model", tiny_folder, "--num", "2", "--steps", "2",
                 "--out", str(out), "--threads", "1"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["0000.sdf", "0001.sdf"]


def test_generate_refuses_bad_input_before_writing(tiny_folder, tmp_path, capsys):
    out = tmp_path / "confs.sdf"
    assert main(["generate", "C1CC", "--model", tiny_folder, "--num", "2", "--out",
                 str(out)]) == 2
    assert "cannot parse SMILES 'C1CC'" in capsys.readouterr().err
    assert main(["generate", "CCO", "--model", tiny_folder, "--out",
                 str(tmp_path / "confs.png")]) == 2
    assert "not as .png" in capsys.readouterr().err
    assert list(tmp_path.glob("confs*")) == []


def test_evaluate_scores_a_baseline_and_writes_json(tmp_path, capsys):
    report = tmp_path / "report.json"
    assert main(["evaluate", "molecules", "--baseline", "etkdg", "--limit", "2", "--json",
                 str(report), "--threads", "1"]) == 0
    printed = capsys.readouterr().out
    assert "etkdg: 2 molecules" in printed and "COV-R@0.5 Å" in printed
    data = json.loads(report.read_text())
    assert len(data["molecules"]) == 2 and 0 <= data["summary"]["cov_r_mean"] <= 1


def test_evaluate_a_model_on_a_data_file(tiny_folder, small_references, tmp_path, capsys):
    small_references.save(tmp_path / "refs.npz")
    assert main(["evaluate", "molecules", "--model", tiny_folder, "--data",
                 str(tmp_path / "refs.npz"), "--limit", "1", "--steps", "3"]) == 0
    assert f"{tiny_folder}: 1 molecules, {2 * small_references.molecules[0].GetNumConformers()}" \
        " conformers" in capsys.readouterr().out


def test_train_writes_a_pipeline_that_generates(small_references, tmp_path, capsys):
    small_references.subset([0, 2]).save(tmp_path / "refs.npz")  # no nitrogen in these two
    out = tmp_path / "trained"
    assert main(["train", "molecules", "--data", str(tmp_path / "refs.npz"), "--output-dir",
                 str(out), "--max-steps", "3", "--batch-size", "4", "--hidden-dim", "8",
                 "--num-convs", "1", "--num-convs-local", "1", "--threads", "1"]) == 0
    config = json.loads((out / "model" / "config.json").read_text())
    assert config["hidden_dim"] == 8 and config["elements"] == [1, 6, 8, 9]
    assert main(["generate", "CO", "--model", str(out), "--num", "1", "--steps", "2",
                 "--out", str(tmp_path / "one.xyz")]) == 0
    assert (tmp_path / "one.xyz").read_text().splitlines()[0] == "6"
    assert main(["generate", "CN", "--model", str(out), "--num", "1", "--out",
                 str(tmp_path / "n.sdf")]) == 2
    assert "contains ['N']" in capsys.readouterr().err
