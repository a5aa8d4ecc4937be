"""The one request model (msgspec; :mod:`serving.openapi` is generated from it) and decoding with it. A body
whose records are all valid is decoded in one call; otherwise each record on its own, so a bad one is named by
index and field; bodies msgspec refuses whole (a lone surrogate, ``NaN``) are read again by Python's parser."""

from __future__ import annotations

import csv
import io
import json
import math
import re
from collections.abc import Callable, Sequence
from typing import Annotated, Any

import msgspec
from msgspec.structs import astuple

from serving.contract import KNOWN_FIELDS, RANGES
from serving.errors import ApiError, json_type
from serving.features import FLAG_SOURCES, NUMBER_SOURCES, SOURCE_FIELDS

FIELDS = sorted(KNOWN_FIELDS)  # the request model's fields, in its slots' order

_Int = Annotated[int, msgspec.Meta(ge=-(2**63), le=2**63 - 1)]
_Value = str | float | _Int | bool | None
_LoanId = str | float | _Int | None | msgspec.UnsetType
_BIT = msgspec.Meta(ge=0, le=1)
_Flag = bool | Annotated[int, _BIT] | Annotated[float, _BIT] | str | None


def _slot(i: int, name: str) -> tuple[str, Any, Any]:
    """A field of the record's struct: attribute ``f<i>``, its JSON name, and the values it takes."""
    if name == "loanId":  # echoed: absent (UNSET) differs from null
        return f"f{i}", _LoanId, msgspec.field(default=msgspec.UNSET, name=name)
    # a number field: a finite JSON number within the field's range, or text the feature code reads; Any: the
    # known fields the features do not read (outcomes, identifiers)
    kind = _Flag if name in FLAG_SOURCES else _Value if name in SOURCE_FIELDS else Any
    if name in NUMBER_SOURCES:
        low, high = RANGES[name]
        ints = Annotated[int, msgspec.Meta(ge=math.ceil(low), le=math.floor(high))]
        kind = Annotated[float, msgspec.Meta(ge=low, le=high)] | ints | str | bool | None
    return f"f{i}", kind, msgspec.field(default=None, name=name)


LoanApplication = msgspec.defstruct(
    "LoanApplication", [_slot(i, n) for i, n in enumerate(FIELDS)], forbid_unknown_fields=True, gc=False
)
LoanApplication.__doc__ = (
    "One loan application with the field names of loan.csv and clarity_underwriting_variables.csv (a CSV row "
    "posted as JSON works as is). Missing fields are missing values; outcome and identifier fields are never "
    "features; unknown fields are ignored and named in the answer's warnings."
)


class Split(msgspec.Struct):
    columns: list[str]
    data: list[list[Any]]
    index: list[Any] | None = None


class InvocationParams(msgspec.Struct):
    reasons: str = "none"
    reason_count: int | None = None


def _envelopes(record: Any, params: Any, prefix: str = "") -> tuple[Any, Any]:
    """The bodies of ``/predict/batch`` and ``/invocations``, each record a ``record``."""
    many = list[record] | msgspec.UnsetType
    invocation = [(k, many, msgspec.UNSET) for k in ("dataframe_records", "instances")]
    invocation += [("inputs", many | dict[str, Any], msgspec.UNSET), ("params", params, None)]
    invocation += [("dataframe_split", Split | msgspec.UnsetType, msgspec.UNSET)]
    batch = msgspec.defstruct(prefix + "BatchRequest", [("data", list[record])])
    return batch, msgspec.defstruct(prefix + "InvocationsRequest", invocation)


BatchRequest, InvocationsRequest = _envelopes(LoanApplication, InvocationParams | None)
BatchRequest.__doc__ = "``/predict/batch``: the records to score, answered in the same order."
InvocationsRequest.__doc__ = (
    "MLflow's scoring protocol: exactly one of dataframe_split, dataframe_records, inputs or instances."
)
# What is decoded: the envelopes hold each record undecoded (Raw), so each is decoded on its own.
_Batch, _Invocation = _envelopes(msgspec.Raw, Any, "_")
MLFLOW_KEYS = ("dataframe_split", "dataframe_records", "inputs", "instances")
# A body whose records are all valid decodes typed in one call (one parse, no scan): a batch, and MLflow's
# records with nothing but params beside them (any other key: the envelope path names what is wrong).
_RECORDS_FIELDS = [("dataframe_records", list[LoanApplication]), ("params", Any, None)]
_Records = msgspec.defstruct("_Records", _RECORDS_FIELDS, forbid_unknown_fields=True)
_DECODE_ALL_BATCH = msgspec.json.Decoder(BatchRequest).decode
_DECODE_ALL_RECORDS = msgspec.json.Decoder(_Records).decode
_DECODE_RECORD = msgspec.json.Decoder(LoanApplication).decode
_DECODE_BATCH = msgspec.json.Decoder(_Batch).decode
_DECODE_INVOCATION = msgspec.json.Decoder(_Invocation).decode
_UNDECODED = (msgspec.ValidationError, msgspec.DecodeError, RecursionError)
_AT = re.compile(r"^(?P<text>.*?)(?: - at `\$(?P<path>.*)`)?$", re.S)
_SURROGATE = re.compile("[\ud800-\udfff]")


class Decoded:
    """The records of one request: the valid ones (read a column at a time), and an error per refused one."""

    def __init__(self, size: int, params: Any = None, records: list[Any] | None = None) -> None:
        self.size, self.params = size, params
        self.records: list[Any] = records or []  # LoanApplication structs, in request order
        self.positions: list[int] = list(range(len(self.records)))  # each one's index in the request
        self.errors: list[ApiError] = []  # one per refused record, by index
        self.unknown: set[str] = set()
        self._columns: dict[str, Sequence[Any]] | None = None
        self._kept: list[int] | None = None  # after keep(): the kept records' places in the columns

    def add(self, index: int, record: Any) -> None:
        if isinstance(record, ApiError):
            self.errors.append(record)
        else:
            self.records.append(record)
            self.positions.append(index)

    def column(self, name: str) -> Sequence[Any]:
        """The valid records' values of one field (None where absent)."""
        if self._columns is None:  # every field at once: one C-level transpose of the structs' slots
            self._columns = dict(zip(FIELDS, zip(*map(astuple, self.records), strict=True), strict=False))
        values = self._columns.get(name, ())  # () when there are no records
        return values if self._kept is None else [values[i] for i in self._kept]

    def keep(self, positions: Sequence[int], errors: Sequence[ApiError]) -> None:
        """Keep only the records at ``positions``; ``errors`` are the others'."""
        self.column("loanId")  # transposed once, before the records are picked
        self._kept = list(positions) if self._kept is None else [self._kept[i] for i in positions]
        self.records = [self.records[i] for i in positions]
        self.positions = [self.positions[i] for i in positions]
        self.errors = sorted([*self.errors, *errors], key=lambda e: e.index or 0)

    def loan_ids(self) -> list[Any]:
        """Each valid record's ``loanId`` to echo (a number as its text); UNSET where it sent none."""
        return [
            v if v is msgspec.UNSET or v is None or type(v) is str else str(v) for v in self.column("loanId")
        ]


def _refused(message: str, field: str | None = None, index: int | None = None) -> ApiError:
    """A request of the wrong shape (400), naming the field (and record) at fault."""
    return ApiError(400, "invalid_request", message, field, index)


def _invalid(exc: msgspec.ValidationError, index: int) -> ApiError:
    """A msgspec validation error as the client's error: the field and record it names."""
    text, path = _AT.match(str(exc)).group("text", "path")  # type: ignore[union-attr]
    if not path:
        message = (
            f"record {index}: expected a JSON object of field names to values; {text[0].lower()}{text[1:]}"
        )
        return ApiError(400, "invalid_record", message, "data", index)
    field = path[1:] if path.startswith(".") else path
    if text == "Number out of range":  # msgspec's words for 1e999 and the like
        text = "expected a finite number, got one beyond the float range"
    return ApiError(422, "invalid_value", f"record {index}, field '{field}': {text}", field, index)


def _surrogate(value: dict[str, Any], index: int) -> ApiError | None:
    """A 400 naming the first field whose name or text holds a lone surrogate (not Unicode), or None."""
    stack: list[tuple[str, Any]] = list(value.items())
    while stack:
        path, item = stack.pop()
        if _SURROGATE.search(path) or (isinstance(item, str) and _SURROGATE.search(item)):
            field = path.encode("utf-8", "backslashreplace").decode()
            message = (
                f"record {index}, field '{field}' holds a lone UTF-16 surrogate (a \\ud800-\\udfff escape "
                "without its pair): not text; send valid Unicode"
            )
            return ApiError(400, "invalid_text", message, field, index)
        if isinstance(item, dict):
            stack.extend((f"{path}.{k}", v) for k, v in item.items())
        elif isinstance(item, list):
            stack.extend((path, v) for v in item)
    return None


def from_object(value: Any, index: int, unknown: set[str]) -> Any:
    """A record given as a Python object (lenient JSON, CSV, MLflow columns) → LoanApplication or ApiError."""
    if type(value) is not dict:
        message = f"record {index}: expected a JSON object of field names to values, got {json_type(value)}"
        return ApiError(400, "invalid_record", message, "data", index)
    if (refused := _surrogate(value, index)) is not None:
        return refused
    if not KNOWN_FIELDS.issuperset(value):
        unknown.update(k for k in value if k not in KNOWN_FIELDS)
        value = {k: v for k, v in value.items() if k in KNOWN_FIELDS}
    if any(type(v) is float and v != v for v in value.values()):  # NaN, as json.dumps writes a missing value
        value = {k: None if type(v) is float and v != v else v for k, v in value.items()}
    try:
        return msgspec.convert(value, LoanApplication)
    except msgspec.ValidationError as exc:
        return _invalid(exc, index)


def from_raw(raw: Any, index: int, unknown: set[str]) -> Any:
    """A record's JSON text → LoanApplication or ApiError."""
    try:
        return _DECODE_RECORD(raw)
    except msgspec.ValidationError as exc:
        if not str(exc).startswith("Object contains unknown field"):
            return _invalid(exc, index)
    except (msgspec.DecodeError, RecursionError):
        pass
    try:
        value = parse_json(raw)
    except ApiError as exc:  # nested too deep for either parser
        return ApiError(400, "invalid_record", f"record {index}: {exc.message}", "data", index)
    return from_object(value, index, unknown)


def parse_json(body: Any) -> Any:
    """Python's parser, which takes lone surrogates and NaN (refused per record, or by the reload's checks
    afterwards); 400 otherwise."""
    try:
        return json.loads(bytes(body))
    except (ValueError, RecursionError) as exc:
        raise ApiError(400, "invalid_json", f"malformed JSON: {exc}") from None


def _records(
    items: Sequence[Any], read: Callable[..., Any], field: str, limit: int, params: Any = None
) -> Decoded:
    """Each of ``items`` read on its own, once their count is checked against ``limit``."""
    _check_size(len(items), field, limit)
    decoded = Decoded(len(items), params)
    for i, item in enumerate(items):
        decoded.add(i, read(item, i, decoded.unknown))
    return decoded


def _check_size(size: int, field: str, limit: int) -> None:
    if not size:
        raise ApiError(400, "empty_batch", f"'{field}' holds no records: send at least one", field)
    if size > limit:
        raise ApiError(
            413, "batch_too_large", f"{size} records in '{field}'; the limit is {limit} per request", field
        )


def _at_once(body: Any, decode: Callable[[Any], Any], limit: int, key: str = "data") -> Decoded | None:
    """The records under ``key`` all typed in one call, or None: when a record is refused (each is then decoded
    on its own, to name it), or when the body may hold more than ``limit`` records (counted by ``{``)."""
    _empty(body)
    if bytes(body).count(b"{") - 1 > limit:
        return None
    try:
        whole = decode(body)
    except _UNDECODED:
        return None
    _check_size(len(records := getattr(whole, key)), key, limit)
    return Decoded(len(records), getattr(whole, "params", None), records)


def _empty(body: Any) -> None:
    if not bytes(body).strip():
        raise ApiError(400, "invalid_json", "request body is empty: send a JSON document")


def one_record(body: Any) -> Decoded:
    """``/predict``: the body is one record."""
    _empty(body)
    decoded = Decoded(1)
    try:
        decoded.add(0, _DECODE_RECORD(body))
    except _UNDECODED:
        if type(value := parse_json(body)) is not dict:
            wanted = "expected a JSON object with the fields of one loan application"
            raise _refused(f"{wanted}, got {json_type(value)}", None, 0) from None
        decoded.add(0, from_object(value, 0, decoded.unknown))
    return decoded


def batch(body: Any, limit: int) -> Decoded:
    """``/predict/batch``: ``{"data": [records]}``; the count is checked before any record is decoded."""
    if (whole := _at_once(body, _DECODE_ALL_BATCH, limit)) is not None:
        return whole
    try:
        items: Sequence[Any] = _DECODE_BATCH(body).data
        read = from_raw
    except _UNDECODED:
        payload = parse_json(body)
        if type(payload) is not dict or "data" not in payload:
            raise _refused('expected a JSON object {"data": [records]}', "data") from None
        if type(items := payload["data"]) is not list:
            raise _refused(f"'data' must be a list of records, got {json_type(items)}", "data") from None
        read = from_object
    return _records(items, read, "data", limit)


def invocation(body: Any, limit: int) -> tuple[Decoded, str]:
    """``/invocations`` with a JSON body (MLflow's scoring protocol): the records and the key they came in."""
    if (whole := _at_once(body, _DECODE_ALL_RECORDS, limit, "dataframe_records")) is not None:
        return whole, "dataframe_records"
    try:
        payload = _DECODE_INVOCATION(body)
        given = {k: getattr(payload, k) for k in MLFLOW_KEYS if getattr(payload, k) is not msgspec.UNSET}
        params, read = payload.params, from_raw
    except _UNDECODED:
        if type(value := parse_json(body)) is not dict:
            raise _refused(f"expected a JSON object with one of {', '.join(MLFLOW_KEYS)}") from None
        given = {k: value[k] for k in MLFLOW_KEYS if k in value}
        params, read = value.get("params"), from_object
    if len(given) != 1:
        message = f"expected exactly one of {', '.join(MLFLOW_KEYS)}; got {', '.join(given) or 'none'}"
        raise _refused(message, next(iter(given), None))
    key, value = next(iter(given.items()))
    if key == "dataframe_split":
        items, read, key = _split_rows(value), from_object, "dataframe_split.data"
    elif key == "inputs" and isinstance(value, dict):
        items, read = _input_columns(value), from_object
    elif type(value) is list:
        items = value
    else:
        raise _refused(f"{key} must be a list of records", key)
    decoded = _records(items, read, key, limit, params)
    for error in decoded.errors:
        if error.code == "invalid_record":
            error.field = key
    return decoded, key


def _split_rows(value: Any) -> list[Any]:
    """dataframe_split's rows as records (a row of the wrong width stays, to be refused as a record)."""
    if isinstance(value, Split):
        columns, data = value.columns, value.data
    elif type(value) is dict:
        columns, data = value.get("columns"), value.get("data")
    else:
        raise _refused("dataframe_split must be an object with columns and data", "dataframe_split")
    if type(columns) is not list or not all(type(c) is str for c in columns):
        raise _refused("dataframe_split.columns must be a list of names", "dataframe_split.columns")
    if type(data) is not list:
        raise _refused("dataframe_split.data must be a list of rows", "dataframe_split.data")
    if len(set(columns)) != len(columns):
        raise _refused("dataframe_split.columns repeats a name", "dataframe_split.columns")
    width = len(columns)
    return [
        dict(zip(columns, row, strict=True)) if type(row) is list and len(row) == width else row
        for row in data
    ]


def _input_columns(value: dict[str, Any]) -> list[Any]:
    """``inputs`` as an object: one record of scalars, or columns zipped into records."""
    if not (lists := [v for v in value.values() if type(v) is list]):
        return [value]
    if len(lists) != len(value):
        raise _refused("inputs: give every column as a list, or none", "inputs")
    for name, column in value.items():
        if len(column) != len(lists[0]):
            raise _refused(
                f"inputs: column '{name}' has {len(column)} values, expected {len(lists[0])}", name
            )
    return [dict(zip(value, row, strict=True)) for row in zip(*value.values(), strict=True)]


def csv_records(body: Any, limit: int) -> Decoded:
    """``/invocations`` with a CSV body: a header line, then one record per line."""
    try:
        rows = list(csv.DictReader(io.StringIO(bytes(body).decode("utf-8-sig"))))
    except UnicodeDecodeError as exc:
        raise ApiError(400, "invalid_csv", f"CSV body is not UTF-8: {exc}") from None
    except csv.Error as exc:
        raise ApiError(400, "invalid_csv", f"malformed CSV: {exc}") from None
    for i, row in enumerate(rows):
        if None in row:
            raise ApiError(400, "invalid_csv", f"CSV row {i} has more values than the header", "data", i)
    return _records(rows, from_object, "data", limit)
