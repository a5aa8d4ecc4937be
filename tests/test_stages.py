"""One way to declare a stage (issue 9, item 2): settings first, no caching, retries from the settings at call
time, a permanent error never retried, and no flow that re-options its tasks."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re
from pathlib import Path

import pytest
from prefect import Task, flow
from prefect.cache_policies import NO_CACHE

import tasks
from tasks.common import Stage, retry_unless_permanent, stage
from tasks.errors import PermanentError, TransientError
from tasks.settings import Settings

ROOT = Path(__file__).resolve().parent.parent


def stage_modules() -> list[object]:
    """Every module of ``tasks/``, the stage packages' modules included."""
    found = pkgutil.walk_packages(tasks.__path__, "tasks.")
    names = [m.name for m in found if not m.ispkg and not m.name.endswith(".__main__")]
    return [importlib.import_module(name) for name in names]


def declared() -> dict[str, object]:
    """Every task-like object the modules of ``tasks/`` define, by module and name."""
    found = {}
    for module in stage_modules():
        for name, value in vars(module).items():
            if isinstance(value, Stage | Task):
                found[f"{module.__name__}.{name}"] = value
    return found


def test_every_stage_task_is_declared_one_way() -> None:
    found = declared()
    stages = {k: v for k, v in found.items() if isinstance(v, Stage)}
    assert {k for k, v in found.items() if isinstance(v, Task)} == set(), (
        "a bare Prefect task: declare it with stage()"
    )
    expected = {
        "ingest",
        "validate",
        "features",
        "split",
        "tune",
        "tune-worker",
        "train",
        "evaluate",
        "package",
        "register",
        "promote",
        "export-bundle",
        "build-image",
        "run-image",
        "smoke-test",
        "clean-up",
        "push-image",
        "plan-release",
        "plan-rollback",
        "commit-champion",
        "converge-champion",
        "ledger-head",
        "version-facts",
        "version-tag",
        "tag-latest",
        "release-notes",
        "github-release",
        "release-history",
        "fetch-model",
        "score",
        "reference",
        "log-window",
        "drift",
        "drift-report",
        "drift-event",
    }
    assert {s.name for s in stages.values()} == expected
    for name, s in stages.items():
        assert s.task.cache_policy is NO_CACHE, name
        assert s.task.retry_condition_fn is retry_unless_permanent, name
        assert next(iter(inspect.signature(s.fn).parameters)) == "settings", name
        assert s.task.retries == 0, f"{name}: retries come from the settings at call time, not the decorator"


def test_the_first_parameter_must_be_the_settings() -> None:
    with pytest.raises(TypeError, match="must be 'settings'"):

        @stage("wrong")
        def wrong(table: object, settings: Settings) -> None: ...

    @stage("right")
    def right(settings: Settings) -> None: ...

    with pytest.raises(TypeError, match="settings are the first argument"):
        right("not settings")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("retries", "cap", "failures", "runs", "outcome"),
    [(2, None, 2, 3, "ok"), (0, None, 1, 1, "failed"), (3, 1, 1, 2, "ok"), (3, 1, 2, 2, "failed")],
)
def test_retries_come_from_the_settings_at_call_time(
    tmp_path: Path, retries: int, cap: int | None, failures: int, runs: int, outcome: str
) -> None:
    calls: list[int] = []

    @stage("flaky", max_retries=cap)
    def flaky(settings: Settings) -> str:
        calls.append(1)
        if len(calls) <= failures:
            raise TransientError("the server did not answer")
        return "ok"

    s = Settings(state_dir=tmp_path, task_retries=retries, task_retry_delay_seconds=0)

    @flow(name="stage-retries")
    def run() -> str:
        return flaky(s)

    state = run(return_state=True)
    assert len(calls) == runs
    assert ("ok" if state.is_completed() else "failed") == outcome


@pytest.mark.parametrize("error", [PermanentError("bad data"), ValueError("bad value"), KeyError("column")])
def test_a_permanent_error_is_never_retried(tmp_path: Path, error: Exception) -> None:
    calls: list[int] = []

    @stage("broken")
    def broken(settings: Settings) -> None:
        calls.append(1)
        raise error

    s = Settings(state_dir=tmp_path, task_retries=3, task_retry_delay_seconds=0)

    @flow(name="stage-permanent")
    def run() -> None:
        broken(s)

    assert run(return_state=True).is_failed() and len(calls) == 1


def test_flows_never_re_option_a_task_and_the_run_id_has_one_name() -> None:
    code = {p: p.read_text() for d in ("flows", "tasks") for p in (ROOT / d).rglob("*.py")}
    assert [str(p) for p, text in code.items() if "with_options" in text and p.name != "common.py"] == []
    assert [str(p) for p, text in code.items() if re.search(r"\b(mlflow_run_id|parent_run)\b", text)] == []
