"""Request bodies in, JSON answers out: body reading, JSON/CSV parsing, MLflow's scoring protocol, ApiError.

Nothing here knows the model; :mod:`serving.routes` puts these together. Two promises hold for any input:
a client's mistake is an :class:`ApiError` (a 4xx naming the field and record index), and every answer is
strict JSON. Text that is not Unicode - a lone UTF-16 surrogate such as ``"\\ud800"``, which Python's json
accepts - is refused with a 400 naming the field, so nothing echoed (``loanId``, unknown field names, values in
error messages) can be unencodable; :func:`json_response` escapes anything odd that still reaches it.
"""

from __future__ import annotations

import csv
import io
import json
import re
import sys
from collections.abc import Callable, Mapping
from typing import Any

import orjson
from flask import Response, request
from werkzeug.exceptions import RequestEntityTooLarge

from serving.config import MAX_REASON_COUNT
from serving.features import KNOWN_FIELDS, FeatureError
from serving.reasons import MODES

MAX_UNKNOWN_NAMED = 50
MLFLOW_KEYS = ("dataframe_split", "dataframe_records", "inputs", "instances")
# Field names an error may carry that are ours, not the client's (logs name no other client-chosen key).
STRUCTURAL_FIELDS = frozenset(
    {"data", "bundle_dir", *MLFLOW_KEYS, "dataframe_split.data", "dataframe_split.columns"}
    | {"params", "reasons", "reason_count", "params.reasons", "params.reason_count"}
)
_SURROGATE = re.compile("[\ud800-\udfff]")


class ApiError(Exception):
    """A client error answered as ``{"error", "message", "field", "index"}`` with a 4xx status.

    ``extra`` adds fields to the body (the reload's per-worker states); ``status`` may be a 5xx only for
    faults of the service itself, never for a client's mistake.
    """

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        field: str | None = None,
        index: int | None = None,
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.field, self.index, self.headers, self.extra = field, index, headers, extra


def feature_error(exc: FeatureError, index: int | None = None) -> ApiError:
    idx = exc.index if exc.index is not None else index
    where = f"record {idx}, " if idx is not None else ""
    return ApiError(422, "invalid_value", f"{where}field '{exc.field}': {exc.message}", exc.field, idx)


# --- answers ---------------------------------------------------------------------------------------------


def json_bytes(obj: Any) -> bytes:
    """The JSON text of an answer (anything orjson cannot write made writable: :func:`encodable`)."""
    try:
        return orjson.dumps(obj, default=str)
    except orjson.JSONEncodeError:  # a lone surrogate or an integer beyond 64 bits got this far
        return orjson.dumps(encodable(obj), default=str)


def json_response(obj: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    return Response(json_bytes(obj), status=status, headers=headers, mimetype="application/json")


def raw_json_response(body: bytes, status: int = 200) -> Response:
    return Response(body, status=status, mimetype="application/json")


def encodable(value: Any) -> Any:
    """A copy that orjson can write: lone surrogates become ``\\udXXX`` text, huge integers strings."""
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode() if _SURROGATE.search(value) else value
    if isinstance(value, bool) or value is None or isinstance(value, float):
        return value
    if isinstance(value, int):
        return value if -(2**63) <= value < 2**64 else str(value)
    if isinstance(value, Mapping):
        return {encodable(str(k)): encodable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [encodable(v) for v in value]
    return encodable(str(value))


# --- bodies ----------------------------------------------------------------------------------------------


Body = bytes | bytearray  # a request body: a bytearray when received straight from gunicorn's socket


# The environ key under which the fast lane (serving/lane.py) leaves the body it read (or the error reading it
# gave) before it handed the request to Flask: the socket has given the body already.
READ_BODY = "loanrisk.body"


def read_body() -> Body:
    """The request body, at most ``MAX_CONTENT_LENGTH`` bytes (413 beyond), with or without Content-Length."""
    already = request.environ.get(READ_BODY)
    if isinstance(already, ApiError):
        raise already
    if already is not None:
        return already
    limit = request.max_content_length or sys.maxsize
    length = request.content_length
    too_large = ApiError(413, "body_too_large", f"request body is larger than the limit of {limit} bytes")
    if length is not None:
        if length > limit:
            raise too_large
        if length:
            data = read_gunicorn_body(request.environ.get("wsgi.input"), length)
            if data is not None:
                return data
        try:
            return request.get_data(cache=False)
        except RequestEntityTooLarge:
            raise too_large from None
    if not request.environ.get("wsgi.input_terminated"):
        return b""  # no Content-Length and no chunked framing: no body (WSGI)
    data = request.environ["wsgi.input"].read(limit + 1)  # chunked: the server de-chunks
    if len(data) > limit:
        raise too_large
    return data


def read_gunicorn_body(stream: Any, length: int) -> Body | None:
    """Read a Content-Length body from gunicorn's reader in one go, or None when that does not apply.

    gunicorn's ``Body.read`` pulls the body 1 KiB at a time through Python code (~13 ms for a 5 MB batch of
    1,000 records), and even its ``LengthReader`` asked for the whole length reads 8 KiB ``recv`` calls into a
    BytesIO and copies the result twice (~3 ms). Here what gunicorn already read ahead is taken, and the rest
    of the body is received straight into one buffer of the right size (``recv_into``: ~1 ms). Only used while
    the Body has buffered nothing (the first read); any other server goes through werkzeug.
    """
    reader = getattr(stream, "reader", None)
    buffered = getattr(stream, "buf", None)
    if type(reader).__name__ != "LengthReader" or buffered is None or buffered.tell() != 0:
        return None
    unreader = reader.unreader
    sock = getattr(unreader, "sock", None)
    if sock is None or reader.length != length or not hasattr(unreader, "take_buffered"):
        data = reader.read(length)
    else:
        data = _receive(sock, unreader.take_buffered(), length, unreader)
        reader.length = 0
    if len(data) != length:
        raise ApiError(400, "incomplete_body", f"request body ended after {len(data)} of {length} bytes")
    return data


def _receive(sock: Any, head: bytes, length: int, unreader: Any) -> Body:
    """``length`` bytes: ``head`` (read ahead), then the socket; what follows the body goes back to ``unreader``."""
    if len(head) >= length:
        unreader.unread(head[length:])  # a pipelined next request
        return head[:length]
    body = bytearray(length)
    view = memoryview(body)
    view[: len(head)] = head
    got = len(head)
    while got < length:
        n = sock.recv_into(view[got:], length - got)
        if not n:  # the client closed the connection early
            return bytes(view[:got])
        got += n
    view.release()
    return body


def parse_json(body: Body) -> Any:
    """The JSON document of a body (NaN/Infinity accepted, as pandas writes them); 400 when it is not one."""
    if not body.strip():
        raise ApiError(400, "invalid_json", "request body is empty: send a JSON document")
    try:
        return orjson.loads(body)  # strict: valid UTF-8, no lone surrogates, no NaN
    except orjson.JSONDecodeError as exc:
        try:  # Python's json accepts NaN/Infinity, as json.dumps of a pandas row writes them
            value = json.loads(body)
        except Exception:
            raise ApiError(400, "invalid_json", f"malformed JSON: {exc}") from None
    try:
        orjson.dumps(value)  # a C-speed check that every string is Unicode (NaN is fine: written as null)
    except orjson.JSONEncodeError:
        _reject_surrogates(value)
    return value


def _reject_surrogates(document: Any) -> None:
    """Raise a 400 naming the first field whose name or value holds a lone surrogate (walked without recursion)."""
    stack: list[tuple[Any, str, int | None]] = [(document, "", None)]
    while stack:
        value, path, index = stack.pop()
        if isinstance(value, str):
            if _SURROGATE.search(value):
                _surrogate_error(path or "(document)", index)
        elif isinstance(value, dict):
            for key, item in value.items():
                child = f"{path}.{key}" if path else key
                if _SURROGATE.search(key):
                    _surrogate_error(encodable(child), index)
                stack.append((item, child, index))
        elif isinstance(value, list):
            for i, item in enumerate(value):
                stack.append((item, f"{path}[{i}]", i if index is None and path else index))


def _surrogate_error(path: str, index: int | None) -> None:
    field = path.rsplit(".", 1)[-1] if "." in path else path
    raise ApiError(
        400,
        "invalid_text",
        f"'{path}' holds a lone UTF-16 surrogate (a \\ud800-\\udfff escape without its pair): not text; "
        "send valid Unicode",
        field,
        index,
    )


def json_type(value: Any) -> str:
    if value is None:
        return "null"
    return {
        bool: "boolean",
        int: "number",
        float: "number",
        str: "string",
        list: "array",
        dict: "object",
    }.get(type(value), type(value).__name__)


def check_records(records: list[Any], field: str = "data") -> None:
    for i, record in enumerate(records):
        if type(record) is not dict:
            raise ApiError(
                400,
                "invalid_record",
                f"record {i}: expected a JSON object of field names to values, got {json_type(record)}",
                field,
                i,
            )


def check_size(records: list[Any], field: str, limit: int) -> None:
    if not records:
        raise ApiError(400, "empty_batch", f"'{field}' holds no records: send at least one", field, None)
    if len(records) > limit:
        raise ApiError(
            413,
            "batch_too_large",
            f"{len(records)} records in '{field}'; the limit is {limit} per request",
            field,
        )


def loan_id(record: dict[str, Any], index: int) -> Any:
    """The ``loanId`` to echo: a string, None, or a number as its string; 422 for anything else."""
    value = record.get("loanId")
    if value is None or type(value) is str:
        return value
    if type(value) in (int, float):
        return str(value)
    raise ApiError(
        422, "invalid_value", f"record {index}, field 'loanId': expected a string", "loanId", index
    )


def unknown(records: list[dict[str, Any]]) -> list[str]:
    names: set[str] = set()
    known = KNOWN_FIELDS.issuperset  # a C loop over the keys, no allocation, for the common all-known case
    for record in records:
        if not known(record):
            names.update(k for k in record if k not in KNOWN_FIELDS)
    return sorted(names)


def warn(out: dict[str, Any], names: list[str]) -> None:
    if names:
        shown = names[:MAX_UNKNOWN_NAMED]
        more = f" and {len(names) - len(shown)} more" if len(names) > len(shown) else ""
        out["unknown_fields"] = shown
        out["warnings"] = [f"ignored unknown fields: {', '.join(shown)}{more}"]


def reason_options(
    values: Mapping[str, Any] | None, default_count: int, default_mode: str = "risky", prefix: str = ""
) -> tuple[str, int]:
    """The reasons a request asks for: ``reasons`` (risky, all or none) and ``reason_count`` (1 to the maximum),
    from the query string of /predict and /predict/batch or the ``params`` of /invocations; 400 naming the
    parameter when one is not valid."""
    if values is None:
        values = {}
    elif not isinstance(values, Mapping):
        raise ApiError(
            400, "invalid_parameter", f"'params' must be an object, got {json_type(values)}", "params"
        )
    mode = values.get("reasons", default_mode)
    if mode not in MODES:
        shown = encodable(mode)[:40] if isinstance(mode, str) else json_type(mode)
        message = f"'{prefix}reasons' must be one of {', '.join(MODES)}; got {shown!r}"
        raise ApiError(400, "invalid_parameter", message, f"{prefix}reasons")
    given = values.get("reason_count", default_count)
    count = int(given) if isinstance(given, str) and given.strip().isdigit() else given
    if type(count) is not int or not 1 <= count <= MAX_REASON_COUNT:
        shown = encodable(given)[:40] if isinstance(given, str | int) else json_type(given)
        message = f"'{prefix}reason_count' must be an integer from 1 to {MAX_REASON_COUNT}; got {shown!r}"
        raise ApiError(400, "invalid_parameter", message, f"{prefix}reason_count")
    return mode, count


def records_column(records: list[dict[str, Any]]) -> Callable[[str], list[Any]]:
    """``column(field)``: each record's value of a field as it was sent (None where absent)."""
    return lambda name: [r.get(name) for r in records]


# --- CSV and MLflow's scoring protocol -------------------------------------------------------------------


def csv_records(body: Body) -> list[dict[str, Any]]:
    try:
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ApiError(400, "invalid_csv", f"CSV body is not UTF-8: {exc}") from None
    try:
        records = list(csv.DictReader(io.StringIO(text)))
    except csv.Error as exc:
        raise ApiError(400, "invalid_csv", f"malformed CSV: {exc}") from None
    for i, record in enumerate(records):
        if None in record:
            raise ApiError(400, "invalid_csv", f"CSV row {i} has more values than the header", "data", i)
    return records


def mlflow_records(payload: Any) -> tuple[list[Any], str, list[str] | None]:
    """Records (or, for dataframe_split, rows plus their columns) from MLflow's scoring protocol."""
    if type(payload) is not dict:
        raise ApiError(400, "invalid_request", f"expected a JSON object with one of {', '.join(MLFLOW_KEYS)}")
    keys = [k for k in MLFLOW_KEYS if k in payload]
    if len(keys) != 1:
        raise ApiError(
            400,
            "invalid_request",
            f"expected exactly one of {', '.join(MLFLOW_KEYS)}; got {', '.join(keys) or 'none'}",
            keys[0] if keys else None,
        )
    key = keys[0]
    value = payload[key]
    if key == "dataframe_split":
        return _dataframe_split(value)
    if type(value) is list:
        return value, key, None
    if key == "inputs" and type(value) is dict:
        return _input_columns(value), key, None
    raise ApiError(400, "invalid_request", f"{key} must be a list of records", key)


def _dataframe_split(value: Any) -> tuple[list[Any], str, list[str]]:
    key = "dataframe_split"
    if type(value) is not dict:
        raise ApiError(400, "invalid_request", "dataframe_split must be an object with columns and data", key)
    columns, data = value.get("columns"), value.get("data")
    if type(columns) is not list or not all(type(c) is str for c in columns):
        raise ApiError(
            400, "invalid_request", "dataframe_split.columns must be a list of names", f"{key}.columns"
        )
    if type(data) is not list:
        raise ApiError(400, "invalid_request", "dataframe_split.data must be a list of rows", f"{key}.data")
    if len(set(columns)) != len(columns):
        raise ApiError(400, "invalid_request", "dataframe_split.columns repeats a name", f"{key}.columns")
    return data, f"{key}.data", columns


def _input_columns(value: dict[str, Any]) -> list[Any]:
    """``inputs`` as an object: one record of scalars, or columns (name -> list of values) zipped into records."""
    lists = [v for v in value.values() if type(v) is list]
    if not lists:
        return [value]
    if len(lists) != len(value):
        raise ApiError(400, "invalid_request", "inputs: give every column as a list, or none", "inputs")
    length = len(lists[0])
    for name, column in value.items():
        if len(column) != length:
            message = f"inputs: column '{name}' has {len(column)} values, expected {length}"
            raise ApiError(400, "invalid_request", message, name)
    names = list(value)
    return [dict(zip(names, row, strict=True)) for row in zip(*value.values(), strict=True)]
