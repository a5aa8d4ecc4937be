"""Property-based fuzzing of the service's JSON handling: every POST endpoint, any body → a 2xx or a 4xx, never a
5xx, and every answer is strict, valid JSON (what orjson accepts: no NaN, no lone surrogates).

The bodies are written as raw bytes, so they hold what a JSON library would refuse to write: lone UTF-16
surrogates (escaped and raw), NaN/Infinity literals, numbers beyond float and 64-bit range (1e400, 10**400),
deep nesting, bytes that are not UTF-8, and values of the wrong type in every place a record can be given.
"""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from serving.contract import KNOWN_FIELDS
from tests.serving.conftest import ADMIN_TOKEN

AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
FUZZ = settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


class Raw(bytes):
    """A token written into the body as it is (a number literal, or bytes that are not UTF-8)."""


# --- bodies as bytes ---------------------------------------------------------------------------------------


def encode(value: Any, raw_strings: bool = False) -> bytes:
    """JSON text of a tree of lists, dicts (lists of key/value pairs allowed: duplicate keys), str and Raw."""
    if isinstance(value, Raw):
        return bytes(value)
    if isinstance(value, str):
        if (
            raw_strings
        ):  # the characters themselves, a lone surrogate as the (invalid) UTF-8 bytes it would be
            escaped = json.dumps(value, ensure_ascii=False)
            return escaped.encode("utf-8", "surrogatepass")
        return json.dumps(value).encode()  # \uXXXX escapes, lone surrogates included
    if value is None or isinstance(value, bool | int | float):
        return json.dumps(value).encode()
    if isinstance(value, list):
        return b"[" + b",".join(encode(v, raw_strings) for v in value) + b"]"
    if isinstance(value, dict):
        value = list(value.items())
    if isinstance(value, tuple) and value and value[0] == "object":
        value = value[1]
    pairs = (encode(k, raw_strings) + b":" + encode(v, raw_strings) for k, v in value)
    return b"{" + b",".join(pairs) + b"}"


SURROGATES = st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF)
ANY_CHAR = st.characters(exclude_categories=())  # every code point, surrogates included
texts = st.one_of(
    st.text(max_size=12),
    st.text(ANY_CHAR, max_size=12),
    st.builds(lambda a, s, b: a + s + b, st.text(max_size=4), SURROGATES, st.text(max_size=4)),
    st.sampled_from(["\ud800", "\udfff", "a\ud83d", "\ude00b", "590", "2016-02-23T17:29:01", "", " ", "NA"]),
)
number_tokens = st.sampled_from(
    [b"NaN", b"Infinity", b"-Infinity", b"1e400", b"-1e400", b"1e-400", b"-0", b"0.1e1",
     str(10**400).encode(), b"1" + b"0" * 5000, b"18446744073709551616", b"-9223372036854775809"]
).map(Raw)  # fmt: skip
bad_bytes = st.binary(min_size=1, max_size=8).map(lambda b: Raw(b'"' + b.replace(b'"', b"") + b'"'))
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),
    texts,
    number_tokens,
    bad_bytes,
)


def nested(depth: int, leaf: Any) -> Raw:
    return Raw(b"[" * depth + encode(leaf) + b"]" * depth)


deep = st.builds(nested, st.sampled_from([50, 500, 999, 1000, 1024, 1025, 3000]), scalars)
values = st.recursive(
    st.one_of(scalars, deep),
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.one_of(texts, st.sampled_from(["apr"])), inner, max_size=3),
    ),
    max_leaves=8,
)
field_names = st.one_of(st.sampled_from(sorted(KNOWN_FIELDS | {"loanId"})), texts)
records = st.lists(st.tuples(field_names, values), max_size=6).map(lambda pairs: ("object", pairs))
anything = st.one_of(values, records)


def post(
    client: Any, path: str, body: bytes, headers: dict[str, str] | None = None, csv: bool = False
) -> None:
    content_type = "text/csv" if csv else "application/json"
    r = client.post(path, data=body, content_type=content_type, headers=headers or {})
    assert r.status_code < 500, (path, body[:300], r.status_code, r.data[:500])
    assert r.content_type == "application/json", (path, body[:300], r.content_type)
    orjson.loads(r.data)  # strict: raises on NaN, lone surrogates, invalid UTF-8


@pytest.fixture(scope="module")
def fuzz_client(contract_client):
    return contract_client


bodies = st.tuples(st.one_of(records, anything), st.booleans())


@FUZZ
@given(case=bodies)
@example(case=(("object", [("loanId", "\ud800")]), False))
@example(case=(("object", [("\ud800", 1)]), False))
@example(case=(("object", [("apr", "\udfff")]), False))
@example(case=(("object", [("apr", Raw(b"NaN")), ("loanId", "\ud800")]), False))
@example(case=(("object", [("loanId", Raw(str(10**400).encode()))]), False))
@example(case=(("object", [("apr", nested(1000, 1))]), False))
@example(case=(("object", [("hasCF", nested(990, 1))]), False))
def test_predict(fuzz_client, case: tuple[Any, bool]) -> None:
    value, raw = case
    post(fuzz_client, "/predict", encode(value, raw))


@FUZZ
@given(case=st.tuples(st.lists(anything, max_size=4), st.booleans(), st.booleans()))
@example(case=([("object", [("loanId", "\ud800")])], False, True))
@example(case=([("object", [("\ud800x", "1")])], False, True))
def test_predict_batch(fuzz_client, case: tuple[list[Any], bool, bool]) -> None:
    items, raw, wrapped = case
    post(fuzz_client, "/predict/batch", encode({"data": items} if wrapped else items, raw))


invocation_bodies = st.one_of(
    st.builds(lambda rs: {"dataframe_records": rs}, st.lists(anything, max_size=4)),
    st.builds(lambda rs: {"instances": rs}, st.lists(anything, max_size=4)),
    st.builds(lambda rs: {"inputs": rs}, st.one_of(st.lists(anything, max_size=4), records)),
    st.builds(
        lambda cols, rows: {"dataframe_split": {"columns": cols, "data": rows}},
        st.lists(field_names, max_size=4),
        st.lists(st.lists(values, max_size=4), max_size=3),
    ),
    st.builds(lambda key, v: {key: v}, st.sampled_from(["dataframe_split", "inputs", "columns"]), anything),
    anything,
)


@FUZZ
@given(case=st.tuples(invocation_bodies, st.booleans()))
@example(case=({"dataframe_split": {"columns": ["\ud800"], "data": [[1]]}}, False))
@example(case=({"inputs": {"loanId": ["\ud800"]}}, False))
@example(case=({"dataframe_records": [{"apr": Raw(b"Infinity"), "\udc00": 2}]}, False))
def test_invocations(fuzz_client, case: tuple[Any, bool]) -> None:
    value, raw = case
    post(fuzz_client, "/invocations", encode(value, raw))


@FUZZ
@given(body=st.binary(max_size=200))
@example(body=b"apr,state\n590,\xed\xa0\x80\n")
@example(body=b"loanId\n\xff\xfe\n")
def test_invocations_csv(fuzz_client, body: bytes) -> None:
    post(fuzz_client, "/invocations", body, csv=True)


@FUZZ
@given(case=st.tuples(st.one_of(st.builds(lambda v: {"bundle_dir": v}, values), anything), st.booleans()))
@example(case=({"bundle_dir": "\ud800"}, False))
@example(case=({"bundle_dir": "/tmp/\udcff"}, True))
@example(case=({"bundle_dir": "x" * 5000}, False))
def test_model_reload(fuzz_client, case: tuple[Any, bool]) -> None:
    value, raw = case
    post(fuzz_client, "/model/reload", encode(value, raw), headers=AUTH)


@pytest.mark.parametrize("depth", [200, 900, 1000])
def test_deep_nesting_in_every_field(contract_client, depth: int) -> None:
    """Outside hypothesis (which raises the recursion limit while it runs): a value nested ~1,000 deep in any
    field is a 4xx, never a RecursionError turned 500 while the error message shows the value."""
    deep = b"[" * depth + b"1" + b"]" * depth
    for name in sorted(KNOWN_FIELDS | {"loanId"}):
        record = b'{"' + name.encode() + b'":' + deep + b"}"
        post(contract_client, "/predict", record)
        post(contract_client, "/predict/batch", b'{"data":[' + record + b"]}")
        post(contract_client, "/invocations", b'{"dataframe_records":[' + record + b"]}")
