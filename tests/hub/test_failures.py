"""When the Hub fails: server errors and dropped connections are retried a bounded number of
times with growing waits; an unreachable Hub is not retried; the error says which of offline,
unreachable or server error it was. Downloads are checked against the hashes the Hub publishes:
wrong bytes are deleted and fetched once more, then refused."""

import time

import huggingface_hub
import huggingface_hub.constants
import pytest
from diffusion_kernel import CheckpointError, FileAccessError, remote_code
from diffusion_kernel import hub as kernel_hub
from hub_server import free_port
from hub_toys import HubToyModel, same_weights, toy_model
from huggingface_hub import errors as hf_errors

REPO = "tester/flaky"
WEIGHTS = "diffusion_pytorch_model.safetensors"


@pytest.fixture
def pushed(hub):
    model = toy_model(seed=21)
    model.push_to_hub(REPO)
    hub.clear_log()
    return model


@pytest.fixture
def sleeps(monkeypatch):
    """Every wait of the kernel's retries and of huggingface_hub's, in seconds."""
    waited: list[float] = []
    monkeypatch.setattr("diffusion_kernel.hub.time.sleep", waited.append)
    monkeypatch.setattr("huggingface_hub.utils._http.time.sleep", waited.append)
    monkeypatch.setattr("huggingface_hub.file_download.time.sleep", waited.append)
    return waited


@pytest.fixture
def unreachable(monkeypatch):
    """Point the client at a port nothing listens on: every connection is refused."""
    url = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", url)
    monkeypatch.setattr(huggingface_hub.constants, "HUGGINGFACE_CO_URL_TEMPLATE",
                        url + "/{repo_id}/resolve/{revision}/{filename}")
    return url


def _blob(tmp_path, name=WEIGHTS):
    [link] = (tmp_path / "hf_home" / "hub").rglob(f"snapshots/*/{name}")
    return link.resolve()


# Retries -----------------------------------------------------------------------------------------
def test_a_one_off_server_error_on_the_weights_download_is_retried(hub, pushed):
    hub.inject_fault("GET", WEIGHTS, status=500)
    assert same_weights(HubToyModel.from_pretrained(REPO), pushed)
    assert hub.downloads(REPO)[f"{REPO}/{WEIGHTS}"] == 2


def test_a_connection_dropped_before_the_answer_is_retried(hub, pushed):
    hub.inject_fault("GET", f"/api/models/{REPO}", drop=True)
    assert same_weights(HubToyModel.from_pretrained(REPO), pushed)


def test_retries_wait_longer_each_time_and_stop_after_three_attempts(hub, pushed, sleeps,
                                                                     monkeypatch):
    monkeypatch.setattr("diffusion_kernel.hub.RETRY_BACKOFF_S", 0.5)
    hub.inject_fault("GET", "/api/", status=503, times=100)
    with pytest.raises(FileAccessError) as exc:
        HubToyModel.from_pretrained(REPO)
    assert sleeps == [0.5, 1.0]
    assert hub.count("GET", "/api/") == 3
    message = str(exc.value)
    assert f"the Hub at {hub.url} failed with a server error (HTTP 503; 3 attempts)" in message
    assert "try again later" in message and "downloads are off" not in message


def test_a_server_error_on_every_request_falls_back_to_the_cache(hub, pushed, sleeps):
    HubToyModel.from_pretrained(REPO)
    hub.inject_fault("GET", "/", status=500, times=100)
    hub.inject_fault("HEAD", "/", status=500, times=100)
    assert same_weights(HubToyModel.from_pretrained(REPO), pushed)
    assert sleeps == []


# Unreachable and offline: no retries, and the message says which -------------------------------
def test_an_unreachable_hub_is_reported_at_once_without_retries(hub, unreachable, sleeps):
    start = time.perf_counter()
    with pytest.raises(FileAccessError) as exc:
        HubToyModel.from_pretrained(REPO)
    assert time.perf_counter() - start < 5 and sleeps == []
    message = str(exc.value)
    assert f"the Hub at {unreachable} cannot be reached (ConnectError: " in message
    assert "set HF_HUB_OFFLINE=1" in message and "server error" not in message


def test_an_unreachable_hub_falls_back_to_the_cache_without_retries(hub, pushed, monkeypatch,
                                                                    sleeps):
    HubToyModel.from_pretrained(REPO)
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", f"http://127.0.0.1:{free_port()}")
    assert same_weights(HubToyModel.from_pretrained(REPO), pushed)
    assert sleeps == []


def test_community_list_with_the_hub_unreachable_answers_at_once(hub, unreachable, sleeps,
                                                                 capsys):
    from diffusion_kernel.cli import main

    start = time.perf_counter()
    assert main(["community", "list", "--repo", "someone/community"]) == 2
    assert time.perf_counter() - start < 5 and sleeps == []
    assert "cannot be reached" in capsys.readouterr().err
    with pytest.raises(FileAccessError, match="cannot be reached"):
        remote_code.hub_community("someone/community")


def test_offline_and_not_cached_says_offline(hub, pushed, offline):
    offline()
    with pytest.raises(FileAccessError, match="is not in the local cache and downloads are off "
                                              r"\(HF_HUB_OFFLINE=1 or local_files_only=True\)"):
        HubToyModel.from_pretrained(REPO)
    assert hub.count() == 0


@pytest.mark.parametrize("error, kind", [
    (hf_errors.OfflineModeIsEnabled("off"), "offline"),
    (ConnectionRefusedError(111, "refused"), "unreachable"),
    (ConnectionResetError(104, "reset"), "server error"),
    (ValueError("other"), None),
])
def test_failure_kinds(error, kind):
    wrapped = hf_errors.LocalEntryNotFoundError("not found")
    wrapped.__cause__ = error
    assert kernel_hub.failure_kind(wrapped) == kind


# Wrong bytes --------------------------------------------------------------------------------------
def test_wrong_bytes_are_deleted_and_downloaded_once_more(hub, pushed):
    hub.inject_fault("GET", WEIGHTS, corrupt=True)  # same length: the file would still parse
    with pytest.warns(UserWarning, match=f"'{WEIGHTS}' of Hub repo '{REPO}' did not match the "
                                         f"hash the Hub publishes for it .*downloading it again"):
        model = HubToyModel.from_pretrained(REPO)
    assert same_weights(model, pushed)
    assert hub.downloads(REPO)[f"{REPO}/{WEIGHTS}"] == 2


def test_wrong_bytes_twice_are_refused_and_not_kept(hub, pushed, tmp_path):
    hub.inject_fault("GET", WEIGHTS, corrupt=True, times=2)
    with pytest.warns(UserWarning), pytest.raises(
            FileAccessError, match=f"sent '{WEIGHTS}' of '{REPO}' twice with bytes that do not "
                                   f"match the sha256 it publishes .*the download was deleted"):
        HubToyModel.from_pretrained(REPO)
    cache = tmp_path / "hf_home" / "hub"
    assert not list(cache.rglob(f"snapshots/*/{WEIGHTS}"))
    assert all(p.stat().st_size < 1000 for p in cache.rglob("blobs/*"))  # the config only
    assert same_weights(HubToyModel.from_pretrained(REPO), pushed)  # the next load works


def test_a_config_with_wrong_bytes_is_caught_by_its_git_blob_id(hub, pushed):
    hub.inject_fault("GET", "config.json", corrupt=True)
    with pytest.warns(UserWarning, match="'config.json' .*git blob id is"):
        assert same_weights(HubToyModel.from_pretrained(REPO), pushed)


def test_verify_finds_a_cached_file_damaged_on_disk_and_downloads_it_again(hub, pushed,
                                                                          tmp_path):
    HubToyModel.from_pretrained(REPO)
    blob = _blob(tmp_path)
    data = bytearray(blob.read_bytes())
    data[-1] ^= 0xFF  # a bit flip in the last weight: the file still parses
    blob.write_bytes(bytes(data))
    assert not same_weights(HubToyModel.from_pretrained(REPO), pushed)  # unverified: loads
    with pytest.warns(UserWarning, match="did not match the hash the Hub publishes"):
        assert same_weights(HubToyModel.from_pretrained(REPO, verify=True), pushed)


def test_verify_offline_refuses_a_damaged_cached_file(hub, pushed, tmp_path, offline):
    HubToyModel.from_pretrained(REPO)
    blob = _blob(tmp_path)
    blob.write_bytes(blob.read_bytes()[:-1] + b"\x00")
    offline()
    with pytest.raises(CheckpointError, match=f"the cached '{WEIGHTS}' of Hub repo '{REPO}' is "
                                              f"corrupt .*load once more while online"):
        HubToyModel.from_pretrained(REPO, verify=True)


def test_verify_of_a_cache_entry_checks_the_published_hashes(hub, pushed, tmp_path):
    HubToyModel.from_pretrained(REPO)
    checks = {c.path: (c.status, c.kind) for c in kernel_hub.verify(REPO)}
    assert checks == {"config.json": ("ok", "git blob id"), WEIGHTS: ("ok", "sha256")}
    blob = _blob(tmp_path)
    blob.write_bytes(blob.read_bytes()[:-1] + b"\x01")
    assert {c.path: c.status for c in kernel_hub.verify(REPO)}[WEIGHTS] == "corrupt"
