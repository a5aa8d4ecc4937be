"""Real servers the release fault tests own and break: a private image registry and an ``mlflow server``.

    with private_registry(tmp / "registry", "ci", "secret") as reg:      # docker-registry, htpasswd, free port
        ... reg.stop() ... reg.start()                                    # same port, same storage
    with mlflow_server(tmp / "mlflow") as server:                         # SQLite store, --serve-artifacts
        ... server.kill() ... server.start()                              # the whole process tree, then again
    with DroppingProxy(server.uri) as proxy:                              # HTTP in front of it, on a free port
        proxy.drop_answer(lambda method, path, body: ..., times=1)        # forward, then hang up unanswered

Each runs in a session of its own (``start_new_session``) and is stopped by its process group; ``mlflow server``
runs without its job runners (``huey_consumer``), as the stack runs it; its web workers are found through /proc
and killed by PID too.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tests.integration.prefect_fixtures import _spawn, _stop_group, _tail, free_port

_REGISTRY_ENV = (
    "REGISTRY_PORT",
    "REGISTRY_USER",
    "REGISTRY_PASSWORD",
)  # distribution reads REGISTRY_* as config


def _wait(
    check: Callable[[], bool], proc: subprocess.Popen[Any], what: str, log: Path, timeout: float
) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited {proc.returncode} during start:\n{_tail(log)}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not answer within {timeout:.0f}s:\n{_tail(log)}")
        time.sleep(0.3)


def _answers(url: str, *codes: int) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code in codes
    except httpx.HTTPError:
        return False


def descendants(pid: int) -> list[int]:
    """Every live descendant of ``pid`` (from /proc), deepest last."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


@dataclass
class PrivateRegistry:
    """``docker-registry serve`` with htpasswd auth on 127.0.0.1:<port>; its storage survives stop/start."""

    root: Path
    username: str
    password: str
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[Any] | None = None

    @property
    def address(self) -> str:
        return f"localhost:{self.port}"

    def start(self) -> None:
        if not (self.root / "config.yml").exists():
            (self.root / "data").mkdir(parents=True, exist_ok=True)
            htpasswd = subprocess.run(["htpasswd", "-Bbn", self.username, self.password], capture_output=True,
                                      text=True, check=True).stdout  # fmt: skip
            (self.root / "htpasswd").write_text(htpasswd)
            (self.root / "config.yml").write_text(
                "version: 0.1\nlog: {level: warn, accesslog: {disabled: true}}\n"
                f"storage: {{filesystem: {{rootdirectory: {self.root / 'data'}}}, delete: {{enabled: true}}}}\n"
                f"http: {{addr: '127.0.0.1:{self.port}', secret: fault-test}}\n"
                f"auth: {{htpasswd: {{realm: basic-realm, path: {self.root / 'htpasswd'}}}}}\n"
            )
        env = {k: v for k, v in os.environ.items() if k not in _REGISTRY_ENV}
        log = self.root / "registry.log"
        self.proc = _spawn(["docker-registry", "serve", str(self.root / "config.yml")], self.root, env, log)
        _wait(
            lambda: _answers(f"http://127.0.0.1:{self.port}/v2/", 401), self.proc, "docker-registry", log, 30
        )

    def stop(self) -> None:
        if self.proc is not None:
            _stop_group(self.proc, "private docker-registry", timeout=10)
            self.proc = None


@contextlib.contextmanager
def private_registry(root: Path, username: str, password: str) -> Iterator[PrivateRegistry]:
    root.mkdir(parents=True, exist_ok=True)
    registry = PrivateRegistry(root, username, password)
    registry.start()
    try:
        yield registry
    finally:
        registry.stop()


@dataclass
class MlflowServer:
    """``mlflow server`` (SQLite backend store, proxied artifacts) on 127.0.0.1:<port>, same store on restart."""

    root: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[Any] | None = None
    started_in_s: float = 0.0

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 180) -> None:
        cmd = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(self.port),
               "--workers", "1", "--backend-store-uri", f"sqlite:///{self.root / 'mlflow.db'}",
               "--serve-artifacts", "--artifacts-destination", str(self.root / "artifacts")]  # fmt: skip
        env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
        env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"  # no job runners, as the stack runs it
        t0 = time.monotonic()
        log = self.root / "server.log"
        self.proc = _spawn(cmd, self.root, env, log)
        _wait(lambda: _answers(f"{self.uri}/health", 200), self.proc, "mlflow server", log, timeout)
        self.started_in_s = time.monotonic() - t0

    def kill(self) -> list[int]:
        """SIGKILL the server's whole process tree (its group, and each descendant by PID); returns the PIDs."""
        if self.proc is None:
            return []
        pids = [self.proc.pid, *descendants(self.proc.pid)]
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)
        deadline = time.monotonic() + 10
        while any(Path(f"/proc/{pid}").exists() and "Z" not in _state(pid) for pid in pids[1:]):
            if time.monotonic() > deadline:
                raise RuntimeError(f"mlflow server processes survived SIGKILL: {pids}")
            time.sleep(0.1)
        self.proc = None
        return pids


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "Z"


@contextlib.contextmanager
def mlflow_server(root: Path) -> Iterator[MlflowServer]:
    root.mkdir(parents=True, exist_ok=True)
    server = MlflowServer(root)
    server.start()
    try:
        yield server
    finally:
        server.kill()


class DroppingProxy:
    """An HTTP proxy in front of a real server that loses answers on demand, as a network does: a request that
    :meth:`drop_answer`'s predicate matches is forwarded and applied, and then the connection is closed with no
    answer; with :attr:`refuse` set every request is hung up on unforwarded (the server unreachable)."""

    def __init__(self, upstream: str) -> None:
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.upstream, self.refuse, self.dropped = upstream.rstrip("/"), False, []
        self._rules: list[list[Any]] = []
        self._lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _forward(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                if outer.refuse:
                    self.close_connection = True
                    return
                headers = {
                    k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length")
                }
                with httpx.Client(timeout=120) as http:
                    answer = http.request(
                        self.command, outer.upstream + self.path, headers=headers, content=body
                    )
                if outer._should_drop(self.command, self.path, body):
                    outer.dropped.append((self.command, self.path))
                    self.close_connection = True  # applied upstream; the answer never reaches the client
                    return
                self.send_response(answer.status_code)
                for k, v in answer.headers.items():
                    if k.lower() not in (
                        "content-length",
                        "transfer-encoding",
                        "connection",
                        "content-encoding",
                    ):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(answer.content)))
                self.end_headers()
                self.wfile.write(answer.content)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _forward  # noqa: N815

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.uri = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def drop_answer(self, predicate: Callable[[str, str, bytes], bool], times: int = 1) -> None:
        """Lose the answers to the next ``times`` requests ``predicate(method, path, body)`` matches."""
        with self._lock:
            self._rules.append([predicate, times])

    def _should_drop(self, method: str, path: str, body: bytes) -> bool:
        with self._lock:
            for rule in self._rules:
                if rule[1] > 0 and rule[0](method, path, body):
                    rule[1] -= 1
                    return True
        return False

    def __enter__(self) -> DroppingProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def _when(seen: Callable[[], bool], action: Callable[[], None], timeout: float) -> Any:
    """In a background thread: run ``action`` once ``seen()`` (polled every 0.2 s; an error means "not yet").
    Returns the thread; ``thread.fired`` says whether the action ran."""
    import threading

    def watch() -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                ready = seen()
            except Exception:  # noqa: BLE001 - the engine is busy: look again
                ready = False
            if ready:
                action()
                thread.fired = True  # type: ignore[attr-defined]
                return
            time.sleep(0.2)

    thread = threading.Thread(target=watch, daemon=True)
    thread.fired = False  # type: ignore[attr-defined]
    thread.start()
    return thread


def when_image_exists(
    docker_client: Any, prefix: str, action: Callable[[], None], timeout: float = 900
) -> Any:
    """Run ``action`` once a local image has a tag starting with ``prefix`` (the build finished: before the
    push); see :func:`_when`."""

    def seen() -> bool:
        return any(
            t.startswith(prefix) for i in docker_client.api.images() for t in (i.get("RepoTags") or [])
        )

    return _when(seen, action, timeout)


def when_container_starts(
    docker_client: Any, image_ref: str, action: Callable[[], None], timeout: float = 900
) -> Any:
    """Run ``action`` once a smoke-test container of an image whose reference starts with ``image_ref`` exists
    (the image was pushed and pulled back, and is being tested: before the commit); see :func:`_when`."""

    def seen() -> bool:
        smoke = docker_client.api.containers(all=True, filters={"label": "loan-risk.role=smoke"})
        return any(str(c.get("Image", "")).startswith(image_ref) for c in smoke)

    return _when(seen, action, timeout)
