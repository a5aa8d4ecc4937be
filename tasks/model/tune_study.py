"""The tuning study shared by workers: one Optuna study in the RDB storage, exactly ``n_trials`` trials.

- The study is opened on an :class:`~optuna.storages.RDBStorage` with Optuna's heartbeat: a trial whose worker
  died stops beating (or never beat: :class:`HeartbeatStorage`), another worker fails it once the grace period
  has passed, and Optuna's retry callback enqueues it again with the same parameters (``retried_trial_number``
  names the original).
- The stage enqueues exactly ``n_trials`` empty trials, each with a ``slot`` user attribute; workers only pop
  queued trials, so the study ends with the configured count whatever the number of workers (a trial a worker
  creates past the queue, when two pop the last one at once, fails at once as surplus and is not counted).
  A retry keeps its slot; :func:`reconcile` queues one that a stopped process left out, and a slot's retry
  queued twice runs once (:func:`surplus_reason`).
- The study's user attributes hold the data fingerprint and the fit settings the trials use; a study is resumed
  (``optuna_study_name``) only on the same data and settings.
"""

from __future__ import annotations

import copy
import warnings
from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import optuna
from optuna.storages._rdb import models
from optuna.storages._rdb.storage import _create_scoped_session
from optuna.trial import FrozenTrial, TrialState

from tasks.common import PermanentError
from tasks.settings import Settings

try:  # Optuna >= 4.9 renamed the callback; the old name is a deprecated alias
    from optuna.storages import RetryHeartbeatStaleTrialCallback as RetryCallback
except ImportError:  # pragma: no cover - older Optuna
    from optuna.storages import RetryFailedTrialCallback as RetryCallback

SLOT, WORKER, FINGERPRINT, FIT = "slot", "worker_id", "data_fingerprint", "fit_settings"
ERROR, SURPLUS = "error", "surplus"  # trial user attributes: the objective's own error; a surplus trial
FIT_KEYS = ("max_iterations", "early_stopping_rounds", "seed", "max_ctr_complexity")
UNFINISHED = (TrialState.WAITING, TrialState.RUNNING)
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


class SurplusTrial(Exception):
    """A trial created past the queue (two workers popped its last trial at once), or a slot's retry queued
    twice: failed, never counted."""


class HeartbeatStorage(optuna.storages.RDBStorage):
    """Optuna's RDB storage with two fixes for trials shared by workers.

    - Its stale trials (the ones ``fail_stale_trials`` fails, then hands to the retry callback) also include a
      running trial with no heartbeat row that started longer ago than the grace period: its worker died between
      popping it and the first beat, and Optuna, which only compares heartbeat rows, would leave it running for
      ever. The start time is the clock of the worker that popped the trial, compared with this machine's
      (Optuna's heartbeat uses the database's): pool workers need clocks within the grace period.
    - A pop (queued to running) is one conditional UPDATE: Optuna reads the trial then updates it, and SQLite
      ignores the row lock in between, so two workers popping at once could both run one trial.

    Optuna has no API for either (a trial's heartbeat row, a compare-and-set of its state), so both go through
    its ORM models and sessions, as its own methods do."""

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
    """The study storage with Optuna's heartbeat and stale-trial retry (any SQLAlchemy URL; SQLite by default,
    where several worker processes wait up to 60 s for the file's write lock instead of failing)."""
    url = settings.study_storage
    engine_kwargs: dict[str, Any] = {"pool_pre_ping": True}
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        engine_kwargs = {"connect_args": {"timeout": 60}}
    with warnings.catch_warnings(action="ignore", category=optuna.exceptions.ExperimentalWarning):
        return HeartbeatStorage(
            url,
            engine_kwargs=engine_kwargs,
            heartbeat_interval=settings.tune_heartbeat_seconds,
            grace_period=settings.tune_grace_seconds,
            heartbeat_stale_trial_callback=RetryCallback(max_retry=settings.tune_trial_retries),
        )


def redacted(url: str) -> str:
    """A storage URL without its password (what logs, errors and flow-run parameters may show)."""
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def sampler_and_pruner(settings: Settings, worker: int, n_trials: int) -> dict[str, Any]:
    """Seeded TPE (each worker its own seed, so parallel workers do not draw the same start-up trials; the
    constant liar keeps them off each other's running trials) and the median pruner."""
    return {
        "sampler": optuna.samplers.TPESampler(
            seed=settings.seed + worker, n_startup_trials=min(5, n_trials), constant_liar=True
        ),
        "pruner": optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=100),
    }


def fit_settings(settings: Settings) -> dict[str, Any]:
    """The settings every trial of a study must share to be comparable."""
    return {key: getattr(settings, key) for key in FIT_KEYS}


def prepare_study(settings: Settings, study_name: str, fingerprint: str) -> optuna.Study:
    """Create the study (or resume it, after checking its data and fit settings) and queue the trials it still
    lacks to reach ``n_trials``."""
    study = optuna.create_study(
        study_name=study_name,
        storage=storage_for(settings),
        direction="maximize",
        load_if_exists=True,
        **sampler_and_pruner(settings, 0, settings.n_trials),
    )
    attrs, fit = study.user_attrs, fit_settings(settings)
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
    for slot in range(len(trials), len(trials) + settings.n_trials - held):
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
        study = optuna.load_study(
            study_name=study_name,
            storage=storage_for(settings),
            **sampler_and_pruner(settings, worker, settings.n_trials),
        )
    except KeyError as exc:
        raise PermanentError(f"tune worker: no study {study_name!r} in {mine}") from exc
    return study


def stopped(trial: FrozenTrial) -> bool:
    """A queued trial failed without an error of its own: its worker stopped (failed stale by the heartbeat, or
    interrupted), so it is worth re-running; an objective's error (``error``) or a surplus trial is not."""
    attrs = trial.user_attrs
    return trial.state == TrialState.FAIL and SLOT in attrs and ERROR not in attrs and SURPLUS not in attrs


def reconcile(study: optuna.Study) -> None:
    """Queue the retry of every slot whose trials all stopped, as the study's retry callback would have.

    The invariant: each slot ends with one finished trial, so the study ends with ``n_trials``. Optuna fails a
    stale trial and its callback queues the retry in a second step; a process stopped between them leaves a slot
    with failed trials only, which this step (idempotent: it never touches a slot with a queued, running or
    finished trial) hands to the same callback (same params, user attributes and retry history, within
    ``tune_trial_retries``). It runs beside that callback in other processes, so a slot's retry may be queued
    twice; the later one fails as surplus when it starts (:func:`surplus_reason`) and the count stays exact."""
    # the study's storage is private in Optuna; optuna.storages.fail_stale_trials reads it the same way
    callback_of = getattr(study._storage, "get_heartbeat_stale_trial_callback", None)  # heartbeat storages
    retry = callback_of() if callback_of is not None else None
    if retry is None:
        return
    slots: dict[Any, list[FrozenTrial]] = defaultdict(list)
    for trial in study.get_trials(deepcopy=False):  # by number, so a slot's last trial is its latest
        if SLOT in trial.user_attrs and SURPLUS not in trial.user_attrs:
            slots[trial.user_attrs[SLOT]].append(trial)
    for trials in slots.values():
        if all(t.state == TrialState.FAIL for t in trials) and stopped(trials[-1]):
            with warnings.catch_warnings(action="ignore", category=optuna.exceptions.ExperimentalWarning):
                retry(study, copy.deepcopy(trials[-1]))  # the callback edits the trial's retry history


def surplus_reason(trial: optuna.Trial) -> str | None:
    """Why a trial that just started must not run (it was not queued, or a trial of its slot numbered before it
    is queued, running or finished: the slot's retry was queued twice), else None."""
    slot = trial.user_attrs.get(SLOT)
    if slot is None:
        return f"trial #{trial.number} was not queued: the study has its trials"
    for other in trial.study.get_trials(deepcopy=False):
        if (
            other.number < trial.number
            and other.user_attrs.get(SLOT) == slot
            and other.state != TrialState.FAIL
        ):
            return f"trial #{trial.number} re-runs slot {slot}, held by trial #{other.number} (queued twice)"
    return None


def counts(study: optuna.Study) -> dict[TrialState, int]:
    """How many trials of the study are in each state."""
    out = dict.fromkeys(TrialState, 0)
    for trial in study.get_trials(deepcopy=False):
        out[trial.state] += 1
    return out


def retried_from(trial: FrozenTrial) -> int | None:
    """The number of the trial this one re-runs (a worker died during it), else None."""
    with warnings.catch_warnings(action="ignore", category=optuna.exceptions.ExperimentalWarning):
        return RetryCallback.retried_trial_number(trial)
