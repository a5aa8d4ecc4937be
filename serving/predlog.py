"""The prediction log: every scored record, written off the request path, read back by :func:`read_log`.

One JSON object per line (the monitor reads exactly this shape)::

    {"time": "2026-11-30T03:00:00.123456+00:00", "request_id": "…", "endpoint": "/predict/batch",
     "model_name": "loan-risk", "model_version": "3", "id": "<32 hex: keyed pseudonym of loanId>" | null,
     "features": {"payFrequency": "B", "apr": 590.0, "leadCost": null, …}, "probability": 0.41, "label": 1}

``features`` is the model row as the model saw it (text for categorical features, numbers with NaN as null);
``id`` is :meth:`serving.privacy.Pseudonymiser.token` of the record's ``loanId`` under ``LOANRISK_PSEUDONYM_KEY``
(the training side's key, so outcomes can be joined later); no other field of the request is written.

Writing: a handler hands over what it already built (rows or columns, probabilities, loan ids) with one call,
:func:`capture`: a lock, a length check and an append. A full queue (``LOANRISK_PREDICTION_LOG_QUEUE`` records)
drops the records and counts them (``loanrisk_prediction_log_dropped_total``); the request never waits. One
writer thread per worker drains the queue every 50 ms, turns the columns into records (msgspec structs) and
appends JSON Lines to its own active file ``predictions-<first record time>-<host>-<pid>-<n>.jsonl``, so workers
and replicas can share one folder. A file is rotated at ``LOANRISK_PREDICTION_LOG_ROTATE_BYTES`` or
``LOANRISK_PREDICTION_LOG_ROTATE_SECONDS`` and gzip-compressed by ``python -m serving.predlog FILE`` at the lowest
CPU priority (nice 19): compression takes idle CPU, never the requests' (``<file>.gz`` appears complete, by
rename, before the plain file goes). On start a writer also compresses the files that dead writers of this
host left (a killed worker's active file), counting a torn last line (``loanrisk_prediction_log_torn_total``).

Reading: :func:`read_log` (this module imports only the standard library, orjson and Flask at its top, so a
monitor reads the log without loading a model).
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import gzip
import heapq
import logging
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from itertools import islice, repeat, starmap
from pathlib import Path
from typing import Any

import orjson
from flask import current_app, g, request

PREFIX = "predictions-"
ACTIVE_SUFFIX = ".jsonl"
COMPRESSED_SUFFIX = ".jsonl.gz"
DRAIN_INTERVAL_S = 0.05
ENCODE_CHUNK = 500  # records encoded per C call: the writer holds the GIL ~1 ms at most at a time
COMPRESS_LEVEL = 6
_NAME = re.compile(
    r"^predictions-(?P<start>\d{8}T\d{6}\d{6}Z)-(?P<host>[A-Za-z0-9.-]+)-(?P<pid>\d+)-(?P<seq>\d+)\.jsonl(?P<gz>\.gz)?$"
)

logger = logging.getLogger("loanrisk")


class PredictionLogError(RuntimeError):
    """The prediction log cannot start (no pseudonym key, a folder it cannot write)."""


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="microseconds")


def _stamp(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y%m%dT%H%M%S%fZ")


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9.-]", "-", socket.gethostname())[:63] or "host"


# --- writing ---------------------------------------------------------------------------------------------


class PredictionLog:
    """The queue and writer thread of one process (a gunicorn worker); :meth:`submit` is all a request does."""

    def __init__(
        self,
        directory: str | Path,
        key: str | None,
        queue_records: int,
        rotate_bytes: int,
        rotate_seconds: float,
        metrics: Any = None,
    ) -> None:
        if not key:
            raise PredictionLogError(
                "the prediction log needs LOANRISK_PSEUDONYM_KEY (the training side's pseudonym key): without a "
                "stable key its ids could never be joined to outcomes; set it, or unset LOANRISK_PREDICTION_LOG_DIR"
            )
        self.directory = Path(directory)
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise PredictionLogError(f"prediction log folder {self.directory}: {exc}") from None
        if not os.access(self.directory, os.W_OK | os.X_OK):
            raise PredictionLogError(f"prediction log folder {self.directory} is not writable")
        import msgspec

        from serving.features import CATEGORICAL_INDICES, FEATURE_NAMES
        from serving.privacy import Pseudonymiser, load_key

        self._pseudonym = Pseudonymiser(load_key(key, self.directory)).token
        self._names = list(FEATURE_NAMES)
        self._categorical = {FEATURE_NAMES[i] for i in CATEGORICAL_INDICES}
        fields = [(f"f{i}", Any, msgspec.field(name=n)) for i, n in enumerate(FEATURE_NAMES)]
        self._features = msgspec.defstruct("Features", fields, gc=False)
        self._record = msgspec.defstruct(
            "Record",
            [
                ("time", str),
                ("request_id", str),
                ("endpoint", str),
                ("model_name", str),
                ("model_version", Any),
                ("id", Any),
                ("features", self._features),
                ("probability", float),
                ("label", int),
            ],
            gc=False,
        )
        self._encode_lines = msgspec.json.Encoder().encode_lines
        self.queue_records = queue_records
        self.rotate_bytes = rotate_bytes
        self.rotate_seconds = rotate_seconds
        self.metrics = metrics
        self._lock = threading.Lock()  # the queue's
        self._io = (
            threading.Lock()
        )  # held while the writer drains and writes (tests pause the writer with it)
        self._queue: list[tuple[Any, ...]] = []
        self._queued = 0
        self._stop = threading.Event()
        self._idle = threading.Condition()
        self._busy = False
        self._file: Any = None
        self._path: Path | None = None
        self._opened = 0.0
        self._size = 0
        self._seq = 0
        self._host = _host()
        self._children: list[subprocess.Popen[bytes]] = []
        self._thread = threading.Thread(target=self._run, name="prediction-log-writer", daemon=True)
        self._thread.start()

    # request path ---------------------------------------------------------------------------------------

    def submit(
        self,
        served: Any,
        endpoint: str,
        request_id: str,
        features: Any,
        probabilities: Any,
        ids: Any,
        n: int,
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

    # writer thread ---------------------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._sweep()
        except Exception:  # noqa: BLE001 - the sweep is housekeeping: never stop the writer for it
            logger.exception("prediction log: sweeping dead writers' files failed")
        while not self._stop.is_set():
            if not self._drain():
                self._stop.wait(DRAIN_INTERVAL_S)
        self._drain()
        self._close_file()

    def _drain(self) -> bool:
        """Write what is queued; True when there was something."""
        with self._io:
            with self._lock:
                items, self._queue, self._queued = self._queue, [], 0
                self._busy = bool(items)
            try:
                if items:
                    self._write(items)
                elif self._file is not None and time.time() - self._opened >= self.rotate_seconds:
                    self._rotate()
                self._reap()
            finally:
                with self._idle:
                    self._busy = False
                    self._idle.notify_all()
        return bool(items)

    def _records(self, item: tuple[Any, ...]) -> Iterator[Any]:
        """One request's records as structs, built by C-level maps over its columns or rows."""
        t, served, endpoint, request_id, features, probabilities, ids, n = item
        if isinstance(features, dict):  # columns (the batch paths): float arrays, lists of text
            columns = [features[name] for name in self._names]
            rows = map(self._features, *(c if type(c) is list else c.tolist() for c in columns))
        else:  # rows (single records, small batches)
            rows = starmap(self._features, features)
        probs = probabilities.tolist() if hasattr(probabilities, "tolist") else list(probabilities)
        threshold = served.threshold
        labels = [1 if p >= threshold else 0 for p in probs]
        token = self._pseudonym
        values = ids() if callable(ids) else ids
        pseudonyms = [token(v) if type(v) is str and v or type(v) is int else None for v in values]
        return map(
            self._record,
            repeat(_iso(t), n),
            repeat(request_id, n),
            repeat(endpoint, n),
            repeat(served.name, n),
            repeat(served.version, n),
            pseudonyms,
            rows,
            probs,
            labels,
        )

    def encode(self, item: tuple[Any, ...]) -> Iterator[bytes]:
        """JSON Lines of one queued item, :data:`ENCODE_CHUNK` records at a time."""
        records = self._records(item)
        while chunk := list(islice(records, ENCODE_CHUNK)):
            yield self._encode_lines(chunk)

    def _write(self, items: list[tuple[Any, ...]]) -> None:
        written = 0
        for item in items:
            n = item[-1]
            try:
                if self._file is None:
                    self._open(item[0])
                for data in self.encode(item):
                    self._file.write(data)
                    self._size += len(data)
                self._file.flush()
                written += n
            except Exception as exc:  # noqa: BLE001 - a full disk or a bad value: count, log, go on
                logger.error(
                    "prediction log: records lost", extra={"fields": {"error": repr(exc), "records": n}}
                )
                if self.metrics is not None:
                    self.metrics.log_dropped.labels("write_error").inc(n)
                self._close_file()
            if self._file is not None and (
                self._size >= self.rotate_bytes or time.time() - self._opened >= self.rotate_seconds
            ):
                self._rotate()
        if written and self.metrics is not None:
            self.metrics.log_written.inc(written)

    def _open(self, first: float) -> None:
        self._seq += 1
        name = f"{PREFIX}{_stamp(first)}-{self._host}-{os.getpid()}-{self._seq:05d}{ACTIVE_SUFFIX}"
        self._path = self.directory / name
        self._file = open(self._path, "ab")  # noqa: SIM115 - kept open across drains
        self._opened = time.time()
        self._size = 0

    def _close_file(self) -> Path | None:
        path, handle = self._path, self._file
        self._file = self._path = None
        if handle is not None:
            with contextlib.suppress(OSError):
                handle.close()
        return path

    def _rotate(self) -> None:
        path = self._close_file()
        if path is not None:
            self._compress([path])

    def _compress(self, paths: list[Path]) -> None:
        """Compress closed files in a child process at nice 19 (idle CPU only)."""
        command = [sys.executable, "-m", "serving.predlog", *map(str, paths)]
        env = dict(
            os.environ, PYTHONPATH=os.pathsep.join(filter(None, [_ROOT, os.environ.get("PYTHONPATH")]))
        )
        try:
            self._children.append(subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL))
        except OSError as exc:
            logger.warning(
                "prediction log: cannot start the compressor", extra={"fields": {"error": repr(exc)}}
            )

    def _reap(self) -> None:
        self._children = [child for child in self._children if child.poll() is None]

    def _sweep(self) -> None:
        """Compress what dead writers of this host left behind (counting torn last lines)."""
        leftovers = []
        for path in sorted(self.directory.glob(f"{PREFIX}*{ACTIVE_SUFFIX}")):
            match = _NAME.match(path.name)
            if match is None or match["host"] != self._host or _alive(int(match["pid"])):
                continue
            if _torn(path) and self.metrics is not None:
                self.metrics.log_torn.inc()
            leftovers.append(path)
        if leftovers:
            self._compress(leftovers)

    # control ---------------------------------------------------------------------------------------------

    def flush(self, timeout: float = 30.0) -> bool:
        """Wait until everything queued so far is written (tests, shutdown); False on timeout."""
        deadline = time.monotonic() + timeout
        with self._idle:
            while self._queue or self._busy:
                left = deadline - time.monotonic()
                if left <= 0 or not self._thread.is_alive():
                    return False
                self._idle.wait(min(left, DRAIN_INTERVAL_S))
        return True

    def close(self, timeout: float = 30.0) -> None:
        """Write what is queued, close the active file (it stays plain: the next start compresses it)."""
        self._stop.set()
        self._thread.join(timeout)

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Hold the writer (it finishes the write in progress first): requests go on, the queue fills."""
        with self._io:
            yield


_ROOT = str(Path(__file__).resolve().parent.parent)
_logs: list[PredictionLog] = []


def start(config: Any, metrics: Any) -> PredictionLog | None:
    """The log of a :class:`serving.config.ServiceConfig`: None when ``prediction_log_dir`` is unset."""
    if config.prediction_log_dir is None:
        return None
    log = PredictionLog(
        config.prediction_log_dir,
        config.pseudonym_key,
        config.prediction_log_queue,
        config.prediction_log_rotate_bytes,
        config.prediction_log_rotate_seconds,
        metrics,
    )
    _logs.append(log)
    return log


def close_all() -> None:
    """Flush and close every log of this process (gunicorn's ``worker_exit``, and at exit)."""
    while _logs:
        _logs.pop().close()


atexit.register(close_all)


def capture(served: Any, features: Any, probabilities: Any, ids: Any, n: int) -> None:
    """The one call of a scoring handler: queue its records when the app has a prediction log. ``features``:
    the rows or columns the model scored; ``ids``: each record's ``loanId`` (any value; only text and integers
    get a pseudonym), or a function giving them, called off the request path."""
    log = current_app.extensions.get("loanrisk_predlog")
    if log is not None:
        log.submit(served, request.url_rule.rule, g.request_id, features, probabilities, ids, n)


# --- compression (a child process) ---------------------------------------------------------------------


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _torn(path: Path) -> bool:
    """Whether a plain log file ends inside a line."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            if fh.tell() == 0:
                return False
            fh.seek(-1, os.SEEK_END)
            return fh.read(1) != b"\n"
    except OSError:
        return False


def compress(path: Path) -> Path | None:
    """``path`` → ``path.gz`` (complete, by rename) and ``path`` removed; None when another process has it."""
    target = path.with_name(path.name + ".gz")
    try:
        source = open(path, "rb")  # noqa: SIM115
    except FileNotFoundError:
        return None
    with source:
        try:
            fcntl.flock(source, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return None  # another compressor has it
        if not path.exists():
            return None  # compressed and removed while we waited to open it
        if not target.exists():
            tmp = path.with_name(f".{path.name}.gz.{os.getpid()}.tmp")
            with (
                open(tmp, "wb") as raw,
                gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=COMPRESS_LEVEL) as gz,
            ):
                shutil.copyfileobj(source, gz, 1 << 20)
            os.replace(tmp, target)
        path.unlink(missing_ok=True)
    return target


def _main(argv: list[str]) -> int:
    with contextlib.suppress(OSError):
        os.nice(19)
    status = 0
    for name in argv:
        try:
            compress(Path(name))
        except OSError as exc:
            sys.stderr.write(f"prediction log: cannot compress {name}: {exc}\n")
            status = 1
    return status


# --- reading ---------------------------------------------------------------------------------------------


def _bound(value: datetime | str | None) -> str | None:
    """A time bound as the records write theirs (UTC ISO with microseconds), for string comparison."""
    if value is None:
        return None
    when = datetime.fromisoformat(value) if isinstance(value, str) else value
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.astimezone(UTC).isoformat(timespec="microseconds")


class LogRead:
    """The records of a log window, iterated once; ``torn`` (files ending inside a line, e.g. a killed worker's)
    and ``skipped`` (lines that are no record object, unreadable files) are final once the iteration ends."""

    def __init__(
        self, files: list[tuple[str, Path]], since: str | None, until: str | None, version: Any
    ) -> None:
        self.files = [path for _, path in files]
        self._files = files
        self._since, self._until = since, until
        self._version = None if version is None else str(version)
        self.torn = 0
        self.skipped = 0
        self.records = 0

    def _lines(self, path: Path) -> Iterator[dict[str, Any]]:
        since, until, version = self._since, self._until, self._version
        try:
            opener = gzip.open if path.name.endswith(".gz") else open
            with opener(path, "rb") as fh:
                for line in fh:
                    if not line.endswith(b"\n"):  # the last line, cut short
                        self.torn += 1
                        continue
                    try:
                        record = orjson.loads(line)
                        stamp = record["time"]
                    except (orjson.JSONDecodeError, TypeError, KeyError):
                        self.skipped += 1
                        continue
                    if (since is not None and stamp < since) or (until is not None and stamp >= until):
                        continue
                    if version is not None and str(record.get("model_version")) != version:
                        continue
                    yield record
        except FileNotFoundError:
            return  # compressed meanwhile: the .gz twin is in the list or the next read
        except (OSError, EOFError, gzip.BadGzipFile):
            self.skipped += 1

    def __iter__(self) -> Iterator[dict[str, Any]]:
        """k-way merge by time; a file is opened only once the merge reaches its first record's time."""
        heap: list[tuple[str, int, dict[str, Any], Iterator[dict[str, Any]]]] = []
        pending = list(self._files)
        k = 0
        while heap or pending:
            while pending and (not heap or pending[0][0] <= heap[0][0]):
                _, path = pending.pop(0)
                lines = self._lines(path)
                first = next(lines, None)
                if first is not None:
                    heapq.heappush(heap, (first["time"], k, first, lines))
                    k += 1
            if not heap:
                continue
            _, _, record, lines = heap[0]
            self.records += 1
            yield record
            following = next(lines, None)
            if following is None:
                heapq.heappop(heap)
            else:
                heapq.heapreplace(heap, (following["time"], k, following, lines))
                k += 1


def read_log(
    log_dir: str | Path,
    since: datetime | str | None = None,
    until: datetime | str | None = None,
    model_version: str | int | None = None,
) -> LogRead:
    """The prediction log's records in time order: active (``.jsonl``) and rotated (``.jsonl.gz``) files of every
    worker and replica in ``log_dir``, ``since <= time < until`` (aware datetimes or ISO text; naive means UTC),
    of ``model_version`` when given. Never raises on a torn or unreadable file: iterate, then read ``.torn`` and
    ``.skipped``. A live file's last line may still be in flight: it counts as torn."""
    lo, hi = _bound(since), _bound(until)
    files: dict[str, tuple[str, Path]] = {}
    for path in Path(log_dir).glob(f"{PREFIX}*"):
        match = _NAME.match(path.name)
        if match is None:
            continue
        base = path.name.removesuffix(".gz")
        if base in files and not match["gz"]:
            continue  # the .gz twin (complete by rename) wins over a plain file not yet removed
        s = match["start"]
        start = f"{s[:4]}-{s[4:6]}-{s[6:8]}T{s[9:11]}:{s[11:13]}:{s[13:15]}.{s[15:21]}+00:00"
        if hi is not None and start >= hi:
            continue
        if lo is not None:
            with contextlib.suppress(OSError):
                if _iso(path.stat().st_mtime) < lo:
                    continue
        files[base] = (start, path)
    return LogRead(sorted(files.values()), lo, hi, model_version)


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
