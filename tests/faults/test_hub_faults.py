"""Hub faults, injected into the local Hub server that the real ``huggingface_hub`` client talks to.

Each test runs the ingest stage as the training flow does (the Prefect task with the settings' retry policy,
inside a flow) against ``tests/hf_server.py`` through ``HF_ENDPOINT``:

| fault | expected |
|---|---|
| the Hub answers 503 twice, then the files | retried, the ingest stage succeeds, each retry is logged |
| the Hub answers 404 for one file | fails at once (no retry at any level), naming the file |
| a file's bytes differ from the sha256 the resolved commit lists | fails at once, naming the file and both sums |
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from tasks.data.ingest import ingest_task
from tasks.data.sources import IngestResult
from tasks.errors import PermanentError
from tasks.settings import Settings
from tests.hf_server import HubFixture, hf_hub, hf_hub_files  # noqa: F401

pytestmark = [pytest.mark.faults, pytest.mark.timeout(300)]


def _settings(tmp_path: Path, **kw) -> Settings:
    return Settings(
        state_dir=tmp_path / "state",
        task_retries=2,
        task_retry_delay_seconds=0,
        hf_max_attempts=4,
        hf_backoff_seconds=0.01,
        **kw,
    )


def _ingest_stage(settings: Settings, source: str) -> IngestResult:
    """The ingest stage as the training flow runs it: the task with the settings' retries, in a flow."""
    from prefect import flow

    @flow(name="hub-fault-test")
    def run() -> IngestResult:
        return ingest_task(settings, source=source)

    return run()


@pytest.fixture
def run_log() -> Iterator[list[logging.LogRecord]]:
    """What the task's run logger writes (the lines Prefect shows for the run)."""
    records: list[logging.LogRecord] = []
    handler = logging.Handler(level=logging.DEBUG)
    handler.emit = records.append  # type: ignore[method-assign]
    logger = logging.getLogger("prefect.task_runs")
    logger.addHandler(handler)
    try:
        yield records
    finally:
        logger.removeHandler(handler)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_503_twice_then_the_files_is_retried_and_logged(
    tmp_path: Path,
    hf_hub: HubFixture,  # noqa: F811
    run_log: list[logging.LogRecord],
) -> None:
    hub = hf_hub.hub
    hub.fail_next(2, 503)  # the first two requests, whatever they are
    result = _ingest_stage(_settings(tmp_path), hf_hub.source())

    assert result.revision == hf_hub.second_sha
    for name, path in hf_hub.files.second.items():
        assert result.files[name]["sha256"] == _sha256(path)
    assert hub.count(status=503) == 2
    retries = [r.getMessage() for r in run_log if "retrying" in r.getMessage()]
    assert len(retries) == 2, [r.getMessage() for r in run_log]
    assert (
        all("503" in line for line in retries) and "attempt 1/4" in retries[0] and "attempt 2/4" in retries[1]
    )


def test_404_for_one_file_fails_at_once_naming_it(
    tmp_path: Path,
    hf_hub: HubFixture,  # noqa: F811
) -> None:
    hub = hf_hub.hub
    hub.fail_next(1, 404, path_contains="/payment.csv")
    with pytest.raises(PermanentError) as err:
        _ingest_stage(_settings(tmp_path), hf_hub.source())

    assert "payment.csv" in str(err.value) and hf_hub.repo_id in str(err.value)
    assert hub.count(contains="/payment.csv") == 1  # no retry, neither in the client loop nor by Prefect
    assert hub.count(status=503) == 0


def test_file_whose_sha256_differs_from_the_commit_fails_at_once_naming_it(
    tmp_path: Path,
    hf_hub: HubFixture,  # noqa: F811
) -> None:
    hub = hf_hub.hub
    expected = _sha256(hf_hub.files.second["loan.csv"])
    bad = hub.tamper(hf_hub.repo_id, "loan.csv")
    settings = _settings(tmp_path)
    with pytest.raises(PermanentError) as err:
        _ingest_stage(settings, hf_hub.source())

    message = str(err.value)
    assert "loan.csv" in message and expected in message and hashlib.sha256(bad).hexdigest() in message
    assert hub.count("GET", "/loan.csv") == 1  # downloaded once: not retried

    # the corrupt copy is not kept: once the Hub serves the right bytes, the next run downloads them again
    hub.tampered.clear()
    result = _ingest_stage(settings, hf_hub.source())
    assert result.files["loan.csv"]["sha256"] == expected
    assert hub.count("GET", "/loan.csv") == 2
