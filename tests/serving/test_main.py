"""``python -m serving --bundle DIR [--host H] [--port P]`` runs the service (gunicorn or Flask's server)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from tests.serving.conftest import REPO_ROOT, LiveServer, _stop, _wait_ready, free_port


@pytest.mark.parametrize("server", ["gunicorn", "flask"])
def test_python_m_serving(server: str, bundle_dir: Path, tmp_path: Path) -> None:
    port = free_port()
    log_path = tmp_path / "main.log"
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("LOANRISK_") and k != "PROMETHEUS_MULTIPROC_DIR"
    }
    env["PYTHONPATH"] = str(REPO_ROOT)
    command = [sys.executable, "-m", "serving", "--bundle", str(bundle_dir), "--host", "127.0.0.1",
               "--port", str(port), "--server", server, "--workers", "1"]  # fmt: skip
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    live = LiveServer(f"http://127.0.0.1:{port}", process, log_path)
    try:
        _wait_ready(live, 120)
        with urllib.request.urlopen(f"{live.url}/health", timeout=10) as r:
            assert json.loads(r.read())["model_version"] == "1"
    finally:
        _stop(process)


def test_python_m_serving_needs_a_bundle(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "serving", "--bundle", str(tmp_path / "missing")],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2 and "does not exist" in proc.stderr
