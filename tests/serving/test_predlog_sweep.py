"""Which spools a starting prediction log converts: those no live writer holds, whatever PID their name carries.

After a container restart the same small PIDs come back under the same hostname, so the PID in a dead writer's
spool name can belong to a live process; a live writer's spool must still never be converted under it. The
writer holds an ``flock`` on its open spool, which the kernel drops when the process dies.
"""

from __future__ import annotations

import fcntl
import os
import secrets
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from serving.features import build_rows
from serving.predlog import PredictionLog, _host, read_log
from serving.predlog_files import frame, spool_name

KEY = "prediction-log-sweep-key-" + secrets.token_hex(16)  # made per run: a literal key would be published
T0 = 1796032800  # 2026-11-30T10:00:00Z
REPO_ROOT = Path(__file__).resolve().parents[2]


class Served:  # what a frame reads of the served model
    name, version, threshold = "m", "1", 0.5


def dead_spool(folder: Path, pid: int, first: float = T0, records: int = 3) -> Path:
    """A closed spool of ``records`` one-record frames, named as this host's writer ``pid`` names its first."""
    path = folder / spool_name(first, _host(), pid, 1)
    row = build_rows([{}])[0]
    frames = [frame(first, f"r{i}", "/predict", Served(), [None], [0.5], [row]) for i in range(records)]
    path.write_bytes(b"".join(frames))
    return path


def converted(path: Path) -> Path:
    return path.with_name(path.name.removesuffix(".spool") + ".jsonl.gz")


def new_log(folder: Path) -> PredictionLog:
    return PredictionLog(folder, KEY, queue_records=1000, rotate_bytes=10**9, rotate_seconds=3600)


def wait_for(check: Callable[[], bool], what: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"{what} not within {timeout_s:.0f} s"
        time.sleep(0.05)


@pytest.mark.parametrize("pid", [os.getpid(), 1], ids=["this-process", "pid-1"])
def test_a_dead_writers_spool_is_converted_though_its_pid_is_alive_again(tmp_path: Path, pid: int) -> None:
    """A spool nobody holds is a dead writer's, even when a live process (this one, or init) has its PID now."""
    left = dead_spool(tmp_path, pid)
    log = new_log(tmp_path)
    try:
        wait_for(lambda: converted(left).exists() and not left.exists(), "the leftover spool's conversion")
    finally:
        log.close()
    read = read_log(tmp_path)
    assert [r["request_id"] for r in read] == ["r0", "r1", "r2"] and read.torn == 0


WRITER = textwrap.dedent(
    """
    import sys
    from pathlib import Path

    from serving.features import build_rows
    from serving.predlog import PredictionLog

    class Served:
        name, version, threshold = "m", "1", 0.5

    log = PredictionLog(sys.argv[1], sys.argv[2], queue_records=1000, rotate_bytes=10**9, rotate_seconds=3600)
    rows = build_rows([{}, {}])
    log.submit(Served(), "/predict/batch", "live", rows, [0.2, 0.7], ["a", "b"], 2)
    assert log.flush()
    print(next(Path(sys.argv[1]).glob("predictions-*.spool")).name, flush=True)
    sys.stdin.read()  # writes on until the test closes stdin
    log.close()
    """
)


def test_a_live_writers_spool_is_left_to_it(tmp_path: Path) -> None:
    """Another process's writer holds its open spool: a starting log's sweep converts the dead spool beside it
    and leaves the live one; once that writer closes, its own spool is converted and every record read once."""
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(tmp_path), KEY],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=env,
        cwd=REPO_ROOT,
    )
    try:
        assert writer.stdout is not None and writer.stdin is not None
        live = tmp_path / writer.stdout.readline().decode().strip()
        assert live.name.endswith(".spool") and live.exists(), live
        # named with the live writer's PID, and sorted after its spool: once this one is converted, the sweep has
        # decided about the live one too
        left = dead_spool(tmp_path, writer.pid, first=time.time() + 3600)
        log = new_log(tmp_path)
        try:
            wait_for(lambda: converted(left).exists() and not left.exists(), "the dead spool's conversion")
            assert live.exists() and not converted(live).exists(), "the live writer's spool was converted"
        finally:
            log.close()
        writer.stdin.close()
        assert writer.wait(timeout=60) == 0
    finally:
        if writer.poll() is None:
            writer.kill()
            writer.wait()
    wait_for(lambda: converted(live).exists() and not live.exists(), "the closed spool's conversion")
    read = read_log(tmp_path)
    assert sorted(r["request_id"] for r in read) == ["live", "live", "r0", "r1", "r2"] and read.torn == 0


def test_the_writer_holds_the_lock_of_its_open_spool_only(tmp_path: Path) -> None:
    """The lock is what a sweep asks: held on the spool being written, free on a rotated one (its converter
    must take it)."""
    log = PredictionLog(tmp_path, KEY, queue_records=1000, rotate_bytes=10**9, rotate_seconds=3600)
    rows = build_rows([{}])
    try:
        log.submit(Served(), "/predict", "one", rows, [0.5], [None], 1)
        assert log.flush()
        (open_spool,) = tmp_path.glob("predictions-*.spool")
        with open(open_spool, "rb") as fh, pytest.raises(BlockingIOError):
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        log.close()
    wait_for(
        lambda: converted(open_spool).exists() and not open_spool.exists(), "the rotated spool's conversion"
    )
