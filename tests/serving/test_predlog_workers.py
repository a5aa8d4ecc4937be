"""The prediction log under real gunicorn: several workers write their own files into one folder, a graceful
stop flushes them, and no file holds an ``anon_ssn`` value or a raw loan id (issue 11)."""

from __future__ import annotations

import gzip
import json
import secrets
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from serving.predlog import read_log
from serving.predlog_files import SPOOL, parse_name
from serving.privacy import Pseudonymiser
from tests.serving.conftest import _stop, call, wait_converted

KEY = "prediction-log-workers-key-" + secrets.token_hex(16)  # made per run: a literal would be published


def log_bytes(folder: Path) -> bytes:
    """Every log file's bytes, the converted ones decompressed; the folder must hold no spool any more
    (:func:`tests.serving.conftest.wait_converted`), else a converter could remove one between listing and
    reading."""
    paths = sorted(folder.glob("predictions-*"))
    assert not [p.name for p in paths if p.name.endswith(SPOOL)], "the log is still being converted"
    return b"".join(
        gzip.decompress(p.read_bytes()) if p.name.endswith(".gz") else p.read_bytes() for p in paths
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
    assert len(server.worker_pids) == 2  # both workers have their model: requests go to whichever accepts
    batches = [records[i : i + 20] for i in range(0, 200, 20)]
    requests = [("/predict/batch", {"data": b}) for b in batches] * 3 + [
        ("/predict", r) for r in records[:60]
    ]

    def send(numbered: tuple[int, tuple[str, Any]]) -> int:
        n, (path, body) = numbered
        status, _ = call(server.url + path, json.dumps(body).encode(), headers={"X-Request-ID": f"req-{n}"})
        return status

    with ThreadPoolExecutor(8) as pool:  # concurrent: both workers' writers run at once when both take some
        assert set(pool.map(send, enumerate(requests))) == {200}
    _stop(server.process)  # SIGTERM: each worker's worker_exit writes what is queued and closes its file
    assert server.process.returncode == 0, server.log_text()[-2000:]
    wait_converted(folder)  # the converters outlive the stop

    # gunicorn does not promise that both workers take requests; what holds is that each worker that did wrote
    # files of its own, under its own pid, and that every request's records are in one worker's files, once
    names = sorted(p.name for p in folder.glob("predictions-*"))
    by_pid: dict[int, list[str]] = defaultdict(list)
    for name in names:
        match = parse_name(name)
        assert match is not None and match["kind"] == ".jsonl.gz", name
        by_pid[int(match["pid"])].append(name)
    assert by_pid and set(by_pid) <= set(server.worker_pids), (names, server.worker_pids)
    writers: dict[str, set[int]] = defaultdict(set)  # request id → the workers whose files hold its records
    counts: dict[str, int] = defaultdict(int)
    for pid, files in by_pid.items():
        for name in files:
            for line in gzip.decompress((folder / name).read_bytes()).splitlines():
                request_id = json.loads(line)["request_id"]
                writers[request_id].add(pid)
                counts[request_id] += 1
    assert all(len(pids) == 1 for pids in writers.values()), "a request's records are in two workers' files"
    sizes = [len(body["data"]) if path == "/predict/batch" else 1 for path, body in requests]
    assert counts == {f"req-{n}": size for n, size in enumerate(sizes)}

    read = read_log(folder)
    logged = list(read)
    assert (read.torn, read.skipped) == (0, 0)
    assert len(logged) == 3 * 200 + 60
    token = Pseudonymiser(KEY.encode()).token
    sent_ids = [r["loanId"] for b in batches for r in b] * 3 + [r["loanId"] for r in records[:60]]
    assert sorted(r["id"] for r in logged) == sorted(token(i) for i in sent_ids)

    text = log_bytes(folder)
    for record in records[:200]:
        for field in ("anon_ssn", "loanId", "clarityFraudId"):
            value = record.get(field)
            if value:
                assert value.encode() not in text, f"the log holds a {field} value"
    assert b"anon_ssn" not in text and b"loanId" not in text
