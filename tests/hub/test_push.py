"""Pushing models, schedulers and pipelines to a Hub repo, and loading back what was pushed."""

import pytest
import torch
from diffusion_kernel import ConfigError, DiffusionPipeline, FileAccessError, SchedulerMixin
from hub_toys import HubToyModel, HubToyPipeline, HubToyScheduler, same_weights, toy_model
from huggingface_hub import HfApi, hf_hub_download

REPO = "tester/pushed"


def _files(repo, revision=None):
    return HfApi().list_repo_files(repo, revision=revision)


def test_model_push_to_hub_creates_the_repo_and_uploads_config_and_weights(hub):
    model = toy_model(seed=1)
    url = model.push_to_hub(REPO)
    head = HfApi().repo_info(REPO).sha
    assert url == f"{hub.url}/{REPO}/commit/{head}"
    assert _files(REPO) == [".gitattributes", "config.json",
                            "diffusion_pytorch_model.safetensors"]
    assert same_weights(HubToyModel.from_pretrained(REPO), model)


def test_model_push_commit_message_is_recorded(hub):
    toy_model().push_to_hub(REPO, commit_message="first weights")
    assert HfApi().list_repo_commits(REPO)[0].title == "first weights"


def test_model_push_variant_writes_the_variant_file_names(hub):
    model = toy_model(seed=2).half()
    model.push_to_hub(REPO, variant="fp16")
    assert "diffusion_pytorch_model.fp16.safetensors" in _files(REPO)
    loaded = HubToyModel.from_pretrained(REPO, variant="fp16", torch_dtype=torch.float16)
    assert same_weights(loaded, model)


def test_push_to_a_branch_leaves_main_alone(hub):
    main, dev = toy_model(seed=1), toy_model(seed=2)
    main.push_to_hub(REPO)
    dev.push_to_hub(REPO, revision="dev")
    assert same_weights(HubToyModel.from_pretrained(REPO), main)
    assert same_weights(HubToyModel.from_pretrained(REPO, revision="dev"), dev)


def test_push_as_a_pull_request(hub):
    toy_model(seed=1).push_to_hub(REPO)
    proposed = toy_model(seed=2)
    proposed.push_to_hub(REPO, create_pr=True)
    assert same_weights(HubToyModel.from_pretrained(REPO, revision="refs/pr/1"), proposed)


def test_save_pretrained_with_push_uploads_the_saved_folder_to_repo_id(hub, tmp_path):
    model = toy_model(seed=3)
    model.save_pretrained(tmp_path / "local", push_to_hub=True, repo_id=REPO)
    for name in ("config.json", "diffusion_pytorch_model.safetensors"):
        local = (tmp_path / "local" / name).read_bytes()
        assert open(hf_hub_download(REPO, name), "rb").read() == local


def test_save_pretrained_with_push_defaults_the_repo_to_the_folder_name(hub, tmp_path):
    toy_model().save_pretrained(tmp_path / "my-toy", push_to_hub=True)
    assert "config.json" in _files("test-user/my-toy")  # the token owner's namespace


def test_save_pretrained_with_push_passes_commit_options(hub, tmp_path):
    toy_model().save_pretrained(tmp_path / "m", push_to_hub=True, repo_id=REPO,
                                commit_message="from save_pretrained", revision="dev")
    assert HfApi().list_repo_commits(REPO, revision="dev")[0].title == "from save_pretrained"
    assert _files(REPO) == [".gitattributes"]  # main untouched


def test_save_pretrained_with_an_unknown_push_option_is_a_config_error(hub, tmp_path):
    with pytest.raises(ConfigError, match="unknown options \\['privat'\\]"):
        toy_model().save_pretrained(tmp_path / "m", push_to_hub=True, repo_id=REPO, privat=True)


def test_scheduler_push_to_hub_and_back(hub):
    HubToyScheduler(num_train_timesteps=42).push_to_hub(REPO)
    assert _files(REPO) == [".gitattributes", "scheduler_config.json"]
    loaded = SchedulerMixin.from_pretrained(REPO)
    assert type(loaded) is HubToyScheduler and loaded.config.num_train_timesteps == 42


def test_scheduler_save_pretrained_with_push(hub, tmp_path):
    HubToyScheduler(beta_end=0.05).save_pretrained(tmp_path / "sched", push_to_hub=True,
                                                   repo_id=REPO)
    assert HubToyScheduler.from_pretrained(REPO).config.beta_end == 0.05


def test_pipeline_push_to_hub_and_back(hub):
    unet = toy_model(seed=4)
    HubToyPipeline(unet=unet, scheduler=HubToyScheduler(num_train_timesteps=9)).push_to_hub(REPO)
    assert _files(REPO) == [".gitattributes", "model_index.json", "scheduler/scheduler_config.json",
                            "unet/config.json", "unet/diffusion_pytorch_model.safetensors"]
    pipe = DiffusionPipeline.from_pretrained(REPO)
    assert same_weights(pipe.unet, unet) and pipe.scheduler.config.num_train_timesteps == 9


def test_pipeline_save_pretrained_with_push_and_variant(hub, tmp_path):
    unet = toy_model(seed=5).half()
    pipe = HubToyPipeline(unet=unet, scheduler=HubToyScheduler())
    pipe.save_pretrained(tmp_path / "pipe", variant="fp16", push_to_hub=True, repo_id=REPO)
    assert "unet/diffusion_pytorch_model.fp16.safetensors" in _files(REPO)
    loaded = DiffusionPipeline.from_pretrained(REPO, variant="fp16", torch_dtype=torch.float16)
    assert same_weights(loaded.unet, unet)


def test_push_without_a_token_says_to_log_in(hub, monkeypatch):
    monkeypatch.delenv("HF_TOKEN")
    with pytest.raises(FileAccessError, match="refused to push to 'tester/pushed'.*log in"):
        toy_model().push_to_hub(REPO)


def test_push_to_an_invalid_repo_id_is_refused_before_saving(hub, monkeypatch):
    saved = []
    monkeypatch.setattr(HubToyModel, "save_pretrained", lambda *a, **k: saved.append(a))
    with pytest.raises(FileAccessError, match="not a valid Hub repo id"):
        toy_model().push_to_hub("bad repo id!")
    assert saved == [] and hub.count("POST") == 0


def test_a_private_push_loads_with_the_token_only(hub, monkeypatch, tmp_path):
    model = toy_model(seed=7)
    model.push_to_hub(REPO, private=True)
    assert hub.repos[REPO].private
    monkeypatch.delenv("HF_TOKEN")
    with pytest.raises(FileAccessError, match="does not exist or is private.*token="):
        HubToyModel.from_pretrained(REPO)
    assert same_weights(HubToyModel.from_pretrained(REPO, token=hub.token), model)
