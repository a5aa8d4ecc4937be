"""Release notes and the GitHub release call (against a local server that records the request)."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tasks.release import ReleaseError, create_github_release, release_notes


@pytest.fixture
def recorder():
    seen: list[dict] = []
    status = {"code": 201}

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            seen.append({"path": self.path, "headers": dict(self.headers), "body": body})
            self.send_response(status["code"])
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            payload = (
                {"html_url": "http://example.invalid/r/1"}
                if status["code"] < 300
                else {"message": "Bad credentials"}
            )
            self.wfile.write(json.dumps(payload).encode())

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", seen, status
    server.shutdown()


def test_github_release_request(recorder) -> None:
    url, seen, _ = recorder
    out = create_github_release(url, "lending/loan-risk", "tok", "loan-risk-v3", "loan-risk v3", "notes")
    assert out["html_url"] == "http://example.invalid/r/1"
    req = seen[0]
    assert req["path"] == "/repos/lending/loan-risk/releases"
    assert req["headers"]["Authorization"] == "Bearer tok"
    assert req["headers"]["Accept"] == "application/vnd.github+json"
    assert req["body"] == {"tag_name": "loan-risk-v3", "name": "loan-risk v3", "body": "notes", "draft": False,
                           "prerelease": False}  # fmt: skip


def test_github_refusal_is_a_clear_error(recorder) -> None:
    url, _, status = recorder
    status["code"] = 401
    with pytest.raises(ReleaseError, match="HTTP 401.*Bad credentials"):
        create_github_release(url, "lending/loan-risk", "bad", "t", "n", "b")


def test_release_notes_compare_with_previous_champion() -> None:
    notes = release_notes(
        "loan-risk", "4", {"test_roc_auc": 0.83, "test_f1": 0.77},
        {"version": "3", "metrics": {"test_roc_auc": 0.81, "test_f1": 0.75}},
        "localhost:5055/loan-risk:4", "sha256:abc", {"source": "hf://datasets/keanteng/loan", "revision": "deadbeef",
                                                     "files": {"loan.csv": {"sha256": "f" * 64}}},
    )  # fmt: skip
    assert "| test_roc_auc | 0.8300 | 0.8100 |" in notes and "Previous champion: v3" in notes
    assert "localhost:5055/loan-risk:4" in notes and "sha256:abc" in notes and "deadbeef" in notes
    first = release_notes("loan-risk", "1", {"test_f1": 0.7}, None, "img:1", "sha256:x", {})
    assert "Previous champion: none" in first
