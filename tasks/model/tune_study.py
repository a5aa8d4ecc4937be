"""The study tuning workers share (RDB storage, exactly ``n_trials`` queued trials, each a ``slot``; a dead
worker's trial goes stale and is queued again), resumed only on the same data fingerprint and fit settings; and
the workers: local processes or tune-worker flow runs, the slices passed as Parquet and checked by each."""

from __future__ import annotations

import copy
import hashlib
import multiprocessing
import os
import socket
import time
import warnings
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pandas as pd
from optuna.storages._rdb import models
from optuna.storages._rdb.storage import _create_scoped_session
from optuna.trial import FrozenTrial, TrialState

from tasks.common import run_logger
from tasks.errors import PermanentError
from tasks.model.features import ModelTable
from tasks.settings import Settings, TuningSettings

try:  # Optuna >= 4.9 renamed the callback; the old name is a deprecated alias
    from optuna.storages import RetryHeartbeatStaleTrialCallback as RetryCallback
except ImportError:  # pragma: no cover - older Optuna
    from optuna.storages import RetryFailedTrialCallback as RetryCallback

SLOT, WORKER, FINGERPRINT, FIT = "slot", "worker_id", "data_fingerprint", "fit_settings"
ERROR, SURPLUS = "error", "surplus"  # trial user attributes: the objective's own error; a surplus trial
FIT_KEYS = ("max_iterations", "early_stopping_rounds", "seed", "max_ctr_complexity")
UNFINISHED = (TrialState.WAITING, TrialState.RUNNING)
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


class SurplusTrial(PermanentError):
    """A trial created past the queue, or a slot's retry queued twice: failed, never counted."""


class HeartbeatStorage(optuna.storages.RDBStorage):
    """Optuna's RDB storage with two fixes for shared trials, through its ORM (Optuna has no API for either).
    - Stale trials include a running one with no heartbeat row started before the grace period (its worker died
      before the first beat); start times are worker clocks, so pool workers need clocks within the grace period.
    - A pop (queued to running) is one conditional UPDATE, so two workers popping at once cannot both run it."""

    def set_trial_state_values(
        self, trial_id: int, state: TrialState, values: Sequence[float] | None = None
    ) -> bool:
        if state != TrialState.RUNNING or values is not None:
            return super().set_trial_state_values(trial_id, state, values)
        trial = models.TrialModel
        with _create_scoped_session(self.scoped_session) as session:
            popped = (
                session.query(trial)
                .filter(trial.trial_id == trial_id, trial.state == TrialState.WAITING)
                .update({trial.state: TrialState.RUNNING}, synchronize_session=False)
            )
            if popped:  # this session holds the row (the database's write lock on SQLite) until it commits
                session.get(trial, trial_id).datetime_start = datetime.now()
        if not popped:  # another worker's: running (False, as Optuna answers) or finished (Optuna's error)
            self.check_trial_is_updatable(trial_id, self.get_trial(trial_id).state)
        return bool(popped)

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        stale = super()._get_stale_trial_ids(study_id)
        started_before = datetime.now() - timedelta(seconds=self.grace_period or 2 * self.heartbeat_interval)
        trial = models.TrialModel
        with _create_scoped_session(self.scoped_session) as session:
            running = session.query(trial).filter(
                trial.study_id == study_id, trial.state == TrialState.RUNNING, ~trial.heartbeats.any()
            )
            never_beat = [
                t.trial_id for t in running if t.datetime_start and t.datetime_start < started_before
            ]
        return stale + never_beat


def storage_for(settings: Settings) -> HeartbeatStorage:
    """The study storage with heartbeat and stale-trial retry (on SQLite, workers wait up to 60 s for the lock)."""
    url = settings.study_storage
    engine_kwargs: dict[str, Any] = {"pool_pre_ping": True}
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        engine_kwargs = {"connect_args": {"timeout": 60}}
    with warnings.catch_warnings(action="ignore", category=optuna.exceptions.ExperimentalWarning):
        return HeartbeatStorage(
            url,
            engine_kwargs=engine_kwargs,
            heartbeat_interval=settings.tuning.tune_heartbeat_seconds,
            grace_period=settings.tuning.tune_grace_seconds,
            heartbeat_stale_trial_callback=RetryCallback(max_retry=settings.tuning.tune_trial_retries),
        )


def redacted(url: str) -> str:
    """A storage URL without its password."""
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def sampler_and_pruner(seed: int, n_trials: int) -> dict[str, Any]:
    """Seeded TPE (a seed per worker; the constant liar keeps workers off each other's trials), median pruner."""
    return {
        "sampler": optuna.samplers.TPESampler(
            seed=seed, n_startup_trials=min(5, n_trials), constant_liar=True
        ),
        "pruner": optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=100),
    }


def prepare_study(settings: Settings, study_name: str, fingerprint: str) -> optuna.Study:
    """Create (or resume, after checking data and fit settings) the study and queue its missing trials."""
    study = optuna.create_study(
        study_name=study_name,
        storage=storage_for(settings),
        direction="maximize",
        load_if_exists=True,
        **sampler_and_pruner(settings.tuning.seed, settings.tuning.n_trials),
    )
    attrs, fit = study.user_attrs, {key: settings.value(key) for key in FIT_KEYS}  # what trials must share
    if FINGERPRINT in attrs:
        if attrs[FINGERPRINT] != fingerprint:
            raise PermanentError(
                f"tuning: study {study_name!r} holds trials on data {attrs[FINGERPRINT]}, this run's data is "
                f"{fingerprint}; a study is never shared across different data (unset optuna_study_name)"
            )
        if attrs.get(FIT) != fit:
            raise PermanentError(
                f"tuning: study {study_name!r} was tuned with {attrs.get(FIT)}, this run has {fit}; its trials "
                "are not comparable (unset optuna_study_name or restore those settings)"
            )
    elif study.get_trials(deepcopy=False):
        raise PermanentError(
            f"tuning: study {study_name!r} has trials but no data fingerprint (made elsewhere); not resumed"
        )
    else:
        study.set_user_attr(FINGERPRINT, fingerprint)
        study.set_user_attr(FIT, fit)
    reconcile(study)  # a resumed study's slot left without its retry gets it, and is held
    trials = study.get_trials(deepcopy=False)
    held = len({t.user_attrs[SLOT] for t in trials if SLOT in t.user_attrs and t.state != TrialState.FAIL})
    for slot in range(len(trials), len(trials) + settings.tuning.n_trials - held):
        study.enqueue_trial({}, user_attrs={SLOT: slot})
    return study


def load_study(
    settings: Settings, study_name: str, worker: int, expected_storage: str | None
) -> optuna.Study:
    """A worker's handle on the study the stage prepared (its storage must be the stage's)."""
    mine = redacted(settings.study_storage)
    if expected_storage is not None and expected_storage != mine:
        raise PermanentError(
            f"tune worker: its optuna_storage {mine} is not the stage's {expected_storage}; point both at one"
        )
    try:
        return optuna.load_study(
            study_name=study_name,
            storage=storage_for(settings),
            **sampler_and_pruner(settings.tuning.seed + worker, settings.tuning.n_trials),
        )
    except KeyError as exc:
        raise PermanentError(f"tune worker: no study {study_name!r} in {mine}") from exc


def reconcile(study: optuna.Study) -> None:
    """Queue the retry of every slot whose trials all stopped (a process stopped between Optuna failing a stale
    trial and queuing its retry leaves one); a retry queued twice fails as surplus (:func:`surplus_reason`)."""
    # the study's storage is private in Optuna; optuna.storages.fail_stale_trials reads it the same way
    retry = getattr(study._storage, "get_heartbeat_stale_trial_callback", lambda: None)()
    if retry is None:
        return
    slots: dict[Any, list[FrozenTrial]] = defaultdict(list)
    for trial in study.get_trials(deepcopy=False):  # by number, so a slot's last trial is its latest
        if SLOT in trial.user_attrs and SURPLUS not in trial.user_attrs:
            slots[trial.user_attrs[SLOT]].append(trial)
    for trials in slots.values():  # every trial failed, the last with no error of its own: its worker stopped
        if all(t.state == TrialState.FAIL for t in trials) and ERROR not in trials[-1].user_attrs:
            with warnings.catch_warnings(action="ignore", category=optuna.exceptions.ExperimentalWarning):
                retry(study, copy.deepcopy(trials[-1]))  # the callback edits the trial's retry history


def surplus_reason(trial: optuna.Trial) -> str | None:
    """Why a trial that just started must not run (not queued, or its slot held by an earlier trial), else None."""
    slot = trial.user_attrs.get(SLOT)
    if slot is None:
        return f"trial #{trial.number} was not queued: the study has its trials"
    trials = trial.study.get_trials(deepcopy=False)
    held = [t.number for t in trials if t.user_attrs.get(SLOT) == slot and t.state != TrialState.FAIL]
    if held and held[0] < trial.number:
        return f"trial #{trial.number} re-runs slot {slot}, held by trial #{held[0]} (queued twice)"
    return None


def counts(study: optuna.Study) -> Counter[TrialState]:
    """How many trials of the study are in each state."""
    return Counter(t.state for t in study.get_trials(deepcopy=False))


def retried_from(trial: FrozenTrial) -> int | None:
    """The number of the trial this one re-runs, else None."""
    with warnings.catch_warnings(action="ignore", category=optuna.exceptions.ExperimentalWarning):
        return RetryCallback.retried_trial_number(trial)


DATA_FILES = ("train.parquet", "valid.parquet")
LABEL_COLUMN = "__label__"


def worker_id(tuning: TuningSettings) -> str:
    """``<name>:<pid>``: the worker name (``tune_worker_name``, else the host name) and the process."""
    return f"{tuning.tune_worker_name or socket.gethostname()}:{os.getpid()}"


def data_fingerprint(train: ModelTable, valid: ModelTable) -> str:
    """sha256 over the model rows and labels by value, so a Parquet round trip gives the same digest."""
    digest = hashlib.sha256()
    for table in (train, valid):
        digest.update(f"rows={len(table)};".encode())
        for name in table.features.columns:
            column = table.features[name]
            digest.update(f"{name}:".encode())
            if pd.api.types.is_numeric_dtype(column):
                values = column.to_numpy(dtype="float64", na_value=np.nan)
                digest.update(np.where(np.isnan(values), np.nan, values).tobytes())
            else:
                text = ["\x00" if pd.isna(v) else str(v) for v in column.tolist()]
                digest.update("\x1f".join(text).encode())
        digest.update(np.asarray(table.label, dtype=np.int8).tobytes())
    return "sha256:" + digest.hexdigest()


def write_data(train: ModelTable, valid: ModelTable, folder: Path) -> list[Path]:
    """The slices as Parquet files (model rows and label) for the workers."""
    folder.mkdir(parents=True, exist_ok=True)
    for table, name in zip((train, valid), DATA_FILES, strict=True):
        frame = table.features.assign(**{LABEL_COLUMN: np.asarray(table.label, dtype=np.int8)})
        frame.to_parquet(folder / name, index=False)
    return [folder / name for name in DATA_FILES]


def read_data(folder: Path) -> tuple[ModelTable, ModelTable]:
    """The slices :func:`write_data` wrote, as model tables (rows and labels only)."""
    if missing := [folder / name for name in DATA_FILES if not (folder / name).exists()]:
        raise PermanentError(f"tune worker: the tuning data {missing[0]} is missing")
    frames = [pd.read_parquet(folder / name) for name in DATA_FILES]
    empty, no_times = pd.DataFrame(index=range(0)), np.array([], "datetime64[ns]")
    train, valid = (ModelTable(empty, f, f.pop(LABEL_COLUMN).to_numpy(), no_times, []) for f in frames)
    return train, valid


class LocalWorkers:
    """Worker processes running ``target``, forked from a fork server that preloaded its module (no threads of
    this process are copied; slow imports are paid once)."""

    def __init__(self, target: Callable[..., Any], args_for: Callable[[int], Sequence[Any]], n: int) -> None:
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload([target.__module__])
        self.processes = [
            context.Process(target=target, args=tuple(args_for(i)), name=f"tune-worker-{i}") for i in range(n)
        ]
        for process in self.processes:
            process.start()

    def alive(self) -> list[bool]:
        return [p.is_alive() for p in self.processes]

    def describe(self) -> str:
        return ", ".join(f"{p.name} pid {p.pid} exit {p.exitcode}" for p in self.processes)

    def stop(self) -> None:
        for process in self.processes:
            process.join(timeout=5)
            if process.is_alive():
                process.kill()
                process.join()


class PoolWorkers:
    """Flow runs of the tune-worker deployment, started without waiting (the stage polls the study instead)."""

    def __init__(self, deployment: str, parameters: Sequence[dict[str, Any]]) -> None:
        from prefect.deployments import run_deployment

        self.ids = [run_deployment(deployment, parameters=p, timeout=0).id for p in parameters]

    def states(self) -> list[Any]:
        from prefect import get_client

        with get_client(sync_client=True) as client:
            return [client.read_flow_run(i).state for i in self.ids]

    def alive(self) -> list[bool]:
        return [state is None or not state.is_final() for state in self.states()]

    def describe(self) -> str:
        return ", ".join(f"{i} {s.name if s else '?'}" for i, s in zip(self.ids, self.states(), strict=True))

    def stop(self) -> None:
        """Cancel the runs not finished."""
        from prefect import get_client
        from prefect.states import Cancelled

        with get_client(sync_client=True) as client:
            for flow_run_id, alive in zip(self.ids, self.alive(), strict=True):
                if alive:
                    client.set_flow_run_state(flow_run_id, Cancelled(message="tuning ended"), force=True)


def wait_for_trials(
    study: optuna.Study,
    workers: LocalWorkers | PoolWorkers,
    deadline: float,
    on_finished: Callable[[optuna.Study, FrozenTrial], None],
    poll_seconds: float = 1.0,
) -> None:
    """Poll the study until no trial is queued or running, every worker has ended, or the budget is spent with
    nothing running; ``on_finished`` sees each queued trial that ends. Each poll first runs :func:`reconcile`."""
    seen: set[int] = set()
    log = run_logger()
    while True:
        reconcile(study)
        trials = study.get_trials(deepcopy=False)
        attrs_ok = lambda t: SLOT in t.user_attrs and SURPLUS not in t.user_attrs  # noqa: E731
        ended = [t for t in trials if t.state.is_finished() and t.number not in seen and attrs_ok(t)]
        for trial in sorted(ended, key=lambda t: t.datetime_complete or t.datetime_start):
            seen.add(trial.number)
            on_finished(study, trial)
        unfinished = [t for t in trials if t.state in UNFINISHED]
        if not unfinished:
            return
        if not any(workers.alive()):
            message = "tuning: every worker ended with %d trials unfinished: %s"
            return log.warning(message, len(unfinished), workers.describe())
        if time.time() > deadline and not any(t.state == TrialState.RUNNING for t in unfinished):
            return log.warning("tuning: budget spent with %d trials queued", len(unfinished))
        time.sleep(poll_seconds)
