"""The prediction log's files: a worker's spool ``predictions-<first time>-<host>-<pid>-<n>.spool`` of frames
(a 4-byte little-endian length, then one request's records as MessagePack), its conversion to
``<name>.jsonl.gz`` (``python -m serving.predlog_files SPOOL...``; a frame a killed worker cut short becomes a
torn last line), and :func:`read_log`."""

from __future__ import annotations

import contextlib
import fcntl
import gzip
import heapq
import os
import re
import struct
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from itertools import repeat, starmap
from operator import itemgetter
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import orjson

from serving.features import FEATURE_NAMES

PREFIX = "predictions-"
SPOOL = ".spool"
CONVERTED = ".jsonl.gz"
COMPRESS_LEVEL = 1  # most of level 3's ratio at far less CPU
FRAME = struct.Struct("<I")
COLUMNS, ROWS = 0, 1
_NAME = re.compile(
    r"^predictions-(?P<start>\d{8}T\d{12}Z)-(?P<host>[A-Za-z0-9.-]+)-(?P<pid>\d+)-(?P<seq>\d+)"
    r"(?P<kind>\.spool|\.jsonl\.gz)$"
)
_TEXT = ("time", "request_id", "endpoint", "model_name")
# The record's fields, in the order every line has them (the monitor reads this shape).
RECORD_FIELDS = (*_TEXT, "model_version", "id", "features", "probability", "label")
pack = msgspec.msgpack.Encoder().encode
parse_name = _NAME.match
_unpack = msgspec.msgpack.Decoder().decode
# The record structs (fixed field order) and their JSON Lines encoder; NaN is written as null.
_FEATURES = msgspec.defstruct(
    "Features", [(f"f{i}", Any, msgspec.field(name=n)) for i, n in enumerate(FEATURE_NAMES)], gc=False
)
_TYPES = {**dict.fromkeys(_TEXT, str), "features": _FEATURES, "probability": float, "label": int}
_RECORD = msgspec.defstruct("Record", [(f, _TYPES.get(f, Any)) for f in RECORD_FIELDS], gc=False)
_encode_lines = msgspec.json.Encoder().encode_lines


def iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="microseconds")


def spool_name(first: float, host: str, pid: int, seq: int) -> str:
    stamp = datetime.fromtimestamp(first, UTC).strftime("%Y%m%dT%H%M%S%fZ")
    return f"{PREFIX}{stamp}-{host}-{pid}-{seq:05d}{SPOOL}"


def frame(
    t: float, request_id: str, endpoint: str, served: Any, ids: list[Any], probabilities: Any, features: Any
) -> bytes:
    kind, data = ROWS, features
    if isinstance(features, dict):  # columns, in feature order: number buffers and lists of text
        kind = COLUMNS
        data = [c if type(c) is list else _buffer(c) for c in map(features.__getitem__, FEATURE_NAMES)]
    probs = probabilities.tobytes() if isinstance(probabilities, np.ndarray) else list(probabilities)
    model = (served.name, served.version, served.threshold)
    body = pack([t, request_id, endpoint, *model, ids, probs, kind, data])
    return FRAME.pack(len(body)) + body


def _buffer(column: np.ndarray) -> bytes:
    """A float64 column's bytes, as float32 when every value is one exactly (told apart by the length)."""
    narrow = column.astype(np.float32)
    same = narrow.astype(np.float64).view(np.int64) == column.view(np.int64)  # bit for bit: NaN too
    return narrow.tobytes() if same.all() else column.tobytes()


def _numbers(buffer: bytes, n: int) -> list[float]:
    if n and len(buffer) == 4 * n:
        return np.frombuffer(buffer, np.float32).astype(np.float64).tolist()
    return np.frombuffer(buffer, np.float64).tolist()


def frame_lines(body: bytes) -> bytes:
    t, request_id, endpoint, name, version, threshold, ids, probs, kind, data = _unpack(body)
    probs = np.frombuffer(probs, np.float64).tolist() if type(probs) is bytes else probs
    n = len(probs)
    if kind == COLUMNS:
        rows = map(_FEATURES, *(c if type(c) is list else _numbers(c, n) for c in data))
    else:
        rows = starmap(_FEATURES, data)
    labels = [1 if p >= threshold else 0 for p in probs]
    same = [repeat(value, n) for value in (iso(t), request_id, endpoint, name, version)]
    return _encode_lines(list(map(_RECORD, *same, ids, rows, probs, labels)))


def frames(data: bytes) -> tuple[list[bytes], int]:
    """The complete frames of a spool's bytes, and how many bytes at its end belong to none."""
    out, at, end = [], 0, len(data)
    while at + FRAME.size <= end:
        (size,) = FRAME.unpack_from(data, at)
        if at + FRAME.size + size > end:
            break
        out.append(data[at + FRAME.size : at + FRAME.size + size])
        at += FRAME.size + size
    return out, end - at


def spool_complete(path: Path) -> bool:
    """Whether a spool ends at a frame boundary (reads only the frames' length prefixes, not the frames)."""
    with open(path, "rb") as fh:
        end, at = os.fstat(fh.fileno()).st_size, 0
        while at + FRAME.size <= end:
            (size,) = FRAME.unpack(os.pread(fh.fileno(), FRAME.size, at))
            at += FRAME.size + size
        return at == end


def _locked(path: Path, missing: type[OSError] = OSError) -> Any:
    """The spool opened with its lock taken; None when it cannot be opened (``missing``) or is locked."""
    try:
        handle = open(path, "rb")  # noqa: SIM115 - the caller closes it
    except missing:
        return None
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return None
    return handle


def abandoned(path: Path) -> bool:
    """Whether no process holds the spool's lock (its writer is done or dead); False if unopenable."""
    handle = _locked(path)
    if handle is not None:
        handle.close()
    return handle is not None


def convert(path: Path) -> tuple[Path, bool] | None:
    """A closed spool → ``.jsonl.gz``, spool removed: (target, last frame cut short); None if held."""
    target = path.with_name(path.name.removesuffix(SPOOL) + CONVERTED)
    source = _locked(path, FileNotFoundError)
    if source is None:
        return None
    with source:
        if not path.exists():
            return None  # converted and removed while this one waited
        cut = 0
        if not target.exists():
            bodies, cut = frames(source.read())
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            with gzip.open(tmp, "wb", compresslevel=COMPRESS_LEVEL) as gz:
                for body in bodies:
                    gz.write(frame_lines(body))
                if cut:
                    gz.write(b'{"cut_short_frame_bytes": %d' % cut)  # no newline: a torn last line
            os.replace(tmp, target)
        path.unlink(missing_ok=True)
    return target, cut > 0


CUT_STATUS = 10  # exit status CUT_STATUS + n: n of the spools converted were cut short


def main(argv: list[str]) -> int:
    """Convert the spools named, at nice 19: exits 0, 1 (one failed) or CUT_STATUS + n cut-short spools."""
    with contextlib.suppress(OSError):
        os.nice(19)
    failed, cut = False, 0
    for name in argv:
        try:
            done = convert(Path(name))
        except (OSError, msgspec.DecodeError) as exc:
            sys.stderr.write(f"prediction log: cannot convert {name}: {exc}\n")
            failed = True
            continue
        cut += bool(done and done[1])
    return 1 if failed else (CUT_STATUS + min(cut, 100) if cut else 0)


def _bound(value: datetime | str | None) -> str | None:
    """A time bound as the records write theirs (UTC ISO with microseconds), for string comparison."""
    if value is None:
        return None
    when = datetime.fromisoformat(value) if isinstance(value, str) else value
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.astimezone(UTC).isoformat(timespec="microseconds")


class LogRead:
    """A log window's records, iterated once; then ``torn`` (cut-short lines), ``skipped`` (unreadable)."""

    def __init__(self, files: list[tuple[str, Path]], lo: str | None, hi: str | None, version: Any) -> None:
        self._files, self._since, self._until = files, lo, hi
        self._version = None if version is None else str(version)
        self.torn = self.skipped = 0

    def _raw_lines(self, path: Path) -> Iterator[bytes]:
        if path.name.endswith(SPOOL):
            try:
                data = path.read_bytes()
            except FileNotFoundError:  # converted since the listing: its .jsonl.gz is complete by now
                yield from self._raw_lines(path.with_name(path.name.removesuffix(SPOOL) + CONVERTED))
                return
            bodies, cut = frames(data)
            for body in bodies:
                yield from frame_lines(body).splitlines(keepends=True)
            if cut:
                yield b"<cut frame>"  # no newline: counted as torn below
        else:
            with (gzip.open if path.name.endswith(".gz") else open)(path, "rb") as fh:
                yield from fh

    def _lines(self, start: str, path: Path) -> Iterator[tuple[str, dict[str, Any] | None]]:
        since, until, version = self._since, self._until, self._version
        yield start, None  # taken by the merge before the file is opened
        try:
            for line in self._raw_lines(path):
                if not line.endswith(b"\n"):  # the last line, cut short
                    self.torn += 1
                    continue
                try:
                    record = orjson.loads(line)
                    stamp = record["time"]
                    if len(stamp) != 32 or not stamp.endswith("+00:00"):  # not as the service writes it
                        stamp = _bound(stamp)
                except (orjson.JSONDecodeError, TypeError, KeyError, ValueError):
                    self.skipped += 1
                    continue
                if (since is not None and stamp < since) or (until is not None and stamp >= until):
                    continue
                if version is not None and str(record.get("model_version")) != version:
                    continue
                yield stamp, record
        except (OSError, EOFError, gzip.BadGzipFile, msgspec.DecodeError, ValueError):
            self.skipped += 1

    def __iter__(self) -> Iterator[dict[str, Any]]:
        """k-way merge by time; a file is opened only once the merge reaches the time in its name."""
        merged = heapq.merge(*(self._lines(start, path) for start, path in self._files), key=itemgetter(0))
        return (record for _, record in merged if record is not None)


def read_log(
    log_dir: str | Path,
    since: datetime | str | None = None,
    until: datetime | str | None = None,
    model_version: str | int | None = None,
) -> LogRead:
    """The prediction log's records in time order, from every worker's spools and converted files in
    ``log_dir``: ``since <= time < until`` (naive meaning UTC), of ``model_version`` when given. A spool
    converted while it reads is read once; torn or unreadable files never raise (``.torn``, ``.skipped``)."""
    lo, hi, folder = _bound(since), _bound(until), Path(log_dir)
    # two listings: a spool converted during the first may be in it under neither name, but its .jsonl.gz (in
    # place before the spool goes) is in the second
    names: set[str] = set()
    with contextlib.suppress(FileNotFoundError, NotADirectoryError, PermissionError):
        for _ in range(2):
            with os.scandir(folder) as entries:
                names.update(entry.name for entry in entries if entry.name.startswith(PREFIX))
    files: dict[str, tuple[str, Path]] = {}
    for path in sorted(map(folder.joinpath, names), key=lambda p: p.name.endswith(SPOOL)):
        kind = next((k for k in (SPOOL, CONVERTED, ".jsonl") if path.name.endswith(k)), None)
        base = path.name.removesuffix(kind or "")
        if kind is None or base in files:  # a spool whose complete .jsonl.gz twin is in place is about to go
            continue
        start = ""  # a file named otherwise (written by another tool): no shortcut, read whole
        if match := _NAME.match(path.name):  # the service's: records from its name's time on, none after
            s = match["start"]
            start = f"{s[:4]}-{s[4:6]}-{s[6:8]}T{s[9:11]}:{s[11:13]}:{s[13:15]}.{s[15:21]}+00:00"
            with contextlib.suppress(OSError):
                if (hi is not None and start >= hi) or (lo is not None and iso(path.stat().st_mtime) < lo):
                    continue  # its mtime: begun after the window closed, or last written before it opened
        files[base] = (start, path)
    return LogRead(sorted(files.values()), lo, hi, model_version)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
