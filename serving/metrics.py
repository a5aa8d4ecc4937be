"""Prometheus metrics of the service: per process, or aggregated over the workers' files under
``PROMETHEUS_MULTIPROC_DIR``."""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_LABELS = ["endpoint", "method", "status"]
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


@dataclass(frozen=True)
class Metrics:
    requests: Counter
    latency: Histogram
    predictions: Counter
    rejected: Counter
    model_info: Gauge
    reloads: Counter
    log_written: Counter
    log_dropped: Counter
    log_torn: Counter
    _children: dict[tuple[str, ...], Any] = field(default_factory=dict, repr=False)

    def observe_request(self, endpoint: str, method: str, status: int, seconds: float, rows: int = 0) -> None:
        """Count one answered request (and the rows it scored), with its latency."""
        key = (endpoint, method if method in HTTP_METHODS else "OTHER", str(status))
        if (children := self._children.get(key)) is None:
            children = self._children[key] = (
                self.requests.labels(*key),
                self.latency.labels(*key),
                self.predictions.labels(endpoint),
            )
        children[0].inc()
        children[1].observe(seconds)
        if rows:
            children[2].inc(rows)

    def reject(self, endpoint: str, errors: list[Any]) -> None:
        """Count the records of a request that were not scored, by endpoint and error code."""
        for error in errors:
            self.rejected.labels(endpoint, error.code).inc()

    def render(self) -> tuple[bytes, str]:
        """The exposition text of every metric (all workers in multiprocess mode) and its content type."""
        registry, directory = REGISTRY, os.environ.get(MULTIPROC_ENV)
        if directory and os.path.isdir(directory):
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry, path=directory)
        return generate_latest(registry), CONTENT_TYPE_LATEST

    def set_model(
        self, name: str | None, version: str | None, previous: tuple[str, str] | None = None
    ) -> None:
        """Mark the served model (1) and the one it replaced (0)."""
        if previous is not None:
            self.model_info.labels(*previous).set(0)
        self.model_info.labels(name or "", version or "").set(1)


_DEFINITIONS: dict[str, tuple[Any, tuple[Any, ...], dict[str, Any]]] = {
    "requests": (Counter, ("loanrisk_http_requests", "HTTP requests answered, by endpoint, method and status.",
                           _LABELS), {}),
    "latency": (Histogram, ("loanrisk_http_request_duration_seconds",
                            "Time to answer an HTTP request, by endpoint, method and status.", _LABELS),
                {"buckets": LATENCY_BUCKETS}),
    "predictions": (Counter, ("loanrisk_predictions", "Loan applications scored, by endpoint.", ["endpoint"]), {}),
    "rejected": (Counter, ("loanrisk_rejected_records", "Records of a batch that were not scored, by endpoint and "
                           "error code (invalid_value, ...).", ["endpoint", "error"]), {}),
    "model_info": (Gauge, ("loanrisk_model_info", "The model served (1) by name and version; 0 for a model that "
                           "was replaced.", ["model_name", "model_version"]), {"multiprocess_mode": "livemax"}),
    "reloads": (Counter, ("loanrisk_model_reloads", "Model reloads, by result.", ["result"]), {}),
    "log_written": (Counter, ("loanrisk_prediction_log_written", "Scored records written to the prediction log."),
                    {}),
    "log_dropped": (Counter, ("loanrisk_prediction_log_dropped", "Scored records the prediction log dropped, by "
                              "reason (queue_full, write_error).", ["reason"]), {}),
    "log_torn": (Counter, ("loanrisk_prediction_log_torn", "Prediction log files a dead writer left ending inside "
                           "a line (found at start)."), {}),
}  # fmt: skip
_lock = threading.Lock()
_metrics: Metrics | None = None


def get_metrics() -> Metrics:
    """The process-wide metric objects (created on first use)."""
    global _metrics
    with _lock:
        if _metrics is None:
            if directory := os.environ.get(MULTIPROC_ENV):  # prometheus_client writes its value files there
                os.makedirs(directory, exist_ok=True)
            _metrics = Metrics(**{name: kind(*args, **kw) for name, (kind, args, kw) in _DEFINITIONS.items()})
        return _metrics
