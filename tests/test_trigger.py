"""The REST trigger client against a tiny fake Prefect API (no Prefect server, no Prefect import)."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from deployments import trigger
from deployments.trigger import ExitCode

REPO_ROOT = Path(__file__).resolve().parents[1]
DEPLOYMENT = "loan-risk-training/retrain"


# --- the fake API --------------------------------------------------------------------------------


@dataclass
class FakePrefect:
    """Just enough of Prefect's REST API: deployments by name, create_flow_run, flow run reads, set_state."""

    states: tuple[str, ...] = ("PENDING", "RUNNING", "COMPLETED")
    final_message: str | None = None
    expected_auth: str | None = None
    fail_reads: int = 0  # the next N flow-run reads answer 503
    fail_creates: int = 0  # the next N create_flow_run calls answer 502
    html_root: bool = False  # answer like a UI (200 text/html) everywhere
    deployments: dict[str, str] = field(default_factory=lambda: {DEPLOYMENT: "dep-0001"})
    requests: list[dict[str, Any]] = field(default_factory=list)
    runs: dict[str, dict[str, Any]] = field(default_factory=dict)
    by_key: dict[str, str] = field(default_factory=dict)
    api_url: str = ""

    def handle(self, method: str, path: str, headers: dict[str, str], body: Any) -> tuple[int, Any]:
        self.requests.append({"method": method, "path": path, "headers": headers, "body": body})
        if self.html_root:
            return 200, "<html>prefect ui</html>"
        if self.expected_auth is not None and headers.get("authorization") != self.expected_auth:
            return 401, {"exception_message": "Unauthorized"}
        parts = path.removeprefix("/api/").strip("/").split("/")
        if method == "GET" and parts[:2] == ["deployments", "name"] and len(parts) == 4:
            dep_id = self.deployments.get(f"{parts[2]}/{parts[3]}")
            if dep_id is None:
                return 404, {"detail": "Deployment not found"}
            return 200, {"id": dep_id, "name": parts[3]}
        if method == "POST" and parts[0] == "deployments" and parts[2:] == ["create_flow_run"]:
            if self.fail_creates:
                self.fail_creates -= 1
                return 502, {"detail": "bad gateway"}
            key = body.get("idempotency_key")
            if key in self.by_key:
                return 201, self._public(self.by_key[key])
            run_id = str(uuid.uuid4())
            self.runs[run_id] = {"reads": 0, "parameters": body.get("parameters"), "cancelled": False}
            if key:
                self.by_key[key] = run_id
            return 201, self._public(run_id, state="SCHEDULED")
        if method == "GET" and parts[0] == "flow_runs" and len(parts) == 2:
            if parts[1] not in self.runs:
                return 404, {"detail": "Flow run not found"}
            if self.fail_reads:
                self.fail_reads -= 1
                return 503, {"detail": "unavailable"}
            run = self.runs[parts[1]]
            state = self.states[min(run["reads"], len(self.states) - 1)]
            run["reads"] += 1
            return 200, self._public(parts[1], state=state)
        if method == "POST" and parts[0] == "flow_runs" and parts[2:] == ["set_state"]:
            self.runs[parts[1]]["cancelled"] = body["state"]["type"] == "CANCELLING"
            return 201, {"status": "ACCEPT"}
        return 404, {"detail": "Not Found"}

    def _public(self, run_id: str, state: str = "SCHEDULED") -> dict[str, Any]:
        message = self.final_message if state in trigger.TERMINAL_STATES else None
        return {
            "id": run_id,
            "name": "clever-otter",
            "parameters": self.runs[run_id]["parameters"],
            "state": {"type": state, "name": state.title(), "message": message},
        }


def _handler(fake: FakePrefect) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            body = json.loads(raw) if raw else None
            headers = {k.lower(): v for k, v in self.headers.items()}
            status, payload = fake.handle(self.command, self.path, headers, body)
            data = payload.encode() if isinstance(payload, str) else json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "text/html" if isinstance(payload, str) else "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = _serve

        def log_message(self, *args: Any) -> None:
            pass

    return Handler


@pytest.fixture
def fake() -> Iterator[FakePrefect]:
    api = FakePrefect()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(api))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    api.api_url = f"http://127.0.0.1:{server.server_address[1]}/api"
    try:
        yield api
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "PREFECT_API_URL",
        "PREFECT_API_KEY",
        "PREFECT_API_AUTH_STRING",
        "PREFECT_UI_URL",
        "GITHUB_OUTPUT",
        "GITHUB_STEP_SUMMARY",
    ):
        monkeypatch.delenv(name, raising=False)


FAST = ["--poll-interval", "0.01", "--retry-delay", "0"]


def run_main(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict[str, Any], str, str]:
    code = trigger.main([*argv])
    out, err = capsys.readouterr()
    last = json.loads(out.strip().splitlines()[-1])
    return code, last, out, err


# --- pure helpers --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("source=sample", ("source", "sample")),
        ("scale=0.02", ("scale", 0.02)),
        ("n_trials=2", ("n_trials", 2)),
        ("deploy=false", ("deploy", False)),
        ("dry_run=true", ("dry_run", True)),
        ("source=null", ("source", None)),
        ("source=/nonexistent", ("source", "/nonexistent")),
        ("tags=[1, 2]", ("tags", [1, 2])),
        ('obj={"a": 1}', ("obj", {"a": 1})),
        ('n="2"', ("n", "2")),
        ("expr=a=b", ("expr", "a=b")),
        ("empty=", ("empty", "")),
        ("x=NaN", ("x", "NaN")),
        ("x=Infinity", ("x", "Infinity")),
        (" key =1", ("key", 1)),
    ],
)
def test_parse_param(text: str, expected: tuple[str, Any]) -> None:
    assert trigger.parse_param(text) == expected


@pytest.mark.parametrize("text", ["novalue", "=1", ""])
def test_parse_param_rejects_missing_key_or_equals(text: str) -> None:
    with pytest.raises(ValueError):
        trigger.parse_param(text)


def test_parse_params_later_wins() -> None:
    assert trigger.parse_params(["a=1", "b=x", "a=2"]) == {"a": 2, "b": "x"}


@pytest.mark.parametrize(
    ("api_url", "ui_url", "expected"),
    [
        (
            "https://api.prefect.cloud/api/accounts/acc-1/workspaces/ws-2",
            None,
            "https://app.prefect.cloud/account/acc-1/workspace/ws-2/runs/flow-run/RUN",
        ),
        (
            "https://api.prefect.cloud/api/accounts/acc-1/workspaces/ws-2/",
            "http://ignored:4200",
            "https://app.prefect.cloud/account/acc-1/workspace/ws-2/runs/flow-run/RUN",
        ),
        ("http://127.0.0.1:4200/api", None, "http://127.0.0.1:4200/runs/flow-run/RUN"),
        ("http://127.0.0.1:4200/api/", None, "http://127.0.0.1:4200/runs/flow-run/RUN"),
        (
            "https://prefect.example.com/prefect/api",
            None,
            "https://prefect.example.com/prefect/runs/flow-run/RUN",
        ),
        ("http://10.0.0.5:4200/api", "https://ui.example.com/", "https://ui.example.com/runs/flow-run/RUN"),
    ],
)
def test_flow_run_url(api_url: str, ui_url: str | None, expected: str) -> None:
    assert trigger.flow_run_url(api_url, "RUN", ui_url) == expected


def test_auth_headers() -> None:
    assert trigger.auth_headers("pnu_key", None) == {"Authorization": "Bearer pnu_key"}
    basic = "Basic " + base64.b64encode(b"user:pa:ss").decode()
    assert trigger.auth_headers(None, "user:pa:ss") == {"Authorization": basic}
    assert trigger.auth_headers("pnu_key", "user:pa:ss") == {
        "Authorization": basic
    }  # as Prefect's own client
    assert trigger.auth_headers(None, None) == {}
    assert trigger.auth_headers("", "") == {}


def test_module_does_not_import_prefect() -> None:
    code = "import sys, deployments.trigger; sys.exit(1 if 'prefect' in sys.modules else 0)"
    subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, check=True, timeout=60)


# --- the command against the fake API -------------------------------------------------------------


def test_completed_run_prints_link_and_json(
    fake: FakePrefect, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PREFECT_API_URL", fake.api_url)
    monkeypatch.setenv("PREFECT_API_KEY", "pnu_secret")
    code, last, out, err = run_main(
        capsys,
        DEPLOYMENT,
        "--param",
        "source=sample",
        "--param",
        "scale=0.02",
        "-p",
        "n_trials=2",
        "--param",
        "deploy=false",
        "--wait",
        *FAST,
    )
    assert code == ExitCode.OK
    run_id = last["id"]
    assert last["state"] == "COMPLETED" and last["exit_code"] == 0 and last["error"] is None
    assert last["url"] == f"{fake.api_url.removesuffix('/api')}/runs/flow-run/{run_id}"
    assert last["deployment"] == DEPLOYMENT and last["name"] == "clever-otter"
    assert last["url"] in out.splitlines()[0]
    assert fake.runs[run_id]["parameters"] == {
        "source": "sample",
        "scale": 0.02,
        "n_trials": 2,
        "deploy": False,
    }
    assert {r["headers"].get("authorization") for r in fake.requests} == {"Bearer pnu_secret"}
    create = next(r for r in fake.requests if r["method"] == "POST")
    assert create["path"] == "/api/deployments/dep-0001/create_flow_run"
    assert create["body"]["idempotency_key"]
    assert "Running" in err and "Completed" in err


def test_basic_auth_string_for_self_hosted(
    fake: FakePrefect, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    fake.expected_auth = "Basic " + base64.b64encode(b"admin:s3cret").decode()
    monkeypatch.setenv("PREFECT_API_URL", fake.api_url)
    monkeypatch.setenv("PREFECT_API_AUTH_STRING", "admin:s3cret")
    code, last, _, _ = run_main(capsys, DEPLOYMENT, "--wait", *FAST)
    assert code == ExitCode.OK and last["state"] == "COMPLETED"


@pytest.mark.parametrize(
    "credentials", [{"PREFECT_API_AUTH_STRING": "admin:wrong"}, {"PREFECT_API_KEY": "pnu_bad"}]
)
def test_wrong_credentials_say_so(
    fake: FakePrefect, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, credentials: dict
) -> None:
    fake.expected_auth = "Basic " + base64.b64encode(b"admin:s3cret").decode()
    monkeypatch.setenv("PREFECT_API_URL", fake.api_url)
    for name, value in credentials.items():
        monkeypatch.setenv(name, value)
    code, last, _, err = run_main(capsys, DEPLOYMENT, "--wait", *FAST)
    assert code == ExitCode.AUTH == 6
    assert "authentication failed" in err and "refused the credentials" in err and "HTTP 401" in err
    assert last["id"] is None and "authentication failed" in last["error"]
    assert len(fake.requests) == 1  # an auth error is not retried


def test_missing_credentials_hint(
    fake: FakePrefect, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    fake.expected_auth = "Bearer pnu_x"
    monkeypatch.setenv("PREFECT_API_URL", fake.api_url)
    code, _, _, err = run_main(capsys, DEPLOYMENT, *FAST)
    assert code == ExitCode.AUTH and "no credentials were given" in err


@pytest.mark.parametrize(
    ("final", "expected"),
    [
        ("COMPLETED", ExitCode.OK),
        ("FAILED", ExitCode.FAILED),
        ("CRASHED", ExitCode.CRASHED),
        ("CANCELLED", ExitCode.CANCELLED),
    ],
)
def test_terminal_state_exit_codes(
    fake: FakePrefect,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    final: str,
    expected: ExitCode,
) -> None:
    fake.states = ("PENDING", "RUNNING", final)
    fake.final_message = "Flow run encountered an exception: boom" if final != "COMPLETED" else None
    monkeypatch.setenv("PREFECT_API_URL", fake.api_url)
    code, last, _, err = run_main(capsys, DEPLOYMENT, "--wait", *FAST)
    assert code == expected
    assert last["state"] == final and last["exit_code"] == int(expected)
    if final != "COMPLETED":
        assert last["message"] == "Flow run encountered an exception: boom"
        assert f"ended {final.title()}" in err


def test_exit_codes_are_distinct() -> None:
    assert len({int(c) for c in ExitCode}) == len(ExitCode)


def test_without_wait_returns_after_creating(
    fake: FakePrefect, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    fake.states = ("FAILED",)
    monkeypatch.setenv("PREFECT_API_URL", fake.api_url)
    code, last, _, _ = run_main(capsys, DEPLOYMENT, *FAST)
    assert code == ExitCode.OK and last["state"] == "SCHEDULED"
    assert not any(r["path"].startswith("/api/flow_runs/") for r in fake.requests)


def test_timeout(
    fake: FakePrefect, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    fake.states = ("PENDING", "RUNNING")
    monkeypatch.setenv("PREFECT_API_URL", fake.api_url)
    code, last, _, err = run_main(capsys, DEPLOYMENT, "--wait", "--timeout", "0.3", "--poll-interval", "0.05")
    assert code == ExitCode.TIMEOUT == 5
    assert last["state"] == "RUNNING" and "after 0.3s" in last["error"]
    assert not fake.runs[last["id"]]["cancelled"]


def test_timeout_can_cancel(
    fake: FakePrefect, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    fake.states = ("RUNNING",)
    monkeypatch.setenv("PREFECT_API_URL", fake.api_url)
    code, last, _, _ = run_main(
        capsys, DEPLOYMENT, "--wait", "--timeout", "0.2", "--poll-interval", "0.05", "--cancel-on-timeout"
    )
    assert code == ExitCode.TIMEOUT
    assert fake.runs[last["id"]]["cancelled"]


def test_transient_errors_while_polling_are_retried(
    fake: FakePrefect, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    fake.fail_reads = 3
    monkeypatch.setenv("PREFECT_API_URL", fake.api_url)
    code, last, _, err = run_main(capsys, DEPLOYMENT, "--wait", "--retries", "3", *FAST)
    assert code == ExitCode.OK and last["state"] == "COMPLETED"
    assert err.count("HTTP 503") == 3


def test_persistent_errors_give_up(
    fake: FakePrefect, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    fake.fail_reads = 100
    monkeypatch.setenv("PREFECT_API_URL", fake.api_url)
    code, last, _, _ = run_main(capsys, DEPLOYMENT, "--wait", "--retries", "2", *FAST)
    assert code == ExitCode.API and "after 3 attempts" in last["error"]
    assert last["id"]  # the run exists; its id is reported


def test_retried_create_reuses_idempotency_key(
    fake: FakePrefect, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    fake.fail_creates = 1
    monkeypatch.setenv("PREFECT_API_URL", fake.api_url)
    code, _, _, _ = run_main(capsys, DEPLOYMENT, *FAST)
    assert code == ExitCode.OK
    keys = [r["body"]["idempotency_key"] for r in fake.requests if r["method"] == "POST"]
    assert len(keys) == 2 and keys[0] == keys[1]
    assert len(fake.runs) == 1


def test_unknown_deployment(
    fake: FakePrefect, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PREFECT_API_URL", fake.api_url)
    code, last, _, _ = run_main(capsys, "loan-risk-training/nope", *FAST)
    assert code == ExitCode.NOT_FOUND and "not found" in last["error"]


def test_unreachable_api(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("PREFECT_API_URL", f"http://127.0.0.1:{port}/api")
    code, last, _, _ = run_main(capsys, DEPLOYMENT, "--retries", "1", *FAST)
    assert code == ExitCode.API and "ConnectError" in last["error"]


def test_ui_instead_of_api(
    fake: FakePrefect, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    fake.html_root = True
    monkeypatch.setenv("PREFECT_API_URL", fake.api_url.removesuffix("/api"))
    code, last, _, _ = run_main(capsys, DEPLOYMENT, *FAST)
    assert code == ExitCode.API and "no JSON" in last["error"]


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        ([DEPLOYMENT, "--param", "oops"], "key=value"),
        (["no-slash"], "FLOW/DEPLOYMENT"),
        ([DEPLOYMENT, "--wait", "--timeout", "0"], "must be positive"),
    ],
)
def test_usage_errors(
    fake: FakePrefect,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    argv: list[str],
    needle: str,
) -> None:
    monkeypatch.setenv("PREFECT_API_URL", fake.api_url)
    code, last, _, _ = run_main(capsys, *argv)
    assert code == ExitCode.USAGE and needle in last["error"]


def test_missing_api_url(capsys: pytest.CaptureFixture[str]) -> None:
    code, last, _, _ = run_main(capsys, DEPLOYMENT)
    assert code == ExitCode.USAGE and "PREFECT_API_URL" in last["error"]


def test_github_outputs_and_summary(
    fake: FakePrefect, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PREFECT_API_URL", fake.api_url)
    monkeypatch.setenv("GITHUB_OUTPUT", str(tmp_path / "out"))
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(tmp_path / "summary"))
    code, last, _, _ = run_main(capsys, DEPLOYMENT, "--wait", *FAST)
    assert code == 0
    outputs = dict(line.split("=", 1) for line in (tmp_path / "out").read_text().splitlines())
    assert outputs == {"flow_run_id": last["id"], "state": "COMPLETED", "url": last["url"], "exit_code": "0"}
    assert last["url"] in (tmp_path / "summary").read_text()


def test_cli_entry_point(fake: FakePrefect) -> None:
    """``python -m deployments.trigger`` as the workflow runs it: exit code and final JSON line."""
    fake.states = ("RUNNING", "FAILED")
    env = {"PATH": "/usr/bin:/bin", "PREFECT_API_URL": fake.api_url, "PREFECT_API_KEY": "k"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "deployments.trigger",
            DEPLOYMENT,
            "--param",
            "source=/nonexistent",
            "--wait",
            *FAST,
        ],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == ExitCode.FAILED, proc.stderr
    last = json.loads(proc.stdout.strip().splitlines()[-1])
    assert last["state"] == "FAILED"
    assert "[trigger]" in proc.stderr


def test_secrets_with_trailing_newlines_are_stripped(
    fake: FakePrefect, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    fake.expected_auth = "Bearer pnu_key"
    monkeypatch.setenv("PREFECT_API_URL", fake.api_url + "\n")
    monkeypatch.setenv("PREFECT_API_KEY", "pnu_key\n")
    code, last, _, _ = run_main(capsys, DEPLOYMENT, "--wait", *FAST)
    assert code == ExitCode.OK and "\n" not in last["url"]
