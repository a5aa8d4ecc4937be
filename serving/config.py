"""Settings of the prediction service: a dataclass whose field ``name`` is read from ``LOANRISK_<NAME>`` (the
serving image has no pydantic-settings); docs/service.md lists them."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

ENV_PREFIX = "LOANRISK_"
DEFAULT_MAX_BATCH_SIZE = 10_000
RECORD_BYTES = 6 * 1024  # body bytes per record of the batch limit: a real application is ~4.8 KB of JSON
DEFAULT_REASON_COUNT = 4
MAX_REASON_COUNT = 10
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")
_BOOLEANS = {**dict.fromkeys(_TRUE, True), **dict.fromkeys(_FALSE, False)}
_SECRETS = ("admin_token", "pseudonym_key")
_PATHS = ("bundle_dir", "reload_sync_dir", "prediction_log_dir")
_PARSE = {"int": int, "float": float, "bool": lambda raw: _BOOLEANS[raw.lower()], "Path | None": Path}
# The numbers: (type, lowest, highest, what the error calls it); 5e-324 is the least float above 0.
_POSITIVE = (int, 1, math.inf, "a positive integer")
_NUMBERS = {
    **dict.fromkeys(("max_batch_size", "max_body_bytes", "model_threads", "prediction_log_queue"), _POSITIVE),
    "prediction_log_rotate_bytes": _POSITIVE,
    "reason_count": (int, 1, MAX_REASON_COUNT, f"an integer from 1 to {MAX_REASON_COUNT}"),
    "reload_timeout": (float, 0, 600, "a number of seconds from 0 to 600"),
    "prediction_log_rotate_seconds": (float, 5e-324, math.inf, "a positive number of seconds"),
}


class ConfigError(ValueError):
    """An environment variable holds a value the service cannot use."""


@dataclass(frozen=True)
class ServiceConfig:
    """Everything the Flask app reads; build it with :meth:`from_env` or directly (tests)."""

    bundle_dir: Path | None = None
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE
    max_body_bytes: int = 0  # 0: max_batch_size × RECORD_BYTES
    unknown_categories: str = "warn"  # or "reject"
    admin_token: str | None = field(default=None, repr=False)
    model_threads: int = 1
    log_level: str = "INFO"
    reload_sync_dir: Path | None = None
    reload_timeout: float = 10.0
    verify_reference: bool = True
    reason_count: int = DEFAULT_REASON_COUNT
    prediction_log_dir: Path | None = None
    prediction_log_queue: int = 50_000
    prediction_log_rotate_bytes: int = 64 * 1024 * 1024
    prediction_log_rotate_seconds: float = 3600.0
    pseudonym_key: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        fix: dict[str, Any] = {n: None for n in _SECRETS if not (getattr(self, n) or "").strip()}
        fix |= {n: Path(v) for n in _PATHS if (v := getattr(self, n)) is not None}
        if self.max_body_bytes == 0 and type(self.max_batch_size) is int:
            fix["max_body_bytes"] = self.max_batch_size * RECORD_BYTES
        for name, value in fix.items():
            object.__setattr__(self, name, value)
        if self.unknown_categories not in ("warn", "reject"):
            raise ConfigError(f"unknown_categories must be warn or reject, got {self.unknown_categories!r}")
        for name, (kind, low, high, wanted) in _NUMBERS.items():
            value = getattr(self, name)
            if type(value) not in (int, kind) or not low <= value <= high:
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
            if raw := env.get(var, "").strip():
                try:
                    values[f.name] = _PARSE.get(f.type, str)(raw)
                except (ValueError, KeyError):
                    wanted = _NUMBERS.get(f.name, ("true or false",))[-1]
                    raise ConfigError(f"{var} must be {wanted}, got {raw!r}") from None
        try:
            return cls(**(values | overrides))
        except ConfigError as exc:
            raise ConfigError(f"{exc} (from {ENV_PREFIX}* environment variables)") from None
