"""The prediction log (issue 11): what each endpoint records, the full queue, rotation and compression, reading.

In-process apps on the small test bundle; the writer thread and the compressor are the real ones.
"""

from __future__ import annotations

import csv
import gzip
import io
import math
import os
import secrets
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from flask import Flask

from serving.features import FEATURE_NAMES, build_rows
from serving.predlog import PredictionLogError, read_log
from serving.predlog_files import RECORD_FIELDS, convert, frame
from serving.privacy import Pseudonymiser

pytestmark = pytest.mark.inprocess

KEY = "prediction-log-test-key-" + secrets.token_hex(16)  # made per run: a literal key would be published
T0 = 1796032800  # 2026-11-30T10:00:00Z
WRITTEN = "loanrisk_prediction_log_written_total"
DROPPED = 'loanrisk_prediction_log_dropped_total{reason="queue_full"}'


def logged_app(make_app: Callable[..., Flask], directory: Path, **settings: Any) -> Flask:
    return make_app(prediction_log_dir=directory, pseudonym_key=KEY, **settings)


def close(app: Flask) -> None:
    log = app.extensions["loanrisk_predlog"]
    assert log.flush(), "the writer did not drain its queue"
    log.close()


def metric(app: Flask, name: str) -> float:
    text = app.test_client().get("/metrics").get_data(as_text=True)
    values = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name + " ")]
    return values[0] if values else 0.0


def model_row(record: dict[str, Any]) -> dict[str, Any]:
    """The model row as the log writes it: feature name → value, NaN as None."""
    row = build_rows([record])[0]
    return {
        n: None if isinstance(v, float) and math.isnan(v) else v
        for n, v in zip(FEATURE_NAMES, row, strict=True)
    }


def same_row(got: dict[str, Any], want: dict[str, Any]) -> bool:
    return list(got) == list(want) and all(
        g == w or (isinstance(g, float) and isinstance(w, float) and math.isclose(g, w, rel_tol=1e-12))
        for g, w in zip(got.values(), want.values(), strict=True)
    )


def test_every_endpoint_records_each_scored_record(
    make_app: Callable[..., Flask], records: list[dict[str, Any]], tmp_path: Path
) -> None:
    app = logged_app(make_app, tmp_path / "log")
    client = app.test_client()
    written = metric(app, WRITTEN)  # the metrics are the process's: every app of the session adds to them
    sent: list[
        tuple[str, list[dict[str, Any]], list[float], str]
    ] = []  # endpoint, records, probabilities, rid

    def post(path: str, batch: list[dict[str, Any]], **kwargs: Any) -> None:
        answer = client.post(path, headers={"X-Request-ID": f"req-{len(sent)}"}, **kwargs)
        assert answer.status_code == 200, answer.get_data(as_text=True)
        body = answer.get_json()
        probabilities = (
            [body["probability"]]
            if "probability" in body
            else [p["probability"] if isinstance(p, dict) else p for p in body["predictions"]]
        )
        sent.append((path, batch, probabilities, f"req-{len(sent)}"))

    no_id = {k: v for k, v in records[30].items() if k != "loanId"}
    post("/predict", [records[0]], json=records[0])
    post("/predict", [no_id], json=no_id)
    post("/predict/batch", records[1:21], json={"data": records[1:21]})  # fast way
    post("/predict/batch", records[21:24], json={"data": records[21:24]})  # checked way (few records)
    post("/invocations", records[24:34], json={"dataframe_records": records[24:34]})  # fast way
    split = records[34:44]
    columns = sorted({k for r in split for k in r})
    data = [[r.get(c) for c in columns] for r in split]
    post("/invocations", split, json={"dataframe_split": {"columns": columns, "data": data}})
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=columns)
    writer.writeheader()
    writer.writerows(records[44:47])
    post("/invocations", records[44:47], data=text.getvalue(), content_type="text/csv")
    close(app)

    read = read_log(tmp_path / "log")
    logged = list(read)
    assert (read.torn, read.skipped) == (0, 0)
    assert len(logged) == sum(len(batch) for _, batch, _, _ in sent) == metric(app, WRITTEN) - written
    assert [r["time"] for r in logged] == sorted(r["time"] for r in logged)
    pseudonym = Pseudonymiser(KEY.encode()).token
    by_request = {rid: [r for r in logged if r["request_id"] == rid] for _, _, _, rid in sent}
    for endpoint, batch, probabilities, rid in sent:
        got = by_request[rid]
        assert len(got) == len(batch), rid
        for record, probability, line in zip(batch, probabilities, got, strict=True):
            assert tuple(line) == RECORD_FIELDS
            assert line["endpoint"] == endpoint
            assert (line["model_name"], line["model_version"]) == ("loan-risk", "1")
            assert line["id"] == (pseudonym(record["loanId"]) if record.get("loanId") else None)
            assert line["probability"] == pytest.approx(probability, abs=1e-12)
            assert line["label"] == int(probability >= app.extensions["loanrisk"].current.threshold)
            assert same_row(line["features"], model_row(record)), (rid, line["features"], model_row(record))
            assert line["time"].endswith("+00:00")


def test_a_client_error_records_nothing(make_app: Callable[..., Flask], tmp_path: Path) -> None:
    app = logged_app(make_app, tmp_path / "log")
    assert app.test_client().post("/predict", json={"apr": "abc"}).status_code == 422
    close(app)
    assert list(read_log(tmp_path / "log")) == []


def test_the_log_refuses_to_start_without_a_pseudonym_key(
    make_app: Callable[..., Flask], tmp_path: Path
) -> None:
    with pytest.raises(PredictionLogError, match="LOANRISK_PSEUDONYM_KEY"):
        make_app(prediction_log_dir=tmp_path / "log")
    assert make_app().extensions["loanrisk_predlog"] is None  # off without a folder


def test_a_full_queue_drops_and_counts_without_blocking(
    make_app: Callable[..., Flask], records: list[dict[str, Any]], tmp_path: Path
) -> None:
    app = logged_app(make_app, tmp_path / "log", prediction_log_queue=50)
    client = app.test_client()
    log = app.extensions["loanrisk_predlog"]
    batch = {"data": records[:20]}
    written, dropped = metric(app, WRITTEN), metric(app, DROPPED)
    with log.paused():  # the writer is held: nothing leaves the queue
        t0 = time.perf_counter()
        statuses = [client.post("/predict/batch", json=batch).status_code for _ in range(10)]
        elapsed = time.perf_counter() - t0
        assert statuses == [200] * 10
        assert elapsed < 20, "requests waited for the held writer"
        assert metric(app, DROPPED) - dropped == 8 * 20
    close(app)
    assert metric(app, WRITTEN) - written == 2 * 20
    assert len(list(read_log(tmp_path / "log"))) == 40


def wait_for(check: Callable[[], bool], timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def test_files_rotate_by_size_and_are_compressed(
    make_app: Callable[..., Flask], records: list[dict[str, Any]], tmp_path: Path
) -> None:
    folder = tmp_path / "log"
    app = logged_app(make_app, folder, prediction_log_rotate_bytes=2_000)
    client = app.test_client()
    for start in range(0, 100, 10):
        assert client.post("/predict/batch", json={"data": records[start : start + 10]}).status_code == 200
    log = app.extensions["loanrisk_predlog"]
    assert log.flush()
    # ~0.3 KB a record in the spool: every 10-record request fills a file past 2 KB, so each is rotated and
    # converted to compressed JSON Lines
    wait_for(lambda: len(list(folder.glob("*.jsonl.gz"))) == 10 and not list(folder.glob("*.spool")))
    for path in folder.glob("*.jsonl.gz"):
        lines = gzip.decompress(path.read_bytes()).splitlines()
        assert len(lines) == 10
    read = read_log(folder)
    ids = [r["id"] for r in read]
    pseudonym = Pseudonymiser(KEY.encode()).token
    assert ids == [pseudonym(r["loanId"]) for r in records[:100]]
    close(app)


def test_files_rotate_by_age(
    make_app: Callable[..., Flask], records: list[dict[str, Any]], tmp_path: Path
) -> None:
    folder = tmp_path / "log"
    app = logged_app(make_app, folder, prediction_log_rotate_seconds=0.3)
    assert app.test_client().post("/predict", json=records[0]).status_code == 200
    wait_for(lambda: len(list(folder.glob("*.jsonl.gz"))) == 1 and not list(folder.glob("*.spool")))
    close(app)
    assert len(list(read_log(folder))) == 1


class Served:  # what a frame reads of the served model
    name, version, threshold = "m", "1", 0.5


def spool(path: Path, times: list[int], version: str = "1", cut: int = 0) -> None:
    """A spool of one-record frames at 10:00:0<t>, built by the writer's own frame(); ``cut`` bytes cut off."""
    served = Served()
    served.version = version
    row = build_rows([{}])[0]
    data = b"".join(frame(T0 + t, "r", "/predict", served, [None], [0.5], [row]) for t in times)
    path.write_bytes(data[: len(data) - cut])


def test_read_log_merges_files_in_time_order_filters_and_counts_what_it_skips(tmp_path: Path) -> None:
    a = tmp_path / "predictions-20261130T100000000000Z-host-1-00001.spool"
    b = tmp_path / "predictions-20261130T100001000000Z-host-2-00001.spool"
    spool(a, [0, 2])
    spool(a.with_name("predictions-20261130T100004000000Z-host-1-00002.spool"), [4], version="2")
    spool(b, [1, 3, 5], cut=10)  # a killed worker's spool: its last frame cut short
    assert convert(a) == (a.with_name(a.name.replace(".spool", ".jsonl.gz")), False) and not a.exists()
    converted = a.with_name(a.name.replace(".spool", ".jsonl.gz"))
    lines = gzip.decompress(converted.read_bytes()).splitlines(keepends=True)
    converted.write_bytes(gzip.compress(b"".join([lines[0], b"not json\n", lines[1]])))
    (tmp_path / "predictions-20261130T100009000000Z-host-3-00001.jsonl.gz").write_bytes(b"\x1f\x8b broken")
    (tmp_path / "notes.txt").write_text("not a log file")
    for path in tmp_path.iterdir():  # written "at" 10:00:09, after their records (read_log skips older files)
        os.utime(path, (T0 + 9, T0 + 9))

    read = read_log(tmp_path)
    assert [r["time"][18] for r in read] == ["0", "1", "2", "3", "4"]
    assert (read.torn, read.skipped) == (1, 2)  # the cut frame; "not json" and the broken gzip file

    window = read_log(tmp_path, since="2026-11-30T10:00:01+00:00", until="2026-11-30T10:00:04Z")
    assert [r["time"][18] for r in window] == ["1", "2", "3"]
    assert [r["time"][18] for r in read_log(tmp_path, model_version=2)] == ["4"]
    assert convert(b)[1]  # the cut frame becomes a cut last line: still counted
    read = read_log(tmp_path)
    assert len(list(read)) == 5 and read.torn == 1
    # a spool not yet removed beside its complete .jsonl.gz twin is read once
    spool(b, [1, 3, 5], cut=10)
    assert len(list(read_log(tmp_path))) == 5


def test_read_log_takes_files_of_the_shape_written_by_other_tools(tmp_path: Path) -> None:
    """JSON Lines of the record shape under another name, times without microseconds or with Z (as a test or a
    backfill might write them): read in time order with the service's files, filtered alike."""
    spool(tmp_path / "predictions-20261130T100000000000Z-host-1-00001.spool", [0, 4])
    other = [
        {"time": t, "model_version": "1", "features": {}}
        for t in ("2026-11-30T10:00:01Z", "2026-11-30T10:00:03+00:00")
    ]
    (tmp_path / "predictions-0-abcd1234.jsonl.gz").write_bytes(
        gzip.compress(b"".join(orjson.dumps(r) + b"\n" for r in other))
    )
    assert [r["time"][:19] for r in read_log(tmp_path)] == [f"2026-11-30T10:00:0{t}" for t in (0, 1, 3, 4)]
    window = read_log(
        tmp_path, since=datetime(2026, 11, 30, 10, 0, 1, tzinfo=UTC), until="2026-11-30T10:00:04"
    )
    assert [r["time"][:19] for r in window] == ["2026-11-30T10:00:01", "2026-11-30T10:00:03"]


def test_columns_exact_in_float32_are_spooled_as_float32_and_read_back_exactly() -> None:
    """A column whose values are all float32 numbers (flags, counts, amounts) is spooled in half the bytes; one
    that is not (a ratio) stays float64; both read back as the same floats, NaN as null."""
    from types import SimpleNamespace

    import numpy as np

    from serving.features import CATEGORICAL_FEATURES
    from serving.predlog_files import FRAME, frame_lines

    exact, ratio = np.array([1.0, np.nan, 590.0]), np.array([0.1, 1 / 3, np.nan])
    served = SimpleNamespace(name="loan-risk", version="1", threshold=0.5)
    numeric = [name for name in FEATURE_NAMES if name not in CATEGORICAL_FEATURES]

    def spooled(pick: Callable[[int], np.ndarray]) -> bytes:
        columns = {
            name: ["a", "b", "c"] if name in CATEGORICAL_FEATURES else pick(i)
            for i, name in enumerate(FEATURE_NAMES)
        }
        return frame(0.0, "r", "/predict/batch", served, [None] * 3, np.array([0.2, 0.6, 0.9]), columns)

    wide = spooled(lambda i: ratio)
    assert len(wide) - len(spooled(lambda i: exact)) == len(numeric) * 3 * 4
    mixed = spooled(lambda i: ratio if i % 2 else exact)
    lines = [orjson.loads(line) for line in frame_lines(mixed[FRAME.size :]).splitlines()]
    for i, name in enumerate(FEATURE_NAMES):
        if name not in CATEGORICAL_FEATURES:
            want = [None if math.isnan(v) else v for v in (ratio if i % 2 else exact).tolist()]
            assert [line["features"][name] for line in lines] == want, name
    assert [line["label"] for line in lines] == [0, 1, 1]


@pytest.mark.parametrize("during", [1, 2], ids=["first-listing", "second-listing"])
def test_a_spool_converted_while_the_folder_is_listed_is_read_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, during: int
) -> None:
    """A listing taken while files come and go may or may not hold each of them (POSIX; a large folder is read in
    several getdents calls): here the converter renames ``b``'s ``.jsonl.gz`` into place behind the listing's
    position and removes its spool ahead of it, so that listing holds ``b`` under neither name. Its records are
    read once whichever listing it hits."""
    a = tmp_path / "predictions-20261130T100000000000Z-host-1-00001.spool"
    b = tmp_path / "predictions-20261130T100001000000Z-host-2-00001.spool"
    spool(a, [0, 2])
    spool(b, [1, 3])
    real_scandir = os.scandir
    listings = []

    class ConvertedMidway:
        """``os.scandir`` of a listing that reaches ``b`` just after it was converted."""

        def __init__(self, path: Any) -> None:
            with real_scandir(path) as entries:
                self.entries = sorted(entries, key=lambda e: e.name)  # a before b

        def __enter__(self) -> Any:
            for entry in self.entries:
                if entry.name == b.name:
                    assert convert(b) is not None
                if os.path.lexists(entry.path):
                    yield entry

        def __exit__(self, *exc: object) -> None:
            return None

    def scandir(path: Any) -> Any:
        listings.append(path)
        if len(listings) == during and Path(path) == tmp_path:
            return ConvertedMidway(path)
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    read = read_log(tmp_path)
    assert [r["time"][18] for r in read] == ["0", "1", "2", "3"]
    assert (read.torn, read.skipped) == (0, 0) and not b.exists()
