"""The monitor flow as the README runs it (``python -m flows.monitor``, ephemeral Prefect, a local MLflow store)
on a registered version with its reference profile, against logs of unshifted and shifted applicants."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tasks.errors import PermanentError
from tasks.monitoring import drift as monitor
from tasks.monitoring.report import drift_task, emit_task, reference_task, window_task
from tasks.registry import tracking, versions
from tasks.settings import Settings
from tests.cli import json_line
from tests.monitor_helpers import champion_with_logs

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def state(tmp_path_factory: pytest.TempPathFactory, sample_dir: Path) -> dict[str, Any]:
    """A champion packaged from ``sample_dir`` and two logs: the same population (seed 8) and a shifted one."""
    root = tmp_path_factory.mktemp("monitor-flow")
    settings, version, logs = champion_with_logs(root, sample_dir)
    return {"root": root, "settings": settings, "version": version, "logs": logs}


def _cli(state: dict[str, Any], *args: str) -> dict[str, Any]:
    root = state["root"]
    env = dict(
        os.environ, LOANRISK_STATE_DIR=str(state["settings"].state_dir), PREFECT_HOME=str(root / "prefect")
    )
    env.pop("PREFECT_API_URL", None)
    return json_line("flows.monitor", list(args), env)


def test_shifted_applicants_are_detected_with_realised_performance(state: dict[str, Any]) -> None:
    outcomes = state["root"] / "shifted" / "loan.csv"
    result = _cli(
        state, "--log-dir", str(state["logs"]["shifted"]), "--since", "2h", "--outcomes", str(outcomes)
    )
    assert result["status"] == "detected" and result["event"] == monitor.EVENT_DETECTED
    assert result["model_version"] == state["version"]
    assert set(result["drifted_features"]) == {"apr", "clearfraudscore", "leadType"}
    performance = result["performance"]
    assert performance["matched"] == result["volume"] and performance["matured"] == result["volume"]
    assert 0.5 < performance["roc_auc"] <= 1.0 and 0 < performance["ks"] <= 1.0

    # the report is on the monitor's own MLflow run: a self-contained HTML page and the JSON
    settings: Settings = state["settings"]
    out = tracking.download_artifacts(settings, f"runs:/{result['run_id']}/drift", state["root"] / "report")
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") >= 3 and "src='http" not in page
    data = json.loads((out / "report.json").read_text())
    assert data["status"] == "detected" and set(data["features"]) == set(result["feature_psi"])
    # no identifier of the applications reaches the report
    raw = (state["root"] / "shifted" / "loan.csv").read_text().splitlines()[1:200]
    for line in raw:
        loan_id, ssn = line.split(",")[:2]
        assert (not loan_id or loan_id not in page + json.dumps(data)) and ssn not in page + json.dumps(data)


def test_the_same_population_is_ok(state: dict[str, Any]) -> None:
    """The stages in process (one CLI run above covers the flow; a Prefect start costs ~20-90 s)."""
    settings: Settings = state["settings"]
    reference = reference_task.fn(settings)
    window = window_task.fn(settings, str(state["logs"]["plain"]), None, reference.version)
    report = drift_task.fn(settings, reference, window)
    assert report["status"] == "ok" and report["event"] == monitor.EVENT_OK, report["reasons"]
    assert report["drifted_features"] == [] and report["score"]["psi"] < 0.25
    assert report["volume"] > 500


def test_an_empty_window_is_reported_without_an_event(state: dict[str, Any]) -> None:
    settings: Settings = state["settings"]
    reference = reference_task.fn(settings)
    later = datetime.now(UTC) + timedelta(days=3)  # the log's records are all older than this window
    window = window_task.fn(settings, str(state["logs"]["plain"]), "1h", reference.version, until=later)
    report = drift_task.fn(settings, reference, window)
    assert report["status"] == "no_data" and report["volume"] == 0
    assert emit_task.fn(settings, report) is None


def test_a_missing_champion_or_profile_is_a_clear_error(state: dict[str, Any], tmp_path: Path) -> None:
    settings: Settings = state["settings"]
    versions.delete_alias(settings, "champion")
    try:
        with pytest.raises(PermanentError, match="no 'champion' alias"):
            reference_task.fn(settings)
    finally:
        versions.set_alias(settings, "champion", state["version"])
    bundle = versions.download_bundle(settings, state["version"], tmp_path / "old")
    (bundle / "profile.json").unlink()
    with tracking.run(settings, "old-bundle") as run_id:
        old = versions.register_bundle(settings, run_id, bundle, {})
    with pytest.raises(PermanentError, match=f"models:/loan-risk/{old} has no reference profile"):
        reference_task.fn(settings, old)
    with pytest.raises(PermanentError, match="no prediction log folder"):
        window_task.fn(settings, None, "24h", old)
