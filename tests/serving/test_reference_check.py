"""A bundle's reference must prove something: records without (enough) training probabilities are refused."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from serving.bundle import REFERENCE_FILE


def _copy_with_reference(bundle_dir: Path, target: Path, edit: Any) -> Path:
    shutil.copytree(bundle_dir, target)
    path = target / REFERENCE_FILE
    reference = json.loads(path.read_text())
    path.write_text(json.dumps(edit(reference)))
    return target


@pytest.mark.parametrize(
    "case, edit",
    [
        ("no probabilities", lambda ref: {"records": ref["records"]}),
        ("empty probabilities", lambda ref: {**ref, "probabilities": []}),
        ("fewer probabilities", lambda ref: {**ref, "probabilities": ref["probabilities"][:3]}),
        ("probabilities not a list", lambda ref: {**ref, "probabilities": {"0": 0.5}}),
        ("records not a list", lambda ref: {**ref, "records": {"a": 1}}),
    ],
)
def test_reference_without_matching_probabilities_is_refused(
    make_app, bundle_dir: Path, tmp_path: Path, case: str, edit: Any
) -> None:
    broken = _copy_with_reference(bundle_dir, tmp_path / "bundle", edit)
    client = make_app(bundle_dir=broken).test_client()
    r = client.get("/health")
    assert r.status_code == 503, (case, r.data)
    message = r.get_json()["message"]
    assert str(broken / REFERENCE_FILE) in message, message
    assert "probabilit" in message or "records" in message, message


def test_reference_with_a_probability_per_record_is_accepted(
    make_app, bundle_dir: Path, tmp_path: Path
) -> None:
    kept = _copy_with_reference(bundle_dir, tmp_path / "bundle", lambda ref: ref)
    assert make_app(bundle_dir=kept).test_client().get("/health").status_code == 200
