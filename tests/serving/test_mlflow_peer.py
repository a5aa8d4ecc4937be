"""The benchmark's MLflow peers (bench/mlflow_peer.py) score raw records exactly as the bundle does: saved without
a signature, and with the signature MLflow infers from an input example (cast and enforced on every request)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import mlflow.pyfunc as mlflow_pyfunc
import pytest
from mlflow.pyfunc.scoring_server import infer_and_parse_data

from bench.mlflow_peer import peer_input_example, save_peer_model
from serving.bundle import REFERENCE_FILE, Bundle, load_bundle

TOLERANCE = 1e-9


@pytest.fixture(scope="module")
def peer(bundle_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    model_dir = save_peer_model(bundle_dir, tmp_path_factory.mktemp("peer") / "model")
    assert not list(model_dir.rglob("*.pkl")), "the peer is saved as code, not pickled"
    assert list((model_dir / "artifacts").rglob("model.cbm")), "the bundle travels with the model"
    return mlflow_pyfunc.load_model(str(model_dir))


def _scored_as_served(peer: Any, payload: dict[str, Any]) -> list[float]:
    """The DataFrame MLflow's scoring server builds from the JSON body (cast to the model's input schema when it
    has one), then the model's predict (which enforces that schema)."""
    frame = infer_and_parse_data(json.loads(json.dumps(payload)), peer.metadata.get_input_schema())
    return [float(p) for p in peer.predict(frame)]


def _partial(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Copies of the records with some fields deleted (a different set in each)."""
    partial = [dict(r) for r in records]
    for i, record in enumerate(partial):
        for key in list(record)[i % 7 :: 7]:
            del record[key]
    return partial


def _assert_close(got: list[float], expected: list[float]) -> None:
    assert len(got) == len(expected)
    worst = max(abs(a - b) for a, b in zip(got, expected, strict=True))
    assert worst <= TOLERANCE, worst


def test_dataframe_records_match_the_bundle(peer: Any, bundle: Bundle, records: list[dict[str, Any]]) -> None:
    chunk = records[:200]
    _assert_close(_scored_as_served(peer, {"dataframe_records": chunk}), bundle.predict_records(chunk))


def test_dataframe_split_matches_the_bundle(peer: Any, bundle: Bundle, records: list[dict[str, Any]]) -> None:
    chunk = records[:50]
    columns = sorted({k for r in chunk for k in r})
    payload = {"dataframe_split": {"columns": columns, "data": [[r.get(c) for c in columns] for r in chunk]}}
    _assert_close(_scored_as_served(peer, payload), bundle.predict_records(chunk))


def test_single_typed_and_partial_records(peer: Any, bundle: Bundle) -> None:
    reference = bundle.reference()
    assert reference and reference["records"]
    typed = reference["records"][0]
    _assert_close(_scored_as_served(peer, {"dataframe_records": [typed]}), bundle.predict_records([typed]))
    # Fields absent from some records (NaN in the DataFrame) are missing values, as None is.
    partial = _partial(reference["records"][:20])
    _assert_close(_scored_as_served(peer, {"dataframe_records": partial}), bundle.predict_records(partial))


# --- the peer with a signature from an input example ------------------------------------------------------

_TEXT_FIELDS = frozenset({"loanId", "anon_ssn", "clarityFraudId", "underwritingid", "applicationDate"})


def _typed(record: dict[str, Any]) -> dict[str, Any]:
    """A CSV-string record with JSON types, as the full-scale bundle's reference records are: "" → None,
    "True"/"False" → bool, numeric text → float (int for hasCF/leadCost), other text as is."""
    out: dict[str, Any] = {}
    for key, value in record.items():
        text = value.strip() if isinstance(value, str) else None
        if text is None or key in _TEXT_FIELDS:
            out[key] = value
        elif not text:
            out[key] = None
        elif text in ("True", "False"):
            out[key] = text == "True"
        else:
            try:
                number = float(text)
            except ValueError:
                out[key] = value
            else:
                out[key] = int(number) if key in ("hasCF", "leadCost") and number.is_integer() else number
    return out


@pytest.fixture(scope="module", params=["csv-text", "typed"])
def signature_case(
    request: pytest.FixtureRequest, bundle_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Any, Bundle]:
    """The peer saved with a signature, on the bundle's reference records as they are (CSV text) and on a copy
    of the bundle whose reference records are typed (numbers, booleans, nulls), as the full-scale bundle's are."""
    source = bundle_dir
    if request.param == "typed":
        source = tmp_path_factory.mktemp("bundle-typed") / "bundle"
        shutil.copytree(bundle_dir, source)
        original = load_bundle(bundle_dir)
        records = [_typed(r) for r in original.reference()["records"]]
        reference = {"records": records, "probabilities": original.predict_records(records)}
        (source / REFERENCE_FILE).write_text(json.dumps(reference))
    model_dir = save_peer_model(source, tmp_path_factory.mktemp("peer-signature") / "model", signature=True)
    assert (model_dir / "input_example.json").exists(), "logged with an input example"
    return mlflow_pyfunc.load_model(str(model_dir)), load_bundle(source)


def _type_names(schema: Any) -> set[str]:
    return {getattr(t, "name", type(t).__name__) for t in schema.input_types()}


def test_signature_is_inferred_from_the_input_example(signature_case: tuple[Any, Bundle]) -> None:
    peer, bundle = signature_case
    schema = peer.metadata.get_input_schema()
    assert schema is not None and schema.has_input_names()
    assert {k for r in bundle.reference()["records"] for k in r} <= set(schema.input_names())
    # Every column optional; no boolean column (MLflow parses a missing flag as False) and no integer one (MLflow
    # refuses a null there).
    assert not schema.required_input_names()
    assert _type_names(schema) <= {"string", "double", "AnyType"}


def test_typed_reference_records_give_a_typed_signature(signature_case: tuple[Any, Bundle]) -> None:
    peer, bundle = signature_case
    typed = any(isinstance(v, float) for v in bundle.reference()["records"][0].values())
    names = _type_names(peer.metadata.get_input_schema())
    # typed records give number columns; CSV-text records give text columns only
    assert ("double" in names) if typed else (names <= {"string", "AnyType"})


def test_signature_peer_reference_records_match_the_bundle(signature_case: tuple[Any, Bundle]) -> None:
    peer, bundle = signature_case
    records = bundle.reference()["records"]
    for chunk in (records, records[:1], records[-1:]):
        _assert_close(_scored_as_served(peer, {"dataframe_records": chunk}), bundle.predict_records(chunk))


def test_signature_peer_records_with_fields_deleted_match_the_bundle(
    signature_case: tuple[Any, Bundle],
) -> None:
    peer, bundle = signature_case
    records = bundle.reference()["records"]
    partial = _partial(records)
    _assert_close(_scored_as_served(peer, {"dataframe_records": partial}), bundle.predict_records(partial))
    for record in partial[:7]:  # one record alone: whole columns missing from the request
        _assert_close(
            _scored_as_served(peer, {"dataframe_records": [record]}), bundle.predict_records([record])
        )
    bare = [{"applicationDate": records[0]["applicationDate"]}, {}]
    _assert_close(_scored_as_served(peer, {"dataframe_records": bare}), bundle.predict_records(bare))


def test_signature_peer_nulls_and_loose_types_match_the_bundle(signature_case: tuple[Any, Bundle]) -> None:
    peer, bundle = signature_case
    records = [_typed(r) for r in bundle.reference()["records"][:12]]
    for i, record in enumerate(records):
        flags = [k for k, v in record.items() if isinstance(v, bool)]
        for key in flags[i % 3 :: 3]:
            record[key] = None  # a missing flag stays missing, not False
        record["leadCost"] = None if i % 2 else 3.5  # null or fractional in an integer-looking column
        record["hasCF"] = None if i % 3 == 0 else record.get("hasCF")
        record["apr"] = None
        record["loanStatus"] = "Paid Off Loan"  # a known field the example never had a value for
    _assert_close(_scored_as_served(peer, {"dataframe_records": records}), bundle.predict_records(records))


def test_signature_peer_accepts_csv_text_records(
    signature_case: tuple[Any, Bundle], records: list[dict[str, Any]]
) -> None:
    """CSV-row text (the service's other accepted form) passes the typed signature too, but for empty strings in
    numeric columns, which MLflow cannot cast (the service reads them as missing): those are sent as null here."""
    peer, bundle = signature_case
    chunk = [{k: (None if v == "" else v) for k, v in r.items()} for r in records[:50]]
    _assert_close(_scored_as_served(peer, {"dataframe_records": chunk}), bundle.predict_records(chunk))


def test_peer_input_example_covers_every_record_field(bundle: Bundle) -> None:
    records = bundle.reference()["records"]
    example = peer_input_example(records)
    assert {k for r in records for k in r} <= set(example.columns)
    assert example.iloc[-1].isna().all(), "a last record with every field missing"
