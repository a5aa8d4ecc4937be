"""The fast lane: a JSON body posted to ``/invocations`` or ``/predict``, answered without Flask's machinery.

For one record, Flask's per-request work (the request and app contexts, URL routing, the hooks called through
it, a ``Response`` and its conversion to WSGI) cost ~170 µs of a request's ~550 µs of worker CPU under
gunicorn. The lane answers those two endpoints with the routes' own code (:func:`serving.routes.predict_record`,
:func:`serving.routes.invocation_json`) and records the request as the hooks do
(:func:`serving.access.finish_request`: metrics, request id, access line).

Anything else goes through Flask: another path or method, a content type other than ``application/json``, no
Content-Length or one over the limit, a query string with escapes, no model loaded, and every request the
routes answer with an error (a 4xx, or a fault): Flask then answers it, logs and counts it, with the body the
lane read (:data:`serving.payloads.READ_BODY`). Nothing is logged in the prediction log before the answer is
built (:meth:`serving.scoring.Scoring.commit`), so a request handed over is never logged twice.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import parse_qsl

from serving.access import finish_request, request_id
from serving.config import ServiceConfig
from serving.model import ModelHolder
from serving.payloads import READ_BODY, ApiError, json_bytes, read_gunicorn_body
from serving.routes import invocation_json, predict_record
from serving.scoring import Scoring

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]
_PLAIN_QUERY = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789=&_-.")


class _State:
    """What the answer's access line and metrics need (Flask's ``g`` on the other path)."""

    __slots__ = ("error", "model_version", "request_id", "rows")

    def __init__(self, rid: str) -> None:
        self.request_id, self.rows, self.model_version, self.error = rid, 0, None, None


class FastLane:
    """WSGI middleware in front of the Flask app (``app.wsgi_app``)."""

    def __init__(
        self,
        flask: WsgiApp,
        holder: ModelHolder,
        config: ServiceConfig,
        metrics: Any,
        prediction_log: Any,
    ) -> None:
        self.flask, self.holder, self.config = flask, holder, config
        self.metrics, self.log = metrics, prediction_log

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO")
        if environ.get("REQUEST_METHOD") != "POST" or path not in ("/invocations", "/predict"):
            return self.flask(environ, start_response)
        t0 = time.perf_counter()
        args = self._arguments(environ, path)
        length = self._length(environ)
        served = self.holder.current
        if args is None or length is None or served is None:
            return self.flask(environ, start_response)
        try:
            body = _read(environ, length)
        except ApiError as exc:  # the body ended early: Flask answers it
            environ[READ_BODY] = exc
            return self.flask(environ, start_response)
        state = _State(request_id(environ))
        state.model_version = served.version
        scoring = Scoring(served, self.config, self.log, state, path)
        try:
            out = (
                predict_record(scoring, body, args) if path == "/predict" else invocation_json(scoring, body)
            )
            answer = json_bytes(out)
        except Exception:  # an error to answer, or a fault: Flask's path answers, logs and counts it
            environ[READ_BODY] = body
            return self.flask(environ, start_response)
        scoring.commit()
        rid = finish_request(self.metrics, state, path, "POST", 200, time.perf_counter() - t0)
        start_response(
            "200 OK",
            [
                ("Content-Type", "application/json"),
                ("Content-Length", str(len(answer))),
                ("X-Request-ID", rid),
            ],
        )
        return [answer]

    def _length(self, environ: dict[str, Any]) -> int | None:
        """The body's length when the lane takes it: JSON, a Content-Length within the limit, not empty."""
        kind = environ.get("CONTENT_TYPE", "")
        if kind != "application/json" and kind.partition(";")[0].strip().lower() != "application/json":
            return None
        raw = environ.get("CONTENT_LENGTH", "")
        if not raw.isdigit():
            return None
        length = int(raw)
        return length if 0 < length <= self.config.max_body_bytes else None

    @staticmethod
    def _arguments(environ: dict[str, Any], path: str) -> dict[str, str] | None:
        """/predict's query arguments (the first value of each) when the query string is plain; else None."""
        query = environ.get("QUERY_STRING", "")
        if not query or path != "/predict":
            return {}
        if not _PLAIN_QUERY.issuperset(query):
            return None
        return dict(reversed(parse_qsl(query, keep_blank_values=True)))


def _read(environ: dict[str, Any], length: int) -> bytes | bytearray:
    """The body: gunicorn's reader taken in one go, or any other server's stream read to its length."""
    stream = environ["wsgi.input"]
    data = read_gunicorn_body(stream, length)
    if data is None:
        data = stream.read(length)
        if len(data) != length:
            message = f"request body ended after {len(data)} of {length} bytes"
            raise ApiError(400, "incomplete_body", message)
    return data
