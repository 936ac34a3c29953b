"""Loading pipeline and component code from files: community pipelines published to the test Hub
and loaded by name, a repo's pipeline.py, a local file, a pinned revision, component classes
defined in a repo, and the trust_remote_code check on every Hub path."""

import hashlib
import json
import shutil

import pytest
from conftest import COMMUNITY
from diffusion_kernel import RemoteCodeError, hookimpl, plugin_manager, registry
from diffusion_kernel.cli import main
from diffusion_kernel.errors import PipelineError
from diffusion_kernel.pipelines import DiffusionPipeline

VERSIONED = '''from diffusion_kernel import StableDiffusionPipeline


class VersionedPipeline(StableDiffusionPipeline):
    """A pipeline that says which version of its file it is."""

    VERSION = {version}
'''

REMOTE_UNET = '''from diffusion_kernel import UNet2DConditionModel


class RepoUNet(UNet2DConditionModel):
    """A UNet class that ships in the repo, beside its weights."""
'''


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def published(hub, monkeypatch, capsys):
    """The community folder published with the CLI to the repo of DIFFUSION_KERNEL_COMMUNITY_REPO;
    returns the repo's head commit."""
    monkeypatch.setenv("DIFFUSION_KERNEL_COMMUNITY_REPO", "dk-tests/community")
    assert main(["community", "publish", "--folder", str(COMMUNITY)]) == 0
    capsys.readouterr()
    return hub.repos["dk-tests/community"].branches["main"]


def test_publish_puts_each_pipeline_in_its_folder(published, hub):
    files = hub.repos["dk-tests/community"].commits[published].files
    for name in ("lpw_stable_diffusion", "interpolate_stable_diffusion",
                 "composable_stable_diffusion", "panorama_stable_diffusion"):
        assert files[f"{name}/pipeline.py"] == (COMMUNITY / f"{name}.py").read_bytes()


def test_list_shows_local_and_hub_pipelines(published, capsys):
    assert main(["community", "list", "--folder", str(COMMUNITY)]) == 0
    local, remote = capsys.readouterr().out.splitlines()
    assert local.startswith("local") and "panorama_stable_diffusion" in local
    assert remote.startswith("hub (dk-tests/community)") and "lpw_stable_diffusion" in remote


def test_by_name_without_trust_names_repo_file_revision_and_sha256(published, sd_folder):
    with pytest.raises(RemoteCodeError) as error:
        DiffusionPipeline.from_pretrained(sd_folder, custom_pipeline="panorama_stable_diffusion")
    message = str(error.value)
    assert "'dk-tests/community'" in message
    assert "'panorama_stable_diffusion/pipeline.py'" in message
    assert published in message
    assert sha256((COMMUNITY / "panorama_stable_diffusion.py").read_bytes()) in message
    assert "trust_remote_code=True" in message
    assert "PanoramaPipeline" not in registry.pipelines


def test_by_name_with_trust_loads_and_registers_the_class(published, sd_folder):
    pipe = DiffusionPipeline.from_pretrained(sd_folder, custom_pipeline="panorama_stable_diffusion",
                                             trust_remote_code=True)
    assert type(pipe).__name__ == "PanoramaPipeline"
    assert registry.pipelines.get("PanoramaPipeline") is type(pipe)
    assert type(pipe.unet).__name__ == "UNet2DConditionModel"


def test_unknown_community_name_is_a_clear_error(published, sd_folder):
    with pytest.raises(Exception, match="no_such_pipeline/pipeline.py"):
        DiffusionPipeline.from_pretrained(sd_folder, custom_pipeline="no_such_pipeline",
                                          trust_remote_code=True)


@pytest.fixture
def versioned_repo(hub):
    """Hub repo alice/versioned with pipeline.py at VERSION 1, then 2; returns both commits."""
    first = hub.commit("alice/versioned", {"pipeline.py": VERSIONED.format(version=1).encode()})
    second = hub.commit("alice/versioned", {"pipeline.py": VERSIONED.format(version=2).encode()})
    return first, second


def test_by_repo_id_loads_pipeline_py_of_the_head(versioned_repo, sd_folder):
    pipe = DiffusionPipeline.from_pretrained(sd_folder, custom_pipeline="alice/versioned",
                                             trust_remote_code=True)
    assert type(pipe).__name__ == "VersionedPipeline" and pipe.VERSION == 2


def test_custom_revision_pins_the_code(versioned_repo, sd_folder):
    first, _ = versioned_repo
    pipe = DiffusionPipeline.from_pretrained(sd_folder, custom_pipeline="alice/versioned",
                                             custom_revision=first, trust_remote_code=True)
    assert pipe.VERSION == 1
    assert registry.pipelines.get("VersionedPipeline") is type(pipe)  # the newest load wins


def test_by_repo_id_without_trust_names_the_pinned_commit(versioned_repo, sd_folder):
    first, _ = versioned_repo
    with pytest.raises(RemoteCodeError) as error:
        DiffusionPipeline.from_pretrained(sd_folder, custom_pipeline="alice/versioned",
                                          custom_revision=first)
    message = str(error.value)
    assert "'alice/versioned'" in message and "'pipeline.py'" in message and first in message
    assert sha256(VERSIONED.format(version=1).encode()) in message


def test_local_file_and_folder_need_no_trust_flag(tmp_path, sd_folder):
    (tmp_path / "pipeline.py").write_text(VERSIONED.format(version=3))
    for source in (tmp_path / "pipeline.py", tmp_path):
        pipe = DiffusionPipeline.from_pretrained(sd_folder, custom_pipeline=str(source))
        assert type(pipe).__name__ == "VersionedPipeline" and pipe.VERSION == 3


def test_file_without_exactly_one_pipeline_class_is_refused(tmp_path, sd_folder):
    path = tmp_path / "two.py"
    path.write_text(VERSIONED.format(version=1) + "\n\nclass Other(VersionedPipeline):\n    pass\n")
    with pytest.raises(PipelineError, match="exactly one DiffusionPipeline subclass"):
        DiffusionPipeline.from_pretrained(sd_folder, custom_pipeline=str(path))


# Components ----------------------------------------------------------------------------------
def with_unet_class(sd_folder, target, library, class_name, code=None):
    """A copy of the tiny checkpoint whose model_index.json names the UNet [library, class]."""
    shutil.copytree(sd_folder, target)
    index = json.loads((target / "model_index.json").read_text())
    index["unet"] = [library, class_name]
    (target / "model_index.json").write_text(json.dumps(index))
    if code is not None:
        (target / "unet" / f"{library}.py").write_text(code)
    return target


def upload(hub, folder, repo_id):
    return hub.commit(repo_id, {p.relative_to(folder).as_posix(): p.read_bytes()
                                for p in folder.rglob("*") if p.is_file()})


def test_component_class_from_the_hub_needs_trust(hub, tmp_path, sd_folder):
    folder = with_unet_class(sd_folder, tmp_path / "m", "repo_unet", "RepoUNet", REMOTE_UNET)
    commit = upload(hub, folder, "alice/custom-unet")
    with pytest.raises(RemoteCodeError) as error:
        DiffusionPipeline.from_pretrained("alice/custom-unet")
    message = str(error.value)
    assert "'alice/custom-unet'" in message and "'unet/repo_unet.py'" in message
    assert commit in message and sha256(REMOTE_UNET.encode()) in message
    pipe = DiffusionPipeline.from_pretrained("alice/custom-unet", trust_remote_code=True)
    assert type(pipe.unet).__name__ == "RepoUNet"
    assert registry.models.get("RepoUNet") is type(pipe.unet)


def test_component_class_in_a_local_folder_needs_no_trust(tmp_path, sd_folder):
    folder = with_unet_class(sd_folder, tmp_path / "m", "repo_unet", "RepoUNet", REMOTE_UNET)
    pipe = DiffusionPipeline.from_pretrained(folder)
    assert type(pipe.unet).__name__ == "RepoUNet"


class ThirdPartyPlugin:
    @hookimpl
    def register_models(self, register):
        from diffusion_kernel import UNet2DConditionModel

        register(type("ThirdPartyUNet", (UNet2DConditionModel,), {}))


@pytest.fixture
def third_party():
    plugin_manager.register_plugin(ThirdPartyPlugin(), name="third-party-unets")
    yield
    plugin_manager.unregister_plugin("third-party-unets")


def test_component_of_an_installed_third_party_plugin_loads_through_the_registry(
        third_party, tmp_path, sd_folder):
    folder = with_unet_class(sd_folder, tmp_path / "m", "third_party_unets", "ThirdPartyUNet")
    pipe = DiffusionPipeline.from_pretrained(folder)
    assert type(pipe.unet) is registry.models.get("ThirdPartyUNet")


def test_component_of_an_unknown_library_is_a_clear_error(tmp_path, sd_folder):
    folder = with_unet_class(sd_folder, tmp_path / "m", "not_installed", "MissingUNet")
    with pytest.raises(PipelineError) as error:
        DiffusionPipeline.from_pretrained(folder)
    message = str(error.value)
    assert "'unet'" in message and "'not_installed'" in message and "'MissingUNet'" in message
    assert "install the diffusion-kernel plugin" in message


def test_missing_local_file_or_pipeline_py_is_a_clear_error(tmp_path, sd_folder):
    for source, missing in ((tmp_path / "nope.py", "nope.py"), (tmp_path, "pipeline.py")):
        with pytest.raises(PipelineError, match=f"{missing}' does not exist"):
            DiffusionPipeline.from_pretrained(sd_folder, custom_pipeline=str(source))


def test_by_name_loads_from_the_cache_when_offline(published, hub, sd_folder, monkeypatch):
    import huggingface_hub.constants as constants

    DiffusionPipeline.from_pretrained(sd_folder, custom_pipeline="composable_stable_diffusion",
                                      trust_remote_code=True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    hub.clear_log()
    pipe = DiffusionPipeline.from_pretrained(sd_folder,
                                             custom_pipeline="composable_stable_diffusion",
                                             trust_remote_code=True)
    assert type(pipe).__name__ == "ComposableStableDiffusionPipeline"
    with pytest.raises(RemoteCodeError, match=published):  # still checked offline
        DiffusionPipeline.from_pretrained(sd_folder, custom_pipeline="composable_stable_diffusion")
    assert hub.count() == 0  # nothing asked of the Hub
