"""Fixtures of the Hub tests: the toy classes registered as a plugin, and upload helpers."""

import os

import pytest
from hub_toys import HubToysPlugin


@pytest.fixture(scope="session", autouse=True)
def hub_toys_plugin():
    from diffusion_kernel import plugin_manager

    plugin_manager.register_plugin(HubToysPlugin(), name="hub-toys")
    yield
    plugin_manager.unregister_plugin("hub-toys")


@pytest.fixture(autouse=True)
def _quick_retries(monkeypatch):
    """The kernel's retries after a server error wait 1 s, then 2 s: not in tests (the tests of
    the waits themselves set their own)."""
    monkeypatch.setattr("diffusion_kernel.hub.RETRY_BACKOFF_S", 0.001)


@pytest.fixture
def upload(hub):
    """``upload(folder, repo_id, revision=None)``: put a local folder on the test Hub with the
    real client (independent of the kernel's own push); returns the commit id."""
    from huggingface_hub import HfApi

    def upload(folder, repo_id, revision=None, **kwargs):
        api = HfApi()
        api.create_repo(repo_id, exist_ok=True)
        if revision is not None and revision != "main":
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        return api.upload_folder(repo_id=repo_id, folder_path=os.fspath(folder),
                                 revision=revision, **kwargs).oid

    return upload


@pytest.fixture
def offline(monkeypatch):
    """``offline()`` switches on HF_HUB_OFFLINE=1 for the rest of the test (the variable is read
    by huggingface_hub at import, so its constant is set too)."""
    import huggingface_hub.constants as constants

    def switch_on():
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)

    return switch_on
