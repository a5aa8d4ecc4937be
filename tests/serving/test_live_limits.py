"""Body and batch limits through gunicorn (Content-Length and chunked bodies), answered with JSON 413s."""

from __future__ import annotations

import http.client
import json
import socket
import time
from collections.abc import Iterator
from typing import BinaryIO
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


def _request(path: str, body: bytes, length: int | None = None) -> bytes:
    head = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    return (head + f"Content-Length: {len(body) if length is None else length}\r\n\r\n").encode() + body


def _until_both_answers_arrived(sock: socket.socket, timeout: float = 60) -> None:
    """Wait, without consuming anything, until both pipelined answers are in the socket's receive buffer."""
    deadline = time.monotonic() + timeout
    while sock.recv(1 << 22, socket.MSG_PEEK).count(b"HTTP/1.1 ") < 2:
        assert time.monotonic() < deadline, "the second answer never arrived"
        time.sleep(0.05)


def _answer(fp: BinaryIO) -> tuple[int, dict]:
    """One response read from ``fp``, the connection's one buffered reader: two pipelined answers may arrive in
    one read, and a reader per answer (``http.client.HTTPResponse(sock)`` makes one) would drop what the first
    read ahead of the second."""
    status = int(fp.readline().split()[1])
    length = 0
    while (line := fp.readline()) not in (b"\r\n", b"\n", b""):
        name, _, value = line.decode("latin-1").partition(":")
        if name.strip().lower() == "content-length":
            length = int(value)
    return status, json.loads(fp.read(length))


def test_large_bodies_read_straight_from_the_socket(live_server, records, bundle) -> None:
    """The body is read whole (payloads.read_body): right when it arrives in pieces, when a next
    request is pipelined behind it on the same connection, and a 400 when the client stops short."""
    server = live_server(workers=1)
    parsed = urlparse(server.url)
    cycled = records * (1 + 400 // len(records))
    first, second = cycled[:300], cycled[300:400]
    want = [bundle.predict_records(first), bundle.predict_records(second)]
    one = json.dumps({"dataframe_records": first}).encode()
    two = json.dumps({"data": second}).encode()
    assert len(one) > 100_000  # far more than gunicorn reads ahead with the headers
    with socket.create_connection((parsed.hostname, parsed.port), timeout=30) as sock:
        request = _request("/invocations", one)
        sock.sendall(request[:70_000])  # in pieces, with pauses
        time.sleep(0.2)
        sock.sendall(request[70_000:] + _request("/predict/batch", two))  # the next request pipelined behind
        _until_both_answers_arrived(sock)  # the case a reader per answer got wrong, now every time
        answers = sock.makefile("rb")
        status, body = _answer(answers)
        assert status == 200 and body["predictions"] == want[0]
        status, body = _answer(answers)
        assert status == 200 and [p["probability"] for p in body["predictions"]] == want[1]
    with socket.create_connection((parsed.hostname, parsed.port), timeout=30) as sock:
        # both at once: the body's last read must not take the pipelined request out of the socket, where
        # gunicorn's poller would never see it (the second answer then waited for the keep-alive timeout)
        sock.sendall(_request("/invocations", one) + _request("/predict/batch", two))
        _until_both_answers_arrived(sock, timeout=10)
        answers = sock.makefile("rb")
        assert [_answer(answers)[0], _answer(answers)[0]] == [200, 200]
    with socket.create_connection((parsed.hostname, parsed.port), timeout=30) as sock:
        sock.sendall(_request("/invocations", one[:50_000], length=len(one)))
        sock.shutdown(socket.SHUT_WR)
        status, body = _answer(sock.makefile("rb"))
        assert status == 400 and body["error"] == "incomplete_body", body
