"""A token-auth registry's ``WWW-Authenticate: Bearer realm=...`` gets the registry's credentials only when the
realm is the registry's own host (host:port) or a host of the setting ``registry_allowed_realms``.

Real HTTP servers on loopback: a registry that answers 401 with a Bearer challenge naming a realm, and a token
server (the realm) that records the ``Authorization`` header it received."""

from __future__ import annotations

import base64
import http.server
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from tasks.release.engine import DeployStepError
from tasks.release.registry_api import registry_digest
from tasks.settings import get_settings

USER, PASSWORD = "pipeline", "registry-secret"
BASIC = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
TOKEN = "token-from-the-realm"
DIGEST = "sha256:" + "ab" * 32


@dataclass
class Server:
    """One loopback HTTP server; ``seen`` holds (path, Authorization header or None) of every request."""

    httpd: http.server.ThreadingHTTPServer
    seen: list[tuple[str, str | None]] = field(default_factory=list)
    realm: str = ""  # the registry's challenge names this realm (a URL)

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.httpd.server_address[1]}"

    def authorizations(self, prefix: str) -> list[str | None]:
        return [auth for path, auth in self.seen if path.startswith(prefix)]


def _serve(answer: Any) -> Server:
    server: Server

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            server.seen.append((self.path, self.headers.get("Authorization")))
            status, headers, body = answer(server, self.path, self.headers.get("Authorization"))
            self.send_response(status)
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = Server(http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler))
    threading.Thread(target=server.httpd.serve_forever, args=(0.05,), daemon=True).start()
    return server


def _token_answer(server: Server, path: str, auth: str | None) -> tuple[int, dict[str, str], bytes]:
    """A token server: a token for the registry's Basic credentials, 401 without them."""
    if auth != BASIC:
        return 401, {}, b"{}"
    return 200, {"Content-Type": "application/json"}, json.dumps({"token": TOKEN}).encode()


def _registry_answer(server: Server, path: str, auth: str | None) -> tuple[int, dict[str, str], bytes]:
    """A token-auth registry: its own /token realm, manifests for a Bearer token, else a Bearer challenge."""
    if path.startswith("/token"):
        return _token_answer(server, path, auth)
    if auth == f"Bearer {TOKEN}":
        return 200, {"Docker-Content-Digest": DIGEST}, b"{}"
    challenge = f'Bearer realm="{server.realm}",service="registry",scope="repository:loan-risk:pull"'
    return 401, {"WWW-Authenticate": challenge}, b'{"errors": [{"code": "UNAUTHORIZED"}]}'


@pytest.fixture
def servers() -> Iterator[tuple[Server, Server]]:
    registry, realm = _serve(_registry_answer), _serve(_token_answer)
    yield registry, realm
    for s in (registry, realm):
        s.httpd.shutdown()
        s.httpd.server_close()


@pytest.fixture
def allowed_realms(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """Set ``LOANRISK_REGISTRY_ALLOWED_REALMS`` (the process settings are re-read)."""

    def allow(*hosts: str) -> None:
        monkeypatch.setenv("LOANRISK_REGISTRY_ALLOWED_REALMS", json.dumps(list(hosts)))
        get_settings.cache_clear()

    monkeypatch.delenv("LOANRISK_REGISTRY_ALLOWED_REALMS", raising=False)
    get_settings.cache_clear()
    yield allow
    get_settings.cache_clear()


def test_a_foreign_realm_is_refused_and_gets_no_credentials(
    servers: tuple[Server, Server], allowed_realms: Any
) -> None:
    registry, realm = servers
    registry.realm = f"http://{realm.host}/token"
    with pytest.raises(DeployStepError) as caught:
        registry_digest(registry.host, "loan-risk", "1.0.0", USER, PASSWORD)
    message = str(caught.value)
    assert realm.host in message and "registry_allowed_realms" in message, message
    assert "LOANRISK_REGISTRY_ALLOWED_REALMS" in message and registry.host in message, message
    assert realm.seen == []  # the foreign realm was never even asked, so it received no credentials
    assert registry.authorizations("/v2/") == [BASIC]  # the registry itself got them, once


def test_a_realm_on_another_port_of_the_same_host_is_foreign(
    servers: tuple[Server, Server], allowed_realms: Any
) -> None:
    registry, realm = servers
    allowed_realms("127.0.0.1")  # a host without a port is that host on the realm URL's default port only
    registry.realm = f"http://{realm.host}/token"
    with pytest.raises(DeployStepError, match="registry_allowed_realms"):
        registry_digest(registry.host, "loan-risk", "1.0.0", USER, PASSWORD)
    assert realm.seen == []


def test_the_registrys_own_realm_gets_the_credentials(
    servers: tuple[Server, Server], allowed_realms: Any
) -> None:
    registry, realm = servers
    registry.realm = f"http://{registry.host}/token"
    assert registry_digest(registry.host, "loan-risk", "1.0.0", USER, PASSWORD) == DIGEST
    assert registry.authorizations("/token") == [BASIC]
    assert registry.authorizations("/v2/") == [BASIC, f"Bearer {TOKEN}"]
    assert realm.seen == []


def test_an_allowed_realm_gets_the_credentials(servers: tuple[Server, Server], allowed_realms: Any) -> None:
    registry, realm = servers
    allowed_realms("auth.example.com", f" {realm.host} ")  # entries are trimmed
    registry.realm = f"http://{realm.host}/token"
    assert registry_digest(registry.host, "loan-risk", "1.0.0", USER, PASSWORD) == DIGEST
    assert realm.authorizations("/token") == [BASIC]
    assert registry.authorizations("/v2/") == [BASIC, f"Bearer {TOKEN}"]


def test_without_credentials_a_foreign_realm_is_asked_anonymously(
    servers: tuple[Server, Server], allowed_realms: Any
) -> None:
    """Nothing to leak: an anonymous token request may go to any realm (public registries work so)."""
    registry, realm = servers
    registry.realm = f"http://{realm.host}/token"
    with pytest.raises(DeployStepError, match="HTTP 401"):  # this realm hands no anonymous token
        registry_digest(registry.host, "loan-risk", "1.0.0", None, None)
    assert realm.authorizations("/token") == [None]


@pytest.mark.parametrize(
    ("realm", "registry", "allowed", "trusted"),
    [
        ("https://reg.example.com/token", "https://reg.example.com/v2/x", [], True),
        ("https://reg.example.com:443/token", "https://reg.example.com/v2/x", [], True),  # default port
        ("https://REG.example.com/token", "https://reg.example.com/v2/x", [], True),  # hosts ignore case
        ("https://reg.example.com:8443/token", "https://reg.example.com/v2/x", [], False),
        ("https://reg.example.com.evil.test/token", "https://reg.example.com/v2/x", [], False),
        ("https://reg.example.com@evil.test/token", "https://reg.example.com/v2/x", [], False),
        ("https://evil.test/token?reg.example.com", "https://reg.example.com/v2/x", [], False),
        ("https://auth.example.com/token", "https://reg.example.com/v2/x", ["auth.example.com"], True),
        ("https://auth.example.com/token", "https://reg.example.com/v2/x", ["auth.example.com:443"], True),
        ("https://auth.example.com:8443/t", "https://reg.example.com/v2/x", ["auth.example.com"], False),
        ("https://auth.example.com:8443/t", "https://reg.example.com/v2/x", ["auth.example.com:8443"], True),
        (
            "https://auth.example.com/token",
            "https://reg.example.com/v2/x",
            ["https://auth.example.com"],
            True,
        ),
        ("http://[::1]:5001/token", "http://[::1]:5000/v2/x", ["[::1]:5001"], True),
        ("http://[::1]:5001/token", "http://[::1]:5000/v2/x", [], False),
    ],
)
def test_which_realm_hosts_are_trusted(realm: str, registry: str, allowed: list[str], trusted: bool) -> None:
    import httpx

    from tasks.release.registry_api import _realm_is_trusted

    assert _realm_is_trusted(httpx.URL(realm), httpx.URL(registry), allowed) is trusted


def test_the_refusal_says_what_to_set(servers: tuple[Server, Server], allowed_realms: Any) -> None:
    registry, realm = servers
    registry.realm = f"http://{realm.host}/token"
    with pytest.raises(DeployStepError) as caught:
        registry_digest(registry.host, "loan-risk", "1.0.0", USER, PASSWORD)
    assert f"""LOANRISK_REGISTRY_ALLOWED_REALMS='["{realm.host}"]'""" in str(caught.value)
    assert PASSWORD not in str(caught.value)
    allowed_realms(realm.host)  # what the message says works
    assert registry_digest(registry.host, "loan-risk", "1.0.0", USER, PASSWORD) == DIGEST
