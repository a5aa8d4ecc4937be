"""The service's gunicorn response (serving/gunicorn_conf.py): headers and a whole body go out in one send."""

from __future__ import annotations

import importlib.util
from types import SimpleNamespace
from typing import Any

import pytest
from gunicorn.config import Config
from gunicorn.http import wsgi

from tests.serving.conftest import REPO_ROOT

pytestmark = pytest.mark.inprocess


class RecordingSocket:
    def __init__(self) -> None:
        self.sends: list[bytes] = []

    def sendall(self, data: bytes) -> None:
        self.sends.append(bytes(data))


@pytest.fixture(scope="module")
def response_class() -> Any:
    original = wsgi.Response
    spec = importlib.util.spec_from_file_location("gunicorn_conf", REPO_ROOT / "serving" / "gunicorn_conf.py")
    assert spec is not None and spec.loader is not None
    conf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(conf)
    yield conf.OneSendResponse
    wsgi.Response = original  # loading the settings installs it: undo that for the other tests


def _response(cls: Any, method: str = "POST") -> tuple[Any, RecordingSocket]:
    sock = RecordingSocket()
    req = SimpleNamespace(version=(1, 1), method=method, headers=[], should_close=lambda: False)
    return cls(req, sock, Config()), sock


def test_headers_and_a_whole_body_go_out_in_one_send(response_class: Any) -> None:
    assert wsgi.Response is response_class  # what wsgi.create() builds for every request
    resp, sock = _response(response_class)
    body = b'{"predictions":[0.25]}'
    resp.start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    resp.write(body)
    assert len(sock.sends) == 1
    head, _, sent_body = sock.sends[0].partition(b"\r\n\r\n")
    assert sent_body == body and head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"Content-Length: 22" in head and b"Connection: keep-alive" in head
    assert resp.sent == len(body) and resp.headers_sent


@pytest.mark.parametrize(
    ("headers", "parts"),
    [
        ([("Content-Type", "text/plain")], [b"chunk one", b"chunk two"]),  # no length: chunked
        ([("Content-Length", "8")], [b"part", b"more"]),  # a body in parts
    ],
)
def test_other_bodies_go_gunicorns_own_way(
    response_class: Any, headers: list[tuple[str, str]], parts: list[bytes]
) -> None:
    resp, sock = _response(response_class)
    resp.start_response("200 OK", headers)
    for part in parts:
        resp.write(part)
    assert len(sock.sends) == 1 + len(parts)  # the headers alone, then each part
    assert sock.sends[0].endswith(b"\r\n\r\n")
