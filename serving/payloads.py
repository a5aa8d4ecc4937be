"""Answers out and the body in: strict JSON answers, the request body within its limit, reason options."""

from __future__ import annotations

import io
import sys
from collections.abc import Mapping
from typing import Any

import orjson
from flask import Response, request
from werkzeug.exceptions import RequestEntityTooLarge

from serving.config import MAX_REASON_COUNT
from serving.errors import ApiError, json_type
from serving.reasons import MODES
from serving.requests import _SURROGATE, MLFLOW_KEYS

MAX_UNKNOWN_NAMED = 50
READ_CHUNK = 1 << 20  # bytes per recv while reading a body from gunicorn
# Field names an error may carry that are ours, not the client's (logs name no other client-chosen key).
STRUCTURAL_FIELDS = frozenset(
    {"data", "bundle_dir", "on_error", *MLFLOW_KEYS, "dataframe_split.data", "dataframe_split.columns"}
    | {"params", "reasons", "reason_count", "params.reasons", "params.reason_count"}
)


def read_body() -> bytes:
    """The request body within ``MAX_CONTENT_LENGTH``: a larger Content-Length is refused (413) before
    anything is read, a chunked body once it passes the limit."""
    limit, length = request.max_content_length or sys.maxsize, request.content_length
    too_large = ApiError(413, "body_too_large", f"request body is larger than the limit of {limit} bytes")
    if length is not None and length > limit:
        raise too_large
    stream = request.environ.get("wsgi.input")
    if length is None and request.environ.get("wsgi.input_terminated"):
        if len(data := stream.read(limit + 1)) > limit:  # chunked: the server de-chunks
            raise too_large
        return data
    reader = getattr(stream, "reader", None)
    whole = type(reader).__name__ == "LengthReader" and reader.length == length and not stream.buf.tell()
    if length is not None and whole and hasattr(reader.unreader, "sock"):
        data = _from_socket(reader, length)
    else:
        try:
            data = request.get_data(cache=False)
        except RequestEntityTooLarge:
            raise too_large from None
    if length is not None and len(data) != length:  # the client closed the connection early
        raise ApiError(400, "incomplete_body", f"request body ended after {len(data)} of {length} bytes")
    return data


def _from_socket(reader: Any, length: int) -> bytes:
    """A Content-Length body from gunicorn's parser: what it holds, then recvs of up to 1 MiB, none past the body's
    end (a pipelined request stays in the socket): docs/decisions/0006-body-reader.md."""
    unreader = reader.unreader
    unreader.buf.seek(0, io.SEEK_END)
    held = unreader.read() if unreader.buf.tell() else b""
    if len(held) > length:
        unreader.unread(held[length:])
    parts, got = [held[:length]], min(len(held), length)
    while got < length and (chunk := unreader.sock.recv(min(length - got, READ_CHUNK))):
        parts.append(chunk)
        got += len(chunk)
    reader.length -= got
    return b"".join(parts)


def json_response(obj: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    """A JSON answer: ``obj`` written as JSON (made writable by :func:`encodable` if orjson cannot), or bytes of
    JSON already written."""
    if type(obj) is not bytes:
        try:
            obj = orjson.dumps(obj, default=str)
        except orjson.JSONEncodeError:  # a lone surrogate or an integer beyond 64 bits got this far
            obj = orjson.dumps(encodable(obj), default=str)
    return Response(obj, status=status, headers=headers, mimetype="application/json")


def encodable(value: Any) -> Any:
    """A copy that orjson can write: lone surrogates become ``\\udXXX`` text, huge integers strings."""
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode() if _SURROGATE.search(value) else value
    if isinstance(value, int) and not isinstance(value, bool):
        return value if -(2**63) <= value < 2**64 else str(value)
    if value is None or isinstance(value, bool | float):
        return value
    if isinstance(value, Mapping):
        return {encodable(str(k)): encodable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [encodable(v) for v in value]
    return encodable(str(value))


def warn(out: dict[str, Any], names: list[str]) -> None:
    if names:
        shown = names[:MAX_UNKNOWN_NAMED]
        more = f" and {len(names) - len(shown)} more" if len(names) > len(shown) else ""
        out["unknown_fields"] = shown
        out["warnings"] = [f"ignored unknown fields: {', '.join(shown)}{more}"]


def reason_options(
    values: Mapping[str, Any] | None, default_count: int, default_mode: str = "risky", prefix: str = ""
) -> tuple[str, int]:
    """The ``reasons`` mode and ``reason_count`` a request asks for (query string or ``params``);
    400 naming the parameter when one is not valid."""
    if not isinstance(values := {} if values is None else values, Mapping):
        raise ApiError(
            400, "invalid_parameter", f"'params' must be an object, got {json_type(values)}", "params"
        )
    mode = values.get("reasons", default_mode)
    if mode not in MODES:
        message = f"'{prefix}reasons' must be one of {', '.join(MODES)}; got {shown(mode)}"
        raise ApiError(400, "invalid_parameter", message, f"{prefix}reasons")
    given = values.get("reason_count", default_count)
    count = int(given) if isinstance(given, str) and given.strip().isdigit() else given
    if type(count) is not int or not 1 <= count <= MAX_REASON_COUNT:
        message = (
            f"'{prefix}reason_count' must be an integer from 1 to {MAX_REASON_COUNT}; got {shown(given)}"
        )
        raise ApiError(400, "invalid_parameter", message, f"{prefix}reason_count")
    return mode, count


def shown(value: Any) -> str:
    """A client's value as an error message shows it: text or a number (40 characters at most), else its type."""
    if isinstance(value, str):
        return repr(encodable(value)[:40])
    return repr(value)[:40] if type(value) in (int, float) else json_type(value)
