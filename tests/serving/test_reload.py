"""POST /model/reload: admin token, atomic swap, and no request lost while reloading under load."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from serving.bundle import load_bundle
from tests.serving.conftest import ADMIN_TOKEN, call, children

AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def test_reload_is_disabled_without_an_admin_token(make_app) -> None:
    client = make_app(admin_token=None).test_client()
    r = client.post("/model/reload", headers=AUTH)
    assert r.status_code == 403
    assert r.get_json()["error"] == "reload_disabled"
    assert "LOANRISK_ADMIN_TOKEN" in r.get_json()["message"]


def test_reload_needs_the_token(client) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {ADMIN_TOKEN}"},
                    {"Authorization": "Bearer"}, {"Authorization": "Bearer ünïcode"}):  # fmt: skip
        r = client.post("/model/reload", headers=headers)
        assert r.status_code == 401, headers
        assert r.get_json()["error"] == "unauthorized"
        assert r.headers["WWW-Authenticate"].startswith("Bearer")


def test_reload_swaps_the_model(client, bundle_dir_v2: Path, bundle_dir: Path, records) -> None:
    v2 = load_bundle(bundle_dir_v2)
    r = client.post("/model/reload", headers=AUTH, json={"bundle_dir": str(bundle_dir_v2)})
    assert r.status_code == 200, r.data
    assert r.get_json()["model_version"] == "2" and r.get_json()["previous_version"] == "1"
    assert client.get("/health").get_json()["model_version"] == "2"
    p = client.post("/predict", json=records[0]).get_json()
    assert p["model_version"] == "2"
    assert abs(p["probability"] - v2.predict_records([records[0]])[0]) <= 1e-9
    metrics = client.get("/metrics").get_data(as_text=True)
    assert 'loanrisk_model_info{model_name="loan-risk",model_version="2"} 1.0' in metrics
    assert 'loanrisk_model_info{model_name="loan-risk",model_version="1"} 0.0' in metrics
    # no body: the configured directory is read again
    r = client.post("/model/reload", headers=AUTH)
    assert r.status_code == 200 and r.get_json()["model_version"] == "1"


def test_failed_reload_keeps_the_old_model(client, tmp_path: Path) -> None:
    (tmp_path / "bundle.json").write_text("{not json")
    (tmp_path / "model.cbm").write_bytes(b"garbage")
    for target in (tmp_path, tmp_path / "missing", "\x00bad"):
        r = client.post("/model/reload", headers=AUTH, json={"bundle_dir": str(target)})
        assert r.status_code == 422, r.data
        assert r.get_json()["error"] == "invalid_bundle" and r.get_json()["field"] == "bundle_dir"
    assert client.get("/health").get_json()["model_version"] == "1"
    r = client.post("/model/reload", headers=AUTH, json={"bundle_dir": 5})
    assert r.status_code == 400 and r.get_json()["field"] == "bundle_dir"
    r = client.post("/model/reload", headers=AUTH, data=b"[1]", content_type="application/json")
    assert r.status_code == 400


def test_reload_then_predict_in_flight_uses_one_model(app, bundle_dir_v2: Path, records) -> None:
    """A handler takes the model once: a swap during a request cannot mix two models in one answer."""
    holder = app.extensions["loanrisk"]
    before = holder.current
    holder.load(bundle_dir_v2, origin="test")
    assert holder.current is not before and before.bundle.version == "1"
    assert before.bundle.predict_records(records[:3]) != holder.current.bundle.predict_records(records[:3])


# --- under load, against gunicorn with two workers ----------------------------------------------------------


def test_reload_under_load_loses_no_request(
    live_server, bundle_dir: Path, bundle_dir_v2: Path, records
) -> None:
    server = live_server(workers=2)
    single = json.dumps(records[0]).encode()
    batch = json.dumps({"data": records[:50]}).encode()
    statuses: list[int] = []
    single_ok = [0]
    versions: set[str] = set()
    lock = threading.Lock()
    stop = threading.Event()

    def fire(k: int) -> None:
        n = 0
        while not stop.is_set() and n < 2000:  # bounded
            path, body = ("/predict", single) if (k + n) % 3 else ("/predict/batch", batch)
            status, answer = call(server.url + path, body)
            with lock:
                statuses.append(status)
                if status == 200:
                    versions.add(answer["model_version"])
                    single_ok[0] += path == "/predict"
            n += 1

    threads = [threading.Thread(target=fire, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    reloads = []
    try:
        for i in range(6):
            time.sleep(0.4)
            target = bundle_dir_v2 if i % 2 == 0 else bundle_dir
            reloads.append(
                call(f"{server.url}/model/reload", json.dumps({"bundle_dir": str(target)}).encode(), AUTH)
            )
        time.sleep(0.4)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=60)
    assert [s for s, _ in reloads] == [200] * 6, reloads
    assert len(statuses) > 50
    assert set(statuses) == {200}, {s: statuses.count(s) for s in set(statuses)}
    assert versions == {"1", "2"}
    # the last reload (to v1) reaches both workers through the sync file
    deadline = time.monotonic() + 15
    seen: set[str] = set()
    while time.monotonic() < deadline:
        seen = {call(f"{server.url}/health")[1]["model_version"] for _ in range(8)}
        if seen == {"1"}:
            break
        time.sleep(0.3)
    assert seen == {"1"}
    # the multi-worker metrics add both workers' counts
    with urllib.request.urlopen(f"{server.url}/metrics", timeout=10) as r:
        text = r.read().decode()
    total = sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith('loanrisk_http_requests_total{endpoint="/predict",method="POST",status="200"}')
    )
    assert total == single_ok[0]


def test_a_respawned_worker_serves_the_reloaded_model(live_server, bundle_dir_v2: Path) -> None:
    """A worker started after a reload serves what the reload chose, not the bundle of the settings."""
    server = live_server(workers=1)
    status, _ = call(
        f"{server.url}/model/reload", json.dumps({"bundle_dir": str(bundle_dir_v2)}).encode(), AUTH
    )
    assert status == 200
    (worker,) = children(server.process.pid)
    os.kill(worker, signal.SIGKILL)  # a worker this test started; gunicorn replaces it
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        alive = children(server.process.pid)
        if alive and alive != [worker]:
            try:
                status, body = call(f"{server.url}/health")
                if status == 200:
                    break
            except OSError:
                pass
        time.sleep(0.3)
    assert children(server.process.pid) != [worker]
    assert call(f"{server.url}/health")[1]["model_version"] == "2"
