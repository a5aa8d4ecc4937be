"""Each settings object talks to its own MLflow store; the process environment is never changed."""

from __future__ import annotations

import os

from tasks import registry, tracking
from tasks.settings import Settings


def test_two_stores_in_one_process_stay_apart(tmp_path) -> None:
    before = os.environ.get("MLFLOW_TRACKING_URI")
    a, b = Settings(state_dir=tmp_path / "a"), Settings(state_dir=tmp_path / "b")
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "bundle.json").write_text('{"model_name": "loan-risk", "threshold": 0.5}')
    registry.register_bundle(a, tracking.start_run(a, "one"), bundle, {})
    registry.register_bundle(a, tracking.start_run(a, "two"), bundle, {})
    assert registry.register_bundle(b, tracking.start_run(b, "three"), bundle, {}) == "1"
    assert os.environ.get("MLFLOW_TRACKING_URI") == before
    assert a.tracking_uri != b.tracking_uri and "/a/" in a.tracking_uri
    downloaded = registry.download_bundle(a, "2", tmp_path / "dl")
    assert '"model_version": "2"' in (downloaded / "bundle.json").read_text()
