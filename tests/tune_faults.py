"""Kill a tune worker during a trial: run the stage in a thread, watch the study, SIGKILL the process of the first
trial seen running (its ``worker_id`` user attribute names it), and report what the stage did."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

from optuna.trial import FrozenTrial, TrialState

from tasks import tune_workers as workers


def kill_during_a_trial(
    run: Callable[[], dict[str, Any]], trials: Callable[[], list[FrozenTrial]], timeout: float
) -> tuple[FrozenTrial | None, dict[str, Any]]:
    """The trial whose worker was killed (None when none was seen running) and the stage's ``summary`` or
    ``error``. ``trials`` reads the study (a KeyError while it does not exist yet)."""
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["summary"] = run()
        except BaseException as exc:  # noqa: BLE001 - reported by the caller's assertions
            outcome["error"] = exc

    tuning = threading.Thread(target=target)
    tuning.start()
    victim = None
    deadline = time.monotonic() + timeout
    while victim is None and tuning.is_alive() and time.monotonic() < deadline:
        with contextlib.suppress(KeyError):  # the study is not created yet
            running = [
                t for t in trials() if t.state == TrialState.RUNNING and workers.WORKER in t.user_attrs
            ]
            if running:
                victim = running[0]
                os.kill(int(victim.user_attrs[workers.WORKER].rsplit(":", 1)[1]), signal.SIGKILL)
        time.sleep(0.1)
    tuning.join(timeout=timeout)
    return victim, outcome


def assert_rerun_elsewhere(
    victim: FrozenTrial | None, outcome: dict[str, Any], trials: list[FrozenTrial]
) -> None:
    """The killed trial failed (heartbeat), was re-run once by another worker with what it had drawn, and the
    stage finished without error, counting the re-run."""
    assert victim is not None, f"no trial was seen running: {outcome}"
    assert "error" not in outcome, outcome
    failed = next(t for t in trials if t.number == victim.number)
    assert failed.state == TrialState.FAIL
    retries = [t for t in trials if workers.retried_from(t) == victim.number]
    assert [t.state in workers.FINISHED for t in retries] == [True], [(t.number, t.state) for t in trials]
    assert failed.params.items() <= retries[0].params.items()  # re-run with what the killed trial had drawn
    assert retries[0].user_attrs["retried_from_worker"] == victim.user_attrs[workers.WORKER]
    assert retries[0].user_attrs[workers.WORKER] != victim.user_attrs[workers.WORKER]
    assert outcome["summary"]["n_retried"] == 1
