"""Small pieces every stage's Prefect task shares: retry options and a logger that works outside runs."""

from __future__ import annotations

import logging
from typing import Any

from tasks.settings import Settings


class PermanentError(RuntimeError):
    """A failure that a retry cannot fix (bad data, a missing file or revision, a policy decision)."""


class TransientError(RuntimeError):
    """A failure that a retry may fix (a server that did not answer or answered with an error); retried."""


def _retry_unless_permanent(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect retry condition: retry everything except :class:`PermanentError` and ``ValueError``."""
    try:
        state.result()
    except (PermanentError, ValueError, KeyError, TypeError):
        return False
    except Exception:  # noqa: BLE001 - anything else may be transient
        return True
    return True


def retry_options(settings: Settings, *, retries: int | None = None) -> dict[str, Any]:
    """``task.with_options(**retry_options(settings))``: retries and delay from the settings."""
    return {
        "retries": settings.task_retries if retries is None else retries,
        "retry_delay_seconds": settings.task_retry_delay_seconds,
        "retry_condition_fn": _retry_unless_permanent,
    }


def run_logger(name: str = "loan_risk") -> logging.Logger | logging.LoggerAdapter:
    """The Prefect run logger inside a run, a plain logger outside one (plain function calls, tests)."""
    try:
        from prefect import get_run_logger
        from prefect.exceptions import MissingContextError

        try:
            return get_run_logger()
        except MissingContextError:
            return logging.getLogger(name)
    except ImportError:  # pragma: no cover - prefect is a training dependency
        return logging.getLogger(name)
