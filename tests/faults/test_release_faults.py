"""Faults injected into the real parts of the release path; nothing is lost and ``champion`` never moves to an
untested image.

A copy of the session's trained bundle (tests/training.py) is released as the first version, with the local
GitHub answering the first release request with a 500. Then each fault: the registry refuses the push (wrong password; a private
registry stopped before the push), an image whose service answers wrong predictions, a container that exits at
start, the MLflow server killed between the push and the commit point, two deploys at once (two processes on a
real Prefect server), the MLflow server killed during tuning and a promote step against a stopped server.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from tests.faults.release_servers import MlflowServer, mlflow_server, private_registry, when_container_starts
from tests.github_stand_in import GitHubStandIn
from tests.infra.docker_fixtures import DockerServices, docker_services  # noqa: F401
from tests.integration.deploy_helpers import (  # noqa: F401 - fixtures
    REPO,
    assert_nothing_moved,
    build_leftovers,
    champion,
    client,
    deploy_env,
    environment,
    github,
    register_variant,
    registry_tag,
    remote,
    remove_repo_images,
    settings,
)
from tests.training import TrainedRun, register_copy

pytestmark = [pytest.mark.faults, pytest.mark.slow, pytest.mark.timeout(1800)]
docker = pytest.mark.docker
# an MLflow client that gives up at once, so the task retries (not urllib3's) are what recovers
MLFLOW_FAIL_FAST = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"}
# the training stages that talk to the tracking server (a stage failing for it names itself in the run's log)
MLFLOW_STAGES = {"ingest", "validate", "split", "tune", "evaluate", "package", "register", "promote"}


@pytest.fixture(scope="module")
def first_release(deploy_env: dict, github: GitHubStandIn, trained_run: TrainedRun) -> dict:  # noqa: F811
    """The session's trained bundle registered as this module's first promoted version and released; GitHub
    answers the first release request with HTTP 500."""
    from flows.deploy import deploy_flow

    github.fail_posts = [500]
    version = register_copy(settings(), trained_run.bundle_dir)
    deploy = deploy_flow(model_version=version)
    assert deploy["status"] == "released", deploy
    return {"model_version": version, "deploy": deploy}


def _deploy_failing(version: str, step: str) -> tuple[Exception, float]:
    """Deploy ``version``, expect it to fail at ``step``; returns the error and the seconds it took."""
    from flows.deploy import DeployError, deploy_flow

    started = time.monotonic()
    with pytest.raises(DeployError, match=rf"deploy step '{step}' failed") as info:
        deploy_flow(model_version=version)
    assert not info.value.committed
    return info.value, time.monotonic() - started


@docker
def test_github_500_then_201_is_retried_into_one_release(first_release: dict, github: GitHubStandIn) -> None:  # noqa: F811
    tag = f"loan-risk-v{first_release['model_version']}"
    assert [p["body"]["tag_name"] for p in github.posts()] == [tag, tag]  # the 500, then the retry's 201
    assert list(github.releases) == [tag] and first_release["deploy"]["github_release"].endswith(tag)


@docker
def test_registry_refuses_the_password(first_release: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    from tasks.release.image import push_task
    from tasks.settings import get_settings
    from tests.attempts import attempts_of

    before, latest = champion(), registry_tag("latest")
    version = register_variant(first_release["model_version"])
    monkeypatch.setenv("LOANRISK_REGISTRY_PASSWORD", "wrong-password")
    get_settings.cache_clear()
    try:
        with attempts_of(push_task) as tries:
            error, _ = _deploy_failing(version, "push")
        retries = settings().task_retries
    finally:
        monkeypatch.undo()
        get_settings.cache_clear()
    assert "unauthorized" in str(error).lower() or "authentication" in str(error).lower()
    assert retries >= 1 and len(tries) == 1 + retries, tries  # retried as the settings say, then failed
    assert all(t.error is not None for t in tries.calls)
    assert_nothing_moved(before, latest, version)
    assert registry_tag(version) is None and build_leftovers(error.build_id) == []


@docker
@pytest.mark.nightly
def test_registry_stopped_before_the_push(first_release: dict, tmp_path: Path) -> None:
    """A private registry (own port, config and htpasswd) stops while the image is smoke-tested: the push fails,
    nothing moved, nothing of the run is left (the registry, started again, holds no tag of it)."""
    with private_registry(tmp_path / "registry", "fault", "fault-password") as reg:
        with environment({"LOANRISK_IMAGE_REGISTRY": reg.address, "LOANRISK_REGISTRY_USERNAME": "fault",
                          "LOANRISK_REGISTRY_PASSWORD": "fault-password"}):  # fmt: skip
            try:
                before = champion()
                version = register_variant(first_release["model_version"])
                watcher = when_container_starts(client(), f"{remote()}:{version}", reg.stop)
                error, _ = _deploy_failing(version, "push")
                assert watcher.fired and reg.address in str(error)
                reg.start()
                assert_nothing_moved(before, None, version)
                assert registry_tag(version) is None and build_leftovers(error.build_id) == []
            finally:
                remove_repo_images()


SKEWING_MIDDLEWARE = """

# --- injected by tests/faults: the served probabilities are all 0.01 too high ---
def _skew(value):
    if isinstance(value, dict):
        return {k: (min(1.0, v + 0.01) if k == "probability" and isinstance(v, float) else _skew(v))
                for k, v in value.items()}
    if isinstance(value, list):
        return [min(1.0, v + 0.01) if isinstance(v, float) else _skew(v) for v in value]
    return value


def _skewing(app):
    import json

    def wrapped(environ, start_response):
        captured = {}

        def capture(status, headers, exc_info=None):
            captured["status"], captured["headers"] = status, headers
            return lambda data: None

        body = b"".join(app(environ, capture))
        if environ.get("REQUEST_METHOD") == "POST" and body.startswith(b"{"):
            body = json.dumps(_skew(json.loads(body))).encode()
        headers = [(k, v) for k, v in captured["headers"] if k.lower() != "content-length"]
        start_response(captured["status"], headers + [("Content-Length", str(len(body)))])
        return [body]

    return wrapped


_previous_post_worker_init = globals().get("post_worker_init")


def post_worker_init(worker):
    if _previous_post_worker_init:
        _previous_post_worker_init(worker)
    worker.wsgi = _skewing(worker.wsgi)
"""


def _broken_context(monkeypatch: pytest.MonkeyPatch, addition: str) -> None:
    """The next build contexts carry ``addition`` at the end of the service's gunicorn configuration."""
    import tasks.release.build_context as bc

    original = bc.prepare_build_context

    def broken(*args, **kwargs):
        out = original(*args, **kwargs)
        with (out / "serving" / "gunicorn_conf.py").open("a") as fh:
            fh.write(addition)
        return out

    monkeypatch.setattr(bc, "prepare_build_context", broken)


@docker
def test_image_that_fails_the_reference_predictions(
    first_release: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A real image whose HTTP answers are skewed (a WSGI middleware in its gunicorn configuration): the model
    loads and passes its own checks, the smoke test sees the wrong predictions, nothing is released."""
    before, latest = champion(), registry_tag("latest")
    version = register_variant(first_release["model_version"])
    _broken_context(monkeypatch, SKEWING_MIDDLEWARE)
    error, _ = _deploy_failing(version, "smoke-test")
    assert "differs from training" in str(error)
    assert_nothing_moved(before, latest, version)
    assert registry_tag(version) is None and build_leftovers(error.build_id) == []


@docker
def test_container_that_exits_at_start(first_release: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    """The run step sees the container exit and fails at once (well within the health timeout), naming the exit
    status and showing the container's own output; the container is removed."""
    from flows.deploy import deploy_flow
    from tasks.release.image import run_task
    from tests.attempts import attempts_of

    before, latest = champion(), registry_tag("latest")
    version = register_variant(first_release["model_version"])
    _broken_context(monkeypatch, '\nraise SystemExit("deliberately broken for a fault test")\n')
    with attempts_of(run_task) as tries:
        state = deploy_flow(model_version=version, return_state=True)
    assert state.is_failed()
    with pytest.raises(
        Exception, match=r"deploy step 'run' failed: \[run\] container exited with exit status"
    ) as info:
        state.result()
    assert "deliberately broken for a fault test" in str(info.value)  # the container's logs, in the error
    (attempt,) = tries.calls  # the smoke test of a container is never retried
    assert attempt.error is not None and attempt.seconds < settings().health_timeout_seconds / 2, attempt
    assert_nothing_moved(before, latest, version)


@pytest.fixture(scope="module")
def mlflow(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    """One real ``mlflow server`` for the module; a test that kills it starts it again (same port and store)."""
    with mlflow_server(tmp_path_factory.mktemp("mlflow")) as server:
        yield server


@pytest.fixture
def running_mlflow(mlflow: MlflowServer) -> Iterator[MlflowServer]:
    if mlflow.proc is None:
        mlflow.start()
    yield mlflow
    if mlflow.proc is None:
        mlflow.start()


@docker
@pytest.mark.nightly
def test_mlflow_dies_between_the_push_and_the_commit(
    first_release: dict, running_mlflow: MlflowServer, tmp_path: Path
) -> None:
    """The MLflow server (the registry of models) is killed while the image is tested: the push still happens,
    the commit cannot: champion and ``latest`` never moved, the run's local image is gone."""
    from tasks import registry, tracking

    sqlite = settings()
    bundle = registry.download_bundle(sqlite, first_release["model_version"], tmp_path / "bundle")
    env = {"MLFLOW_TRACKING_URI": running_mlflow.uri, "LOANRISK_MODEL_NAME": "loan-risk-commit-fault",
           "LOANRISK_IMAGE_REPOSITORY": f"{sqlite.image_repository}-commit", **MLFLOW_FAIL_FAST}  # fmt: skip
    with environment(env):
        try:
            s = settings()
            version = registry.register_bundle(s, tracking.start_run(s, "fault"), bundle, {})
            registry.set_version_tags(
                s,
                version,
                {"promotion.reasons": "[]", "promotion.dry_run": "false", "promotion.decision": "promoted"},
            )
            watcher = when_container_starts(client(), f"{remote()}:{version}", running_mlflow.kill)
            error, _ = _deploy_failing(version, "commit")
            assert watcher.fired and "MLflow registry" in str(error)
            assert registry_tag(version) is not None  # pushed: the failure came after the push
            running_mlflow.start()
            assert_nothing_moved(None, None, version)
        finally:
            remove_repo_images()


@docker
@pytest.mark.nightly
def test_two_deploys_at_once_are_serialised(first_release: dict, tmp_path: Path) -> None:
    """Two processes deploy two versions at the same moment through one Prefect server: they take turns (their
    lock holds do not overlap), the champion is the one that finished last, and the tags agree with it."""
    from tasks import registry
    from tasks.release.record import read_history
    from tests.integration.prefect_fixtures import prefect_server

    versions = [register_variant(first_release["model_version"]) for _ in range(2)]
    with prefect_server(tmp_path / "prefect") as server:
        procs = [
            subprocess.Popen(
                [sys.executable, "-m", "flows.deploy", "--model-version", v],
                cwd=REPO,
                text=True,
                env=server.client_env(tmp_path / f"client-{v}"),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )  # fmt: skip
            for v in versions
        ]
        outputs = [p.communicate(timeout=1200) for p in procs]
    results = []
    for proc, (out, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, f"{out[-2000:]}\n{err[-4000:]}"
        results.append(json.loads(out.strip().splitlines()[-1]))
    first, last = sorted(results, key=lambda r: r["lock"]["released_at"])
    assert first["lock"]["released_at"] <= last["lock"]["acquired_at"], (first["lock"], last["lock"])
    # the second asked for the lock while the first held it, and waited for it to be released
    asked = datetime.fromisoformat(last["lock"]["acquired_at"]) - timedelta(seconds=last["lock"]["waited_s"])
    assert asked < datetime.fromisoformat(first["lock"]["released_at"]), (first["lock"], last["lock"])
    assert last["lock"]["waited_s"] > 1.0, last["lock"]
    assert champion() == last["model_version"]
    tags = registry.get_version(settings(), last["model_version"]).tags
    assert tags["release.digest"] == last["digest"] == registry_tag("latest")
    assert tags["release.previous_champion"] == first["model_version"]
    assert [e["version"] for e in read_history(settings())[-2:]] == [
        first["model_version"],
        last["model_version"],
    ]
    for r in results:
        assert registry_tag(r["model_version"]) == r["digest"]


# --- MLflow server faults (no Docker) -----------------------------------------------------------------------


def _complete(settings_obj, version: str, dst: Path) -> bool:
    """Whether a version's bundle downloads and loads (a complete registration)."""
    from serving.bundle import load_bundle
    from tasks import registry

    try:
        load_bundle(registry.download_bundle(settings_obj, version, dst))
    except Exception:  # noqa: BLE001 - anything short of a loaded bundle is incomplete
        return False
    return True


@pytest.mark.nightly
def test_mlflow_killed_during_tuning(running_mlflow: MlflowServer, tmp_path: Path) -> None:
    """A training run (its own process) against a real ``mlflow server``, killed (process group and huey
    children) while trials run, restarted on the same port and store. The tune task is retried and the run
    completes, or the run fails cleanly; either way ``candidate`` points only at a complete version."""
    mlflow = running_mlflow
    from mlflow import MlflowClient

    from tasks import registry
    from tasks.settings import Settings
    from tests.integration.deploy_helpers import LENIENT_GATE

    env = {**os.environ, **LENIENT_GATE, **MLFLOW_FAIL_FAST, "MLFLOW_TRACKING_URI": mlflow.uri,
           "LOANRISK_STATE_DIR": str(tmp_path / "state"), "LOANRISK_TASK_RETRIES": "3",
           "LOANRISK_TASK_RETRY_DELAY_SECONDS": "10", "PREFECT_HOME": str(tmp_path / "prefect"),
           "LOANRISK_MODEL_NAME": "loan-risk-tuning-fault"}  # fmt: skip
    log = tmp_path / "training.log"
    with log.open("w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "flows.training", "--scale", "0.02", "--n-trials", "8", "--no-deploy"],
            cwd=REPO, env=env, text=True, stdout=subprocess.PIPE, stderr=err,
        )  # fmt: skip
    client = MlflowClient(tracking_uri=mlflow.uri)
    deadline = time.monotonic() + 600
    while proc.poll() is None and time.monotonic() < deadline:
        experiments = client.search_experiments()
        ids = [e.experiment_id for e in experiments]
        if ids and client.search_runs(ids, "tags.`optuna.trial` = '0'"):
            break
        time.sleep(0.3)
    assert proc.poll() is None, "the training run ended before its first trial was seen"
    killed = mlflow.kill()
    time.sleep(2)
    mlflow.start()
    out, _ = proc.communicate(timeout=900)
    logged = log.read_text()
    result = json.loads(out.strip().splitlines()[-1])
    s = Settings(
        state_dir=tmp_path / "state", mlflow_tracking_uri=mlflow.uri, model_name="loan-risk-tuning-fault"
    )
    with environment({"MLFLOW_TRACKING_URI": mlflow.uri}):
        candidate = registry.version_by_alias(s, "candidate")
        assert "Retry 1/3" in logged, logged[-3000:]  # the task that lost the server was retried
        if proc.returncode == 0:
            assert (
                result["promoted"]
                and candidate is not None
                and str(candidate.version) == result["model_version"]
            )
        else:
            # a clean failure: the server's outage is the cause, a named stage failed after its retries, the
            # training run is recorded FAILED, and nothing became the candidate
            assert proc.returncode == 1 and set(result) == {"error"}, result
            assert f"127.0.0.1:{mlflow.port}" in result["error"], result["error"]
            failed = re.findall(r"Task run '([a-z-]+)-[0-9a-f]+' - Finished in state Failed", logged)
            assert failed and set(failed) <= MLFLOW_STAGES, (failed, logged[-3000:])
            runs = MlflowClient(tracking_uri=mlflow.uri).search_runs(
                [
                    MlflowClient(tracking_uri=mlflow.uri)
                    .get_experiment_by_name(s.mlflow_experiment)
                    .experiment_id
                ],
                "attributes.run_name LIKE 'training-%'",
            )
            assert [r.info.status for r in runs] == ["FAILED"], [r.info.status for r in runs]
            assert candidate is None
        if candidate is not None:
            assert _complete(s, str(candidate.version), tmp_path / "candidate")
    assert len(killed) >= 2  # the server and its web workers all went down


def test_promote_against_a_stopped_mlflow_server(running_mlflow: MlflowServer, tmp_path: Path) -> None:
    """The promote step cannot reach the registry: it is retried, then the run fails; nothing is promoted."""
    mlflow = running_mlflow
    import numpy as np
    from prefect import flow

    from tasks import registry, tracking
    from tasks.promote import promote_task
    from tasks.settings import Settings
    from tests.attempts import attempts_of
    from tests.test_promote import GOOD, _minimal_bundle

    s = Settings(state_dir=tmp_path / "state", mlflow_tracking_uri=mlflow.uri, task_retry_delay_seconds=0,
                 model_name="loan-risk-promote-fault")  # fmt: skip
    assert registry.version_by_alias(s, "champion") is None  # no such model: RESOURCE_DOES_NOT_EXIST
    run = tracking.start_run(s, "fault")
    champ = registry.register_bundle(s, run, _minimal_bundle(tmp_path, "one"), {})
    new = registry.register_bundle(s, run, _minimal_bundle(tmp_path, "two"), {})
    assert registry.version_by_alias(s, "champion") is None  # no such alias: INVALID_PARAMETER_VALUE
    registry.set_alias(s, "champion", champ)
    mlflow.kill()

    @flow(name="promote-against-a-stopped-mlflow")
    def gate() -> object:
        test = type("Split", (), {"records": [{"apr": 590}], "label": np.array([1])})()
        return promote_task(s.model_copy(update={"task_retries": 2}), new, GOOD, test, False)

    with environment(MLFLOW_FAIL_FAST), attempts_of(promote_task) as tries:  # fail fast only at the gate
        state = gate(return_state=True)
    assert state.is_failed() and len(tries) == 3  # the first try and two retries
    assert all("MLflow registry at http://127.0.0.1" in str(t.error) for t in tries.calls), tries
    with pytest.raises(Exception, match="MLflow registry at http://127.0.0.1"):
        state.result()
    mlflow.start()
    assert registry.version_by_alias(s, "candidate") is None
    assert registry.get_version(s, new).tags.get("promotion.decision") is None
