"""The test Hub (tests/hub_server.py) driven by the real huggingface_hub client: what the kernel's
Hub tests rely on behaves like the Hub."""

import hashlib
import http.client
import os
import re
import urllib.parse
import urllib.request

import huggingface_hub as hf
import pytest
from huggingface_hub import HfApi
from huggingface_hub import errors as hf_errors

REPO = "tester/tiny"


@pytest.fixture
def api(hub):
    return HfApi()


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "upload"
    (root / "unet").mkdir(parents=True)
    (root / "model_index.json").write_text('{"_class_name": "Toy"}')
    (root / "unet" / "config.json").write_text('{"channels": 4}')
    (root / "unet" / "weights.bin").write_bytes(bytes(range(256)) * 40)
    return root


def _upload(api, folder, repo=REPO, **kwargs):
    api.create_repo(repo, exist_ok=True)
    return api.upload_folder(repo_id=repo, folder_path=folder, **kwargs)


def test_client_endpoint_is_the_local_server(hub):
    assert hf.constants.ENDPOINT == hub.url
    assert hub.url.startswith("http://127.0.0.1:")
    assert hf.constants.HF_HUB_DISABLE_XET


def test_create_repo_returns_its_url_and_refuses_a_duplicate(api, hub):
    assert api.create_repo(REPO) == f"{hub.url}/{REPO}"
    with pytest.raises(hf_errors.HfHubHTTPError) as info:
        api.create_repo(REPO)
    assert info.value.response.status_code == 409
    assert info.value.response.json()["url"] == f"{hub.url}/{REPO}"
    assert api.create_repo(REPO, exist_ok=True) == f"{hub.url}/{REPO}"


def test_writes_need_the_token(hub, monkeypatch):
    with pytest.raises(hf_errors.HfHubHTTPError) as info:
        HfApi(token="wrong").create_repo(REPO)
    assert info.value.response.status_code == 401


def test_upload_folder_makes_one_commit_with_a_40_hex_id(api, folder, hub):
    info = _upload(api, folder)
    assert re.fullmatch(r"[0-9a-f]{40}", info.oid)
    assert info.commit_url == f"{hub.url}/{REPO}/commit/{info.oid}"
    assert api.list_repo_files(REPO) == [
        ".gitattributes", "model_index.json", "unet/config.json", "unet/weights.bin"
    ]
    assert api.repo_info(REPO).sha == info.oid
    titles = [c.title for c in api.list_repo_commits(REPO)]
    assert titles == ["Upload folder using huggingface_hub", "initial commit"]


def test_upload_sends_each_file_as_a_regular_blob_not_lfs_or_xet(api, folder, hub):
    _upload(api, folder)
    paths = {r.path for r in hub.requests}
    assert f"/api/models/{REPO}/preupload/main" in paths
    assert f"/api/models/{REPO}/commit/main" in paths
    assert not any("lfs" in p or "xet" in p for p in paths)


def test_unchanged_files_are_not_committed_again(api, folder):
    first = _upload(api, folder)
    second = _upload(api, folder)
    assert second.oid == first.oid
    assert len(api.list_repo_commits(REPO)) == 2


def test_hf_hub_download_returns_the_exact_bytes(api, folder):
    _upload(api, folder)
    path = hf.hf_hub_download(REPO, "unet/weights.bin")
    assert open(path, "rb").read() == (folder / "unet" / "weights.bin").read_bytes()


def test_a_cached_file_is_not_downloaded_again(api, folder, hub):
    _upload(api, folder)
    hf.hf_hub_download(REPO, "unet/config.json")
    hf.hf_hub_download(REPO, "unet/config.json")
    assert hub.downloads(REPO)[f"{REPO}/unet/config.json"] == 1


def test_snapshot_download_with_patterns_fetches_only_the_matching_files(api, folder, hub):
    _upload(api, folder)
    root = hf.snapshot_download(REPO, allow_patterns=["unet/config.json"])
    assert os.path.isfile(os.path.join(root, "unet", "config.json"))
    assert hub.downloaded_files(REPO) == {"unet/config.json"}


def test_snapshot_download_fetches_everything(api, folder, hub):
    _upload(api, folder)
    hf.snapshot_download(REPO)
    assert hub.downloaded_files(REPO) == {".gitattributes", "model_index.json",
                                          "unet/config.json", "unet/weights.bin"}


def test_branches_and_tags_point_at_commits(api, folder, hub):
    first = _upload(api, folder).oid
    api.create_tag(REPO, tag="v1")
    api.create_branch(REPO, branch="dev")
    (folder / "model_index.json").write_text('{"_class_name": "Changed"}')
    dev = api.upload_folder(repo_id=REPO, folder_path=folder, revision="dev").oid
    refs = api.list_repo_refs(REPO)
    assert {b.name: b.target_commit for b in refs.branches} == {"main": first, "dev": dev}
    assert {t.name: t.target_commit for t in refs.tags} == {"v1": first}

    def index(revision):
        return open(hf.hf_hub_download(REPO, "model_index.json", revision=revision)).read()

    assert "Changed" in index("dev")
    assert "Toy" in index("main") and "Toy" in index("v1") and "Toy" in index(first)
    assert "Changed" in index(dev[:10])  # a short commit id


def test_existing_branch_or_tag_is_a_conflict(api, folder):
    _upload(api, folder)
    api.create_branch(REPO, branch="dev")
    api.create_tag(REPO, tag="v1")
    with pytest.raises(hf_errors.HfHubHTTPError, match="409"):
        api.create_branch(REPO, branch="dev")
    with pytest.raises(hf_errors.HfHubHTTPError, match="409"):
        api.create_tag(REPO, tag="v1")
    api.create_branch(REPO, branch="dev", exist_ok=True)


def test_delete_branch_and_tag(api, folder):
    _upload(api, folder)
    api.create_branch(REPO, branch="dev")
    api.create_tag(REPO, tag="v1")
    api.delete_branch(REPO, branch="dev")
    api.delete_tag(REPO, tag="v1")
    refs = api.list_repo_refs(REPO)
    assert [b.name for b in refs.branches] == ["main"] and refs.tags == []


def test_delete_file_in_a_commit(api, folder):
    _upload(api, folder)
    api.delete_file("unet/weights.bin", repo_id=REPO)
    assert "unet/weights.bin" not in api.list_repo_files(REPO)
    assert "unet/weights.bin" in api.list_repo_files(REPO, revision=api.list_repo_commits(
        REPO)[1].commit_id)


def test_create_pr_commits_to_a_pr_ref(api, folder):
    _upload(api, folder)
    (folder / "model_index.json").write_text("{}")
    info = api.upload_folder(repo_id=REPO, folder_path=folder, create_pr=True)
    assert info.pr_revision == "refs/pr/1"
    assert open(hf.hf_hub_download(REPO, "model_index.json", revision="refs/pr/1")).read() == "{}"
    assert open(hf.hf_hub_download(REPO, "model_index.json")).read() != "{}"


def test_tree_is_recursive_and_has_folders(api, folder):
    _upload(api, folder)
    entries = list(api.list_repo_tree(REPO, recursive=True))
    kinds = {e.path: type(e).__name__ for e in entries}
    assert kinds["unet"] == "RepoFolder" and kinds["unet/config.json"] == "RepoFile"
    top = [e.path for e in api.list_repo_tree(REPO)]
    assert top == [".gitattributes", "model_index.json", "unet"]
    sizes = {e.path: e.size for e in entries if hasattr(e, "size")}
    assert sizes["unet/weights.bin"] == 10240


def test_paths_info(api, folder):
    _upload(api, folder)
    infos = api.get_paths_info(REPO, ["unet/config.json", "unet", "missing.txt"])
    assert [(type(i).__name__, i.path) for i in infos] == [("RepoFile", "unet/config.json"),
                                                           ("RepoFolder", "unet")]


def test_missing_file_revision_and_repo_raise_the_client_errors(api, folder):
    _upload(api, folder)
    with pytest.raises(hf_errors.RemoteEntryNotFoundError):
        hf.hf_hub_download(REPO, "nope.json")
    with pytest.raises(hf_errors.RevisionNotFoundError):
        hf.hf_hub_download(REPO, "model_index.json", revision="no-such-branch")
    with pytest.raises(hf_errors.RepositoryNotFoundError):
        hf.hf_hub_download("tester/absent", "model_index.json")
    with pytest.raises(hf_errors.RevisionNotFoundError):
        api.list_repo_files(REPO, revision="no-such-branch")
    with pytest.raises(hf_errors.RepositoryNotFoundError):
        api.list_repo_files("tester/absent")


def _raw(method, url, headers=None):
    request = urllib.request.Request(url, method=method, headers=headers or {})
    with urllib.request.urlopen(request) as response:
        return response.status, response.headers, response.read()


def test_resolve_answers_commit_etag_and_length(api, folder, hub):
    commit = _upload(api, folder).oid
    status, headers, body = _raw("HEAD", f"{hub.url}/{REPO}/resolve/main/unet/config.json")
    data = (folder / "unet" / "config.json").read_bytes()
    assert status == 200 and body == b""
    assert headers["X-Repo-Commit"] == commit
    assert headers["Content-Length"] == str(len(data))
    git_id = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
    assert headers["ETag"] == f'"{git_id}"'
    assert not any(k.lower().startswith("x-xet") for k in headers)


def _head_unfollowed(url):
    parts = urllib.parse.urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port)
    connection.request("HEAD", parts.path)
    response = connection.getresponse()
    connection.close()
    return response.status, response.headers


def test_an_lfs_file_redirects_to_the_cdn_with_its_sha256_as_the_hub_does(api, folder, hub):
    commit = _upload(api, folder).oid
    data = (folder / "unet" / "weights.bin").read_bytes()
    status, headers = _head_unfollowed(f"{hub.url}/{REPO}/resolve/main/unet/weights.bin")
    assert status == 302
    assert headers["X-Linked-Etag"] == f'"{hashlib.sha256(data).hexdigest()}"'
    assert headers["X-Linked-Size"] == str(len(data))
    assert headers["X-Repo-Commit"] == commit
    assert headers["Location"] == f"http://localhost:{hub.port}/cdn/{REPO}/{commit}/unet/weights.bin"
    assert _raw("GET", headers["Location"])[2] == data


def test_the_client_names_an_lfs_blob_after_its_sha256(api, folder):
    _upload(api, folder)
    path = hf.hf_hub_download(REPO, "unet/weights.bin")
    data = (folder / "unet" / "weights.bin").read_bytes()
    assert os.path.basename(os.path.realpath(path)) == hashlib.sha256(data).hexdigest()


def test_the_tree_and_the_repo_info_give_an_lfs_files_sha256(api, folder):
    _upload(api, folder)
    sha = hashlib.sha256((folder / "unet" / "weights.bin").read_bytes()).hexdigest()
    tree = {f.path: f for f in api.list_repo_tree(REPO, recursive=True) if hasattr(f, "lfs")}
    assert tree["unet/weights.bin"].lfs.sha256 == sha and tree["unet/config.json"].lfs is None
    siblings = {s.rfilename: s for s in api.model_info(REPO, files_metadata=True).siblings}
    assert siblings["unet/weights.bin"].lfs.sha256 == sha


def test_a_corrupt_fault_changes_one_byte_and_keeps_the_length(api, folder, hub):
    commit = _upload(api, folder).oid
    hub.inject_fault("GET", "weights.bin", corrupt=True)
    got = _raw("GET", f"http://localhost:{hub.port}/cdn/{REPO}/{commit}/unet/weights.bin")[2]
    data = (folder / "unet" / "weights.bin").read_bytes()
    assert len(got) == len(data) and sum(a != b for a, b in zip(got, data)) == 1


def test_a_drop_fault_closes_the_connection_without_an_answer(api, folder, hub):
    _upload(api, folder)
    hub.inject_fault("GET", "/api/", drop=True)
    with pytest.raises(http.client.RemoteDisconnected):
        _raw("GET", f"{hub.url}/api/models/{REPO}")
    assert _raw("GET", f"{hub.url}/api/models/{REPO}")[0] == 200


def test_range_requests_return_part_of_the_file(api, folder, hub):
    _upload(api, folder)
    status, headers, body = _raw("GET", f"{hub.url}/{REPO}/resolve/main/unet/weights.bin",
                                 {"Range": "bytes=10-19"})
    assert status == 206
    assert body == bytes(range(10, 20))
    assert headers["Content-Range"] == "bytes 10-19/10240"


def test_download_cut_mid_transfer_resumes_with_a_range_request(api, folder, hub, monkeypatch):
    _upload(api, folder)
    monkeypatch.setattr("huggingface_hub.file_download.time.sleep", lambda s: None)
    # The client writes what it got in whole chunks; with 1000-byte chunks all 4000 bytes count.
    monkeypatch.setattr(hf.constants, "DOWNLOAD_CHUNK_SIZE", 1000)
    hub.inject_fault("GET", "unet/weights.bin", cut_after=4000)
    path = hf.hf_hub_download(REPO, "unet/weights.bin")
    assert open(path, "rb").read() == (folder / "unet" / "weights.bin").read_bytes()
    gets = [r for r in hub.requests if r.method == "GET" and r.path.endswith("weights.bin")]
    assert len(gets) == 2
    assert gets[1].headers.get("range") == "bytes=4000-"


def test_server_error_on_download_reaches_the_client(api, folder, hub):
    _upload(api, folder)
    hub.inject_fault("GET", "unet/weights.bin", status=500)
    with pytest.raises(hf_errors.HfHubHTTPError, match="500"):
        hf.hf_hub_download(REPO, "unet/weights.bin")


def test_requests_are_counted_per_path(api, folder, hub):
    _upload(api, folder)
    hub.clear_log()
    hf.hf_hub_download(REPO, "model_index.json")
    assert hub.count("HEAD", f"/{REPO}/resolve/main/model_index.json") == 1
    assert hub.count("GET", f"/{REPO}/resolve/main/model_index.json") == 1
    assert hub.count() == 2


def test_store_commits_directly_for_repos_the_client_would_refuse(hub):
    commit = hub.commit(REPO, {"../escape.txt": b"x", "ok.txt": b"y"})
    assert set(hub.repos[REPO].commits[commit].files) == {".gitattributes", "../escape.txt",
                                                          "ok.txt"}
    assert "../escape.txt" in HfApi().list_repo_files(REPO)
    with pytest.raises(ValueError):  # the client itself refuses to write it anywhere
        hf.hf_hub_download(REPO, "../escape.txt")


def test_validate_yaml_accepts_a_model_card(api, folder):
    (folder / "README.md").write_text("---\nlicense: mit\n---\n# Tiny\n")
    _upload(api, folder)
    assert "README.md" in api.list_repo_files(REPO)


def test_delete_repo(api, folder):
    _upload(api, folder)
    api.delete_repo(REPO)
    with pytest.raises(hf_errors.RepositoryNotFoundError):
        api.repo_info(REPO)


def test_a_repo_created_without_namespace_goes_to_the_token_owner(api, folder):
    url = api.create_repo("solo")
    assert url.repo_id == "test-user/solo"
    assert api.whoami()["name"] == "test-user"
