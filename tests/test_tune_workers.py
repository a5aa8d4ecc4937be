"""Tuning across workers (issue 12) in ``local`` mode, on SQLite: two worker processes share one study and end at
the configured trial count; a worker killed during a trial loses that trial only (the heartbeat fails it, the
other worker re-runs it); a retry a stopped process left out is queued anyway, and one queued twice runs once; a
study is never resumed on other data; the data survives its trip to the workers."""

from __future__ import annotations

import copy
import os
import threading
import time
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import optuna
import pytest
from optuna.distributions import IntDistribution
from optuna.trial import TrialState, create_trial

from tasks.errors import PermanentError
from tasks.model import tune_study
from tasks.model.features import ModelTable
from tasks.model.train import make_pool
from tasks.model.tune import objective_for, tune, work, worker_main
from tasks.registry import tracking
from tasks.settings import Settings
from tests.tune_faults import assert_rerun_elsewhere, kill_during_a_trial

TINY = {"max_iterations": 60, "early_stopping_rounds": 10, "tune_timeout_seconds": 240}
BEAT = {"tune_heartbeat_seconds": 1, "tune_grace_seconds": 10}
HEARTBEAT_WARNING = "ignore:Heartbeat of storage is supposed to be used with Study.optimize"


def tiny(tmp_path: Path, **overrides: object) -> Settings:
    return Settings(state_dir=tmp_path / "state", **{**TINY, **overrides})


def study_of(settings: Settings, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=settings.study_storage)


def queued(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    return [t for t in study.trials if tune_study.SLOT in t.user_attrs]


def objective(split, settings: Settings, worker: str = "alive:2"):
    """The objective a worker runs, on the tuning slices (no MLflow run)."""
    return objective_for(
        make_pool(split.train), make_pool(split.valid), split.valid.label, settings, None, worker
    )


def failed_without_retry(study: optuna.Study) -> optuna.trial.FrozenTrial:
    """Slot 0 popped by a worker ``dead:1`` that drew a depth and stopped; then failed the way
    ``fail_stale_trials`` fails a stale trial, without the retry its callback queues next."""
    trial = study.ask()
    trial.set_user_attr(tune_study.WORKER, "dead:1")
    trial.suggest_int("depth", 4, 8)
    study.tell(trial, state=TrialState.FAIL)  # the same storage call as fail_stale_trials
    return study.trials[trial.number]


def assert_count_reached(study: optuna.Study, n_trials: int, dead: optuna.trial.FrozenTrial) -> None:
    """Every slot has one finished trial, the dead one's a re-run with its depth and attributes."""
    finished = [t for t in queued(study) if t.state in tune_study.FINISHED]
    states = [(t.number, t.state.name, t.user_attrs.get(tune_study.SLOT)) for t in study.trials]
    assert sorted(t.user_attrs[tune_study.SLOT] for t in finished) == list(range(n_trials)), states
    (rerun,) = [t for t in finished if tune_study.retried_from(t) == dead.number]
    assert rerun.user_attrs[tune_study.SLOT] == dead.user_attrs[tune_study.SLOT]
    assert rerun.params["depth"] == dead.params["depth"]
    assert rerun.user_attrs["retried_from_worker"] == "dead:1"


def test_the_fingerprint_survives_the_trip_to_the_workers(sample_split, tmp_path: Path) -> None:
    before = tune_study.data_fingerprint(sample_split.train, sample_split.valid)
    tune_study.write_data(sample_split.train, sample_split.valid, tmp_path)
    train, valid = tune_study.read_data(tmp_path)
    assert tune_study.data_fingerprint(train, valid) == before
    assert np.array_equal(valid.label, sample_split.valid.label)
    changed = ModelTable(train.raw, train.features.copy(), train.label.copy(), train.application_time, [])
    changed.label[0] = 1 - changed.label[0]
    assert tune_study.data_fingerprint(changed, valid) != before


def test_a_study_is_never_resumed_on_other_data_or_settings(tmp_path: Path) -> None:
    s = tiny(tmp_path, n_trials=3)
    study = tune_study.prepare_study(s, "resumed", "sha256:aaa")
    assert [t.state for t in study.trials] == [TrialState.WAITING] * 3
    assert tune_study.prepare_study(s, "resumed", "sha256:aaa").trials == study.trials  # nothing queued twice
    with pytest.raises(PermanentError, match="sha256:aaa.*sha256:bbb"):
        tune_study.prepare_study(s, "resumed", "sha256:bbb")
    with pytest.raises(PermanentError, match="max_iterations"):
        tune_study.prepare_study(s.model_copy(update={"max_iterations": 99}), "resumed", "sha256:aaa")


def test_a_worker_refuses_data_that_is_not_the_studys(sample_split, tmp_path: Path) -> None:
    s = tiny(tmp_path, n_trials=1)
    tune_study.prepare_study(
        s, "guarded", tune_study.data_fingerprint(sample_split.train, sample_split.valid)
    )
    tune_study.write_data(sample_split.valid, sample_split.train, tmp_path / "swapped")
    with pytest.raises(PermanentError, match="fingerprint"):
        worker_main(s, "guarded", str(tmp_path / "swapped"), None, 0, time.time() + 60)
    with pytest.raises(PermanentError, match="optuna_storage"):
        worker_main(s, "guarded", str(tmp_path / "swapped"), None, 0, time.time() + 60, "postgresql://x/y")


@pytest.mark.slow
def test_local_mode_two_processes_share_one_sqlite_study(sample_split, tmp_path: Path) -> None:
    s = tiny(tmp_path, n_trials=6, tune_workers=2, tune_mode="local")
    with tracking.run(s, "local-pool") as run_id:
        summary = tune(s, sample_split, "local-pool", run_id)
    study = study_of(s, "local-pool")
    finished = [t for t in queued(study) if t.state in tune_study.FINISHED]
    assert len(finished) == 6 and summary["n_complete"] + summary["n_pruned"] == 6
    pids = {t.user_attrs[tune_study.WORKER].rsplit(":", 1)[1] for t in finished}
    assert len(pids) == 2 and str(os.getpid()) not in pids, pids  # two worker processes, not this one
    assert summary["mode"] == "local" and len(summary["workers"]) == 2
    children = tracking.client(s).search_runs(
        [tracking.experiment_id(s)], filter_string=f"tags.mlflow.parentRunId = '{run_id}'"
    )
    assert sorted(c.data.tags["optuna.trial"] for c in children) == sorted(str(t.number) for t in finished)


@pytest.mark.slow
@pytest.mark.faults
def test_a_worker_killed_during_a_trial_loses_only_that_trial(sample_split, tmp_path: Path) -> None:
    """SIGKILL one local worker process while it runs a trial: the heartbeat fails that trial after the grace
    period, Optuna queues it again with its parameters, the other worker re-runs it, and the study still ends
    with the configured count."""
    s = tiny(tmp_path, n_trials=5, tune_workers=2, max_iterations=400, early_stopping_rounds=400, **BEAT)
    victim, outcome = kill_during_a_trial(
        lambda: tune(s, sample_split, "killed", None),
        tune_study.storage_for(s),
        "killed",
        s.tuning.tune_timeout_seconds,
    )
    assert_rerun_elsewhere(victim, outcome, study_of(s, "killed").trials)
    assert sum(t.state in tune_study.FINISHED for t in queued(study_of(s, "killed"))) == 5
    assert outcome["summary"]["n_complete"] + outcome["summary"]["n_pruned"] == 5


@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used with Study.optimize")
def test_surplus_trials_fail_and_are_not_counted(tmp_path: Path) -> None:
    """A trial a worker creates past the queue (two workers popped the last one at once) is failed, not run."""
    from tasks.model.tune import objective_for

    s = tiny(tmp_path, n_trials=1)
    study = tune_study.prepare_study(s, "surplus", "sha256:x")
    study.ask()  # pops the only queued trial, as another worker would
    objective = objective_for(None, None, None, s, None, "w:1")  # never reaches the fit
    study.optimize(objective, n_trials=1, catch=(tune_study.SurplusTrial,))
    assert [t.state for t in study.trials] == [TrialState.RUNNING, TrialState.FAIL]
    assert tune_study.SLOT not in study.trials[1].user_attrs


@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used with Study.optimize")
def test_a_surplus_trial_names_no_worker_in_the_summary(tmp_path: Path) -> None:
    """The summary's workers are those that ran a trial: a surplus trial (failed before it ran) adds none."""
    from tasks.model.tune import objective_for, summarise

    s = tiny(tmp_path, n_trials=1)
    study = tune_study.prepare_study(s, "surplus-summary", "sha256:x")
    trial = study.ask()  # the only queued trial, run by worker w:1
    trial.set_user_attr(tune_study.WORKER, "w:1")
    study.tell(trial, 0.8)
    study.optimize(
        objective_for(None, None, None, s, None, "w:2"), n_trials=1, catch=(tune_study.SurplusTrial,)
    )
    assert [t.state for t in study.trials] == [TrialState.COMPLETE, TrialState.FAIL]
    summary = summarise(s, study, None)
    assert summary["workers"] == ["w:1"] and summary["n_complete"] == 1


@pytest.mark.filterwarnings(HEARTBEAT_WARNING)
def test_a_worker_queues_the_retry_a_stopped_process_left_out(sample_split, tmp_path: Path) -> None:
    """Optuna fails a stale trial and queues its retry in two steps; a process stopped between them leaves the
    slot with a failed trial only. A worker's loop queues that retry, so the study still reaches its count."""
    s = tiny(tmp_path, n_trials=2, **BEAT)
    study = tune_study.prepare_study(s, "half-retried", "sha256:x")
    dead = failed_without_retry(study)
    work(study, objective(sample_split, s), time.time() + 120, s.tuning.tune_heartbeat_seconds)
    assert_count_reached(study, 2, dead)


class PollRuns:
    """A pool of one worker that runs every queued trial (no retry step of its own) each time it is polled."""

    def __init__(self, study: optuna.Study, run) -> None:
        self.study, self.run = study, run

    def alive(self) -> list[bool]:
        while tune_study.counts(self.study)[TrialState.WAITING]:
            self.study.optimize(self.run, n_trials=1, catch=(tune_study.SurplusTrial,))
        return [True]

    def describe(self) -> str:
        return "poll-runs"


@pytest.mark.filterwarnings(HEARTBEAT_WARNING)
def test_the_stage_queues_the_retry_before_it_stops_polling(sample_split, tmp_path: Path) -> None:
    """The stage stops polling once nothing is queued or running: between the failure and the retry it must
    queue that retry itself, else the study ends a trial short."""
    s = tiny(tmp_path, n_trials=2, **BEAT)
    study = tune_study.prepare_study(s, "stage-retried", "sha256:x")
    dead = failed_without_retry(study)
    seen: list[int] = []
    tune_study.wait_for_trials(
        study,
        PollRuns(study, objective(sample_split, s)),
        time.time() + 120,
        lambda _, t: seen.append(t.number),
        0,
    )
    assert_count_reached(study, 2, dead)


def n_retried(study: optuna.Study) -> int:
    from tasks.model.tune import summarise

    return summarise(Settings(), study, None)["n_retried"]


@pytest.mark.filterwarnings(HEARTBEAT_WARNING, "ignore::optuna.exceptions.ExperimentalWarning")
def test_a_retry_queued_twice_runs_once(sample_split, tmp_path: Path) -> None:
    """Two processes may queue one slot's retry at once (the callback in one, the retry step in another): the
    later one fails as surplus when it starts, so the slot has one finished trial and the count stays exact."""
    s = tiny(tmp_path, n_trials=1, **BEAT)
    study = tune_study.prepare_study(s, "twice", "sha256:x")
    dead = failed_without_retry(study)
    for _ in range(2):
        tune_study.RetryCallback(max_retry=s.tuning.tune_trial_retries)(study, copy.deepcopy(dead))
    work(study, objective(sample_split, s), time.time() + 120, s.tuning.tune_heartbeat_seconds)
    assert_count_reached(study, 1, dead)
    assert [t.state for t in study.trials] == [TrialState.FAIL, TrialState.COMPLETE, TrialState.FAIL]
    assert study.trials[2].user_attrs.get(tune_study.SURPLUS) is True
    assert n_retried(study) == 1


def never_beat(study: optuna.Study, slot: int, started: datetime) -> None:
    """A trial of ``slot`` popped at ``started`` by a worker ``dead:1`` that died before its first heartbeat
    (running, no heartbeat row), with the depth it drew."""
    trial = create_trial(
        state=TrialState.RUNNING, params={"depth": 6}, distributions={"depth": IntDistribution(4, 8)},
        user_attrs={tune_study.SLOT: slot, tune_study.WORKER: "dead:1"},
    )  # fmt: skip
    trial.datetime_start = started
    study.add_trial(trial)


@pytest.mark.filterwarnings(HEARTBEAT_WARNING, "ignore::optuna.exceptions.ExperimentalWarning")
def test_a_running_trial_that_never_beat_goes_stale(sample_split, tmp_path: Path) -> None:
    """A worker killed between popping a trial and its first heartbeat leaves a running trial without a
    heartbeat row, which Optuna never finds stale. Once it started longer ago than the grace period it is failed
    and re-run like any stale trial; one started within the grace period is left running."""
    s = tiny(tmp_path, n_trials=2, **BEAT)
    fresh = optuna.create_study(study_name="just-popped", storage=tune_study.storage_for(s))
    never_beat(fresh, 0, datetime.now())
    optuna.storages.fail_stale_trials(fresh)
    assert [t.state for t in fresh.trials] == [TrialState.RUNNING]

    study = optuna.create_study(
        study_name="never-beat", storage=tune_study.storage_for(s), direction="maximize"
    )
    never_beat(study, 0, datetime.now() - timedelta(seconds=5 * s.tuning.tune_grace_seconds))
    study.enqueue_trial({}, user_attrs={tune_study.SLOT: 1})
    optuna.storages.fail_stale_trials(study)  # what every worker does before each trial
    dead = study.trials[0]
    assert dead.state == TrialState.FAIL, dead.state
    work(study, objective(sample_split, s), time.time() + 120, s.tuning.tune_heartbeat_seconds)
    assert_count_reached(study, 2, dead)


def pop_at_once(study: optuna.Study, start: threading.Barrier, popped: list[int]) -> None:
    """A worker's pop (``ask`` takes the first queued trial), once the other popper is ready too."""
    start.wait()
    popped.append(study.ask().number)


@pytest.mark.filterwarnings(HEARTBEAT_WARNING)
def test_two_workers_popping_at_once_never_get_the_same_trial(tmp_path: Path) -> None:
    """Optuna pops a queued trial by reading it then updating it; SQLite ignores the row lock in between, so two
    workers popping at once could both run one trial (twice the work, and a worker failing when it tells the
    finished trial). Two pops at once, each on its own storage handle (threads here: the same race as between
    processes), get two trials, round after round."""
    s = tiny(tmp_path, n_trials=2)
    same = 0
    for round_ in range(20):
        tune_study.prepare_study(s, f"pop-{round_}", "sha256:x")
        start, popped = threading.Barrier(2), []
        pair = [
            threading.Thread(
                target=pop_at_once,
                args=(
                    optuna.load_study(study_name=f"pop-{round_}", storage=tune_study.storage_for(s)),
                    start,
                    popped,
                ),
            )
            for _ in "ab"
        ]
        for thread in pair:
            thread.start()
        for thread in pair:
            thread.join()
        same += len(set(popped)) == 1
    assert same == 0, f"{same} of 20 rounds gave both pops the same trial"
