"""Faults injected into the real parts of the release path; nothing is lost and ``champion`` never moves to an
untested image.

A copy of the session's trained bundle (tests/training.py) is released as the first version, with the local
GitHub answering the first release request with a 500. Then each fault: the registry refuses the push (wrong password; a private
registry stopped before the push), an image whose service answers wrong predictions, a container that exits at
start, the MLflow server killed between the push and the commit point, two deploys at once (two processes on a
real Prefect server), the MLflow server killed during tuning and a promote step against a stopped server.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.faults.release_servers import (
    DroppingProxy,
    MlflowServer,
    mlflow_server,
    private_registry,
    when_container_starts,
    when_image_exists,
)
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
    deploy = deploy_flow(model_version=version, requested_by="it@faults")
    assert deploy["status"] == "released", deploy
    return {"model_version": version, "deploy": deploy}


def _deploy_failing(version: str, step: str, committed: str = "no") -> tuple[Any, float]:
    """Deploy ``version``, expect it to fail at ``step`` saying ``committed``; returns the error and the seconds
    it took."""
    from flows.deploy import deploy_flow
    from tasks.release.ledger import ReleaseFailed

    started = time.monotonic()
    with pytest.raises(ReleaseFailed) as info:
        deploy_flow(model_version=version)
    assert (info.value.step, info.value.committed) == (step, committed), info.value
    assert str(info.value).startswith(f"{step}: ") and f"[committed: {committed}]" in str(info.value)
    return info.value, time.monotonic() - started


def build_tag_gone(error: Any) -> bool:
    """Whether the registry holds nothing of the failed build (its build tag was deleted, or never pushed)."""
    return registry_tag(f"build-{error.facts['build_id'][:16]}") is None


@docker
def test_github_500_then_201_is_retried_into_one_release(first_release: dict, github: GitHubStandIn) -> None:  # noqa: F811
    from tasks.release.converge import github_tag

    deploy = first_release["deploy"]
    tag = github_tag("loan-risk", first_release["model_version"], deploy["digest"])
    assert [p["body"]["tag_name"] for p in github.posts()] == [tag, tag]  # the 500, then the retry's 201
    assert list(github.releases) == [tag] and deploy["github-release"].endswith(tag)


@docker
def test_registry_refuses_the_password(first_release: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    from tasks.release.push import push_task
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
    assert registry_tag(version) is None and build_leftovers(error.facts["build_id"]) == []
    assert build_tag_gone(error)


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
                watcher = when_image_exists(client(), f"{remote()}:build-", reg.stop)
                error, _ = _deploy_failing(version, "push")
                assert watcher.fired and reg.address in str(error)
                reg.start()
                assert_nothing_moved(before, None, version)
                assert registry_tag(version) is None and build_leftovers(error.facts["build_id"]) == []
                assert build_tag_gone(error)
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
    assert registry_tag(version) is None and build_leftovers(error.facts["build_id"]) == []
    assert build_tag_gone(error)


@docker
def test_container_that_exits_at_start(first_release: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    """The run step sees the container exit and fails at once (well within the health timeout), naming the exit
    status and showing the container's own output; the container is removed."""
    from flows.deploy import deploy_flow
    from tasks.release.container import run_task
    from tasks.release.ledger import ReleaseFailed
    from tests.attempts import attempts_of

    before, latest = champion(), registry_tag("latest")
    version = register_variant(first_release["model_version"])
    _broken_context(monkeypatch, '\nraise SystemExit("deliberately broken for a fault test")\n')
    with attempts_of(run_task) as tries:
        state = deploy_flow(model_version=version, return_state=True)
    assert state.is_failed()
    with pytest.raises(ReleaseFailed, match=r"^run: \[run\] container exited with exit status") as info:
        state.result()
    assert "deliberately broken for a fault test" in str(info.value)  # the container's logs, in the error
    (attempt,) = tries.calls  # the smoke test of a container is never retried
    assert attempt.error is not None and attempt.seconds < settings().release.health_timeout_seconds / 2, (
        attempt
    )
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


@contextlib.contextmanager
def _own_model(uri: str, name: str, bundle: Path) -> Iterator[str]:
    """Settings that reach MLflow at ``uri`` with a model and an image repository of their own; yields the
    version ``bundle`` was registered as, promoted over no champion (the promote stage's record)."""
    from tasks.registry import tracking, versions

    sqlite = settings()
    env = {"MLFLOW_TRACKING_URI": uri, "LOANRISK_MODEL_NAME": name,
           "LOANRISK_IMAGE_REPOSITORY": f"{sqlite.release.image_repository}-{name}"}  # fmt: skip
    with environment(env):
        try:
            s = settings()
            version = versions.register_bundle(s, tracking.start_run(s, "fault"), bundle, {})
            versions.set_version_tags(s, version, {"promotion.reasons": "[]", "promotion.dry_run": "false",
                                                   "promotion.champion_version": "", "promotion.decision": "promoted"})  # fmt: skip
            yield version
        finally:
            remove_repo_images()


def _ledger() -> list:
    from tasks.release.ledger import read_ledger

    return read_ledger(settings())


def _is_claim(method: str, path: str, body: bytes) -> bool:
    """The commit point's request: the creation of a ledger entry."""
    return method == "POST" and path.endswith("/registered-models/create") and b".release." in body


@docker
@pytest.mark.parametrize(
    "client_retries", ["0", pytest.param("default", marks=pytest.mark.nightly)]
)  # the client's own retry meets the entry it made: the same read-back, so nightly
def test_a_lost_commit_answer_is_read_back_as_committed(
    first_release: dict, running_mlflow: MlflowServer, tmp_path: Path, client_retries: str
) -> None:
    """The ledger entry is created but its answer never arrives (a proxy in front of the real ``mlflow server``
    hangs up after forwarding it). Whether the MLflow client gives up (no retries) or retries (and meets the entry
    it made), the commit is read back as made: the deploy completes, champion and ``latest`` name the new digest
    (before: "nothing was released" while champion had moved and ``latest`` served the old model)."""
    from flows.deploy import deploy_flow
    from tasks.registry import versions

    bundle = versions.download_bundle(settings(), first_release["model_version"], tmp_path / "bundle")
    fail_fast = MLFLOW_FAIL_FAST if client_retries == "0" else {}
    with (
        DroppingProxy(running_mlflow.uri) as proxy,
        _own_model(proxy.uri, f"lost-{client_retries}", bundle) as v,
    ):
        proxy.drop_answer(_is_claim)
        with environment(fail_fast):
            done = deploy_flow(model_version=v, requested_by="it@faults")
        assert proxy.dropped == [("POST", "/api/2.0/mlflow/registered-models/create")]
        assert done["status"] == "released" and champion() == v
        assert registry_tag("latest") == done["digest"] == registry_tag(v)
        (entry,) = _ledger()
        assert (entry.version, entry.digest, entry.release_id) == (v, done["digest"], done["release_id"])


@docker
@pytest.mark.nightly
def test_a_commit_whose_answer_and_read_back_are_lost_says_unknown(
    first_release: dict, running_mlflow: MlflowServer, tmp_path: Path
) -> None:
    """The entry is created, its answer lost, and MLflow then unreachable for the read-back: the deploy says
    committed "unknown" (never "nothing was released"); once MLflow answers, ``--history`` shows the release and
    ``--converge`` completes it."""
    from flows.deploy import converge_flow
    from tasks.registry import versions
    from tasks.release.history import read_history

    bundle = versions.download_bundle(settings(), first_release["model_version"], tmp_path / "bundle")
    with DroppingProxy(running_mlflow.uri) as proxy, _own_model(proxy.uri, "unknown", bundle) as v:

        def claim_then_unreachable(method: str, path: str, body: bytes) -> bool:
            if _is_claim(method, path, body):
                proxy.refuse = True
                return True
            return False

        proxy.drop_answer(claim_then_unreachable)
        with environment(MLFLOW_FAIL_FAST):
            error, _ = _deploy_failing(v, "commit", committed="unknown")
        assert "whether v" in str(error) and "is unknown" in str(error)
        proxy.refuse = False
        assert [r["version"] for r in read_history(settings())] == [f"v{v}"]
        assert champion() is None  # committed, not converged yet
        done = converge_flow()
        assert done["champion"] == v and champion() == v and registry_tag("latest") == _ledger()[0].digest


@docker
@pytest.mark.nightly
def test_mlflow_dies_between_the_push_and_the_commit(
    first_release: dict, running_mlflow: MlflowServer, tmp_path: Path
) -> None:
    """The MLflow server is killed while the pulled-back image is smoke-tested: the commit's claim and its
    read-back both fail, so the deploy says "unknown"; after a restart the ledger shows nothing was committed,
    and champion and ``latest`` never moved."""
    from tasks.registry import versions

    bundle = versions.download_bundle(settings(), first_release["model_version"], tmp_path / "bundle")
    with environment(MLFLOW_FAIL_FAST), _own_model(running_mlflow.uri, "commit-fault", bundle) as version:
        watcher = when_container_starts(client(), remote(), running_mlflow.kill)
        error, _ = _deploy_failing(version, "commit", committed="unknown")
        assert watcher.fired and "MLflow registry" in str(error)
        running_mlflow.start()
        assert _ledger() == [] and champion() is None and registry_tag("latest") is None
        assert registry_tag(version) is None  # no version tag before a commit


@docker
@pytest.mark.nightly
@pytest.mark.parametrize("servers", ["one Prefect server", "two Prefect servers"])
def test_two_deploys_at_once_release_one_and_refuse_the_other(
    first_release: dict, tmp_path: Path, servers: str
) -> None:
    """Two processes deploy two versions promoted over the same champion at the same moment. Through one Prefect
    server they take turns at the lock; through two (two locks) they race. Either way the ledger gains exactly one
    entry, the other deploy is refused (the gate: its comparison is stale; or the fence: the head moved), saying
    committed "no", and champion, ``latest`` and the version tag agree with the one released."""
    from tests.integration.prefect_fixtures import prefect_server

    before = _ledger()
    made = [register_variant(first_release["model_version"]) for _ in range(2)]
    with contextlib.ExitStack() as stack:
        first = stack.enter_context(prefect_server(tmp_path / "prefect-a"))
        second = (
            first
            if servers == "one Prefect server"
            else stack.enter_context(prefect_server(tmp_path / "prefect-b"))
        )
        procs = [
            subprocess.Popen(
                [sys.executable, "-m", "flows.deploy", "--model-version", v],
                cwd=REPO,
                text=True,
                env=server.client_env(tmp_path / f"client-{v}"),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )  # fmt: skip
            for v, server in zip(made, (first, second), strict=True)
        ]
        outputs = [p.communicate(timeout=1200) for p in procs]
    results = [json.loads(out.strip().splitlines()[-1]) for out, _ in outputs]
    released = [r for r in results if r.get("status") == "released"]
    refused = [r for r in results if "error" in r]
    assert len(released) == 1 and len(refused) == 1, [
        (r, err[-3000:]) for r, (_, err) in zip(results, outputs, strict=True)
    ]
    assert refused[0]["committed"] == "no" and refused[0]["step"] in ("gate", "commit"), refused
    if servers == "two Prefect servers":  # both planned against the same head; the fence refused one
        assert refused[0]["step"] == "commit" and "the champion moved" in refused[0]["error"], refused
    winner = released[0]
    after = _ledger()
    assert len(after) == len(before) + 1 and after[-1].version == winner["model_version"]
    assert after[-1].from_version == before[-1].version
    assert champion() == winner["model_version"] and registry_tag("latest") == winner["digest"]
    loser = next(v for v in made if v != winner["model_version"])
    assert registry_tag(winner["model_version"]) == winner["digest"] and registry_tag(loser) is None


# --- MLflow server faults (no Docker) -----------------------------------------------------------------------


def _complete(settings_obj, version: str, dst: Path) -> bool:
    """Whether a version's bundle downloads and loads (a complete registration)."""
    from serving.bundle import load_bundle
    from tasks.registry import versions

    try:
        load_bundle(versions.download_bundle(settings_obj, version, dst))
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

    from tasks.registry import versions
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
        candidate = versions.version_by_alias(s, "candidate")
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
                    .get_experiment_by_name(s.registry.mlflow_experiment)
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

    from tasks.registry import tracking, versions
    from tasks.registry.promote import promote_task
    from tasks.settings import Settings
    from tests.attempts import attempts_of
    from tests.test_promote import GOOD, _minimal_bundle

    s = Settings(state_dir=tmp_path / "state", mlflow_tracking_uri=mlflow.uri, task_retry_delay_seconds=0,
                 model_name="loan-risk-promote-fault")  # fmt: skip
    assert versions.version_by_alias(s, "champion") is None  # no such model: RESOURCE_DOES_NOT_EXIST
    run = tracking.start_run(s, "fault")
    champ = versions.register_bundle(s, run, _minimal_bundle(tmp_path, "one"), {})
    new = versions.register_bundle(s, run, _minimal_bundle(tmp_path, "two"), {})
    assert versions.version_by_alias(s, "champion") is None  # no such alias: INVALID_PARAMETER_VALUE
    versions.set_alias(s, "champion", champ)
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
    assert versions.version_by_alias(s, "candidate") is None
    assert versions.get_version(s, new).tags.get("promotion.decision") is None
