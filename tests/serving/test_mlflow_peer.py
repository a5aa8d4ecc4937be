"""The benchmark's MLflow peer (bench/mlflow_peer.py) scores raw records exactly as the bundle does."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from serving.bundle import Bundle

mlflow_pyfunc = pytest.importorskip("mlflow.pyfunc")
from mlflow.pyfunc.scoring_server import infer_and_parse_data  # noqa: E402

from bench.mlflow_peer import save_peer_model  # noqa: E402

TOLERANCE = 1e-9


@pytest.fixture(scope="module")
def peer(bundle_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    model_dir = save_peer_model(bundle_dir, tmp_path_factory.mktemp("peer") / "model")
    assert not list(model_dir.rglob("*.pkl")), "the peer is saved as code, not pickled"
    assert list((model_dir / "artifacts").rglob("model.cbm")), "the bundle travels with the model"
    return mlflow_pyfunc.load_model(str(model_dir))


def _scored_as_served(peer: Any, payload: dict[str, Any]) -> list[float]:
    """The DataFrame MLflow's scoring server builds from the JSON body, then the model's predict."""
    frame = infer_and_parse_data(json.loads(json.dumps(payload)))
    return [float(p) for p in peer.predict(frame)]


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
    partial = [dict(r) for r in reference["records"][:20]]
    for i, record in enumerate(partial):
        for key in list(record)[i % 7 :: 7]:
            del record[key]
    _assert_close(_scored_as_served(peer, {"dataframe_records": partial}), bundle.predict_records(partial))
