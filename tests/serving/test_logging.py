"""Logs are JSON, one line per request, and never carry anon_ssn or other personal values."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from typing import Any

from tests.serving.conftest import READINESS_PROBES


def _post(url: str, payload: Any) -> int:
    req = urllib.request.Request(
        url, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status
    except urllib.error.HTTPError as exc:
        return exc.code


def _personal_values(records: list[dict[str, Any]]) -> set[str]:
    return {str(r[k]) for r in records for k in ("anon_ssn", "loanId", "clarityFraudId") if r.get(k)}


def test_in_process_logs(client, records, log_lines) -> None:
    client.post("/predict", json=records[0])
    client.post("/predict/batch", json={"data": records[:20]})
    client.post(
        "/predict/batch?on_error=reject",
        json={"data": [records[1], {**records[2], "apr": records[2]["anon_ssn"]}]},
    )
    client.post("/invocations", json={"dataframe_records": records[:5]})
    lines = log_lines()
    parsed = [json.loads(line) for line in lines]
    access = [p for p in parsed if p["logger"] == "loanrisk.access"]
    assert len(access) == 4
    assert [a["status"] for a in access] == [200, 200, 422, 200]
    assert access[1]["rows"] == 20 and access[1]["endpoint"] == "/predict/batch"
    assert access[2]["field"] == "apr" and access[2]["index"] == 1
    text = "\n".join(lines)
    for value in _personal_values(records[:20]):
        assert value not in text


def test_gunicorn_logs(live_server, records) -> None:
    server = live_server(workers=2)
    sent = records[:30]
    statuses = [_post(f"{server.url}/predict", r) for r in sent[:10]]
    statuses.append(_post(f"{server.url}/predict/batch", {"data": sent}))
    statuses.append(_post(f"{server.url}/predict", {**sent[0], "apr": sent[0]["anon_ssn"]}))
    statuses.append(_post(f"{server.url}/predict", "not a record"))
    assert statuses == [200] * 11 + [422, 400]
    time.sleep(0.5)
    lines = [line for line in server.log_text().splitlines() if line.strip()]
    parsed = [json.loads(line) for line in lines]  # every line is one JSON object
    access = [
        p
        for p in parsed
        if p.get("logger") == "loanrisk.access" and p.get("endpoint") not in READINESS_PROBES
    ]
    assert len(access) == len(statuses)
    assert sorted(a["status"] for a in access) == sorted(statuses)
    for entry in access:
        assert {"ts", "level", "event", "request_id", "method", "endpoint", "status", "duration_ms"} <= set(
            entry
        )
    assert not [p for p in parsed if p.get("logger") == "gunicorn.access"]
    text = server.log_text()
    for value in _personal_values(sent):
        assert value not in text
