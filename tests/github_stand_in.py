"""A local stand-in for the part of GitHub's REST API that releases use, with faults on demand.

``GET /repos/{owner}/{repo}/releases/tags/{tag}`` answers the release or 404; ``POST /repos/{owner}/{repo}/releases``
creates one (422 ``already_exists`` for a tag that has one, as GitHub does); ``PATCH .../releases/{id}`` edits
its body. ``fail_posts`` holds HTTP statuses to
answer the next POSTs with instead (``[500]``: one 500, then normal); with ``create_before_failing`` a failing
POST still creates the release first (the answer is lost, not the write). Every request is recorded.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class GitHubStandIn:
    """Serves on 127.0.0.1 (a free port) from construction until :meth:`close`."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.releases: dict[str, dict[str, Any]] = {}
        self.fail_posts: list[int] = []
        self.fail_gets: list[int] = []
        self.create_before_failing = False
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self, status: int, payload: dict[str, Any]) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:  # noqa: N802
                with outer.lock:
                    outer.requests.append({"method": "GET", "path": self.path,
                                           "auth": self.headers.get("Authorization")})  # fmt: skip
                    fail = outer.fail_gets.pop(0) if outer.fail_gets else None
                    tag = (
                        self.path.split("/releases/tags/", 1)[-1] if "/releases/tags/" in self.path else None
                    )
                    found = outer.releases.get(tag) if tag else None
                if fail:
                    self._answer(fail, {"message": "Server Error"})
                elif found is None:
                    self._answer(404, {"message": "Not Found"})
                else:
                    self._answer(200, found)

            def do_POST(self) -> None:  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with outer.lock:
                    outer.requests.append({"method": "POST", "path": self.path, "body": body,
                                           "auth": self.headers.get("Authorization"),
                                           "headers": dict(self.headers)})  # fmt: skip
                    fail = outer.fail_posts.pop(0) if outer.fail_posts else None
                    tag = body["tag_name"]
                    exists = tag in outer.releases
                    if not exists and (fail is None or outer.create_before_failing):
                        outer.releases[tag] = {"id": len(outer.releases) + 1, "tag_name": tag, "name": body["name"],
                                               "body": body["body"], "html_url": f"http://github.invalid/{tag}",
                                               "target_commitish": body.get("target_commitish")}  # fmt: skip
                    created = outer.releases.get(tag)
                if fail:
                    self._answer(fail, {"message": "Server Error" if fail >= 500 else "Bad credentials"})
                elif exists:
                    self._answer(
                        422, {"message": "Validation Failed", "errors": [{"code": "already_exists"}]}
                    )
                else:
                    self._answer(201, created or {})

            def do_PATCH(self) -> None:  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with outer.lock:
                    outer.requests.append({"method": "PATCH", "path": self.path, "body": body})
                    release_id = int(self.path.rsplit("/", 1)[-1])
                    found = next((r for r in outer.releases.values() if r["id"] == release_id), None)
                    if found is not None:
                        found.update({k: v for k, v in body.items() if k in ("body", "name")})
                if found is None:
                    self._answer(404, {"message": "Not Found"})
                else:
                    self._answer(200, found)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def posts(self, tag: str | None = None) -> list[dict[str, Any]]:
        """The POST requests received (for ``tag`` only when given)."""
        return [
            r
            for r in self.requests
            if r["method"] == "POST" and (tag is None or r["body"]["tag_name"] == tag)
        ]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
