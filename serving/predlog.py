"""The prediction log: every scored record, written off the request path by one writer thread per worker into
its own flock-held spool, ids pseudonymised under ``LOANRISK_PSEUDONYM_KEY`` (the training side's key, so
outcomes can be joined); rotated spools and dead writers' spools of this host are converted at nice 19."""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import logging
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import InitVar, dataclass
from pathlib import Path
from typing import Any

from serving import predlog_files as files
from serving.predlog_files import CUT_STATUS, read_log  # noqa: F401 - read_log: the readers' entry point

DRAIN_INTERVAL_S = 0.05
# A rotated spool is converted after a lull (no record for CONVERT_AFTER_IDLE_S): under load the converter
# would contend with the requests even at nice 19. At MAX_BACKLOG waiting spools it starts regardless.
CONVERT_AFTER_IDLE_S = 1.0
MAX_BACKLOG = 8
_ROOT = str(Path(__file__).resolve().parent.parent)
logger = logging.getLogger("loanrisk")


class PredictionLogError(RuntimeError):
    """The prediction log cannot start (no pseudonym key, a folder it cannot write)."""


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9.-]", "-", socket.gethostname())[:63] or "host"


@dataclass(eq=False, repr=False)
class PredictionLog:
    """The queue and writer thread of one process (a gunicorn worker); a request only calls :meth:`submit`."""

    directory: Path
    key: InitVar[str | None]
    queue_records: int
    rotate_bytes: int
    rotate_seconds: float
    metrics: Any = None

    def __post_init__(self, key: str | None) -> None:
        if not key:
            raise PredictionLogError(
                "the prediction log needs LOANRISK_PSEUDONYM_KEY (the training side's pseudonym key): "
                "without a stable key its ids could never be joined to outcomes; set it, or unset "
                "LOANRISK_PREDICTION_LOG_DIR"
            )
        self.directory = Path(self.directory)
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            if not os.access(self.directory, os.W_OK | os.X_OK):
                raise PermissionError("not writable")
        except OSError as exc:
            raise PredictionLogError(f"prediction log folder {self.directory}: {exc}") from None
        from serving.privacy import Pseudonymiser, given_key

        self._pseudonym = Pseudonymiser(given_key(key)).token
        self._lock = threading.Lock()  # the queue's
        self._io = threading.Lock()  # held while the writer drains and writes (tests pause it with it)
        self._queue: list[tuple[Any, ...]] = []
        self._stop, self._busy = threading.Event(), False  # busy: writing what it took from the queue
        self._file: Any = None
        self._path: Path | None = None
        self._queued = self._size = self._seq = 0
        self._opened = self._last_write = 0.0
        self._host = _host()
        self._children: list[subprocess.Popen[bytes]] = []
        self._backlog: list[Path] = []  # rotated spools waiting for a lull to be converted
        self._thread = threading.Thread(target=self._run, name="prediction-log-writer", daemon=True)
        self._thread.start()

    def submit(
        self, served: Any, endpoint: str, request_id: str, features: Any, probabilities: Any, ids: Any, n: int
    ) -> bool:
        """Queue one request's scored records (rows or columns as built); False when they were dropped."""
        item = (time.time(), served, endpoint, request_id, features, probabilities, ids, n)
        with self._lock:
            if self._queued + n <= self.queue_records:
                self._queue.append(item)
                self._queued += n
                return True
        if self.metrics is not None:
            self.metrics.log_dropped.labels("queue_full").inc(n)
        return False

    def _run(self) -> None:
        # the spools of this host no writer holds join the backlog; other hosts' are left alone (a network
        # folder may not carry locks between hosts)
        try:
            spools = sorted(self.directory.glob(f"{files.PREFIX}*{files.SPOOL}"))
            ours = [p for p in spools if (m := files.parse_name(p.name)) and m["host"] == self._host]
            self._backlog = [p for p in ours if files.abandoned(p)]
        except Exception:  # noqa: BLE001 - the sweep is housekeeping: never stop the writer for it
            logger.exception("prediction log: sweeping dead writers' files failed")
        while not self._stop.is_set():
            if not self._drain():
                self._stop.wait(DRAIN_INTERVAL_S)
        self._drain()
        self._rotate()  # the last spool too: converted by a child that outlives this worker if need be
        self._compress()

    def _drain(self) -> bool:
        with self._io:
            with self._lock:
                items, self._queue, self._queued = self._queue, [], 0
                self._busy = bool(items)
            try:
                if items:
                    self._write(items)
                    self._last_write = time.monotonic()
                elif self._due():
                    self._rotate()
                lull = time.monotonic() - self._last_write >= CONVERT_AFTER_IDLE_S
                if self._backlog and (lull or len(self._backlog) >= MAX_BACKLOG):
                    self._compress()
                statuses = [child.poll() for child in self._children]  # poll() sets returncode
                self._children = [child for child in self._children if child.returncode is None]
                cut = sum(status - CUT_STATUS for status in statuses if (status or 0) > CUT_STATUS)
                if cut and self.metrics is not None:  # spools a converter found cut short
                    self.metrics.log_torn.inc(cut)
            finally:
                self._busy = False
        return bool(items)

    def _due(self) -> bool:
        return self._file is not None and (
            self._size >= self.rotate_bytes or time.time() - self._opened >= self.rotate_seconds
        )

    def _frame(self, item: tuple[Any, ...]) -> bytes:
        """One request's frame, its ids pseudonymised."""
        t, served, endpoint, request_id, features, probabilities, ids, _ = item
        token = self._pseudonym
        values = ids() if callable(ids) else ids
        pseudonyms = [token(v) if type(v) is str and v or type(v) is int else None for v in values]
        return files.frame(t, request_id, endpoint, served, pseudonyms, probabilities, features)

    def _write(self, items: list[tuple[Any, ...]]) -> None:
        written = 0
        for item in items:
            n = item[-1]
            try:
                if self._file is None:
                    self._open(item[0])
                data = self._frame(item)
                self._file.write(data)
                self._size += len(data)
                written += n
            except Exception as exc:  # noqa: BLE001 - a full disk or a bad value: count, log, go on
                fields = {"error": repr(exc), "records": n}
                logger.error("prediction log: records lost", extra={"fields": fields})
                if self.metrics is not None:
                    self.metrics.log_dropped.labels("write_error").inc(n)
                self._close_file()
            if self._due():
                self._rotate()
        try:
            if self._file is not None:
                self._file.flush()
        except OSError as exc:
            logger.error("prediction log: flush failed", extra={"fields": {"error": repr(exc)}})
            self._close_file()
        if written and self.metrics is not None:
            self.metrics.log_written.inc(written)

    def _open(self, first: float) -> None:
        """Start a spool, locked before it appears under its name, so a sweep never takes a live one."""
        self._seq += 1
        path = self.directory / files.spool_name(first, self._host, os.getpid(), self._seq)
        staging = path.with_name(f".{path.name}.new")  # not a log file's name: readers and sweeps skip it
        handle = open(staging, "xb")  # noqa: SIM115 - kept open across drains
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a new file: nobody else has it
            os.rename(staging, path)
        except BaseException:
            handle.close()
            staging.unlink(missing_ok=True)
            raise
        self._file, self._path, self._opened, self._size = handle, path, time.time(), 0

    def _close_file(self) -> Path | None:
        """Close the spool, dropping its lock (also when the flush fails) for its converter."""
        path, handle, self._file, self._path = self._path, self._file, None, None
        if handle is not None:
            with contextlib.suppress(OSError):
                handle.close()
        return path

    def _rotate(self) -> None:
        if (path := self._close_file()) is not None:
            self._backlog.append(path)

    def _compress(self) -> None:
        """Convert the backlog's spools in a child (``python -m serving.predlog_files``)."""
        paths, self._backlog = self._backlog, []
        if not paths:
            return
        command = [sys.executable, "-m", "serving.predlog_files", *map(str, paths)]
        path = os.pathsep.join(filter(None, [_ROOT, os.environ.get("PYTHONPATH")]))
        env = {**os.environ, "PYTHONPATH": path}
        try:
            self._children.append(subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL))
        except OSError as exc:
            logger.warning("prediction log: no compressor", extra={"fields": {"error": repr(exc)}})

    def flush(self, timeout: float = 30.0) -> bool:
        """Wait until everything queued so far is written (tests, shutdown); False on timeout."""
        deadline = time.monotonic() + timeout
        while self._queue or self._busy:  # the writer empties the one, sets the other under the queue's lock
            if time.monotonic() >= deadline or not self._thread.is_alive():
                return False
            time.sleep(0.005)
        return True

    def close(self, timeout: float = 30.0) -> None:
        self._stop.set()
        self._thread.join(timeout)

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Hold the writer (after the write in progress): requests go on, the queue fills."""
        with self._io:
            yield


_logs: list[PredictionLog] = []


def start(config: Any, metrics: Any) -> PredictionLog | None:
    """The log of a :class:`serving.config.ServiceConfig`; None when ``prediction_log_dir`` is unset."""
    if config.prediction_log_dir is None:
        return None
    sizes = [getattr(config, f"prediction_log_{k}") for k in ("queue", "rotate_bytes", "rotate_seconds")]
    _logs.append(PredictionLog(config.prediction_log_dir, config.pseudonym_key, *sizes, metrics))
    return _logs[-1]


def close_all() -> None:
    """Flush and close every log of this process (gunicorn's ``worker_exit``, and at exit)."""
    while _logs:
        _logs.pop().close()


atexit.register(close_all)
