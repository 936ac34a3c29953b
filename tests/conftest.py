"""Shared fixtures for the whole suite."""

import os
import socket
import sys

import pytest

# The suite never reaches the internet: every Hub access goes to the test server or the cache.
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("HF_HUB_DISABLE_UPDATE_CHECK", "1")
# Plain HTTP downloads and single-commit uploads: the test Hub speaks no Xet.
os.environ["HF_HUB_DISABLE_XET"] = "1"


def _reserve_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# huggingface_hub reads HF_ENDPOINT once, at import: point it at the test Hub before anything
# imports it (the server starts on this port when a test first asks for it).
HUB_PORT = _reserve_port()
HUB_URL = f"http://127.0.0.1:{HUB_PORT}"
os.environ["HF_ENDPOINT"] = HUB_URL
HUB_TOKEN = "hf_test_token_for_the_local_hub"


def _point_hub_client_at(url: str) -> None:
    """For a huggingface_hub imported before this file ran: patch what it read at import."""
    constants = sys.modules.get("huggingface_hub.constants")
    if constants is None:
        return
    constants.ENDPOINT = url
    constants.HUGGINGFACE_CO_URL_TEMPLATE = url + "/{repo_id}/resolve/{revision}/{filename}"
    constants.HF_HUB_DISABLE_XET = True
    constants.HF_HUB_DISABLE_TELEMETRY = True


_point_hub_client_at(HUB_URL)


@pytest.fixture(autouse=True)
def _deterministic_torch():
    import torch

    torch.manual_seed(0)
    yield


@pytest.fixture(scope="session")
def hub_server():
    """The session's Hub-compatible server on 127.0.0.1 (``tests/hub_server.py``)."""
    from hub_server import HubServer

    try:
        server = HubServer(port=HUB_PORT, token=HUB_TOKEN).start()
    except OSError:  # the reserved port was taken meanwhile: serve elsewhere, point there
        server = HubServer(port=0, token=HUB_TOKEN).start()
        os.environ["HF_ENDPOINT"] = server.url
    _point_hub_client_at(server.url)
    yield server
    server.stop()


@pytest.fixture
def hub(hub_server, tmp_path, monkeypatch):
    """A fresh, empty Hub for one test, with its own HF_HOME/cache and a write token in the
    environment; offline mode off. Returns the server (``hub.downloads(repo)``, ``hub.commit``...).

    Outgoing connections to anything but 127.0.0.1 fail at once (and are recorded in
    ``hub.outside_attempts``), so a test notices a request that would leave the machine."""
    import huggingface_hub.constants as constants

    hub_server.reset()
    home = tmp_path / "hf_home"
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_TOKEN", HUB_TOKEN)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    for name, value in {
        "HF_HOME": str(home), "HF_HUB_CACHE": str(home / "hub"),
        "HUGGINGFACE_HUB_CACHE": str(home / "hub"), "HF_ASSETS_CACHE": str(home / "assets"),
        "HF_TOKEN_PATH": str(home / "token"),
        "HF_STORED_TOKENS_PATH": str(home / "stored_tokens"), "HF_XET_CACHE": str(home / "xet"),
        "HF_HUB_OFFLINE": False,
    }.items():
        monkeypatch.setattr(constants, name, value, raising=False)

    attempts: list = []
    original = socket.getaddrinfo

    def local_only(host, *args, **kwargs):
        if host not in ("127.0.0.1", "localhost", "::1"):
            attempts.append(host)
            raise socket.gaierror(f"test Hub: refusing to resolve {host!r} (tests stay local)")
        return original(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", local_only)
    hub_server.outside_attempts = attempts
    yield hub_server
    assert not attempts, f"a request tried to leave 127.0.0.1: {attempts}"
