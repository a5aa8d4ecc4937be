"""Run the service's contract suites against a running service instead of the in-process app.

With ``LOANRISK_TEST_SERVICE_URL`` set (``http://host:port``), the ``client`` fixture of the serving tests is an
:class:`HttpClient` on that URL with the Flask test client's interface, schemathesis loads ``/openapi.json`` from
it, and tests marked ``inprocess`` (they need the app's configuration or its log handler) are deselected.
``tests/integration/test_serving_image.py`` runs the error, fuzz and schemathesis suites this way against the
built image's container.
"""

from __future__ import annotations

import json
import os
from typing import Any

import httpx

SERVICE_URL_ENV = "LOANRISK_TEST_SERVICE_URL"


def service_url() -> str | None:
    return os.environ.get(SERVICE_URL_ENV, "").strip().rstrip("/") or None


class HttpResponse:
    """The parts of werkzeug's test response the suites read."""

    def __init__(self, response: httpx.Response) -> None:
        self.status_code = response.status_code
        self.data = response.content
        self.headers = response.headers
        self.content_type = response.headers.get("content-type", "")

    def get_json(self) -> Any:
        return json.loads(self.data)

    def get_data(self, as_text: bool = False) -> bytes | str:
        return self.data.decode() if as_text else self.data


class HttpClient:
    """``get``/``post`` like Flask's test client, over real HTTP to ``base_url``."""

    def __init__(self, base_url: str, timeout_s: float = 60) -> None:
        self._client = httpx.Client(base_url=base_url, timeout=timeout_s)

    def get(self, path: str, headers: dict[str, str] | None = None) -> HttpResponse:
        return HttpResponse(self._client.get(path, headers=headers))

    def post(
        self,
        path: str,
        data: bytes | str | None = None,
        json: Any = None,  # noqa: A002 - the test client's name
        content_type: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> HttpResponse:
        sent = dict(headers or {})
        if json is not None:
            data = _json_bytes(json)
            content_type = content_type or "application/json"
        if content_type:
            sent["Content-Type"] = content_type
        body = data.encode() if isinstance(data, str) else data
        return HttpResponse(self._client.post(path, content=body, headers=sent))

    def close(self) -> None:
        self._client.close()


def _json_bytes(value: Any) -> bytes:
    return json.dumps(value).encode()
