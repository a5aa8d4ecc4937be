"""Invariance: identifiers, unknown extra fields and field order never change a score or its reasons."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from flask import Flask

from tests.model.reason_fixtures import reason_app, reason_model  # noqa: F401 - fixtures

IDENTIFIERS = ("loanId", "anon_ssn", "underwritingid")


def _changed(record: dict[str, Any], i: int, rng: random.Random) -> dict[str, Any]:
    """The same application with other identifiers, extra unknown fields, and its fields shuffled."""
    out = {k: v for k, v in record.items()}
    out["loanId"] = f"LL-I-{90_000_000 + i}"
    out["anon_ssn"] = f"{rng.getrandbits(128):032x}"
    if out.get(
        "clarityFraudId"
    ):  # the first 8 hex digits are the report time (a feature); the rest is the id
        out["clarityFraudId"] = out["clarityFraudId"][:8] + f"{rng.getrandbits(64):016x}"
        out["underwritingid"] = out["clarityFraudId"]
    out["favouriteColour"] = "teal"
    out["x_extra"] = {"nested": [1, 2]}
    items = list(out.items())
    rng.shuffle(items)
    return dict(items)


def _answers(app: Flask, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    client = app.test_client()
    batch = client.post("/predict/batch?reasons=all", json={"data": records})
    assert batch.status_code == 200, batch.json
    return [{k: p[k] for k in ("probability", "label", "reasons")} for p in batch.json["predictions"]]


def test_identifiers_unknown_fields_and_order_change_neither_score_nor_reasons(
    reason_app: Flask,  # noqa: F811
    reason_model: tuple[Path, list[dict[str, Any]]],  # noqa: F811
) -> None:
    records = reason_model[1][:60]
    rng = random.Random(5)
    changed = [_changed(r, i, rng) for i, r in enumerate(records)]
    plain = _answers(reason_app, records)
    assert _answers(reason_app, changed) == plain  # the checked way (unknown fields) against the fast way
    assert sum(bool(a["reasons"]) for a in plain) > len(plain) // 2, "too few records with reasons to test"
    client = reason_app.test_client()
    for i in (0, 7, 23):  # single records: the row builder
        one = client.post("/predict?reasons=all", json=changed[i]).json
        assert (one["probability"], one["label"], one["reasons"]) == tuple(plain[i].values())
    for answer in plain:  # a reason's value is never an identifier
        assert not {r["feature"] for r in answer["reasons"]} & {*IDENTIFIERS, "clarityFraudId"}
