"""A local stand-in for the Hugging Face Hub (dataset repositories only), for the real ``huggingface_hub`` client.

It serves the URL layout the client uses:

* ``HEAD``/``GET /datasets/{owner}/{name}/resolve/{revision}/{filename}`` with ``X-Repo-Commit``, ``ETag`` (the
  file's sha256, as the Hub does for LFS files), ``Content-Length`` and ``Accept-Ranges`` (``Range: bytes=N-`` is
  honoured);
* ``GET /api/datasets/{owner}/{name}`` and ``GET /api/datasets/{owner}/{name}/revision/{revision}`` returning
  ``{"id", "sha", "siblings": [{"rfilename"}], ...}``; with ``?blobs=true`` each sibling also has ``size``,
  ``blobId`` (the git blob sha1) and, for LFS files (all but :attr:`FakeHub.non_lfs`), ``lfs: {"sha256", "size"}``:
  what the commit says each file is;
* errors the way the Hub signals them: 404 with ``X-Error-Code: RepoNotFound`` / ``RevisionNotFound`` /
  ``EntryNotFound`` and an ``X-Error-Message``; 403 ``GatedRepo`` for repositories marked gated.

Every request is counted (:meth:`FakeHub.count`), and :meth:`FakeHub.fail_next` makes the next N matching requests
answer a given status (503 by default) to exercise retries; :meth:`FakeHub.tamper` makes the server send other
bytes (same size, same headers) for one file, as a corrupting mirror or proxy would. The ``hf_hub`` pytest fixture starts one with a small
repository built from ``tasks.data.sample.generate`` and points ``HF_ENDPOINT`` at it.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest

REPO_ID = "keanteng/loan"
CHANGED_FILE = "clarity_underwriting_variables.csv"

_RESOLVE = re.compile(r"^/datasets/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<file>.+)$")
_API = re.compile(r"^/api/datasets/(?P<repo>[^/]+/[^/]+?)(?:/revision/(?P<rev>[^/]+))?/?$")
_RANGE = re.compile(r"^bytes=(\d+)-(\d*)$")
_CHUNK = 1 << 16


@dataclass
class Blob:
    """One file's content: on disk (streamed) or in memory."""

    path: Path | None = None
    data: bytes | None = None
    sha256: str = ""
    size: int = 0
    git_sha1: str = ""

    @classmethod
    def of(cls, content: Path | str | bytes) -> Blob:
        if isinstance(content, bytes):
            return cls(
                data=content,
                sha256=hashlib.sha256(content).hexdigest(),
                size=len(content),
                git_sha1=hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest(),
            )
        path = Path(content)
        size = path.stat().st_size
        h, g = hashlib.sha256(), hashlib.sha1(b"blob %d\0" % size)
        with open(path, "rb") as fh:
            while chunk := fh.read(1 << 20):
                h.update(chunk)
                g.update(chunk)
        return cls(path=path, sha256=h.hexdigest(), size=size, git_sha1=g.hexdigest())

    def read(self, start: int, end: int):
        """Yield the bytes in [start, end)."""
        if self.data is not None:
            yield self.data[start:end]
            return
        assert self.path is not None
        with open(self.path, "rb") as fh:
            fh.seek(start)
            left = end - start
            while left > 0:
                chunk = fh.read(min(_CHUNK, left))
                if not chunk:
                    break
                left -= len(chunk)
                yield chunk


@dataclass
class _Failure:
    remaining: int
    status: int
    method: str | None
    path_contains: str | None


@dataclass
class FakeHub:
    """The state behind the server: repos -> commits -> files, branches, counters and failure injection."""

    repos: dict[str, dict[str, dict[str, Blob]]] = field(default_factory=dict)
    branches: dict[str, dict[str, str]] = field(default_factory=dict)
    gated: set[str] = field(default_factory=set)
    list_siblings: bool = True
    non_lfs: set[str] = field(
        default_factory=set
    )  # file names stored in git, not LFS (no sha256 in listings)
    tampered: dict[tuple[str, str], bytes] = field(default_factory=dict)  # (commit sha, file) -> bytes sent
    requests: list[tuple[str, str, int]] = field(default_factory=list)  # (method, path, status)
    endpoint: str = ""
    _failures: list[_Failure] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _server: ThreadingHTTPServer | None = None
    _thread: threading.Thread | None = None

    # -- content ---------------------------------------------------------------------------------
    @classmethod
    def from_map(
        cls,
        repos: dict[str, dict[str, dict[str, Path | str | bytes]]],
        branches: dict[str, dict[str, str]] | None = None,
    ) -> FakeHub:
        """``{repo: {commit_sha: {filename: path_or_bytes}}}`` plus ``{repo: {"main": sha}}``."""
        hub = cls()
        for repo, commits in repos.items():
            hub.repos[repo] = {
                sha: {f: Blob.of(c) for f, c in files.items()} for sha, files in commits.items()
            }
        hub.branches = {repo: dict(b) for repo, b in (branches or {}).items()}
        return hub

    def add_commit(self, repo: str, files: dict[str, Path | str | bytes], branch: str | None = "main") -> str:
        """Add a commit holding exactly ``files``; move ``branch`` to it; return its (deterministic) sha."""
        blobs = {name: Blob.of(content) for name, content in files.items()}
        with self._lock:
            commits = self.repos.setdefault(repo, {})
            parent = self.branches.get(repo, {}).get(branch or "", "")
            h = hashlib.sha1(f"{repo}\n{parent}\n{len(commits)}\n".encode())
            for name in sorted(blobs):
                h.update(f"{name}:{blobs[name].sha256}\n".encode())
            sha = h.hexdigest()
            commits[sha] = blobs
            if branch:
                self.branches.setdefault(repo, {})[branch] = sha
        return sha

    def resolve(self, repo: str, revision: str) -> str | None:
        if revision in self.branches.get(repo, {}):
            return self.branches[repo][revision]
        return revision if revision in self.repos.get(repo, {}) else None

    def tamper(self, repo: str, filename: str, revision: str = "main") -> bytes:
        """Send other bytes of the same size for ``filename`` at ``revision`` (headers and listing unchanged)."""
        sha = self.resolve(repo, revision)
        assert sha is not None, revision
        blob = self.repos[repo][sha][filename]
        original = b"".join(blob.read(0, blob.size))
        bad = bytes(b ^ 0x01 if i % 97 == 0 else b for i, b in enumerate(original))
        self.tampered[(sha, filename)] = bad
        return bad

    # -- observation -----------------------------------------------------------------------------
    def count(self, method: str | None = None, contains: str | None = None, status: int | None = None) -> int:
        """How many requests matched (method, a substring of the path, status)."""
        with self._lock:
            return sum(
                1
                for m, p, s in self.requests
                if (method is None or m == method)
                and (contains is None or contains in p)
                and (status is None or s == status)
            )

    @property
    def counts(self) -> Counter:
        """Requests per (method, path)."""
        with self._lock:
            return Counter((m, p) for m, p, _ in self.requests)

    def reset_counters(self) -> None:
        with self._lock:
            self.requests.clear()

    def fail_next(
        self, n: int, status: int = 503, *, method: str | None = None, path_contains: str | None = None
    ) -> None:
        """Make the next ``n`` requests matching (method, path substring) answer ``status``."""
        with self._lock:
            self._failures.append(_Failure(n, status, method, path_contains))

    def _take_failure(self, method: str, path: str) -> int | None:
        with self._lock:
            for failure in self._failures:
                if failure.remaining <= 0:
                    continue
                if failure.method is not None and failure.method != method:
                    continue
                if failure.path_contains is not None and failure.path_contains not in path:
                    continue
                failure.remaining -= 1
                return failure.status
        return None

    def _record(self, method: str, path: str, status: int) -> None:
        with self._lock:
            self.requests.append((method, path, status))

    # -- server ----------------------------------------------------------------------------------
    def start(self) -> FakeHub:
        hub = self

        class Handler(_HubHandler):
            state = hub

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        host, port = self._server.server_address[:2]
        self.endpoint = f"http://{host}:{port}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="fake-hf-hub", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> FakeHub:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class _HubHandler(BaseHTTPRequestHandler):
    state: FakeHub
    protocol_version = "HTTP/1.1"
    server_version = "FakeHub/1.0"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - silence the default stderr log
        pass

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        self._dispatch("POST")

    # -- helpers -----------------------------------------------------------------------------------
    def _send(
        self,
        method: str,
        path: str,
        status: int,
        body: bytes = b"",
        headers: dict[str, str] | None = None,
        content_type: str = "application/json",
    ) -> None:
        self.state._record(method, path, status)
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if method != "HEAD" and body:
            self.wfile.write(body)

    def _error(
        self, method: str, path: str, status: int, code: str | None, message: str, **extra: str
    ) -> None:
        headers = {"X-Error-Message": message, **extra}
        if code:
            headers["X-Error-Code"] = code
        self._send(method, path, status, json.dumps({"error": message}).encode(), headers)

    def _dispatch(self, method: str) -> None:
        url = urlsplit(self.path)
        path = url.path
        self._blobs = "blobs=true" in url.query.lower()
        try:
            injected = self.state._take_failure(method, path)
            if injected is not None:
                self._error(
                    method, path, injected, None, f"injected failure {injected}", **{"Retry-After": "0"}
                )
                return
            m = _RESOLVE.match(path)
            if m and method in ("HEAD", "GET"):
                self._resolve(method, path, unquote(m["repo"]), unquote(m["rev"]), unquote(m["file"]))
                return
            m = _API.match(path)
            if m and method == "GET":
                self._api(method, path, unquote(m["repo"]), unquote(m["rev"]) if m["rev"] else "main")
                return
            self._error(method, path, 404, None, f"no route for {method} {path}")
        except (BrokenPipeError, ConnectionResetError):
            pass

    def _repo_checks(self, method: str, path: str, repo: str, revision: str) -> str | None:
        """The commit sha, or None after sending the error."""
        if repo not in self.state.repos:
            self._error(method, path, 404, "RepoNotFound", f"Repository {repo} not found")
            return None
        if repo in self.state.gated and not self.headers.get("authorization"):
            self._error(method, path, 403, "GatedRepo", f"Access to dataset {repo} is restricted")
            return None
        sha = self.state.resolve(repo, revision)
        if sha is None:
            self._error(method, path, 404, "RevisionNotFound", f"Invalid rev id: {revision}")
            return None
        return sha

    def _api(self, method: str, path: str, repo: str, revision: str) -> None:
        sha = self._repo_checks(method, path, repo, revision)
        if sha is None:
            return
        info: dict[str, Any] = {
            "_id": hashlib.md5(repo.encode()).hexdigest()[:24],
            "id": repo,
            "author": repo.split("/")[0],
            "sha": sha,
            "private": False,
            "gated": repo in self.state.gated,
            "disabled": False,
            "lastModified": "2024-01-01T00:00:00.000Z",
            "tags": [],
            "downloads": 0,
            "likes": 0,
        }
        if self.state.list_siblings:
            info["siblings"] = [
                self._sibling(name, blob) for name, blob in sorted(self.state.repos[repo][sha].items())
            ]
        self._send(method, path, 200, json.dumps(info).encode())

    def _sibling(self, name: str, blob: Blob) -> dict[str, Any]:
        if not self._blobs:
            return {"rfilename": name}
        entry: dict[str, Any] = {"rfilename": name, "size": blob.size, "blobId": blob.git_sha1}
        if name not in self.state.non_lfs:
            entry["lfs"] = {"sha256": blob.sha256, "size": blob.size, "pointerSize": 134}
        return entry

    def _resolve(self, method: str, path: str, repo: str, revision: str, filename: str) -> None:
        sha = self._repo_checks(method, path, repo, revision)
        if sha is None:
            return
        blob = self.state.repos[repo][sha].get(filename)
        if blob is None:
            self._error(
                method,
                path,
                404,
                "EntryNotFound",
                f"{filename} does not exist on {revision}",
                **{"X-Repo-Commit": sha},
            )
            return
        start, end, status = 0, blob.size, 200
        headers = {
            "X-Repo-Commit": sha,
            "ETag": f'"{blob.git_sha1 if filename in self.state.non_lfs else blob.sha256}"',
            "Accept-Ranges": "bytes",
        }
        rng = self.headers.get("Range")
        if rng and (m := _RANGE.match(rng.strip())):
            start = int(m[1])
            end = min(int(m[2]) + 1, blob.size) if m[2] else blob.size
            if start >= blob.size:
                self._error(
                    method,
                    path,
                    416,
                    None,
                    "range not satisfiable",
                    **{"Content-Range": f"bytes */{blob.size}"},
                )
                return
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end - 1}/{blob.size}"
        self.state._record(method, path, status)
        self.send_response(status)
        self.send_header("Content-Type", "text/csv; charset=utf-8")
        self.send_header("Content-Length", str(end - start))
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        if method == "GET":
            bad = self.state.tampered.get((sha, filename))
            for chunk in [bad[start:end]] if bad is not None else blob.read(start, end):
                self.wfile.write(chunk)


# --------------------------------------------------------------------------------------------------
# pytest fixtures


@dataclass
class HubRepoFiles:
    """The files of the fixture repository's two commits."""

    first: dict[str, Path]
    second: dict[str, Path]
    changed_file: str = CHANGED_FILE


@pytest.fixture(scope="session")
def hf_hub_files(tmp_path_factory: pytest.TempPathFactory) -> HubRepoFiles:
    """Files of two commits: the sample at scale 0.01, then the same with one row fewer in the clarity file."""
    from tasks.data.sample import generate

    first_dir = tmp_path_factory.mktemp("hub-commit1")
    generate(first_dir, scale=0.01, seed=7)
    names = ("loan.csv", "payment.csv", CHANGED_FILE)
    first = {name: first_dir / name for name in names}
    second_dir = tmp_path_factory.mktemp("hub-commit2")
    lines = first[CHANGED_FILE].read_bytes().splitlines(keepends=True)
    assert len(lines) > 2, "the sample's clarity file is too small to change"
    (second_dir / CHANGED_FILE).write_bytes(b"".join(lines[:-1]))
    second = {**first, CHANGED_FILE: second_dir / CHANGED_FILE}
    return HubRepoFiles(first=first, second=second)


@dataclass
class HubFixture:
    """What the ``hf_hub`` fixture yields."""

    hub: FakeHub
    repo_id: str
    first_sha: str
    second_sha: str
    files: HubRepoFiles

    @property
    def endpoint(self) -> str:
        return self.hub.endpoint

    def source(self, revision: str | None = None, repo_id: str | None = None) -> str:
        url = f"hf://datasets/{repo_id or self.repo_id}"
        return f"{url}@{revision}" if revision else url


@pytest.fixture
def hf_hub(hf_hub_files: HubRepoFiles, monkeypatch: pytest.MonkeyPatch):
    """A running fake Hub with ``keanteng/loan``: commit 1, then commit 2 changing one file; ``main`` -> commit 2."""
    hub = FakeHub()
    first_sha = hub.add_commit(REPO_ID, hf_hub_files.first)
    second_sha = hub.add_commit(REPO_ID, hf_hub_files.second)
    hub.start()
    monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    try:
        yield HubFixture(
            hub=hub, repo_id=REPO_ID, first_sha=first_sha, second_sha=second_sha, files=hf_hub_files
        )
    finally:
        hub.stop()
