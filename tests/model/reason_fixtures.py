"""A model with the generator's signal, for the reason-code model tests (invariance, direction).

Trained on the project's synthetic sample (``tasks.data.sample``: its risk is known, ``tasks/data/sample/risk.py``), large
enough that the model learns the generator's main effects (APR, inquiries, the fraud score), with the repository's
reason-code table: what packaging gives a real version.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from serving.app import create_app
from serving.config import ServiceConfig
from tests.serving.synthetic import make_bundle, sample_records, strip_label


@cache
def _bundle(base: Path) -> tuple[Path, list[dict[str, Any]]]:
    labelled = sample_records(base / "sample", scale=0.05, seed=3)
    directory = make_bundle(base / "bundle", labelled, iterations=200, depth=4, seed=3)
    return directory, [strip_label(r) for r in labelled]


@pytest.fixture(scope="session")
def reason_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict[str, Any]]]:
    """The bundle directory and the records (as a client sends them) it was trained on."""
    return _bundle(tmp_path_factory.getbasetemp() / "reason-model")


@pytest.fixture
def reason_app(reason_model: tuple[Path, list[dict[str, Any]]]) -> Flask:
    app = create_app(ServiceConfig(bundle_dir=reason_model[0], log_level="WARNING"))
    app.testing = True
    return app
