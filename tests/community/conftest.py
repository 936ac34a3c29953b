"""Fixtures of the community pipeline tests: the tiny Stable Diffusion checkpoint of the vision
tests, the plain pipeline on it, and each community pipeline class loaded from its local file."""

from pathlib import Path

import pytest
from vision import tiny
from vision.tiny import single_thread  # noqa: F401

COMMUNITY = Path(__file__).resolve().parents[2] / "community"


@pytest.fixture(scope="session")
def sd_folder():
    return tiny.stable_diffusion_folder()


@pytest.fixture(scope="session")
def plain(sd_folder):
    from diffusion_kernel import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(sd_folder)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module", autouse=True)
def forget_remote_code():
    """Classes loaded from files register under plugin "remote-code"; other test folders must
    not see them."""
    yield
    from diffusion_kernel import registry

    for reg in registry:
        reg.remove_plugin("remote-code")


@pytest.fixture(scope="module")
def community(plain):
    """``community("lpw_stable_diffusion")``: that community pipeline, loaded from its file
    (a local path: no trust flag), on the plain pipeline's components."""
    from diffusion_kernel.remote_code import load_pipeline_class

    def build(name):
        pipe = load_pipeline_class(COMMUNITY / f"{name}.py")(**plain.components)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    return build

