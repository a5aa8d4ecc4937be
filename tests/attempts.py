"""Count a stage's attempts in the test process: each call of its function is one try (the first and every
retry). Read from the process that runs the flow, the count is exact when the flow returns, unlike task-run
counts read from the Prefect API, which reach the server's database through events written asynchronously."""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from tasks.common import Stage


@dataclass
class Attempt:
    """One call of the stage's function: when it started and ended (monotonic seconds) and what it raised."""

    started: float
    ended: float = 0.0
    error: BaseException | None = None

    @property
    def seconds(self) -> float:
        return self.ended - self.started


@dataclass
class Attempts:
    calls: list[Attempt] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.calls)


@contextlib.contextmanager
def attempts_of(stage: Stage[..., Any]) -> Iterator[Attempts]:
    """Within the block, every call of ``stage``'s function (a task run's try) is recorded."""
    seen = Attempts()
    original = stage.task.fn

    @functools.wraps(original)
    def counted(*args: Any, **kwargs: Any) -> Any:
        attempt = Attempt(time.monotonic())
        seen.calls.append(attempt)
        try:
            return original(*args, **kwargs)
        except BaseException as exc:
            attempt.error = exc
            raise
        finally:
            attempt.ended = time.monotonic()

    stage.task.fn = counted
    try:
        yield seen
    finally:
        stage.task.fn = original
