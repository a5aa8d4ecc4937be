"""Smoke test of a running prediction service: every endpoint answers and training's predictions come back."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import httpx

from tasks.common import run_logger, stage
from tasks.errors import PermanentError
from tasks.settings import Settings


class SmokeTestError(PermanentError):
    """The running image answered wrongly; the message says which check failed and why."""

    step = "smoke-test"

    def __str__(self) -> str:
        return f"smoke-test failed: {super().__str__()}"


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise SmokeTestError(message)


def _json(response: httpx.Response, what: str) -> Any:
    _check(response.status_code == 200, f"{what} answered HTTP {response.status_code}: {response.text[:300]}")
    try:
        return response.json()
    except ValueError:
        raise SmokeTestError(f"{what} answered non-JSON: {response.text[:300]}") from None


def compare_predictions(
    answers: Mapping[str, Sequence[Any]], expected: Sequence[float], tolerance: float = 1e-6
) -> float:
    """Check each endpoint's probabilities (a prefix of ``expected`` is allowed: /predict answers for the first
    record only) against training's; returns the largest difference. A value that is not a number or is more
    than ``tolerance`` away raises :class:`SmokeTestError` naming the endpoint, the record and the difference."""
    worst = 0.0
    for name, values in answers.items():
        for i, (got, want) in enumerate(zip(values, expected, strict=False)):
            try:
                diff = abs(float(got) - float(want))
            except (TypeError, ValueError):
                raise SmokeTestError(f"{name} record {i}: probability {got!r} is not a number") from None
            worst = max(worst, diff)
            _check(
                math.isfinite(diff) and diff <= tolerance,
                f"{name} record {i}: probability {got} differs from training's {want} by {diff:.2e} (> {tolerance})",
            )
    return worst


def smoke_test(
    base_url: str,
    expected_version: str,
    reference: dict[str, list[Any]],
    tolerance: float = 1e-6,
    timeout: float = 30.0,
) -> dict[str, Any]:
    """Call /health, /model/info, /predict, /predict/batch and /invocations; compare with ``reference`` (raw
    test records and the probabilities training computed for them). Returns a summary."""
    records, expected = reference["records"], reference["probabilities"]
    _check(
        len(records) > 0 and len(records) == len(expected), "the bundle's reference sample is empty or uneven"
    )
    with httpx.Client(base_url=base_url, timeout=timeout) as http:
        health = _json(http.get("/health"), "GET /health")
        info = _json(http.get("/model/info"), "GET /model/info")
        _check(
            str(info.get("version")) == str(expected_version),
            f"/model/info reports version {info.get('version')!r}, expected {expected_version!r}",
        )
        single = _json(http.post("/predict", json=records[0]), "POST /predict")
        batch = _json(http.post("/predict/batch", json={"data": records}), "POST /predict/batch")
        invocations = _json(
            http.post("/invocations", json={"dataframe_records": records}), "POST /invocations"
        )

    got_batch = [p["probability"] for p in batch["predictions"]]
    got_inv = [p if isinstance(p, int | float) else p.get("probability") for p in invocations["predictions"]]
    answers = {"/predict/batch": got_batch, "/invocations": got_inv}
    for name, got in answers.items():
        _check(len(got) == len(expected), f"{name} returned {len(got)} rows for {len(expected)}")
    worst = compare_predictions({**answers, "/predict": [single["probability"]]}, expected, tolerance)
    return {
        "health": health,
        "version": info.get("version"),
        "rows_compared": len(expected),
        "max_abs_diff": worst,
        "checks": ["/health", "/model/info", "/predict", "/predict/batch", "/invocations"],
    }


@stage("smoke-test", max_retries=0)
def smoke_task(
    settings: Settings, base_url: str, expected_version: str, reference: dict[str, list[Any]]
) -> dict[str, Any]:
    """Stage: the smoke test of the running container (a wrong answer stays wrong: no retry)."""
    summary = smoke_test(base_url, expected_version, reference)
    run_logger().info("smoke test passed: %s", summary)
    return summary
