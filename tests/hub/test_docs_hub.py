"""Every python block of docs/hub.md runs, in order, in one namespace, against the local test Hub
(tests/hub_server.py): the repos the doc names are first created there with tiny models.

The doc's example commit id (``3f2c1d9``) is given to a real commit of ``me/my-unet`` by renaming
that commit on the test server, so the block runs unchanged."""

import os
from pathlib import Path

import pytest
import torch
from doc_blocks import run_blocks

DOC = Path(__file__).resolve().parents[2] / "docs" / "hub.md"
DOC_COMMIT = "3f2c1d9"


def tiny_unet(seed: int):
    from diffusion_kernel import UNet2DModel

    torch.manual_seed(seed)
    return UNet2DModel(sample_size=8, in_channels=3, out_channels=3, block_out_channels=(8, 16),
                       norm_num_groups=4, down_block_types=("DownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "UpBlock2D"))


def rename_commit(hub, repo_id: str, old: str, new: str) -> None:
    """Gives the head commit `old` of a repo the id `new` (it must have no child yet)."""
    with hub.lock:
        repo = hub.repos[repo_id]
        assert all(c.parent != old for c in repo.commits.values()), "the commit has children"
        commit = repo.commits.pop(old)
        commit.oid = new
        repo.commits[new] = commit
        for refs in (repo.branches, repo.tags):
            for name, oid in refs.items():
                if oid == old:
                    refs[name] = new


@pytest.fixture
def doc_repos(hub, upload, tmp_path):
    """The repos docs/hub.md reads: ``google/ddpm-cat-256`` (a tiny DDPM pipeline) and
    ``me/my-unet`` with the tag ``v1.0`` (at commit 3f2c1d9...), a branch ``dev``, the pull request
    ``refs/pr/1`` and a newer ``main``, already loaded once (the doc's offline block says "after
    a first load"). Returns {revision: the UNet pushed there}."""
    from diffusion_kernel import DDPMPipeline, DDPMScheduler, UNet2DModel
    from huggingface_hub import HfApi

    pipeline = DDPMPipeline(unet=tiny_unet(0), scheduler=DDPMScheduler(num_train_timesteps=50))
    pipeline.save_pretrained(tmp_path / "ddpm")
    upload(tmp_path / "ddpm", "google/ddpm-cat-256")

    versions = {name: tiny_unet(seed) for seed, name in enumerate(("v1.0", "dev", "pr", "main"))}
    for name, model in versions.items():
        model.save_pretrained(tmp_path / name)
    first = upload(tmp_path / "v1.0", "me/my-unet")
    renamed = DOC_COMMIT + first[len(DOC_COMMIT):]
    rename_commit(hub, "me/my-unet", first, renamed)
    hub.create_tag("me/my-unet", "v1.0")
    upload(tmp_path / "dev", "me/my-unet", revision="dev")
    HfApi().upload_folder(repo_id="me/my-unet", folder_path=os.fspath(tmp_path / "pr"),
                          create_pr=True)
    upload(tmp_path / "main", "me/my-unet")
    UNet2DModel.from_pretrained("me/my-unet")
    return versions


def test_every_python_block_of_the_hub_doc_runs(doc_repos, hub, tmp_path, monkeypatch):
    from hub_toys import same_weights

    text = DOC.read_text()
    assert DOC_COMMIT in text, "the doc's example commit id changed: update DOC_COMMIT"
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    namespace = run_blocks(text, "docs/hub.md", {"__name__": "docs_hub"})

    # What the blocks claim happened, checked on the server.
    assert type(namespace["pipe"]).__name__ == "DDPMPipeline"
    assert same_weights(namespace["unet"], doc_repos["main"])          # the offline load
    assert "diffusion_pytorch_model.fp16.safetensors" in hub.repos["me/my-unet"].resolve(
        "main").files
    assert "scheduler_config.json" in hub.repos["me/my-pipeline-scheduler"].resolve(
        "main").files
    pipeline_repo = hub.repos["me/my-pipeline"]
    assert "model_index.json" in pipeline_repo.resolve("dev").files
    assert any(b.startswith("refs/pr/") for b in pipeline_repo.branches)
