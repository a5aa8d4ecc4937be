"""The whole training flow on a small synthetic sample: CLI JSON line, MLflow records, registry, promotion."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from serving.bundle import load_bundle, read_profile
from serving.features import FEATURE_NAMES
from tasks.registry import tracking, versions
from tasks.settings import Settings
from tests.training import GATE, SCALE, TrainedRun

ROOT = Path(__file__).resolve().parent.parent
KEYS = {"run_id", "model_name", "model_version", "bundle_uri", "promoted", "reasons", "metrics"}
METRICS = {
    "test_roc_auc",
    "test_pr_auc",
    "test_precision",
    "test_recall",
    "test_f1",
    "test_log_loss",
    "test_brier",
}


@pytest.fixture(scope="module")
def cli_result(trained_run: TrainedRun) -> dict:
    """``python -m flows.training`` as the README runs it (the session's run: tests/training.py)."""
    return trained_run.result


@pytest.fixture(scope="module")
def flow_state(trained_run: TrainedRun) -> Path:
    return trained_run.state_dir


def flow_settings(flow_state: Path) -> Settings:
    return Settings(state_dir=flow_state, sample_scale=SCALE, n_trials=2)


def test_cli_prints_one_json_line_with_the_contract(cli_result: dict) -> None:
    assert KEYS <= set(cli_result)
    assert METRICS <= set(cli_result["metrics"])
    assert cli_result["model_name"] == "loan-risk" and cli_result["model_version"] == "1"
    assert cli_result["bundle_uri"] == "models:/loan-risk/1"
    # seed, sample and thread count are fixed: this run is known to pass its gate (tests/training.py), on the
    # minimums alone
    assert cli_result["promoted"] is True, cli_result["reasons"]
    assert cli_result["reasons"] == [
        f"test precision {cli_result['metrics']['test_precision']:.4f} >= minimum 0.60",
        f"test recall {cli_result['metrics']['test_recall']:.4f} >= minimum 0.60",
        "no champion: the minimums alone decide",
    ]
    assert 0.5 < cli_result["metrics"]["test_roc_auc"] <= 1.0
    b = cli_result["boundaries"]
    assert b["train_end"] < b["valid_start"] and b["valid_end"] < b["test_start"]


def test_mlflow_records_trials_plots_and_validation(cli_result: dict, flow_state: Path) -> None:
    s = flow_settings(flow_state)
    c = tracking.client(s)
    run = c.get_run(cli_result["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.params["data.source"] == "sample" and "data.loan.sha256" in run.data.params
    assert run.data.metrics["test_roc_auc"] == pytest.approx(cli_result["metrics"]["test_roc_auc"], abs=1e-6)
    children = c.search_runs(
        [run.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{run.info.run_id}'"
    )
    assert len(children) == 2 and all("valid_roc_auc" in ch.data.metrics for ch in children)
    artifacts = {a.path for a in c.list_artifacts(run.info.run_id, "plots")}
    for name in ("roc.png", "pr.png", "reliability.png", "deciles.png", "confusion_matrix.png",
                 "feature_importance.png"):  # fmt: skip
        assert f"plots/{name}" in artifacts
    for name in ("test_ks", "test_gini", "test_auc_ci_low", "valid_ks_ci_high", "test_ece", "score_psi"):
        assert name in run.data.metrics, name
    assert (
        run.data.params["policy.threshold_policy"] == "f1" and "policy.calibration.applied" in run.data.params
    )
    assert "evaluation.json" in {a.path for a in c.list_artifacts(run.info.run_id)}
    assert {a.path for a in c.list_artifacts(run.info.run_id, "validation")} >= {"validation/report.json"}
    assert {a.path for a in c.list_artifacts(run.info.run_id, "tuning")} == {
        "tuning/optimization_history.png",
        "tuning/param_importances.png",
    }
    assert {"split.json"} <= {a.path for a in c.list_artifacts(run.info.run_id)}
    assert run.data.params["best.depth"] and run.data.params["split.n_test"]


def test_registered_bundle_downloads_and_reproduces_training(
    cli_result: dict, flow_state: Path, tmp_path: Path
) -> None:
    """The bundle at bundle_uri (via the mlflow CLI) scores its reference rows exactly as training did."""
    s = flow_settings(flow_state)
    env = dict(os.environ, MLFLOW_TRACKING_URI=s.tracking_uri)
    out = tmp_path / "dl"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "mlflow",
            "artifacts",
            "download",
            "--artifact-uri",
            cli_result["bundle_uri"],
            "-d",
            str(out),
        ],
        env=env,
        check=True,
        capture_output=True,
        timeout=120,
    )
    assert {"model.cbm", "bundle.json", "reference.json", "evaluation.json", "card.md", "card.html"} <= {
        p.name for p in out.iterdir()
    }
    assert (
        (out / "card.md").read_text().startswith(f"# Model card: loan-risk v{cli_result['model_version']}\n")
    )
    assert "profile.json" in {p.name for p in out.iterdir()}
    profile = read_profile(
        out
    )  # the drift reference: every feature of the training split, the validation score
    assert set(profile["features"]) == set(FEATURE_NAMES) and len(profile["score"]["edges"]) >= 5
    assert sum(profile["score"]["shares"]) == pytest.approx(1.0)
    assert profile["score"]["n"] == cli_result["boundaries"]["n_valid"]
    assert not list(out.rglob("*.pkl")) and not list(out.rglob("*.pickle"))
    bundle = load_bundle(out)
    assert bundle.meta.metrics["threshold"] == pytest.approx(bundle.meta.threshold)
    assert bundle.meta.data_fingerprint["files"]["loan.csv"]["sha256"]
    ref = bundle.reference()
    got = bundle.predict_records(ref["records"])
    assert max(abs(a - b) for a, b in zip(got, ref["probabilities"], strict=True)) <= 1e-9
    version = versions.get_version(s, cli_result["model_version"])
    assert version.tags["promotion.decision"] == "promoted" and version.tags["promotion.dry_run"] == "false"
    candidate = versions.version_by_alias(s, "candidate")
    assert candidate is not None and str(candidate.version) == "1"


def test_second_run_is_judged_against_the_champion(cli_result: dict, flow_state: Path, monkeypatch) -> None:
    """Same data and seed give the same model: 0% F1 gain over the champion, so no promotion; dry run too."""
    from flows.training import training_flow
    from tasks.settings import get_settings

    s = flow_settings(flow_state)
    versions.set_alias(s, "champion", cli_result["model_version"])
    versions.delete_alias(s, "candidate")
    monkeypatch.setenv("LOANRISK_STATE_DIR", str(flow_state))
    for name, value in GATE.items():  # the minimums pass as in the first run: only the champion can refuse
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    try:
        result = training_flow(source="sample", scale=SCALE, n_trials=2, dry_run=True, deploy=False)
    finally:
        get_settings.cache_clear()
    assert result["model_version"] == "2" and result["promoted"] is False
    assert [r for r in result["reasons"] if "minimum" in r and ">=" not in r] == []  # the champion refused it
    assert any("champion v1" in r and "gain +0.00%" in r for r in result["reasons"]), result["reasons"]
    assert versions.version_by_alias(s, "candidate") is None
    assert str(versions.version_by_alias(s, "champion").version) == "1"
    tags = versions.get_version(s, "2").tags
    assert tags["promotion.dry_run"] == "true" and tags["promotion.champion_version"] == "1"


def test_a_failing_stage_fails_the_run(flow_state: Path, tmp_path: Path, monkeypatch) -> None:
    """A stage that fails (here: a source folder without the files) ends the MLflow run FAILED and fails the flow."""
    from flows.training import training_flow
    from tasks.data.sources import MissingSourceFileError
    from tasks.settings import get_settings

    s = flow_settings(flow_state)
    monkeypatch.setenv("LOANRISK_STATE_DIR", str(flow_state))
    get_settings.cache_clear()
    try:
        with pytest.raises(MissingSourceFileError, match="missing loan.csv"):
            training_flow(source=str(tmp_path), n_trials=2, deploy=False)
    finally:
        get_settings.cache_clear()
    c = tracking.client(s)
    (latest,) = c.search_runs(
        [tracking.experiment_id(s)], order_by=["attributes.start_time DESC"], max_results=1
    )
    assert latest.data.tags["source"] == str(tmp_path) and latest.info.status == "FAILED"
