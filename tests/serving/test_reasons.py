"""Reason codes over HTTP (serving/reasons.py): CatBoost's own SHAP values, who gets reasons, the parameters,
/invocations' params, /model/info, bundles without a table, packaging, and parity with training."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from catboost import EFstrType
from flask.testing import FlaskClient

from serving.app import create_app
from serving.bundle import Bundle
from serving.config import ServiceConfig
from serving.contract import IDENTIFIER_FIELDS
from serving.features import FEATURE_SOURCES, build_rows
from serving.reason_table import TABLE_FILE, TABLE_PATH, ReasonTable
from tasks.errors import PermanentError
from tasks.model.features import ModelTable
from tasks.model.package import add_reason_table, table_reasons

pytestmark = pytest.mark.inprocess


def test_shap_values_are_catboosts_own(bundle: Bundle, records: list[dict[str, Any]]) -> None:
    pool = bundle.input_pool(build_rows(records[:80]))
    ours = bundle.explainer.contributions(pool)
    theirs = bundle.model.get_feature_importance(data=pool, type=EFstrType.ShapValues)[:, :-1]
    assert np.abs(ours - theirs).max() < 1e-5  # float32 sums of 824 trees' values


def test_the_repository_table_maps_every_feature_once_and_no_value_is_an_identifier() -> None:
    table = ReasonTable.read(TABLE_PATH)
    from serving.features import FEATURE_NAMES

    table.check(FEATURE_NAMES)
    assert not set(FEATURE_SOURCES.values()) & IDENTIFIER_FIELDS


def test_risky_records_get_reasons_by_default_all_and_none_on_request(
    client: FlaskClient, records: list[dict[str, Any]]
) -> None:
    batch = client.post("/predict/batch", json={"data": records[:60]}).json["predictions"]
    risky = [p for p in batch if p["label"] == 1]
    assert risky and len(risky) < len(batch)
    assert all(("reasons" in p) == (p["label"] == 1) for p in batch)
    for p in risky:
        contributions = [r["contribution"] for r in p["reasons"]]
        assert 0 < len(contributions) <= 4 and contributions == sorted(contributions, reverse=True)
        assert all(c > 0 for c in contributions) and len({r["code"] for r in p["reasons"]}) == len(
            contributions
        )
    every = client.post("/predict/batch?reasons=all&reason_count=2", json={"data": records[:60]}).json
    assert all("reasons" in p and len(p["reasons"]) <= 2 for p in every["predictions"])
    none = client.post("/predict/batch?reasons=none", json={"data": records[:60]}).json
    assert not any("reasons" in p for p in none["predictions"])
    single = client.post("/predict?reasons=all&reason_count=3", json=records[0]).json
    assert single["reasons"] == every["predictions"][0]["reasons"][:2] + single["reasons"][2:]


@pytest.mark.parametrize(
    ("query", "field"),
    [("reasons=some", "reasons"), ("reason_count=0", "reason_count"), ("reason_count=11", "reason_count"),
     ("reason_count=two", "reason_count")],
)  # fmt: skip
def test_bad_reason_parameters_are_a_400_naming_them(
    client: FlaskClient, records: list[dict[str, Any]], query: str, field: str
) -> None:
    for path, body in (("/predict", records[0]), ("/predict/batch", {"data": records[:10]})):
        answer = client.post(f"{path}?{query}", json=body)
        assert answer.status_code == 400 and answer.json["field"] == field, answer.json


def test_reason_count_setting(make_app: Any, records: list[dict[str, Any]]) -> None:
    client = make_app(reason_count=1).test_client()
    answer = client.post("/predict/batch?reasons=all", json={"data": records[:20]}).json
    assert {len(p["reasons"]) for p in answer["predictions"]} <= {0, 1}


def test_invocations_keeps_mlflows_protocol_and_gives_reasons_through_params(
    client: FlaskClient, records: list[dict[str, Any]]
) -> None:
    plain = client.post("/invocations", json={"dataframe_records": records[:30]}).json
    assert list(plain) == ["predictions"]
    for rows in (records[:30], records[:3]):  # the fast way and the checked way
        body = {"dataframe_records": rows, "params": {"reasons": "all", "reason_count": 2}}
        answer = client.post("/invocations", json=body).json
        assert answer["predictions"] == plain["predictions"][: len(rows)]
        batch = client.post("/predict/batch?reasons=all&reason_count=2", json={"data": rows}).json
        assert answer["reasons"] == [p["reasons"] for p in batch["predictions"]]
    risky = client.post(
        "/invocations", json={"dataframe_records": records[:30], "params": {"reasons": "risky"}}
    )
    assert [r is not None for r in risky.json["reasons"]] == [p >= 0.5 for p in plain["predictions"]]
    bad = client.post("/invocations", json={"dataframe_records": records[:30], "params": {"reasons": 1}})
    assert bad.status_code == 400 and bad.json["field"] == "params.reasons"
    for count in (0, 11, True, 2.5):  # JSON values, not query text (an int here once failed with a 500)
        params = {"reasons": "all", "reason_count": count}
        bad = client.post("/invocations", json={"dataframe_records": records[:3], "params": params})
        assert bad.status_code == 400 and bad.json["field"] == "params.reason_count", bad.json


def test_model_info_lists_the_table(client: FlaskClient) -> None:
    info = client.get("/model/info").json
    assert info["reason_codes"] == ReasonTable.read(TABLE_PATH).as_dict()
    assert "notes" not in info


def test_a_bundle_without_a_table_serves_without_reasons(
    tmp_path: Path, bundle_dir: Path, records: list[dict[str, Any]]
) -> None:
    old = shutil.copytree(bundle_dir, tmp_path / "old")
    (old / TABLE_FILE).unlink()
    client = create_app(ServiceConfig(bundle_dir=old, log_level="WARNING")).test_client()
    info = client.get("/model/info").json
    assert info["reason_codes"] is None and "no reason-code table" in info["notes"][0]
    batch = client.post("/predict/batch?reasons=all", json={"data": records[:20]})
    assert batch.status_code == 200 and not any("reasons" in p for p in batch.json["predictions"])


def test_packaging_fails_naming_a_feature_without_a_reason_code(tmp_path: Path, bundle_dir: Path) -> None:
    bundle = shutil.copytree(bundle_dir, tmp_path / "bundle")
    (bundle / TABLE_FILE).unlink()
    table = TABLE_PATH.read_text().replace('features = ["apr"]', 'features = ["aprr"]')
    (tmp_path / "table.toml").write_text(table)
    with pytest.raises(PermanentError, match=r"feature\(s\) apr:"):
        add_reason_table(bundle, tmp_path / "table.toml")
    assert not (bundle / TABLE_FILE).exists()
    assert add_reason_table(bundle).version == ReasonTable.read(TABLE_PATH).version
    assert (bundle / TABLE_FILE).read_bytes() == TABLE_PATH.read_bytes()


def test_service_reasons_equal_trainings(
    client: FlaskClient, bundle_dir: Path, labelled_records: list[dict[str, Any]]
) -> None:
    """Parity: training's helper (serving.reasons on the model table's rows) against the service over HTTP."""
    raw = [{k: v for k, v in r.items() if k not in ("label", "anon_ssn")} for r in labelled_records[:120]]
    table = ModelTable.from_records(raw, np.zeros(len(raw)), np.zeros(len(raw)), [""] * len(raw))
    expected = table_reasons(bundle_dir, table, mode="all")
    assert sum(map(bool, expected)) > 60
    for body in (table.records, [{**r, "unknown": 1} for r in table.records]):  # fast way, checked way
        got = client.post("/predict/batch?reasons=all", json={"data": body}).json["predictions"]
        for want, answer in zip(expected, got, strict=True):
            assert [(r["code"], r["feature"], r["value"]) for r in answer["reasons"]] == [
                (r["code"], r["feature"], r["value"]) for r in want
            ]
            assert np.allclose([r["contribution"] for r in answer["reasons"]], [r["contribution"] for r in want],
                               rtol=0, atol=1e-9)  # fmt: skip
