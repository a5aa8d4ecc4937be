"""Releases without Docker: the gate, the release history and rollback walk, release notes, the GitHub release
calls (against a local stand-in), and the label names the Dockerfile and the deploy flow share."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tasks.release.github import GitHubReleaseError, create_github_release
from tasks.release.record import (
    card_link,
    history_entry,
    release_notes,
    rollback_target,
    rolled_back_versions,
)
from tests.github_stand_in import GitHubStandIn


@pytest.fixture
def github() -> Iterator[GitHubStandIn]:
    stand_in = GitHubStandIn()
    yield stand_in
    stand_in.close()


def test_github_release_request(github: GitHubStandIn) -> None:
    out = create_github_release(
        github.url, "lending/loan-risk", "tok", "loan-risk-v3", "loan-risk v3", "notes"
    )
    assert out["html_url"] == "http://github.invalid/loan-risk-v3"
    (req,) = github.posts()
    assert req["path"] == "/repos/lending/loan-risk/releases"
    assert req["headers"]["Authorization"] == "Bearer tok"
    assert req["headers"]["Accept"] == "application/vnd.github+json"
    assert req["body"] == {"tag_name": "loan-risk-v3", "name": "loan-risk v3", "body": "notes", "draft": False,
                           "prerelease": False}  # fmt: skip


def test_github_refusal_is_a_clear_error(github: GitHubStandIn) -> None:
    github.fail_posts = [401]
    with pytest.raises(GitHubReleaseError, match="HTTP 401.*Bad credentials"):
        create_github_release(github.url, "lending/loan-risk", "bad", "t", "n", "b")


def test_release_notes_compare_with_previous_champion() -> None:
    notes = release_notes(
        "loan-risk", "4", {"test_roc_auc": 0.83, "test_f1": 0.77},
        {"version": "3", "metrics": {"test_roc_auc": 0.81, "test_f1": 0.75}},
        "localhost:5055/loan-risk:4", "sha256:abc", {"source": "hf://datasets/keanteng/loan", "revision": "deadbeef",
                                                     "files": {"loan.csv": {"sha256": "f" * 64}}},
    )  # fmt: skip
    assert "| test_roc_auc | 0.8300 | 0.8100 |" in notes and "Previous champion: v3" in notes
    assert "localhost:5055/loan-risk:4" in notes and "sha256:abc" in notes and "deadbeef" in notes
    first = release_notes("loan-risk", "1", {"test_f1": 0.7}, None, "img:1", "sha256:x", {})
    assert "Previous champion: none" in first and "Model card" not in first


def test_release_notes_link_the_model_card() -> None:
    link = card_link("loan-risk", "4", has_card=True)
    notes = release_notes("loan-risk", "4", {"test_ks": 0.41}, None, "img:4", "sha256:x", {}, None, link)
    assert "| test_ks | 0.4100 | — |" in notes
    assert "Model card: `card.html` and `card.md`" in notes and "--artifact-uri models:/loan-risk/4" in notes
    assert "GET /model/card" in notes and card_link("loan-risk", "4", has_card=False) is None


# --- one label namespace (issue 8, item 10c) -----------------------------------------------------------------


def _dockerfile_stages() -> list[dict]:
    """Each stage of the Dockerfile: its name, ARG names and LABEL keys (line continuations joined)."""
    import re
    import shlex

    from tasks.release.build_context import DOCKERFILE

    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    stages: list[dict] = []
    for line in text.splitlines():
        words = line.strip().split(None, 1)
        if not words or words[0].startswith("#"):
            continue
        op, rest = words[0].upper(), (words[1] if len(words) > 1 else "")
        if op == "FROM":
            name = rest.split()[-1] if " as " in rest.lower() else None
            stages.append({"name": name, "args": set(), "labels": set()})
        elif op == "ARG" and stages:
            stages[-1]["args"].add(rest.split("=", 1)[0].strip())
        elif op == "LABEL":
            stages[-1]["labels"] |= {item.split("=", 1)[0] for item in shlex.split(rest)}
    return stages


def test_dockerfile_and_deploy_flow_agree_on_label_names() -> None:
    from tasks.release.image import LABEL_BUILD_ID, LABEL_NAMESPACE, image_labels

    build, final = _dockerfile_stages()
    passed = set(image_labels("loan-risk", "3", "abc"))
    ours = {k for k in final["labels"] if k.startswith(LABEL_NAMESPACE + ".")}
    assert ours and ours == {k for k in passed if k.startswith(LABEL_NAMESPACE + ".")}
    assert passed <= final["labels"]  # every label the flow passes is one the Dockerfile declares
    assert not [
        k
        for k in final["labels"] | build["labels"]
        if k.startswith("ai.") and not k.startswith(LABEL_NAMESPACE)
    ]
    # the build stage carries the per-build id that lets a release remove its own dangling build stage
    assert build["name"] == "build" and LABEL_BUILD_ID in build["labels"] and "BUILD_ID" in build["args"]


# --- release history and the rollback walk (issue 8, item 3) -------------------------------------------------


def _entry(version: str, kind: str = "release", frm: str | None = None) -> dict[str, str]:
    return history_entry(version, f"r/loan-risk:{version}", f"sha256:{version * 8}", kind, "ci@host",
                         rolled_back_from=frm)  # fmt: skip


def test_rollback_walks_back_one_release_at_a_time() -> None:
    history = [_entry("1"), _entry("2"), _entry("3")]
    assert rollback_target(history, "3")["version"] == "2"
    history.append(_entry("2", "rollback", frm="3"))
    assert rolled_back_versions(history) == {"3"}
    assert rollback_target(history, "2")["version"] == "1"  # not back to 3, which it left
    history.append(_entry("1", "rollback", frm="2"))
    assert rollback_target(history, "1") is None  # nothing left that was not rolled back from
    history.append(_entry("3", "forced"))  # released again (forced): no longer "rolled back from"
    assert rolled_back_versions(history) == {"2"}
    assert rollback_target(history, "3")["version"] == "1"


def test_history_is_idempotent_bounded_and_in_the_registry(tmp_path: Path) -> None:
    from tasks import registry, tracking
    from tasks.release.record import append_history, read_history
    from tasks.settings import Settings

    s = Settings(state_dir=tmp_path / "state", release_history_size=3)
    bundle = tmp_path / "b"
    bundle.mkdir()
    (bundle / "bundle.json").write_text('{"model_name": "loan-risk", "threshold": 0.5}')
    registry.register_bundle(s, tracking.start_run(s, "t"), bundle, {})
    assert read_history(s) == []
    assert append_history(s, _entry("1")) and not append_history(s, _entry("1"))  # the same release: once
    for v in "234":
        append_history(s, _entry(v))
    assert [e["version"] for e in read_history(s)] == ["2", "3", "4"]  # the newest three, oldest first
    assert read_history(Settings(state_dir=tmp_path / "state"))[-1]["digest"] == "sha256:" + "4" * 8


# --- the gate: only a promoted version deploys, --force needs a reason (issue 8, item 1) -------------------


@pytest.fixture
def deploy_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator:
    """Settings through the environment, as the flow reads them; no Docker engine answers (nothing may build)."""
    from tasks.settings import get_settings

    monkeypatch.setenv("LOANRISK_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("LOANRISK_DOCKER_HOST", f"unix://{tmp_path}/no-engine.sock")
    get_settings.cache_clear()
    yield get_settings()
    get_settings.cache_clear()


def _register(settings, tmp_path: Path, decision: str | None, dry_run: bool = False) -> str:
    """A registered version with ``decision`` recorded as the gate records it (None: never gated)."""
    import json

    from tasks import registry, tracking

    bundle = tmp_path / f"bundle-{decision}-{dry_run}"
    bundle.mkdir()
    (bundle / "README").write_text("not a model: the gate must refuse before anything reads it")
    version = registry.register_bundle(settings, tracking.start_run(settings, "t"), bundle, {})
    if decision:
        registry.set_version_tags(settings, version, {"promotion.decision": decision, "promotion.dry_run": str(dry_run).lower(),
                                                       "promotion.reasons": json.dumps(["test recall 0.60 < minimum 0.72"])})  # fmt: skip
    return version


@pytest.mark.parametrize(
    ("decision", "dry_run", "why"),
    [
        ("rejected", False, r"promotion decision is 'rejected' \(gate: test recall 0.60 < minimum 0.72\)"),
        ("promoted", True, "promotion decision was a dry run"),
        (None, False, "no promotion decision"),
    ],
)
def test_deploy_refuses_what_the_gate_did_not_promote(
    deploy_settings, tmp_path, decision, dry_run, why
) -> None:
    from flows.deploy import deploy_flow
    from tasks.release.record import NotDeployable

    version = _register(deploy_settings, tmp_path, decision, dry_run)
    with pytest.raises(NotDeployable, match=rf"v{version} is not deployable: .*{why}.*--force --reason"):
        deploy_flow(model_version=version)


def test_force_needs_a_reason(deploy_settings, tmp_path, capsys) -> None:
    from flows.deploy import deploy_flow, main
    from tasks.release.record import NotDeployable

    version = _register(deploy_settings, tmp_path, "rejected")
    with pytest.raises(NotDeployable, match="--force needs a non-empty --reason"):
        deploy_flow(model_version=version, force=True, reason="   ")
    with pytest.raises(SystemExit) as exit_info:
        main(["--model-version", version, "--force"])
    assert exit_info.value.code == 2 and "--force needs a non-empty --reason" in capsys.readouterr().err


def test_actor_names_user_and_host() -> None:
    import getpass
    import socket

    from tasks.release.record import actor

    assert actor().startswith(f"{getpass.getuser()}@{socket.gethostname()}")


def test_release_notes_of_a_forced_release_say_who_and_why() -> None:
    notes = release_notes("loan-risk", "5", {"test_f1": 0.7}, None, "img:5", "sha256:x", {},
                          {"by": "ops@host, flow run 42", "reason": "hotfix for INC-7", "overrode": "its promotion decision is 'rejected'"})  # fmt: skip
    assert "**Forced release** by ops@host, flow run 42: hotfix for INC-7" in notes
    assert "Overrode: its promotion decision is 'rejected'" in notes


@pytest.mark.parametrize("lost_answer", [False, True])
def test_github_step_retries_a_500_and_creates_one_release(
    github: GitHubStandIn, tmp_path: Path, lost_answer
) -> None:
    """GitHub answers 500 once (with ``lost_answer`` after creating the release): retried, one release."""
    from prefect import flow

    from tasks.release.github import github_task
    from tasks.settings import Settings

    github.fail_posts, github.create_before_failing = [500], lost_answer
    s = Settings(state_dir=tmp_path / "state", github_token="t", github_repository="lending/loan-risk",
                 github_api_url=github.url, task_retry_delay_seconds=0)  # fmt: skip

    @flow(name="github-release-with-a-500")
    def release() -> dict:
        return github_task(s, "3", "notes")

    out = release()
    assert list(github.releases) == ["loan-risk-v3"] and out["html_url"].endswith("loan-risk-v3")
    assert len(github.posts()) == (1 if lost_answer else 2) and out["created"] is not lost_answer
    again = release()  # a re-run finds it by tag
    assert again["created"] is False and len(github.posts()) == (1 if lost_answer else 2)


# --- the training flow when its deploy fails (issue 8, item 4) ---------------------------------------------


def test_training_run_is_finished_when_its_deploy_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another deploy holds the lock longer than this one waits: the deploy fails before the commit point. The
    training run's MLflow run still ends FINISHED with the outcome as tags; the flow then raises, saying so."""
    from mlflow import MlflowClient

    from flows.deploy import DeployError
    from flows.training import training_flow
    from tasks.release.lock import release_lock
    from tasks.settings import get_settings

    env = {"LOANRISK_STATE_DIR": str(tmp_path / "state"), "LOANRISK_DEPLOY_LOCK_TIMEOUT_SECONDS": "1",
           "LOANRISK_DEPLOY_LOCK_NAME": f"deploy-lock-{tmp_path.name}", "LOANRISK_MIN_PRECISION": "0.5",
           "LOANRISK_MIN_RECALL": "0.5", "LOANRISK_MAX_ITERATIONS": "80"}  # fmt: skip
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    get_settings.cache_clear()
    try:
        s = get_settings()
        with (
            release_lock(s),
            pytest.raises(DeployError, match="before the commit point: nothing was released"),
        ):
            training_flow(source="sample", scale=0.02, n_trials=2, deploy=True)
        client = MlflowClient(tracking_uri=s.tracking_uri)
        (run,) = client.search_runs([client.get_experiment_by_name(s.mlflow_experiment).experiment_id],
                                    "attributes.run_name LIKE 'training-%'")  # fmt: skip
        assert run.info.status == "FINISHED"
        assert run.data.tags["deploy.status"] == "failed" and run.data.tags["deploy.committed"] == "false"
        assert "TimeoutError" in run.data.tags["deploy.error"]
    finally:
        get_settings.cache_clear()
