"""The prediction log under real gunicorn: several workers write their own files into one folder, a graceful
stop flushes them, and no file holds an ``anon_ssn`` value or a raw loan id (issue 11)."""

from __future__ import annotations

import gzip
import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from serving.predlog import read_log
from serving.predlog_files import parse_name
from serving.privacy import Pseudonymiser
from tests.serving.conftest import _stop, call

KEY = "prediction-log-workers-key"


def log_bytes(folder: Path) -> bytes:
    """Every log file's bytes, the converted ones decompressed."""
    return b"".join(
        gzip.decompress(p.read_bytes()) if p.name.endswith(".gz") else p.read_bytes()
        for p in sorted(folder.glob("predictions-*"))
    )


@pytest.mark.timeout(300)
def test_workers_write_separate_files_and_the_log_holds_no_personal_value(
    live_server, records: list[dict[str, Any]], tmp_path: Path
) -> None:
    folder = tmp_path / "log"
    server = live_server(
        workers=2,
        LOANRISK_PREDICTION_LOG_DIR=str(folder),
        LOANRISK_PSEUDONYM_KEY=KEY,
        LOANRISK_PREDICTION_LOG_ROTATE_BYTES="200000",
        LOANRISK_LOG_LEVEL="WARNING",
    )
    batches = [records[i : i + 20] for i in range(0, 200, 20)]
    requests = [("/predict/batch", {"data": b}) for b in batches] * 3 + [
        ("/predict", r) for r in records[:60]
    ]

    def send(request: tuple[str, Any]) -> int:
        path, body = request
        status, _ = call(server.url + path, json.dumps(body).encode())
        return status

    def pids() -> set[str]:
        return {parse_name(p.name)["pid"] for p in folder.glob("predictions-*")}

    rounds = 0
    while rounds < 10 and (rounds == 0 or len(pids()) < 2):  # concurrent, until both workers took some
        with ThreadPoolExecutor(8) as pool:
            assert set(pool.map(send, requests)) == {200}
        rounds += 1
        time.sleep(0.3)  # a writer drains every 50 ms: its spool exists by then
    _stop(server.process)  # SIGTERM: each worker's worker_exit writes what is queued and closes its file
    assert server.process.returncode == 0, server.log_text()[-2000:]

    names = [p.name for p in folder.glob("predictions-*")]
    assert len(pids()) == 2, names  # one file set per worker, no collision
    read = read_log(folder)
    logged = list(read)
    assert (read.torn, read.skipped) == (0, 0)
    assert len(logged) == rounds * (3 * 200 + 60)
    token = Pseudonymiser(KEY.encode()).token
    sent_ids = [r["loanId"] for b in batches for r in b] * 3 + [r["loanId"] for r in records[:60]]
    assert sorted(r["id"] for r in logged) == sorted(token(i) for i in sent_ids * rounds)

    text = log_bytes(folder)
    for record in records[:200]:
        for field in ("anon_ssn", "loanId", "clarityFraudId"):
            value = record.get(field)
            if value:
                assert value.encode() not in text, f"the log holds a {field} value"
    assert b"anon_ssn" not in text and b"loanId" not in text
