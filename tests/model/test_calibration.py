"""Calibration: fitted on validation when the ECE asks for it, stored as plain numbers, applied on every serving
path; the served probability equals training's calibrated one (1e-9), and so do the reference predictions."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import log_loss, roc_auc_score

from serving.app import create_app
from serving.bundle import META_FILE, load_bundle
from serving.features import build_columns, build_rows
from serving.model import check_reference
from tasks.model import credit
from tasks.model.evaluate import calibrate
from tasks.model.train import fit_model, make_pool, predict_proba
from tests.model.conftest import Trained, package

TOLERANCE = 1e-9


@pytest.fixture(scope="module", params=["platt", "isotonic"])
def calibrated(request: pytest.FixtureRequest, trained: Trained, tmp_path_factory: pytest.TempPathFactory):
    directory = tmp_path_factory.mktemp(f"calibrated-{request.param}") / "bundle"
    return package(trained, directory, calibration_max_ece=0.0, calibration_method=request.param)


def test_calibrator_is_fitted_only_when_the_ece_exceeds_the_setting(trained: Trained, tmp_path: Path) -> None:
    ece = credit.expected_calibration_error(trained.split.valid.label, trained.p_valid)
    _, skipped = package(trained, tmp_path / "a", calibration_max_ece=ece + 1e-6)
    assert skipped.calibrator is None and skipped.report["policy"]["calibration"]["applied"] is False
    assert np.array_equal(skipped.test_probabilities, trained.p_test)
    meta = json.loads((tmp_path / "a" / META_FILE).read_text())
    assert meta["calibrator"] is None and meta["decision_policy"]["threshold_policy"] == "f1"


def test_metrics_are_on_calibrated_scores(calibrated, trained) -> None:
    bundle_dir, evaluation = calibrated
    record = evaluation.report["policy"]["calibration"]
    assert record["applied"] and record["method"] == evaluation.calibrator.method
    p_test = evaluation.calibrator.apply(trained.p_test)
    assert np.array_equal(evaluation.test_probabilities, p_test)
    assert evaluation.metrics["test_ece"] == pytest.approx(
        credit.expected_calibration_error(trained.split.test.label, p_test)
    )
    meta = json.loads((bundle_dir / META_FILE).read_text())
    assert meta["calibrator"] == evaluation.calibrator.to_dict()  # plain numbers, no pickle
    assert not list(bundle_dir.rglob("*.pkl"))


@pytest.fixture(scope="module")
def overstating(trained: Trained) -> tuple[np.ndarray, np.ndarray]:
    """A really miscalibrated model: the pipeline's fit with the risky class weighted 4:1, so its probabilities
    overstate risk; its validation and test probabilities."""
    split = trained.split
    params = {"depth": 5, "learning_rate": 0.1, "scale_pos_weight": 4.0}
    model = fit_model(params, make_pool(split.train), make_pool(split.valid), trained.settings.tuning)
    return predict_proba(model, make_pool(split.valid)), predict_proba(model, make_pool(split.test))


@pytest.mark.parametrize("method", ["platt", "isotonic"])
def test_the_calibrator_fitted_on_validation_corrects_the_test_split_it_never_saw(
    method: str, trained: Trained, overstating: tuple[np.ndarray, np.ndarray]
) -> None:
    p_valid, p_test = overstating
    y_test = trained.split.test.label
    raw_ece = credit.expected_calibration_error(y_test, p_test)
    assert raw_ece > 0.1, raw_ece  # the weighting did miscalibrate it
    settings = trained.settings.model_copy(update={"calibration_method": method, "calibration_max_ece": 0.02})
    calibrator, record = calibrate(settings.evaluation, trained.split.valid.label, p_valid)
    assert calibrator is not None and record["applied"] and calibrator.method == method
    calibrated_test = calibrator.apply(p_test)
    # the test split is later than validation (its bad rate differs by ~8 points), so not all the gap closes
    assert credit.expected_calibration_error(y_test, calibrated_test) < 0.6 * raw_ece
    assert log_loss(y_test, calibrated_test) < log_loss(y_test, p_test) - 0.04
    # the order of the scores is the model's: calibration moves probabilities, not the ranking
    assert roc_auc_score(y_test, calibrated_test) == pytest.approx(roc_auc_score(y_test, p_test), abs=0.01)


def test_every_serving_path_serves_training_calibrated_probabilities(calibrated, trained) -> None:
    bundle_dir, evaluation = calibrated
    bundle = load_bundle(bundle_dir)
    records = trained.split.test.records
    want = evaluation.test_probabilities
    assert np.abs(np.asarray(bundle.predict_input(build_rows(records))) - want).max() <= TOLERANCE
    assert np.abs(np.asarray(bundle.predict_input(build_columns(records))) - want).max() <= TOLERANCE
    assert np.abs(np.asarray(bundle.predict_records(records)) - want).max() <= TOLERANCE
    client = create_app({"bundle_dir": bundle_dir}).test_client()
    single = [client.post("/predict", json=r).get_json()["probability"] for r in records[:20]]
    assert np.abs(np.asarray(single) - want[:20]).max() <= TOLERANCE
    batch = client.post("/predict/batch", json={"data": records}).get_json()["predictions"]
    assert np.abs(np.asarray([b["probability"] for b in batch]) - want).max() <= TOLERANCE
    inv = client.post("/invocations", json={"dataframe_records": records}).get_json()["predictions"]
    assert np.abs(np.asarray(inv) - want).max() <= TOLERANCE
    # the calibrator changes what is served: the raw model's probabilities are not it
    assert np.abs(trained.p_test - want).max() > 1e-3


def test_reference_predictions_are_calibrated_and_a_bundle_without_its_calibrator_fails_the_check(
    calibrated, tmp_path: Path
) -> None:
    bundle_dir, _ = calibrated
    assert check_reference(load_bundle(bundle_dir)) > 0
    meta = json.loads((bundle_dir / META_FILE).read_text())
    stripped = tmp_path / "stripped"
    stripped.mkdir()
    for f in bundle_dir.iterdir():
        if f.is_file():
            (stripped / f.name).write_bytes(f.read_bytes())
    (stripped / META_FILE).write_text(json.dumps({**meta, "calibrator": None}))
    from serving.bundle import BundleError

    with pytest.raises(BundleError, match="reference record 0"):
        check_reference(load_bundle(stripped))
    (stripped / META_FILE).write_text(json.dumps({**meta, "calibrator": {"method": "isotonic", "x": [1, 0]}}))
    with pytest.raises(BundleError, match="unusable 'calibrator'"):
        load_bundle(stripped)
