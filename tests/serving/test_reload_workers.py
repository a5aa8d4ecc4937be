"""A reload reaches every gunicorn worker, or the admin hears why (real gunicorn, several workers).

POST /model/reload answers 200 only once every live worker reports the new version loaded; a worker that
cannot load the published bundle keeps serving its model, says so in /health, retries with backoff, and the
admin sees each worker's state in the reload's answer and in GET /model/workers.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.serving.conftest import ADMIN_TOKEN, call, children

AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def _reload(url: str, bundle: Path) -> tuple[int, Any]:
    return call(f"{url}/model/reload", json.dumps({"bundle_dir": str(bundle)}).encode(), AUTH)


def _workers(url: str) -> dict[str, Any]:
    status, body = call(f"{url}/model/workers", headers=AUTH)
    assert status == 200, body
    return body


def wait_for_workers(url: str, n: int, timeout_s: float = 60) -> list[int]:
    """The pids of ``n`` workers, once each has started and reported its state."""
    deadline = time.monotonic() + timeout_s
    workers: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        workers = _workers(url)["workers"]
        if len(workers) == n and all(w["state"] == "loaded" for w in workers):
            return sorted(w["pid"] for w in workers)
        time.sleep(0.1)
    raise AssertionError(f"{n} workers never all reported loaded: {workers}")


def _healths(url: str, n: int) -> list[dict[str, Any]]:
    return [call(f"{url}/health")[1] for _ in range(n)]


def test_reload_reaches_idle_workers_before_answering(
    live_server, bundle_dir_v2: Path, tmp_path: Path
) -> None:
    server = live_server(workers=3, LOANRISK_RELOAD_SYNC_DIR=str(tmp_path / "sync"))
    pids = wait_for_workers(server.url, 3)
    t0 = time.monotonic()
    status, body = _reload(server.url, bundle_dir_v2)  # no other request: two workers stay idle
    elapsed = time.monotonic() - t0
    assert status == 200, body
    assert elapsed < 10, elapsed
    workers = body["workers"]
    assert len(workers) == 3, workers
    assert {(w["state"], w["model_version"]) for w in workers} == {("loaded", "2")}
    assert sorted(w["pid"] for w in workers) == pids == sorted(children(server.process.pid))
    assert {h["model_version"] for h in _healths(server.url, 12)} == {"2"}
    view = _workers(server.url)
    assert view["target"]["model_version"] == "2" and len(view["workers"]) == 3


@pytest.mark.faults
def test_a_worker_that_cannot_load_the_bundle_is_reported_then_retries(
    live_server, bundle_dir_v2: Path, tmp_path: Path
) -> None:
    """The bundle disappears between the first worker's load and the others': the admin gets a 503 naming them."""
    sync = tmp_path / "sync"
    server = live_server(workers=3, LOANRISK_RELOAD_SYNC_DIR=str(sync), LOANRISK_RELOAD_TIMEOUT="3")
    bundle = tmp_path / "bundle-v2"
    shutil.copytree(bundle_dir_v2, bundle)
    workers = wait_for_workers(server.url, 3)
    assert workers == sorted(children(server.process.pid))
    first, others = workers[0], workers[1:]
    for pid in others:  # workers this test's server started: held still while the first one loads
        os.kill(pid, signal.SIGSTOP)
    answer: list[tuple[int, Any]] = []
    try:
        thread = threading.Thread(target=lambda: answer.append(_reload(server.url, bundle)))
        thread.start()
        deadline = time.monotonic() + 30
        loaded = False
        while time.monotonic() < deadline and not loaded:
            for path in sync.glob(f"worker-{first}-*.json"):
                state = json.loads(path.read_text() or "{}")
                loaded = state.get("state") == "loaded" and state.get("model_version") == "2"
            time.sleep(0.02)
        assert loaded, "the first worker never reported the new bundle loaded"
        shutil.rmtree(bundle)  # gone before the other workers read it
    finally:
        for pid in others:
            os.kill(pid, signal.SIGCONT)
    thread.join(timeout=60)
    status, body = answer[0]
    assert status == 503, (body, sorted(p.name for p in sync.iterdir()), workers)
    assert body["error"] == "reload_incomplete"
    states = {w["pid"]: w for w in body["workers"]}
    assert set(states) == set(workers)
    assert states[first]["state"] == "loaded" and states[first]["model_version"] == "2"
    for pid in others:
        assert states[pid]["state"] == "failed", states[pid]
        assert states[pid]["model_version"] == "1" and states[pid]["wanted_version"] == "2"
        assert "not a model bundle" in states[pid]["error"]

    healths = _healths(server.url, 30)
    degraded = [h for h in healths if h["status"] == "degraded"]
    assert degraded, healths
    assert {(h["model_version"], h["wanted_version"]) for h in degraded} == {("1", "2")}
    assert all("not a model bundle" in h["error"] for h in degraded)

    shutil.copytree(bundle_dir_v2, bundle)  # the bundle is back: the failed workers retry and load it
    deadline = time.monotonic() + 30
    view: dict[str, Any] = {}
    while time.monotonic() < deadline:
        view = _workers(server.url)
        if all(w["state"] == "loaded" and w["model_version"] == "2" for w in view["workers"]):
            break
        time.sleep(0.2)
    assert {(w["state"], w["model_version"]) for w in view["workers"]} == {("loaded", "2")}, view
    assert all(w["attempts"] >= 2 for w in view["workers"] if w["pid"] in others), view
    assert {(h["status"], h["model_version"]) for h in _healths(server.url, 12)} == {("ok", "2")}


def test_worker_view_needs_the_admin_token(live_server, tmp_path: Path) -> None:
    server = live_server(workers=1, LOANRISK_RELOAD_SYNC_DIR=str(tmp_path / "sync"))
    status, body = call(f"{server.url}/model/workers")
    assert status == 401 and body["error"] == "unauthorized"
    view = _workers(server.url)
    assert [w["state"] for w in view["workers"]] == ["loaded"]
    assert view["target"] is None
