"""A small Hugging Face Hub-compatible HTTP server for the tests (standard library only).

It speaks the part of the Hub protocol that the real ``huggingface_hub`` client (2.x) uses to
download and upload model repos, so tests drive the real client against 127.0.0.1:

- ``HEAD``/``GET /{repo}/resolve/{rev}/{path}``: a file, with ``X-Repo-Commit``, ``ETag`` (its
  git blob id), ``Content-Length``, ``Range`` support, and ``X-Error-Code`` on errors. A file
  stored in LFS (weights: see ``LFS_SUFFIXES``) is answered as the Hub does: ``302`` to a CDN
  URL on another host name (``localhost``), with ``X-Linked-Etag`` (its sha256, which
  ``huggingface_hub`` names the cached blob after), ``X-Linked-Size`` and ``X-Repo-Commit``;
  the CDN serves the bytes (``GET /cdn/{repo}/{commit}/{path}``, with ``Range``);
- ``GET /api/models/{repo}[/revision/{rev}]``, ``.../tree/{rev}[/{path}]``, ``.../refs``,
  ``.../commits/{rev}``, ``POST .../paths-info/{rev}`` (LFS files carry ``lfs: {oid: sha256,
  size, pointerSize}`` as on the Hub);
- ``POST /api/repos/create``, ``DELETE /api/repos/delete``, ``POST .../preupload/{rev}`` (always
  the regular upload mode, so the client never needs LFS or Xet), ``POST .../commit/{rev}``
  (NDJSON), ``POST``/``DELETE .../branch/{name}``, ``POST .../tag/{rev}``,
  ``DELETE .../tag/{name}``, ``POST /api/validate-yaml``, ``GET /api/whoami-v2``.

Repos live in memory with real history: each commit has a 40-hex id, a parent and a full file
tree; branches and tags point at commits. Every request is logged (``server.requests``) so a test
can assert which files a load fetched. ``server.inject_fault`` makes chosen requests fail (an
HTTP error, a body cut off mid-transfer, a connection closed before any answer, or a file's
bytes altered at the same length) to test how clients cope.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, quote, unquote, urlsplit

USER = "test-user"  # the owner of the token, for repos created without a namespace
# Files the Hub stores in LFS (its default .gitattributes covers these among others).
LFS_SUFFIXES = (".safetensors", ".bin", ".ckpt", ".pt", ".pth", ".onnx", ".msgpack", ".h5",
                ".gguf")
GITATTRIBUTES = b"".join(b"*%s filter=lfs diff=lfs merge=lfs -text\n" % s.encode()
                         for s in LFS_SUFFIXES)
_ACTIONS = ("revision", "tree", "refs", "commits", "paths-info", "preupload", "commit", "branch",
            "tag")
_REPO_PART = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}")


def git_blob_id(data: bytes) -> str:
    """The git object id of a file's content (what the Hub reports as a file's ``oid``)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def is_lfs(path: str) -> bool:
    return path.endswith(LFS_SUFFIXES)


def lfs_pointer(data: bytes) -> bytes:
    """The small text git stores in place of an LFS file (its oid is the file's git ``oid``)."""
    return (b"version https://git-lfs.github.com/spec/v1\noid sha256:%s\nsize %d\n"
            % (hashlib.sha256(data).hexdigest().encode(), len(data)))


@dataclass
class Commit:
    oid: str
    parent: str | None
    files: dict[str, bytes]  # path -> content: the full tree at this commit
    title: str
    message: str
    date: str


@dataclass
class Repo:
    repo_id: str
    private: bool = False
    commits: dict[str, Commit] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)

    def resolve(self, revision: str) -> Commit | None:
        """A branch, a tag, a full commit id or a unique commit-id prefix (7+ hex digits)."""
        if revision in self.branches:
            return self.commits[self.branches[revision]]
        if revision in self.tags:
            return self.commits[self.tags[revision]]
        if revision in self.commits:
            return self.commits[revision]
        if re.fullmatch(r"[0-9a-f]{7,39}", revision):
            found = [c for oid, c in self.commits.items() if oid.startswith(revision)]
            if len(found) == 1:
                return found[0]
        return None

    def history(self, commit: Commit) -> list[Commit]:
        out = [commit]
        while out[-1].parent is not None:
            out.append(self.commits[out[-1].parent])
        return out


class HubError(Exception):
    """An error answer: HTTP status, Hub error code (``X-Error-Code``) and message."""

    def __init__(self, status: int, message: str, code: str | None = None,
                 headers: dict[str, str] | None = None, body: dict | None = None):
        super().__init__(message)
        self.status, self.code, self.headers, self.body = status, code, headers or {}, body


@dataclass
class Fault:
    """Make matching requests fail: ``status`` answers that HTTP error; ``cut_after`` sends the
    headers of a full answer and closes the connection after that many body bytes; ``drop``
    closes the connection without answering; ``corrupt`` serves a file with one byte changed
    (same length, same headers)."""

    method: str
    path_contains: str
    status: int | None = None
    cut_after: int | None = None
    times: int = 1
    drop: bool = False
    corrupt: bool = False


@dataclass
class Request:
    method: str
    path: str  # unquoted, without the query string
    headers: dict[str, str]  # names lower-cased


class HubServer:
    """The server and its store. ``start()`` serves on 127.0.0.1 at a free (or given) port."""

    def __init__(self, port: int = 0, token: str | None = None):
        self.port = port
        self.token = token  # if set, writes need ``Authorization: Bearer <token>``
        self.repos: dict[str, Repo] = {}
        self.requests: list[Request] = []
        self.faults: list[Fault] = []
        self.lock = threading.RLock()
        self._counter = 0
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # Lifecycle -------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> HubServer:
        handler = type("Handler", (_Handler,), {"hub": self})
        self._httpd = ThreadingHTTPServer(("127.0.0.1", self.port), handler)
        self._httpd.daemon_threads = True
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="hub-server",
                                        kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._thread.join(timeout=5)
            self._httpd = None

    def reset(self) -> None:
        """Forget every repo, request and fault (a fresh Hub)."""
        with self.lock:
            self.repos.clear()
            self.requests.clear()
            self.faults.clear()

    # Inspection for tests --------------------------------------------------------------------
    def count(self, method: str | None = None, path_contains: str = "") -> int:
        with self.lock:
            return sum(1 for r in self.requests if (method is None or r.method == method)
                       and path_contains in r.path)

    def downloads(self, repo_id: str | None = None) -> Counter:
        """How many times each file was fetched with GET (from the repo or, for LFS files, from
        the CDN), as ``Counter({"repo/path": n})``."""
        out: Counter = Counter()
        with self.lock:
            for r in self.requests:
                if r.method != "GET":
                    continue
                if "/resolve/" in r.path:
                    repo, _, rest = r.path.lstrip("/").partition("/resolve/")
                    name = rest.partition("/")[2]
                elif r.path.startswith("/cdn/"):
                    repo, name = _split_cdn_path(r.path)
                else:
                    continue
                if repo_id is None or repo == repo_id:
                    out[f"{repo}/{name}"] += 1
        return out

    def downloaded_files(self, repo_id: str) -> set[str]:
        return {k[len(repo_id) + 1:] for k in self.downloads(repo_id)}

    def clear_log(self) -> None:
        with self.lock:
            self.requests.clear()

    def inject_fault(self, method: str, path_contains: str, status: int | None = None,
                     cut_after: int | None = None, times: int = 1, drop: bool = False,
                     corrupt: bool = False) -> Fault:
        fault = Fault(method, path_contains, status, cut_after, times, drop, corrupt)
        with self.lock:
            self.faults.append(fault)
        return fault

    def _take_fault(self, method: str, path: str) -> Fault | None:
        with self.lock:
            for fault in self.faults:
                if fault.method == method and fault.path_contains in path and fault.times > 0:
                    fault.times -= 1
                    return fault
        return None

    # The store (also used directly by tests to build repos the client would refuse) -------------
    def create_repo(self, repo_id: str, private: bool = False, exist_ok: bool = False) -> Repo:
        with self.lock:
            if repo_id in self.repos:
                if exist_ok:
                    return self.repos[repo_id]
                raise HubError(409, "You already created this model repo",
                               body={"error": "You already created this model repo",
                                     "url": f"{self.url}/{repo_id}"})
            repo = Repo(repo_id, private=private)
            first = self._new_commit(None, {".gitattributes": GITATTRIBUTES}, "initial commit", "")
            repo.commits[first.oid] = first
            repo.branches["main"] = first.oid
            self.repos[repo_id] = repo
            return repo

    def commit(self, repo_id: str, files: dict[str, bytes] | None = None,
               deletes: tuple[str, ...] = (), branch: str = "main", message: str = "update",
               description: str = "", create: bool = True) -> str:
        """Add/replace ``files`` and delete ``deletes`` (files or folders) on ``branch``; returns
        the new commit id. Paths are stored as given (no validation: tests build bad repos)."""
        with self.lock:
            repo = self.repos.get(repo_id) or (self.create_repo(repo_id) if create else None)
            if repo is None:
                raise HubError(404, f"Repository {repo_id} not found", "RepoNotFound")
            if branch not in repo.branches:
                raise HubError(404, f"Invalid rev id: {branch}", "RevisionNotFound")
            head = repo.commits[repo.branches[branch]]
            tree = dict(head.files)
            for path in deletes:
                folder = path.rstrip("/") + "/"
                removed = [p for p in tree if p == path or p.startswith(folder)]
                if not removed:
                    raise HubError(404, f"A file with this name doesn't exist: {path}",
                                   "EntryNotFound")
                for p in removed:
                    del tree[p]
            tree.update(files or {})
            new = self._new_commit(head.oid, tree, message, description)
            repo.commits[new.oid] = new
            repo.branches[branch] = new.oid
            return new.oid

    def create_branch(self, repo_id: str, branch: str, start: str | None = None) -> str:
        with self.lock:
            repo = self._repo(repo_id)
            if branch in repo.branches:
                raise HubError(409, f"Reference already exists: refs/heads/{branch}")
            commit = self._resolve(repo, start or "main")
            repo.branches[branch] = commit.oid
            return commit.oid

    def create_tag(self, repo_id: str, tag: str, revision: str = "main") -> str:
        with self.lock:
            repo = self._repo(repo_id)
            if tag in repo.tags:
                raise HubError(409, f"Tag already exists: {tag}")
            commit = self._resolve(repo, revision)
            repo.tags[tag] = commit.oid
            return commit.oid

    def _new_commit(self, parent: str | None, files: dict[str, bytes], title: str,
                    message: str) -> Commit:
        self._counter += 1
        digest = hashlib.sha1()
        for part in (parent or "", title, message, str(self._counter), str(time.time_ns())):
            digest.update(part.encode() + b"\0")
        for path in sorted(files):
            digest.update(path.encode() + b"\0" + git_blob_id(files[path]).encode())
        date = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")
        return Commit(digest.hexdigest(), parent, files, title, message, date)

    def _repo(self, repo_id: str) -> Repo:
        repo = self.repos.get(repo_id)
        if repo is None:
            raise HubError(404, f"Repository not found: {repo_id}", "RepoNotFound")
        return repo

    def _resolve(self, repo: Repo, revision: str) -> Commit:
        commit = repo.resolve(revision)
        if commit is None:
            raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        return commit


def _tree_entries(files: dict[str, bytes], prefix: str, recursive: bool) -> list[dict]:
    """Tree listing entries under ``prefix`` (files and folders), as the Hub's tree API gives."""
    base = prefix.strip("/") + "/" if prefix.strip("/") else ""
    out: dict[str, dict] = {}
    for path, data in sorted(files.items()):
        if not path.startswith(base):
            continue
        parts = path[len(base):].split("/")
        for depth in range(1, len(parts)):  # the folders on the way
            if not recursive and depth > 1:
                break
            folder = base + "/".join(parts[:depth])
            out.setdefault(folder, {"type": "directory", "path": folder,
                                    "oid": hashlib.sha1(folder.encode()).hexdigest()})
        if recursive or len(parts) == 1:
            out[path] = _file_entry(path, data)
    return sorted(out.values(), key=lambda e: e["path"])


def _file_entry(path: str, data: bytes) -> dict:
    if not is_lfs(path):
        return {"type": "file", "path": path, "size": len(data), "oid": git_blob_id(data)}
    pointer = lfs_pointer(data)
    return {"type": "file", "path": path, "size": len(data), "oid": git_blob_id(pointer),
            "lfs": {"oid": hashlib.sha256(data).hexdigest(), "size": len(data),
                    "pointerSize": len(pointer)}}


def _sibling(path: str, data: bytes) -> dict:
    """A file of ``/api/models/{repo}?blobs=true``: the tree entry's facts under other names."""
    entry = _file_entry(path, data)
    out = {"rfilename": path, "size": entry["size"], "blobId": entry["oid"]}
    if "lfs" in entry:
        out["lfs"] = {"sha256": entry["lfs"]["oid"], "size": entry["lfs"]["size"],
                      "pointerSize": entry["lfs"]["pointerSize"]}
    return out


def _split_cdn_path(path: str) -> tuple[str, str]:
    """``/cdn/{owner}/{name}/{commit}/{file}`` (or without owner) -> (repo id, file)."""
    parts = path[len("/cdn/"):].split("/")
    commit_at = next(i for i, p in enumerate(parts) if re.fullmatch(r"[0-9a-f]{40}", p))
    return "/".join(parts[:commit_at]), "/".join(parts[commit_at + 1:])


class _Handler(BaseHTTPRequestHandler):
    hub: HubServer  # set on the subclass made by HubServer.start
    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args):  # keep test output clean
        pass

    # Dispatch --------------------------------------------------------------------------------
    def do_HEAD(self):
        self._handle("HEAD")

    def do_GET(self):
        self._handle("GET")

    def do_POST(self):
        self._handle("POST")

    def do_DELETE(self):
        self._handle("DELETE")

    def do_PUT(self):
        self._handle("PUT")

    def _handle(self, method: str) -> None:
        url = urlsplit(self.path)
        self.query = parse_qs(url.query)
        raw_path = url.path
        path = unquote(raw_path)
        body = self._read_body()
        with self.hub.lock:
            headers = {k.lower(): v for k, v in self.headers.items()}
            self.hub.requests.append(Request(method, path, headers))
        fault = self.hub._take_fault(method, path)
        if fault is not None and fault.status is not None:
            return self._send_error(HubError(fault.status, f"injected error {fault.status}"),
                                    method)
        if fault is not None and fault.drop:  # the connection dies before any answer
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        try:
            if raw_path.startswith("/api/"):
                self._api(method, raw_path[len("/api/"):], body)
            elif raw_path.startswith("/cdn/"):
                self._cdn_file(method, path, fault)
            elif "/resolve/" in raw_path:
                self._resolve_file(method, raw_path, fault)
            else:
                raise HubError(404, f"no route for {method} {path}")
        except HubError as err:
            self._send_error(err, method)
        except (ValueError, KeyError, TypeError) as err:  # a malformed request
            self._send_error(HubError(400, f"bad request: {type(err).__name__}: {err}"), method)
        except Exception as err:  # a bug of this server: say so instead of dropping the socket
            self._send_error(HubError(500, f"server error: {type(err).__name__}: {err}"), method)

    def _read_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    # Answers ---------------------------------------------------------------------------------
    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None,
              method: str = "GET", content_type: str = "application/json",
              cut_after: int | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        if cut_after is not None:
            self.send_header("Connection", "close")
        self.end_headers()
        if method == "HEAD":
            return
        if cut_after is not None:  # a connection that dies mid-transfer
            self.wfile.write(body[:cut_after])
            self.wfile.flush()
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return
        self.wfile.write(body)

    def _send_json(self, data, status: int = 200, method: str = "GET",
                   headers: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(data).encode(), headers, method)

    def _send_error(self, err: HubError, method: str) -> None:
        headers = {"X-Error-Message": str(err), **err.headers}
        if err.code:
            headers["X-Error-Code"] = err.code
        self._send_json(err.body or {"error": str(err)}, err.status, method, headers)

    def _check_write(self) -> None:
        token = self.hub.token
        if token is not None and self.headers.get("Authorization") != f"Bearer {token}":
            raise HubError(401, "Invalid credentials in Authorization header")

    def _check_read(self, repo: Repo) -> None:
        token = self.hub.token
        if repo.private and (token is None or
                             self.headers.get("Authorization") != f"Bearer {token}"):
            raise HubError(401, "Repository not found", "RepoNotFound")

    # Files -----------------------------------------------------------------------------------
    def _resolve_file(self, method: str, raw_path: str, fault: Fault | None) -> None:
        if method not in ("GET", "HEAD"):
            raise HubError(405, f"{method} not allowed on files")
        repo_part, _, rest = raw_path.lstrip("/").partition("/resolve/")
        repo_id = unquote(repo_part.removeprefix("models/"))
        raw_rev, _, raw_file = rest.partition("/")
        revision, filename = unquote(raw_rev), unquote(raw_file)
        with self.hub.lock:
            repo = self.hub._repo(repo_id)
            self._check_read(repo)
            commit = self.hub._resolve(repo, revision)
            data = commit.files.get(filename)
        if data is None:
            raise HubError(404, f"Entry not found: {filename}", "EntryNotFound",
                           headers={"X-Repo-Commit": commit.oid})
        if is_lfs(filename):  # as the Hub: metadata on a redirect to the CDN
            cdn = (f"http://localhost:{self.hub.port}/cdn/{quote(repo_id)}/{commit.oid}/"
                   f"{quote(filename)}")
            return self._send(302, b"", {
                "X-Repo-Commit": commit.oid, "Location": cdn,
                "ETag": f'"{git_blob_id(lfs_pointer(data))}"',
                "X-Linked-Etag": f'"{hashlib.sha256(data).hexdigest()}"',
                "X-Linked-Size": str(len(data))}, method)
        self._send_content(method, data, {"X-Repo-Commit": commit.oid,
                                          "ETag": f'"{git_blob_id(data)}"'}, fault)

    def _cdn_file(self, method: str, path: str, fault: Fault | None) -> None:
        """The CDN the Hub redirects LFS downloads to: no token needed, the URL is the key."""
        repo_id, filename = _split_cdn_path(path)
        commit_oid = path[len("/cdn/"):].split("/")[len(repo_id.split("/"))]
        with self.hub.lock:
            commit = self.hub._repo(repo_id).commits.get(commit_oid)
            data = commit.files.get(filename) if commit is not None else None
        if data is None:
            raise HubError(404, "no such object")
        self._send_content(method, data, {"ETag": f'"{hashlib.sha256(data).hexdigest()}"'},
                           fault)

    def _send_content(self, method: str, data: bytes, headers: dict[str, str],
                      fault: Fault | None) -> None:
        """A file's bytes (or the ``Range`` asked for), as a fault may alter them."""
        if fault is not None and fault.corrupt and data:
            middle = len(data) // 2
            data = data[:middle] + bytes([data[middle] ^ 0x01]) + data[middle + 1:]
        headers = {**headers, "Accept-Ranges": "bytes"}
        status, body = 200, data
        wanted = self.headers.get("Range")
        if wanted and method == "GET":
            match = re.fullmatch(r"bytes=(\d+)-(\d*)", wanted.strip())
            if match is None:
                raise HubError(416, f"unsupported Range {wanted!r}")
            start = int(match.group(1))
            end = int(match.group(2)) if match.group(2) else len(data) - 1
            if start >= len(data) and len(data) > 0:
                raise HubError(416, "Requested range not satisfiable",
                               headers={"Content-Range": f"bytes */{len(data)}"})
            end = min(end, len(data) - 1)
            status, body = 206, data[start:end + 1]
            headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
        cut = fault.cut_after if fault is not None else None
        self._send(status, body, headers, method, "application/octet-stream", cut_after=cut)

    # API -------------------------------------------------------------------------------------
    def _api(self, method: str, raw: str, body: bytes) -> None:
        if raw == "repos/create" and method == "POST":
            return self._create_repo(json.loads(body))
        if raw == "repos/delete" and method == "DELETE":
            return self._delete_repo(json.loads(body))
        if raw == "validate-yaml" and method == "POST":
            return self._send_json({"errors": [], "warnings": []})
        if raw == "whoami-v2" and method == "GET":
            self._check_write()
            return self._send_json({"type": "user", "name": USER, "orgs": [],
                                    "auth": {"accessToken": {"role": "write"}}})
        kind, _, rest = raw.partition("/")
        if kind != "models":
            raise HubError(404, f"only model repos are served, not {kind!r}")
        repo_id, action, args = self._split_repo(rest)
        with self.hub.lock:
            repo = self.hub._repo(repo_id)
            self._check_read(repo)
            handler = getattr(self, f"_api_{(action or 'info').replace('-', '_')}_{method}", None)
            if handler is None:
                raise HubError(404, f"no route for {method} /api/{raw}")
            if method != "GET":
                self._check_write()
            return handler(repo, args, body)

    def _split_repo(self, rest: str) -> tuple[str, str | None, list[str]]:
        """``owner/name/action/args...`` or ``name/action/args...`` (repo ids have one slash
        at most); arguments stay URL-quoted pieces, unquoted one by one."""
        parts = rest.split("/")
        single = len(parts) == 1 or (parts[1] in _ACTIONS and
                                     f"{parts[0]}/{parts[1]}" not in self.hub.repos)
        cut = 1 if single else 2
        repo_id = unquote("/".join(parts[:cut]))
        tail = parts[cut:]
        action = tail[0] if tail else None
        return repo_id, action, [unquote(p) for p in tail[1:]]

    def _create_repo(self, payload: dict) -> None:
        self._check_write()
        # Without an organization, the Hub creates the repo in the token owner's namespace.
        name, org = payload["name"], payload.get("organization") or USER
        if payload.get("type", "model") not in ("model", None):
            raise HubError(400, "only model repos are served")
        repo_id = f"{org}/{name}" if org else name
        if not all(_REPO_PART.fullmatch(p) for p in repo_id.split("/")):
            raise HubError(400, f"invalid repo name {repo_id!r}")
        private = payload.get("private") or payload.get("visibility") == "private"
        self.hub.create_repo(repo_id, private=bool(private))
        self._send_json({"url": f"{self.hub.url}/{repo_id}", "name": repo_id,
                         "id": hashlib.sha1(repo_id.encode()).hexdigest()[:24]})

    def _delete_repo(self, payload: dict) -> None:
        self._check_write()
        name, org = payload["name"], payload.get("organization")
        repo_id = f"{org}/{name}" if org else name
        with self.hub.lock:
            self.hub._repo(repo_id)
            del self.hub.repos[repo_id]
        self._send_json({})

    def _revision_arg(self, repo: Repo, args: list[str]) -> Commit:
        return self.hub._resolve(repo, args[0] if args else "main")

    def _api_info_GET(self, repo: Repo, args: list[str], body: bytes) -> None:
        self._api_revision_GET(repo, [], body)

    def _api_revision_GET(self, repo: Repo, args: list[str], body: bytes) -> None:
        commit = self._revision_arg(repo, args)
        siblings = [{"rfilename": p} for p in sorted(commit.files)]
        if self.query.get("blobs", ["false"])[0].lower() == "true":
            siblings = [_sibling(p, d) for p, d in sorted(commit.files.items())]
        self._send_json({
            "_id": hashlib.sha1(repo.repo_id.encode()).hexdigest()[:24], "id": repo.repo_id,
            "modelId": repo.repo_id, "author": repo.repo_id.partition("/")[0] or None,
            "sha": commit.oid, "lastModified": commit.date, "private": repo.private,
            "disabled": False, "gated": False, "downloads": 0, "likes": 0, "tags": [],
            "library_name": "diffusers", "siblings": siblings, "createdAt": commit.date,
        })

    def _api_tree_GET(self, repo: Repo, args: list[str], body: bytes) -> None:
        commit = self._revision_arg(repo, args[:1])
        prefix = "/".join(args[1:])
        recursive = self.query.get("recursive", ["false"])[0].lower() == "true"
        entries = _tree_entries(commit.files, prefix, recursive)
        if prefix and not entries and prefix not in commit.files:
            raise HubError(404, f"Entry not found: {prefix}", "EntryNotFound")
        self._send_json(entries)

    def _api_paths_info_POST(self, repo: Repo, args: list[str], body: bytes) -> None:
        commit = self._revision_arg(repo, args[:1])
        form = parse_qs(body.decode())
        paths = form.get("paths", [])
        out = []
        for path in paths:
            if path in commit.files:
                out.append(_file_entry(path, commit.files[path]))
            elif any(p.startswith(path.rstrip("/") + "/") for p in commit.files):
                out.append({"type": "directory", "path": path,
                            "oid": hashlib.sha1(path.encode()).hexdigest()})
        self._send_json(out)

    def _api_refs_GET(self, repo: Repo, args: list[str], body: bytes) -> None:
        def refs(names: dict[str, str], kind: str) -> list[dict]:
            return [{"name": n, "ref": f"refs/{kind}/{n}", "targetCommit": oid}
                    for n, oid in sorted(names.items()) if not n.startswith("refs/pr/")]

        prs = [{"name": n, "ref": n, "targetCommit": oid} for n, oid in repo.branches.items()
               if n.startswith("refs/pr/")]
        self._send_json({"branches": refs(repo.branches, "heads"), "converts": [],
                         "tags": refs(repo.tags, "tags"), "pullRequests": prs})

    def _api_commits_GET(self, repo: Repo, args: list[str], body: bytes) -> None:
        commit = self._revision_arg(repo, args)
        self._send_json([{"id": c.oid, "title": c.title, "message": c.message,
                          "authors": [{"user": USER}], "date": c.date}
                         for c in repo.history(commit)])

    def _api_preupload_POST(self, repo: Repo, args: list[str], body: bytes) -> None:
        commit = self._revision_arg(repo, args)
        files = json.loads(body)["files"]
        self._send_json({"files": [
            {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False,
             "oid": git_blob_id(commit.files[f["path"]]) if f["path"] in commit.files else None}
            for f in files
        ], "commitOid": commit.oid})

    def _api_commit_POST(self, repo: Repo, args: list[str], body: bytes) -> None:
        branch = args[0] if args else "main"
        lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
        if not lines or lines[0].get("key") != "header":
            raise HubError(400, "a commit starts with a header line")
        header = lines[0]["value"]
        files: dict[str, bytes] = {}
        deletes: list[str] = []
        for item in lines[1:]:
            key, value = item["key"], item["value"]
            if key == "file":
                if value.get("encoding", "base64") != "base64":
                    raise HubError(400, f"unsupported encoding {value.get('encoding')!r}")
                files[value["path"]] = base64.b64decode(value["content"])
            elif key in ("deletedFile", "deletedFolder"):
                deletes.append(value["path"])
            else:  # lfsFile never comes: preupload always answers the regular mode
                raise HubError(400, f"unsupported commit operation {key!r}")
        pr_url = None
        if self.query.get("create_pr", ["0"])[0] == "1":
            start = self.hub._resolve(repo, branch)
            number = 1 + sum(1 for b in repo.branches if b.startswith("refs/pr/"))
            branch = f"refs/pr/{number}"
            repo.branches[branch] = start.oid
            pr_url = f"{self.hub.url}/{repo.repo_id}/discussions/{number}"
        head = self.hub._resolve(repo, branch)
        if branch not in repo.branches:
            raise HubError(400, f"cannot commit to {branch!r}: it is not a branch")
        parent = header.get("parentCommit")
        if parent is not None and parent != head.oid:
            raise HubError(412, f"parent commit {parent} is not the head of {branch}")
        oid = self.hub.commit(repo.repo_id, files, tuple(deletes), branch=branch,
                              message=header.get("summary", ""),
                              description=header.get("description", ""))
        self._send_json({"success": True, "commitOid": oid, "pullRequestUrl": pr_url,
                         "commitUrl": f"{self.hub.url}/{repo.repo_id}/commit/{oid}"})

    def _api_branch_POST(self, repo: Repo, args: list[str], body: bytes) -> None:
        payload = json.loads(body) if body else {}
        self.hub.create_branch(repo.repo_id, "/".join(args), payload.get("startingPoint"))
        self._send_json({})

    def _api_branch_DELETE(self, repo: Repo, args: list[str], body: bytes) -> None:
        name = "/".join(args)
        if name == "main":
            raise HubError(403, "cannot delete the main branch")
        if repo.branches.pop(name, None) is None:
            raise HubError(404, f"Invalid rev id: {name}", "RevisionNotFound")
        self._send_json({})

    def _api_tag_POST(self, repo: Repo, args: list[str], body: bytes) -> None:
        payload = json.loads(body)
        self.hub.create_tag(repo.repo_id, payload["tag"], "/".join(args) or "main")
        self._send_json({})

    def _api_tag_DELETE(self, repo: Repo, args: list[str], body: bytes) -> None:
        name = "/".join(args)
        if repo.tags.pop(name, None) is None:
            raise HubError(404, f"Invalid rev id: {name}", "RevisionNotFound")
        self._send_json({})


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


