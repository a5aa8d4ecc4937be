"""What the monitor tests share: a registered version packaged the training way (profile included), two
populations of applicants it scores (the same one, seed 8, and ``--drift applicants``), and their prediction logs.

:func:`champion_with_service_logs` has the real service write the logs: gunicorn (two workers, the log on) scores
each population, sent over HTTP, and a graceful stop flushes the files (the drift-loop integration test).
:func:`champion_with_logs` writes them in-process in the documented record shape (``{"time", "request_id",
"endpoint", "model_name", "model_version", "id", "features": {name: value}, "probability", "label"}``, the id
pseudonymised and the features the model row the bundle scored), for the monitor flow test, which needs no server.
"""

from __future__ import annotations

import gzip
import json
import math
import secrets
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from catboost import CatBoostClassifier

from serving.bundle import BundleMeta, load_bundle, write_bundle, write_profile
from serving.features import CATEGORICAL_FEATURES, FEATURE_NAMES, build_rows
from serving.privacy import Pseudonymiser
from tasks.data.reading import read_tables
from tasks.model.features import build_model_table
from tasks.model.package import reference_profile
from tasks.model.split import split_by_time
from tasks.model.train import make_pool, predict_proba
from tasks.registry import tracking, versions
from tasks.settings import Settings


def register_small_version(settings: Settings, data_dir: Path, alias: str | None = "champion") -> str:
    """Fit a small CatBoost on the sample's training split, package it with its reference profile (the
    package stage's own function), register it and point ``alias`` at it; returns the version."""
    tables = read_tables(data_dir)
    table = build_model_table(
        tables["loan"], tables["clarity"], settings.data.label_bad_statuses, settings.data.label_good_statuses
    )
    split = split_by_time(table, settings.data.split_fractions)
    model = CatBoostClassifier(iterations=60, depth=4, verbose=0, thread_count=2, allow_writing_files=False)
    model.fit(make_pool(split.train))
    meta = BundleMeta(
        model_name=settings.registry.model_name,
        threshold=0.5,
        categorical_features=list(CATEGORICAL_FEATURES),
    )
    with tracking.run(settings, "small-version") as run_id:
        bundle = write_bundle(tracking.scratch_dir("bundle-") / "bundle", model, meta)
        write_profile(
            bundle, reference_profile(settings, split, predict_proba(model, make_pool(split.valid)))
        )
        version = versions.register_bundle(settings, run_id, bundle, {})
    if alias:
        versions.set_alias(settings, alias, version)
    return version


POPULATIONS = (("plain", None), ("shifted", "applicants"))
BATCH = 500  # records per /predict/batch request
SINGLES = 8  # records sent one by one to /predict first, so both endpoints are logged
CONVERT_WAIT_S = 60.0


def _champion(settings: Settings, root: Path, data_dir: Path) -> tuple[str, Path]:
    """A champion packaged from ``data_dir``: its version and its bundle downloaded from the registry."""
    version = register_small_version(settings, data_dir)
    return version, versions.download_bundle(settings, version, root / "bundle")


def champion_with_logs(root: Path, data_dir: Path) -> tuple[Settings, str, dict[str, Path]]:
    """Settings with state under ``root``, a champion packaged from ``data_dir``, and two prediction logs of
    applicants it scored, written here in the service's record shape: ``plain`` (the same population, seed 8)
    and ``shifted`` (``--drift applicants``), each as if from two workers."""
    from tasks.data.sample import generate
    from tests.serving.synthetic import records_from_files

    settings = Settings(state_dir=root / "state")
    version, bundle = _champion(settings, root, data_dir)
    logs = {}
    for name, drift in POPULATIONS:
        generate(root / name, scale=0.02, seed=8, drift=drift)
        records = log_records(bundle, records_from_files(root / name), settings.pseudonymiser())
        logs[name] = root / f"log-{name}"
        write_log(logs[name], records[: len(records) // 2], worker=0)
        write_log(logs[name], records[len(records) // 2 :], worker=1)
    return settings, version, logs


def champion_with_service_logs(
    root: Path, data_dir: Path
) -> tuple[Settings, str, dict[str, Path], dict[str, Path]]:
    """Settings with state and a pseudonym key, a champion packaged from ``data_dir``, and the two populations
    of :func:`champion_with_logs` scored by the real service: ``(settings, version, logs, sources)``, ``logs``
    the folders the service's log wrote, ``sources`` the generated files each population's requests came from."""
    from tasks.data.sample import generate
    from tests.serving.synthetic import records_from_files, strip_label

    settings = Settings(state_dir=root / "state", pseudonym_key=secrets.token_hex(32))
    version, bundle = _champion(settings, root, data_dir)
    logs, sources = {}, {}
    for name, drift in POPULATIONS:
        sources[name] = root / name
        generate(sources[name], scale=0.02, seed=8, drift=drift)
        records = [strip_label(r) for r in records_from_files(sources[name])]
        logs[name] = service_log(settings, bundle, records, root / f"log-{name}", root / f"service-{name}")
    return settings, version, logs, sources


def service_log(
    settings: Settings, bundle_dir: Path, records: Sequence[dict[str, Any]], folder: Path, workdir: Path
) -> Path:
    """``records`` scored by gunicorn (serving/gunicorn_conf.py, two workers) serving ``bundle_dir`` with its
    prediction log in ``folder`` under the settings' pseudonym key: the first :data:`SINGLES` through
    ``/predict``, the rest through ``/predict/batch`` in batches of :data:`BATCH`, two requests at a time; then a
    graceful stop (SIGTERM), which flushes each worker's log. Returns ``folder``; ``workdir`` keeps the server's
    output."""
    from tests.serving.conftest import _stop, call, start_service, wait_converted

    assert settings.serving.pseudonym_key is not None, "the service's log needs the settings' pseudonym key"
    workdir.mkdir(parents=True, exist_ok=True)
    server = start_service(
        workdir,
        bundle_dir,
        2,
        LOANRISK_PREDICTION_LOG_DIR=str(folder),
        LOANRISK_PSEUDONYM_KEY=settings.serving.pseudonym_key.get_secret_value(),
        LOANRISK_LOG_LEVEL="WARNING",
    )
    requests: list[tuple[str, Any]] = [("/predict", r) for r in records[:SINGLES]]
    requests += [
        ("/predict/batch", {"data": records[i : i + BATCH]}) for i in range(SINGLES, len(records), BATCH)
    ]

    def send(request: tuple[str, Any]) -> int:
        path, body = request
        status, answer = call(server.url + path, json.dumps(body).encode())
        assert status == 200, f"{path}: {status} {answer}"
        return status

    try:
        with ThreadPoolExecutor(2) as pool:
            list(pool.map(send, requests))
    finally:
        _stop(server.process)  # SIGTERM: each worker writes what it has queued and closes its spool
    assert server.process.returncode == 0, server.log_text()[-2000:]
    # the closed spools are converted to .jsonl.gz by children that outlive the workers: wait for them, so the
    # folder holds the log as it stays (the monitor reads spools too, but the privacy scan wants the final bytes)
    wait_converted(folder, CONVERT_WAIT_S)
    return folder


def _plain(value: Any) -> Any:
    return None if isinstance(value, float) and math.isnan(value) else value


def log_records(
    bundle_dir: Path,
    raw: Sequence[dict[str, Any]],
    pseudonymiser: Pseudonymiser,
    when: datetime | None = None,
) -> list[dict[str, Any]]:
    """The records the service logs for ``raw`` applications scored by the bundle."""
    bundle = load_bundle(bundle_dir)
    rows = build_rows(raw)
    probabilities = bundle.predict_input(rows)
    stamp = (when or datetime.now(UTC)).isoformat()
    return [
        {
            "time": stamp,
            "request_id": uuid.uuid4().hex,
            "endpoint": "/predict/batch",
            "model_name": bundle.meta.model_name,
            "model_version": bundle.version,
            "id": pseudonymiser.token(record.get("loanId")),
            "features": {k: _plain(v) for k, v in zip(FEATURE_NAMES, row, strict=True)},
            "probability": p,
            "label": int(p >= bundle.meta.threshold),
        }
        for record, row, p in zip(raw, rows, probabilities, strict=True)
    ]


def write_log(folder: Path, records: Sequence[dict[str, Any]], worker: int = 0) -> Path:
    """One compressed JSON Lines file of a worker's records under ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"predictions-{worker}-{uuid.uuid4().hex[:8]}.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in records)
    return path
