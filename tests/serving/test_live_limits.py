"""Body and batch limits through gunicorn (Content-Length and chunked bodies), answered with JSON 413s."""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from urllib.parse import urlparse


def _post(url: str, body: bytes, chunked: bool = False) -> tuple[int, dict]:
    parsed = urlparse(url)
    conn = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=30)
    try:
        if chunked:

            def pieces() -> Iterator[bytes]:
                for i in range(0, len(body), 700):
                    yield body[i : i + 700]

            conn.request(
                "POST", parsed.path, pieces(), {"Content-Type": "application/json"}, encode_chunked=True
            )
        else:
            conn.request("POST", parsed.path, body, {"Content-Type": "application/json"})
        r = conn.getresponse()
        return r.status, json.loads(r.read())
    finally:
        conn.close()


def test_limits_over_http(live_server, records) -> None:
    server = live_server(workers=1, LOANRISK_MAX_BODY_BYTES="20000", LOANRISK_MAX_BATCH_SIZE="3")
    small = json.dumps({"data": records[:2]}).encode()
    assert len(small) < 20000
    big = json.dumps({"data": records[:2] + [{"pad": "x" * 20000}]}).encode()
    for chunked in (False, True):
        status, body = _post(f"{server.url}/predict/batch", small, chunked)
        assert status == 200 and body["count"] == 2
        status, body = _post(f"{server.url}/predict/batch", big, chunked)
        assert status == 413 and body["error"] == "body_too_large", (chunked, body)
        status, body = _post(f"{server.url}/predict", json.dumps(records[0]).encode(), chunked)
        assert status == 200 and body["loanId"] == records[0]["loanId"]
    status, body = _post(f"{server.url}/predict/batch", json.dumps({"data": [{}] * 4}).encode())
    assert status == 413 and (body["error"], body["field"]) == ("batch_too_large", "data")
    status, body = _post(f"{server.url}/predict/batch", b'{"data": [')
    assert status == 400 and body["error"] == "invalid_json"
