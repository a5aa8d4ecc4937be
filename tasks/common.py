"""What every stage shares: the stage declaration, its retry rule (never a permanent error) and a logger.

``@stage("split")`` declares ``split_task(settings, ...)``: no result caching, never a retry of a permanent error,
retries and delay from the settings each call is given. ``split_task.fn`` is the plain function.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import logging
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, ParamSpec, TypeVar

from prefect import Task, task
from prefect.cache_policies import NO_CACHE

from tasks.errors import PermanentError
from tasks.settings import Settings

P = ParamSpec("P")
R = TypeVar("R")


PERMANENT_ERRORS: tuple[type[BaseException], ...] = (PermanentError, ValueError, KeyError, TypeError)


def retry_unless_permanent(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect retry condition: retry everything except :data:`PERMANENT_ERRORS` (bad input stays bad)."""
    return not isinstance(state.result(raise_on_failure=False), PERMANENT_ERRORS)


@dataclass(eq=False)
class Stage(Generic[P, R]):
    """A stage task: call it with the settings first; ``max_retries`` caps the settings' ``task_retries``."""

    task: Task[P, R]
    max_retries: int | None = None

    name = property(lambda self: self.task.name)
    fn = property(lambda self: self.task.fn)

    def task_for(self, settings: Settings) -> Task[P, R]:
        """The Prefect task with the retries (capped by ``max_retries``) and the delay of ``settings``."""
        retries = min(settings.task_retries, sys.maxsize if self.max_retries is None else self.max_retries)
        return self.task.with_options(retries=retries, retry_delay_seconds=settings.task_retry_delay_seconds)

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        settings = args[0] if args else kwargs.get("settings")
        if not isinstance(settings, Settings):
            raise TypeError(f"stage {self.name!r}: the settings are the first argument, got {settings!r}")
        return self.task_for(settings)(*args, **kwargs)


def stage(name: str, *, max_retries: int | None = None) -> Callable[[Callable[P, R]], Stage[P, R]]:
    """Declare a stage task (no result caching: stages pass tables and models, and a rerun must run)."""

    def declare(fn: Callable[P, R]) -> Stage[P, R]:
        first = next(iter(fn.__code__.co_varnames[: fn.__code__.co_argcount]), None)
        if first != "settings":
            raise TypeError(f"stage {name!r}: the first parameter of {fn.__qualname__} must be 'settings'")
        declared = task(fn, name=name, cache_policy=NO_CACHE, retry_condition_fn=retry_unless_permanent)
        return Stage(declared, max_retries)

    return declare


def release_freed_memory() -> None:
    """Hand memory cached by pyarrow's pool and glibc's malloc arenas back to the OS."""
    import pyarrow

    pyarrow.default_memory_pool().release_unused()
    libc = ctypes.util.find_library("c")
    trim = getattr(ctypes.CDLL(libc), "malloc_trim", None) if libc else None
    if trim is not None:  # glibc only
        trim(0)


def run_logger(name: str = "loan_risk") -> logging.Logger | logging.LoggerAdapter:
    """The Prefect run logger inside a run, a plain logger outside one (plain function calls, tests)."""
    from prefect import get_run_logger
    from prefect.exceptions import MissingContextError

    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger(name)


def cli_run(
    run: Callable[[], Mapping[str, Any]], error_fields: Callable[[Exception], dict] | None = None
) -> int:
    """The flows' CLI ending: the result as a JSON line (exit 0) or ``{"error", **error_fields}`` (exit 1)."""
    try:
        result = run()
    except Exception as exc:  # noqa: BLE001 - the CLI reports any failure as a JSON line and exit 1
        extra = error_fields(exc) if error_fields else {}
        sys.stdout.write(json.dumps({"error": f"{type(exc).__name__}: {exc}", **extra}) + "\n")
        return 1
    sys.stdout.write(json.dumps(result, default=str) + "\n")
    return 0
