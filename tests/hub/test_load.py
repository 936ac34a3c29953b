"""Loading models, schedulers and pipelines by Hub repo id: revisions, subfolders, variants,
dtypes, the cache, offline mode, and fetching only the files a load needs."""

import pytest
import torch
from diffusion_kernel import DiffusionPipeline, ModelMixin, SchedulerMixin
from hub_toys import HubToyModel, HubToyPipeline, HubToyScheduler, same_weights, toy_model
from huggingface_hub import HfApi

REPO = "tester/toy-model"


def _save(model, folder, **kwargs):
    model.save_pretrained(folder, **kwargs)
    return folder


def test_model_loads_by_repo_id_with_its_weights(hub, upload, tmp_path):
    model = toy_model(seed=1, in_features=5, out_features=2)
    upload(_save(model, tmp_path / "m"), REPO)
    loaded = HubToyModel.from_pretrained(REPO)
    assert loaded.config.in_features == 5 and loaded.config.out_features == 2
    assert same_weights(loaded, model)


def test_model_mixin_finds_the_class_from_the_config(hub, upload, tmp_path):
    upload(_save(toy_model(), tmp_path / "m"), REPO)
    assert type(ModelMixin.from_pretrained(REPO)) is HubToyModel


def test_load_fetches_only_the_config_and_the_weights(hub, upload, tmp_path):
    folder = _save(toy_model(), tmp_path / "m")
    (folder / "README.md").write_text("# a toy\n")
    (folder / "notes.txt").write_text("not needed\n")
    upload(folder, REPO)
    hub.clear_log()
    HubToyModel.from_pretrained(REPO)
    assert hub.downloads(REPO) == {f"{REPO}/config.json": 1,
                                   f"{REPO}/diffusion_pytorch_model.safetensors": 1}


def test_variant_load_does_not_download_the_full_precision_file(hub, upload, tmp_path):
    model = toy_model(seed=2)
    folder = _save(model, tmp_path / "m")
    _save(model.to(torch.float16), folder, variant="fp16")
    upload(folder, REPO)
    hub.clear_log()
    loaded = HubToyModel.from_pretrained(REPO, variant="fp16")
    assert hub.downloaded_files(REPO) == {"config.json",
                                          "diffusion_pytorch_model.fp16.safetensors"}
    assert loaded.dtype == torch.float32  # the model's own dtype unless torch_dtype is given
    assert same_weights(loaded.half(), model)


def test_safetensors_is_preferred_over_a_pickle_next_to_it(hub, upload, tmp_path):
    model = toy_model(seed=3)
    folder = _save(model, tmp_path / "m")
    torch.save({k: v * 0 for k, v in model.state_dict().items()},
               folder / "diffusion_pytorch_model.bin")
    upload(folder, REPO)
    hub.clear_log()
    loaded = HubToyModel.from_pretrained(REPO, allow_pickle=True)
    assert "diffusion_pytorch_model.bin" not in hub.downloaded_files(REPO)
    assert same_weights(loaded, model)


def test_revision_selects_a_branch_a_tag_or_a_commit(hub, upload, tmp_path):
    v1, v2, v3 = toy_model(seed=1), toy_model(seed=2), toy_model(seed=3)
    first = upload(_save(v1, tmp_path / "v1"), REPO)
    HfApi().create_tag(REPO, tag="v1.0")
    upload(_save(v2, tmp_path / "v2"), REPO)
    upload(_save(v3, tmp_path / "v3"), REPO, revision="dev")
    assert same_weights(HubToyModel.from_pretrained(REPO), v2)
    assert same_weights(HubToyModel.from_pretrained(REPO, revision="main"), v2)
    assert same_weights(HubToyModel.from_pretrained(REPO, revision="v1.0"), v1)
    assert same_weights(HubToyModel.from_pretrained(REPO, revision=first), v1)
    assert same_weights(HubToyModel.from_pretrained(REPO, revision="dev"), v3)


def test_a_new_commit_on_the_branch_is_picked_up(hub, upload, tmp_path):
    upload(_save(toy_model(seed=1), tmp_path / "v1"), REPO)
    HubToyModel.from_pretrained(REPO)
    newer = toy_model(seed=2)
    upload(_save(newer, tmp_path / "v2"), REPO)
    assert same_weights(HubToyModel.from_pretrained(REPO), newer)


def test_subfolder_loads_one_component_of_a_pipeline_repo(hub, upload, tmp_path):
    model = toy_model(seed=4)
    pipe = HubToyPipeline(unet=model, scheduler=HubToyScheduler())
    pipe.save_pretrained(tmp_path / "pipe")
    upload(tmp_path / "pipe", REPO)
    hub.clear_log()
    loaded = HubToyModel.from_pretrained(REPO, subfolder="unet")
    assert same_weights(loaded, model)
    assert hub.downloaded_files(REPO) == {"unet/config.json",
                                          "unet/diffusion_pytorch_model.safetensors"}


def test_torch_dtype_converts_the_weights(hub, upload, tmp_path):
    model = toy_model(seed=5)
    upload(_save(model, tmp_path / "m"), REPO)
    loaded = HubToyModel.from_pretrained(REPO, torch_dtype=torch.bfloat16)
    assert {p.dtype for p in loaded.parameters()} == {torch.bfloat16}
    assert torch.equal(loaded.proj.weight, model.proj.weight.to(torch.bfloat16))


def test_cache_dir_holds_the_download(hub, upload, tmp_path):
    upload(_save(toy_model(), tmp_path / "m"), REPO)
    cache = tmp_path / "my-cache"
    HubToyModel.from_pretrained(REPO, cache_dir=cache)
    cached = {p.name for p in (cache / "models--tester--toy-model" / "snapshots").rglob("*")}
    assert {"config.json", "diffusion_pytorch_model.safetensors"} <= cached


def test_a_second_load_reads_the_cache(hub, upload, tmp_path):
    upload(_save(toy_model(), tmp_path / "m"), REPO)
    HubToyModel.from_pretrained(REPO)
    hub.clear_log()
    HubToyModel.from_pretrained(REPO)
    assert hub.downloads(REPO) == {}


def test_local_files_only_loads_from_the_cache_without_any_request(hub, upload, tmp_path):
    model = toy_model(seed=6)
    upload(_save(model, tmp_path / "m"), REPO)
    HubToyModel.from_pretrained(REPO)
    hub.clear_log()
    loaded = HubToyModel.from_pretrained(REPO, local_files_only=True)
    assert hub.count() == 0
    assert same_weights(loaded, model)


def test_offline_mode_loads_what_was_downloaded_before(hub, upload, tmp_path, offline):
    model = toy_model(seed=7)
    upload(_save(model, tmp_path / "m"), REPO)
    HubToyModel.from_pretrained(REPO)
    hub.clear_log()
    offline()
    assert same_weights(HubToyModel.from_pretrained(REPO), model)
    assert hub.count() == 0


def test_offline_mode_loads_a_variant_while_other_files_were_never_fetched(
        hub, upload, tmp_path, offline):
    model = toy_model(seed=8)
    folder = _save(model, tmp_path / "m")
    _save(model.to(torch.float16), folder, variant="fp16")
    (folder / "README.md").write_text("# never downloaded\n")
    upload(folder, REPO)
    HubToyModel.from_pretrained(REPO, variant="fp16")
    hub.clear_log()
    offline()
    loaded = HubToyModel.from_pretrained(REPO, variant="fp16", torch_dtype=torch.float16)
    assert same_weights(loaded, model)
    assert hub.count() == 0


def test_offline_mode_loads_by_tag_and_by_commit(hub, upload, tmp_path, offline):
    model = toy_model(seed=9)
    commit = upload(_save(model, tmp_path / "m"), REPO)
    HfApi().create_tag(REPO, tag="v1")
    HubToyModel.from_pretrained(REPO, revision="v1")
    offline()
    assert same_weights(HubToyModel.from_pretrained(REPO, revision="v1"), model)
    assert same_weights(HubToyModel.from_pretrained(REPO, revision=commit), model)


def test_sharded_checkpoint_fetches_its_index_and_shards(hub, upload, tmp_path):
    model = toy_model(seed=10, in_features=16, out_features=16)
    folder = _save(model, tmp_path / "m", max_shard_size=700)
    shards = sorted(p.name for p in folder.glob("*-of-*.safetensors"))
    assert len(shards) >= 2
    upload(folder, REPO)
    hub.clear_log()
    assert same_weights(HubToyModel.from_pretrained(REPO), model)
    assert hub.downloaded_files(REPO) == {
        "config.json", "diffusion_pytorch_model.safetensors.index.json", *shards}


def test_scheduler_loads_by_repo_id_with_subfolder_and_revision(hub, upload, tmp_path):
    HubToyScheduler(num_train_timesteps=20).save_pretrained(tmp_path / "s" / "scheduler")
    upload(tmp_path / "s", REPO)
    HfApi().create_tag(REPO, tag="v1")
    HubToyScheduler(num_train_timesteps=30).save_pretrained(tmp_path / "s" / "scheduler")
    upload(tmp_path / "s", REPO)
    assert HubToyScheduler.from_pretrained(REPO, subfolder="scheduler").config[
        "num_train_timesteps"] == 30
    old = SchedulerMixin.from_pretrained(REPO, subfolder="scheduler", revision="v1")
    assert type(old) is HubToyScheduler and old.config.num_train_timesteps == 20


def test_scheduler_loads_offline_after_a_first_download(hub, upload, tmp_path, offline):
    HubToyScheduler(beta_end=0.03).save_pretrained(tmp_path / "s")
    upload(tmp_path / "s", REPO)
    HubToyScheduler.from_pretrained(REPO)
    offline()
    assert HubToyScheduler.from_pretrained(REPO).config.beta_end == 0.03


def _toy_pipeline_repo(upload, tmp_path, variant=None, seed=11):
    unet = toy_model(seed=seed)
    pipe = HubToyPipeline(unet=unet, scheduler=HubToyScheduler(num_train_timesteps=7))
    pipe.save_pretrained(tmp_path / "pipe")
    if variant:
        HubToyPipeline(unet=toy_model(seed=seed).half(), scheduler=pipe.scheduler
                       ).save_pretrained(tmp_path / "pipe", variant=variant)
    (tmp_path / "pipe" / "README.md").write_text("# pipeline card\n")
    upload(tmp_path / "pipe", REPO)
    return unet


def test_pipeline_loads_by_repo_id(hub, upload, tmp_path):
    unet = _toy_pipeline_repo(upload, tmp_path)
    hub.clear_log()
    pipe = DiffusionPipeline.from_pretrained(REPO)
    assert type(pipe) is HubToyPipeline
    assert same_weights(pipe.unet, unet)
    assert pipe.scheduler.config.num_train_timesteps == 7
    assert hub.downloaded_files(REPO) == {
        "model_index.json", "unet/config.json", "unet/diffusion_pytorch_model.safetensors",
        "scheduler/scheduler_config.json"}


def test_pipeline_variant_load_skips_the_full_precision_weights(hub, upload, tmp_path):
    unet = _toy_pipeline_repo(upload, tmp_path, variant="fp16")
    hub.clear_log()
    pipe = DiffusionPipeline.from_pretrained(REPO, variant="fp16", torch_dtype=torch.float16)
    assert "unet/diffusion_pytorch_model.safetensors" not in hub.downloaded_files(REPO)
    assert "unet/diffusion_pytorch_model.fp16.safetensors" in hub.downloaded_files(REPO)
    assert pipe.unet.dtype == torch.float16
    assert same_weights(pipe.unet, unet.half())


def test_pipeline_component_override_is_not_downloaded(hub, upload, tmp_path):
    _toy_pipeline_repo(upload, tmp_path)
    hub.clear_log()
    mine = HubToyScheduler(num_train_timesteps=3)
    pipe = DiffusionPipeline.from_pretrained(REPO, scheduler=mine)
    assert pipe.scheduler is mine
    assert not any(f.startswith("scheduler/") for f in hub.downloaded_files(REPO))


def test_pipeline_loads_offline_after_a_first_download(hub, upload, tmp_path, offline):
    unet = _toy_pipeline_repo(upload, tmp_path)
    DiffusionPipeline.from_pretrained(REPO)
    hub.clear_log()
    offline()
    pipe = DiffusionPipeline.from_pretrained(REPO)
    assert same_weights(pipe.unet, unet)
    assert hub.count() == 0


def test_pipeline_at_a_revision(hub, upload, tmp_path):
    old = _toy_pipeline_repo(upload, tmp_path, seed=1)
    HfApi().create_tag(REPO, tag="v1")
    new = _toy_pipeline_repo(upload, tmp_path, seed=2)
    assert same_weights(DiffusionPipeline.from_pretrained(REPO, revision="v1").unet, old)
    assert same_weights(DiffusionPipeline.from_pretrained(REPO).unet, new)


def test_hf_hub_offline_set_before_python_starts(hub, upload, tmp_path):
    """The user's way: HF_HUB_OFFLINE=1 in the environment of a new process, after a download."""
    import os
    import subprocess
    import sys

    model = toy_model(seed=12)
    upload(_save(model, tmp_path / "m"), REPO)
    HubToyModel.from_pretrained(REPO)
    hub.clear_log()
    script = (f"from hub_toys import HubToyModel\n"
              f"m = HubToyModel.from_pretrained({REPO!r})\n"
              f"print(float(m.proj.weight.sum()))\n")
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=os.path.dirname(__file__))
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert float(out.stdout.split()[-1]) == pytest.approx(model.proj.weight.sum().item())
    assert hub.count() == 0


def test_a_cached_load_asks_the_hub_only_where_the_branch_points(hub, upload, tmp_path):
    commit = upload(_save(toy_model(), tmp_path / "m"), REPO)
    HubToyModel.from_pretrained(REPO)
    hub.clear_log()
    HubToyModel.from_pretrained(REPO)
    assert [(r.method, r.path) for r in hub.requests] == [("GET", f"/api/models/{REPO}")]
    hub.clear_log()
    HubToyModel.from_pretrained(REPO, revision=commit)  # a commit never moves: no request
    assert hub.count() == 0


def test_a_first_load_lists_the_commit_and_fetches_two_files(hub, upload, tmp_path):
    commit = upload(_save(toy_model(), tmp_path / "m"), REPO)
    hub.clear_log()
    HubToyModel.from_pretrained(REPO)
    assert hub.count("GET", f"/api/models/{REPO}/tree/{commit}") <= 2
    assert hub.count("HEAD") == 2 and sum(hub.downloads(REPO).values()) == 2
    assert all(commit in r.path for r in hub.requests if r.path.startswith(("/cdn/", f"/{REPO}")))


def test_sharded_variant_fetches_only_the_variant_shards(hub, upload, tmp_path):
    model = toy_model(seed=13, in_features=16, out_features=16)
    folder = _save(model, tmp_path / "m", max_shard_size=700)
    _save(toy_model(seed=13, in_features=16, out_features=16).half(), folder, variant="fp16",
          max_shard_size=400)
    fp16_shards = {p.name for p in folder.glob("diffusion_pytorch_model.fp16-*.safetensors")}
    assert len(fp16_shards) >= 2
    upload(folder, REPO)
    hub.clear_log()
    loaded = HubToyModel.from_pretrained(REPO, variant="fp16", torch_dtype=torch.float16)
    assert hub.downloaded_files(REPO) == {
        "config.json", "diffusion_pytorch_model.safetensors.index.fp16.json", *fp16_shards}
    assert same_weights(loaded, model.half())
