"""Tuning across workers: local processes (``tune_mode = "local"``) or tune-worker flow runs (``"pool"``); the
slices travel as Parquet (a folder, or for pool workers an MLflow artifact), checked against the study's
fingerprint by every worker."""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import socket
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pandas as pd
from optuna.trial import FrozenTrial, TrialState

from tasks.common import run_logger
from tasks.errors import PermanentError
from tasks.model.features import ModelTable
from tasks.model.tune_study import SLOT, SURPLUS, UNFINISHED, reconcile
from tasks.settings import Settings

DATA_FILES = ("train.parquet", "valid.parquet")
LABEL_COLUMN = "__label__"


def worker_id(settings: Settings) -> str:
    """``<name>:<pid>``: the worker name (``tune_worker_name``, else the host name) and the process."""
    return f"{settings.tuning.tune_worker_name or socket.gethostname()}:{os.getpid()}"


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
    tables = []
    for path in (folder / name for name in DATA_FILES):
        if not path.exists():
            raise PermanentError(f"tune worker: the tuning data {path} is missing")
        frame = pd.read_parquet(path)
        label = frame.pop(LABEL_COLUMN).to_numpy()
        tables.append(
            ModelTable(pd.DataFrame(index=range(0)), frame, label, np.array([], "datetime64[ns]"), [])
        )
    return tables[0], tables[1]


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

        self.deployment = deployment
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
