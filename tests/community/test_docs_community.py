"""Every python block of docs/community.md runs, in order, in one namespace, from the repository
root, with `model` set to the tiny Stable Diffusion checkpoint and the test Hub serving."""

import pytest
from conftest import COMMUNITY
from doc_blocks import python_blocks, run_blocks

DOC = COMMUNITY.parent / "docs" / "community.md"


@pytest.mark.filterwarnings("error::RuntimeWarning")  # e.g. NaN pixels cast to uint8
def test_every_python_block_of_the_community_doc_runs(hub, sd_folder, monkeypatch):
    monkeypatch.chdir(COMMUNITY.parent)
    monkeypatch.setenv("DIFFUSION_KERNEL_COMMUNITY_REPO", "dk-docs/community")
    text = DOC.read_text()
    assert len(python_blocks(text)) >= 7
    namespace = run_blocks(text, "docs/community.md",
                           {"__name__": "docs_community", "model": str(sd_folder)})
    assert type(namespace["panorama"]).__name__ == "PanoramaPipeline"
    assert namespace["wide"].size == (96, 32)
    assert len(namespace["frames"]) == 4 and all(p.is_file() for p in namespace["frames"])
    assert "dk-docs/community" in hub.repos


def test_the_doc_names_the_real_environment_variable_and_layout():
    from diffusion_kernel import remote_code

    text = DOC.read_text()
    assert f"`{remote_code.COMMUNITY_REPO_ENV}`" in text
    assert f"`<name>/{remote_code.PIPELINE_FILE}`" in text
    assert f"`{remote_code.community_repo()}`" in text or "`diffusion-kernel/community`" in text
