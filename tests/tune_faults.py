"""Kill a tune worker during a trial: run the stage in a thread, watch the study, SIGKILL the process of the first
trial seen reporting (its ``worker_id`` user attribute names it), and report what the stage did."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial, TrialState

from tasks.model import tune_study

END_MARGIN_SECONDS = 180.0  # past the tuning budget: the trials still running finish, the stage sums up


def kill_during_a_trial(
    run: Callable[[], dict[str, Any]], storage: BaseStorage, study_name: str, tune_timeout_seconds: float
) -> tuple[FrozenTrial | None, dict[str, Any]]:
    """The trial whose worker was killed (None when none was seen reporting within the tuning budget) and the
    stage's ``summary`` or ``error``.

    The victim is a running trial that has reported an intermediate value: its objective is well under way, so its
    heartbeat thread (started with the objective) has beaten. The study is read through ``storage`` alone (one
    handle, not one per poll), and the stage is waited for past its budget, so its outcome is always there."""
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["summary"] = run()
        except BaseException as exc:  # noqa: BLE001 - reported by the caller's assertions
            outcome["error"] = exc

    started = time.monotonic()
    tuning = threading.Thread(target=target)
    tuning.start()
    victim, study_id = None, None
    while victim is None and tuning.is_alive() and time.monotonic() < started + tune_timeout_seconds:
        if study_id is None:
            with contextlib.suppress(KeyError):  # the stage has not created the study yet
                study_id = storage.get_study_id_from_name(study_name)
        if study_id is not None:
            running = storage.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,))
            reporting = [t for t in running if t.intermediate_values and tune_study.WORKER in t.user_attrs]
            if reporting:
                victim = reporting[0]
                os.kill(int(victim.user_attrs[tune_study.WORKER].rsplit(":", 1)[1]), signal.SIGKILL)
        time.sleep(0.2)
    tuning.join(timeout=started + tune_timeout_seconds + END_MARGIN_SECONDS - time.monotonic())
    if tuning.is_alive():
        outcome["error"] = TimeoutError(f"the stage still runs {END_MARGIN_SECONDS:.0f} s past its budget")
    return victim, outcome


def assert_rerun_elsewhere(
    victim: FrozenTrial | None, outcome: dict[str, Any], trials: list[FrozenTrial]
) -> None:
    """The killed trial failed (heartbeat), was re-run once by another worker with what it had drawn, and the
    stage finished without error, counting the re-run (a second copy of that retry, failed as surplus, aside)."""
    assert victim is not None, f"no trial was seen reporting: {outcome}"
    assert "error" not in outcome, outcome
    failed = next(t for t in trials if t.number == victim.number)
    assert failed.state == TrialState.FAIL
    retries = [
        t
        for t in trials
        if tune_study.retried_from(t) == victim.number and tune_study.SURPLUS not in t.user_attrs
    ]
    assert [t.state in tune_study.FINISHED for t in retries] == [True], [(t.number, t.state) for t in trials]
    assert failed.params.items() <= retries[0].params.items()  # re-run with what the killed trial had drawn
    assert retries[0].user_attrs["retried_from_worker"] == victim.user_attrs[tune_study.WORKER]
    assert retries[0].user_attrs[tune_study.WORKER] != victim.user_attrs[tune_study.WORKER]
    assert outcome["summary"]["n_retried"] == 1
