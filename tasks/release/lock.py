"""The deploy lock, a one-slot Prefect global concurrency limit: a courtesy (the ledger commit fences)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from tasks.common import run_logger
from tasks.release.ledger import ReleaseFailed
from tasks.settings.sections import ReleaseSettings


@dataclass
class LockHold:
    """When this process held the deploy lock (UTC, ISO 8601) and how long it waited for it."""

    name: str
    acquired_at: str = ""
    released_at: str = ""
    waited_s: float = 0.0

    def summary(self) -> dict[str, Any]:
        return {**asdict(self), "waited_s": round(self.waited_s, 2)}


def _ensure_lock_limit(name: str) -> None:
    """A Prefect global concurrency limit ``name`` with one slot (created when missing, set to one slot)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate, GlobalConcurrencyLimitUpdate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            limit = client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            with suppress(ObjectAlreadyExists):  # created meanwhile by another deploy
                client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=1))
            return
        if limit.limit != 1 or not limit.active:
            run_logger().warning(
                "deploy lock %r had limit %s (active %s): set to one slot", name, limit.limit, limit.active
            )
            client.update_global_concurrency_limit(name, GlobalConcurrencyLimitUpdate(limit=1, active=True))


@contextmanager
def release_lock(release: ReleaseSettings) -> Iterator[LockHold]:
    """Hold the deploy lock (``deploy_lock_name``), waiting at most ``deploy_lock_timeout_seconds``; raises
    :class:`ReleaseFailed` (step ``lock``) on timeout."""
    from prefect.concurrency.sync import concurrency

    name, timeout = release.deploy_lock_name, release.deploy_lock_timeout_seconds
    _ensure_lock_limit(name)
    hold = LockHold(name)
    run_logger().info("waiting for the deploy lock %r", name)
    started = time.monotonic()
    holding = ExitStack()
    try:  # only the wait is the lock step's failure; what runs while holding it fails on its own
        holding.enter_context(
            concurrency(
                name, occupy=1, timeout_seconds=timeout, strict=True, raise_on_lease_renewal_failure=False
            )
        )
    except TimeoutError as exc:
        raise ReleaseFailed(
            "lock",
            f"another deploy held the deploy lock {name!r} longer than {timeout} s ({type(exc).__name__}: {exc})",
        ) from exc
    with holding:
        hold.waited_s = time.monotonic() - started
        hold.acquired_at = datetime.now(UTC).isoformat(timespec="microseconds")
        run_logger().info("holding the deploy lock %r (waited %.1f s)", name, hold.waited_s)
        try:
            yield hold
        finally:
            hold.released_at = datetime.now(UTC).isoformat(timespec="microseconds")
