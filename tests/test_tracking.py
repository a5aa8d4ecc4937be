"""Each settings object talks to its own MLflow store; the process environment is never changed."""

from __future__ import annotations

import os

import pytest

from tasks.registry import tracking, versions
from tasks.settings import Settings


def test_two_stores_in_one_process_stay_apart(tmp_path) -> None:
    before = os.environ.get("MLFLOW_TRACKING_URI")
    a, b = Settings(state_dir=tmp_path / "a"), Settings(state_dir=tmp_path / "b")
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "bundle.json").write_text('{"model_name": "loan-risk", "threshold": 0.5}')
    versions.register_bundle(a, tracking.start_run(a, "one"), bundle, {})
    versions.register_bundle(a, tracking.start_run(a, "two"), bundle, {})
    assert versions.register_bundle(b, tracking.start_run(b, "three"), bundle, {}) == "1"
    assert os.environ.get("MLFLOW_TRACKING_URI") == before
    assert a.tracking_uri != b.tracking_uri and "/a/" in a.tracking_uri
    downloaded = versions.download_bundle(a, "2", tmp_path / "dl")
    assert '"model_version": "2"' in (downloaded / "bundle.json").read_text()


@pytest.mark.parametrize(
    ("raised", "status"),
    [(None, "FINISHED"), (RuntimeError("stage failed"), "FAILED"), (KeyboardInterrupt(), "FAILED")],
)
def test_run_ends_finished_or_failed_and_the_error_goes_on(tmp_path, raised, status) -> None:
    s = Settings(state_dir=tmp_path)
    seen: list[str] = []
    try:
        with tracking.run(s, "t", {"k": "v"}) as run_id:
            seen.append(run_id)
            assert tracking.client(s).get_run(run_id).info.status == "RUNNING"
            if raised is not None:
                raise raised
    except BaseException as exc:  # noqa: BLE001 - the test checks which one arrives
        assert exc is raised
    else:
        assert raised is None
    info = tracking.client(s).get_run(seen[0])
    assert info.info.status == status and info.data.tags["k"] == "v"


def test_a_child_run_is_nested_and_closed(tmp_path) -> None:
    s = Settings(state_dir=tmp_path)
    with tracking.run(s, "parent") as parent:
        child = tracking.log_child_run(s, parent, "trial-0", {"depth": 6}, {"auc": 0.8}, status="KILLED")
    run = tracking.client(s).get_run(child)
    assert run.info.status == "KILLED" and run.data.tags["mlflow.parentRunId"] == parent
    assert run.data.params == {"depth": "6"} and run.data.metrics == {"auc": 0.8}
