"""Settings of the prediction service: a tiny dataclass read from ``LOANRISK_*`` environment variables.

The serving image carries no pydantic-settings; this module is all it needs.

| variable                        | default              | meaning                                                  |
|---------------------------------|----------------------|----------------------------------------------------------|
| ``LOANRISK_BUNDLE_DIR``         | (none)               | model bundle directory loaded at start                   |
| ``LOANRISK_MAX_BATCH_SIZE``     | 10000                | most records in one batch request (413 beyond)           |
| ``LOANRISK_MAX_BODY_BYTES``     | batch size × 6 KiB   | largest request body (413 beyond); 60 MiB for 10,000     |
| ``LOANRISK_UNKNOWN_CATEGORIES`` | warn                 | a category outside the dataset contract: warn or reject  |
| ``LOANRISK_ADMIN_TOKEN``        | (none: reload off)   | Bearer token of ``/model/reload`` and ``/model/workers`` |
| ``LOANRISK_MODEL_THREADS``      | 1                    | CatBoost threads per prediction (one per worker is best) |
| ``LOANRISK_LOG_LEVEL``          | INFO                 | level of the JSON logs                                   |
| ``LOANRISK_RELOAD_SYNC_DIR``    | (gunicorn: temporary)| folder the workers of one gunicorn share reloads through |
| ``LOANRISK_RELOAD_TIMEOUT``     | 10                   | s a reload waits for every worker to serve the new model |
| ``LOANRISK_VERIFY_REFERENCE``   | true                 | refuse a bundle that does not reproduce its reference    |
| ``LOANRISK_REASON_COUNT``       | 4                    | reasons per explained record (1-10; ``reason_count`` too)|
| ``LOANRISK_PREDICTION_LOG_DIR`` | (none: log off)      | folder of the prediction log (:mod:`serving.predlog`)    |
| ``LOANRISK_PREDICTION_LOG_QUEUE``| 50000               | records queued per worker before new ones are dropped    |
| ``LOANRISK_PREDICTION_LOG_ROTATE_BYTES``| 67108864 (64 MiB)| size at which a log file is rotated and compressed   |
| ``LOANRISK_PREDICTION_LOG_ROTATE_SECONDS``| 3600       | age at which a log file is rotated and compressed        |
| ``LOANRISK_PSEUDONYM_KEY``      | (none)               | key of the log's loanId pseudonyms; the log needs it     |
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

ENV_PREFIX = "LOANRISK_"
DEFAULT_MAX_BATCH_SIZE = 10_000
# Body bytes allowed per record of the batch limit: a real application is ~4.8 KB as compact JSON.
RECORD_BYTES = 6 * 1024
UNKNOWN_CATEGORY_POLICIES = ("warn", "reject")
DEFAULT_RELOAD_TIMEOUT_S = 10.0
DEFAULT_REASON_COUNT = 4
MAX_REASON_COUNT = 10
DEFAULT_LOG_QUEUE = 50_000
DEFAULT_LOG_ROTATE_BYTES = 64 * 1024 * 1024
DEFAULT_LOG_ROTATE_S = 3600.0
_INTEGERS = (
    "max_batch_size",
    "max_body_bytes",
    "model_threads",
    "prediction_log_queue",
    "prediction_log_rotate_bytes",
    "reason_count",
)
_SECONDS = ("reload_timeout", "prediction_log_rotate_seconds")
_PATHS = ("bundle_dir", "reload_sync_dir", "prediction_log_dir")
_BOOLEANS = {
    "1": True,
    "true": True,
    "yes": True,
    "on": True,
    "0": False,
    "false": False,
    "no": False,
    "off": False,
}


class ConfigError(ValueError):
    """An environment variable holds a value the service cannot use."""


@dataclass(frozen=True)
class ServiceConfig:
    """Everything the Flask app reads; build it with :meth:`from_env` or directly (tests)."""

    bundle_dir: Path | None = None
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE
    max_body_bytes: int = 0  # 0: max_batch_size × RECORD_BYTES
    unknown_categories: str = "warn"
    admin_token: str | None = field(default=None, repr=False)
    model_threads: int = 1
    log_level: str = "INFO"
    reload_sync_dir: Path | None = None
    reload_timeout: float = DEFAULT_RELOAD_TIMEOUT_S
    verify_reference: bool = True
    reason_count: int = DEFAULT_REASON_COUNT
    prediction_log_dir: Path | None = None
    prediction_log_queue: int = DEFAULT_LOG_QUEUE
    prediction_log_rotate_bytes: int = DEFAULT_LOG_ROTATE_BYTES
    prediction_log_rotate_seconds: float = DEFAULT_LOG_ROTATE_S
    pseudonym_key: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.max_body_bytes == 0 and type(self.max_batch_size) is int:
            object.__setattr__(self, "max_body_bytes", self.max_batch_size * RECORD_BYTES)
        if self.unknown_categories not in UNKNOWN_CATEGORY_POLICIES:
            raise ConfigError(f"unknown_categories must be warn or reject, got {self.unknown_categories!r}")
        for name in _PATHS:
            value = getattr(self, name)
            if value is not None and not isinstance(value, Path):
                object.__setattr__(self, name, Path(value))
        for name in ("admin_token", "pseudonym_key"):
            value = getattr(self, name)
            if value is not None and not value.strip():
                object.__setattr__(self, name, None)
        for name in _INTEGERS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        timeout = self.reload_timeout
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not 0 <= timeout <= 600:
            raise ConfigError(f"reload_timeout must be a number of seconds from 0 to 600, got {timeout!r}")
        count = self.reason_count
        if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= MAX_REASON_COUNT:
            raise ConfigError(f"reason_count must be an integer from 1 to {MAX_REASON_COUNT}, got {count!r}")
        age = self.prediction_log_rotate_seconds
        if isinstance(age, bool) or not isinstance(age, int | float) or not age > 0:
            raise ConfigError(f"prediction_log_rotate_seconds must be a positive number, got {age!r}")

    @property
    def reload_enabled(self) -> bool:
        return self.admin_token is not None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> ServiceConfig:
        """Read ``LOANRISK_*`` variables (empty values count as unset); ``overrides`` win."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in fields(cls):
            var = ENV_PREFIX + f.name.upper()
            raw = env.get(var, "").strip()
            if not raw:
                continue
            if f.name in _INTEGERS:
                try:
                    values[f.name] = int(raw)
                except ValueError:
                    raise ConfigError(f"{var} must be an integer, got {raw!r}") from None
            elif f.name in _SECONDS:
                try:
                    values[f.name] = float(raw)
                except ValueError:
                    raise ConfigError(f"{var} must be a number of seconds, got {raw!r}") from None
            elif f.name == "verify_reference":
                if raw.lower() not in _BOOLEANS:
                    raise ConfigError(f"{var} must be true or false, got {raw!r}")
                values[f.name] = _BOOLEANS[raw.lower()]
            elif f.name in _PATHS:
                values[f.name] = Path(raw)
            else:
                values[f.name] = raw
        values.update(overrides)
        try:
            return cls(**values)
        except ConfigError as exc:
            raise ConfigError(f"{exc} (from {ENV_PREFIX}* environment variables)") from None

    def with_overrides(self, **overrides: Any) -> ServiceConfig:
        return replace(self, **overrides)
