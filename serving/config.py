"""Settings of the prediction service: a dataclass read from ``LOANRISK_*`` environment variables (the serving
image has no pydantic-settings). Each field ``name`` is read from ``LOANRISK_<NAME>``; docs/service.md lists them."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
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
_INTEGERS = ("max_batch_size", "max_body_bytes", "model_threads", "prediction_log_queue",
             "prediction_log_rotate_bytes", "reason_count")  # fmt: skip
_SECONDS = ("reload_timeout", "prediction_log_rotate_seconds")
_PARSE = {
    **dict.fromkeys(_INTEGERS, (int, "an integer")),
    **dict.fromkeys(_SECONDS, (float, "a number of seconds")),
}
_PATHS = ("bundle_dir", "reload_sync_dir", "prediction_log_dir")
_BOOLEANS = {
    **dict.fromkeys(("1", "true", "yes", "on"), True),
    **dict.fromkeys(("0", "false", "no", "off"), False),
}
# (field, lowest, highest, what the error calls it) of the numbers with bounds beyond being positive
# 5e-324: the least float above 0
_BOUNDS = (
    ("reload_timeout", 0, 600, "a number of seconds from 0 to 600"),
    ("reason_count", 1, MAX_REASON_COUNT, f"an integer from 1 to {MAX_REASON_COUNT}"),
    ("prediction_log_rotate_seconds", 5e-324, float("inf"), "a positive number"),
)


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
        for name, low, high, wanted in _BOUNDS:
            value = getattr(self, name)
            kind = int if name == "reason_count" else int | float
            if isinstance(value, bool) or not isinstance(value, kind) or not low <= value <= high:
                raise ConfigError(f"{name} must be {wanted}, got {value!r}")

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
            if f.name in _PARSE:
                number, wanted = _PARSE[f.name]
                try:
                    values[f.name] = number(raw)
                except ValueError:
                    raise ConfigError(f"{var} must be {wanted}, got {raw!r}") from None
            elif f.name == "verify_reference":
                if raw.lower() not in _BOOLEANS:
                    raise ConfigError(f"{var} must be true or false, got {raw!r}")
                values[f.name] = _BOOLEANS[raw.lower()]
            else:
                values[f.name] = Path(raw) if f.name in _PATHS else raw
        values.update(overrides)
        try:
            return cls(**values)
        except ConfigError as exc:
            raise ConfigError(f"{exc} (from {ENV_PREFIX}* environment variables)") from None
