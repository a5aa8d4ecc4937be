"""Releases without Docker: the gate (stale promotions, reasons), the ledger (its compare-and-set, read-back,
seeding, rollback walk, history), release notes, the GitHub release calls (against a local stand-in), and the
label names the Dockerfile and the deploy flow share."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tasks.release.converge import GitHubReleaseError, create_github_release
from tasks.release.ledger import Entry, ReleaseFailed, rollback_target, rolled_back_versions
from tasks.release.record import card_link, release_notes
from tests.github_stand_in import GitHubStandIn
from tests.infra.docker_fixtures import DockerServices, docker_services  # noqa: F401 - fixture


@pytest.fixture
def github() -> Iterator[GitHubStandIn]:
    stand_in = GitHubStandIn()
    yield stand_in
    stand_in.close()


def test_github_release_request_names_the_source_commit(github: GitHubStandIn) -> None:
    sha = "a" * 40
    out = create_github_release(
        github.url, "lending/loan-risk", "tok", "loan-risk-v3-abc", "loan-risk v3", "notes", sha
    )
    assert out["html_url"] == "http://github.invalid/loan-risk-v3-abc"
    (req,) = github.posts()
    assert req["path"] == "/repos/lending/loan-risk/releases"
    assert req["headers"]["Authorization"] == "Bearer tok"
    assert req["headers"]["Accept"] == "application/vnd.github+json"
    assert req["body"] == {"tag_name": "loan-risk-v3-abc", "name": "loan-risk v3", "body": "notes", "draft": False,
                           "prerelease": False, "target_commitish": sha}  # fmt: skip


def test_github_refusal_is_a_clear_error(github: GitHubStandIn) -> None:
    github.fail_posts = [401]
    with pytest.raises(GitHubReleaseError, match="HTTP 401.*Bad credentials"):
        create_github_release(github.url, "lending/loan-risk", "bad", "t", "n", "b")


def _e(version: str, kind: str = "release", frm: str = "", seq: int = 0, **kw: str) -> Entry:
    return Entry(version=version, digest=kw.pop("digest", f"sha256:{version * 8}"), image="r/loan-risk",
                 kind=kind, by=kw.pop("by", "ci@host"), from_version=frm, seq=seq, **kw)  # fmt: skip


def test_release_notes_compare_with_the_replaced_champion() -> None:
    entry = _e("4", frm="3", gated_against="3", commit="c0ffee")
    data = {
        "source": "hf://datasets/keanteng/loan",
        "revision": "deadbeef",
        "files": {"loan.csv": {"sha256": "f" * 64}},
    }
    notes = release_notes("loan-risk", entry, {"test_roc_auc": 0.83, "test_f1": 0.77},
                          {"test_roc_auc": 0.81, "test_f1": 0.75}, data)  # fmt: skip
    assert "| test_roc_auc | 0.8300 | 0.8100 |" in notes and "Replaced: v3" in notes
    assert "Gate compared it against: v3" in notes and "Source commit: `c0ffee`" in notes
    assert "r/loan-risk" in notes and "sha256:44444444" in notes and "deadbeef" in notes
    first = release_notes("loan-risk", _e("1"), {"test_f1": 0.7}, {}, {})
    assert "Replaced: none" in first and "Model card" not in first


def test_release_notes_link_the_model_card() -> None:
    link = card_link("loan-risk", "4", has_card=True)
    notes = release_notes("loan-risk", _e("4"), {"test_ks": 0.41}, {}, {}, link)
    assert "| test_ks | 0.4100 | — |" in notes
    assert "Model card: `card.html` and `card.md`" in notes and "--artifact-uri models:/loan-risk/4" in notes
    assert "GET /model/card" in notes and card_link("loan-risk", "4", has_card=False) is None


def test_release_notes_of_a_forced_release_say_who_and_why_as_typed() -> None:
    """Issue 20, item 8: the reason and the requester go into Markdown escaped (rendered as typed)."""
    entry = _e("5", "forced", by="ops [admin](http://x)", reason="hotfix **INC-7** <script>",
               overrode="its promotion decision is 'rejected'")  # fmt: skip
    notes = release_notes("loan-risk", entry, {"test_f1": 0.7}, {}, {})
    assert r"**Forced release** (ledger entry 0" in notes
    assert r"by ops \[admin\]\(http://x\): hotfix \*\*INC\-7\*\* \<script\>" in notes
    assert "[admin](http" not in notes and "<script>" not in notes
    assert "Overrode: its promotion decision is 'rejected'" in notes


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
    from tasks.release.build import LABEL_BUILD_ID, LABEL_NAMESPACE, image_labels

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


# --- the ledger: the commit point, the facts, the rollback walk (issue 20) --------------------------------


def test_rollback_walks_back_one_release_at_a_time() -> None:
    ledger = [_e("1"), _e("2"), _e("3")]
    assert rollback_target(ledger).version == "2"
    assert rollback_target(ledger, steps=2).version == "1"
    assert rollback_target(ledger, to_digest="sha256:" + "1" * 8).version == "1"
    ledger.append(_e("2", "rollback", frm="3"))
    assert rolled_back_versions(ledger) == {"3"}
    assert rollback_target(ledger).version == "1"  # not back to 3, which it left
    ledger.append(_e("1", "rollback", frm="2"))
    assert rollback_target(ledger) is None  # nothing left that was not rolled back from
    ledger.append(_e("3", "forced"))  # released again (forced): no longer "rolled back from"
    assert rolled_back_versions(ledger) == {"2"}
    assert rollback_target(ledger).version == "1"


@pytest.fixture
def deploy_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator:
    """Settings through the environment, as the flow reads them; no Docker engine answers (nothing may build)."""
    from tasks.settings import get_settings

    monkeypatch.setenv("LOANRISK_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("LOANRISK_DOCKER_HOST", f"unix://{tmp_path}/no-engine.sock")
    monkeypatch.setenv("LOANRISK_DEPLOY_LOCK_NAME", f"deploy-lock-{tmp_path.name}")
    get_settings.cache_clear()
    yield get_settings()
    get_settings.cache_clear()


def _register(
    settings, tmp_path: Path, decision: str | None, dry_run: bool = False, over: str | None = ""
) -> str:
    """A registered version with ``decision`` recorded as the gate records it (None: never gated), compared
    against the champion ``over`` ("" none; None: a record from before the gate wrote it)."""
    from tasks.registry import tracking, versions

    bundle = tmp_path / f"bundle-{decision}-{dry_run}-{over}"
    bundle.mkdir(parents=True, exist_ok=True)
    (bundle / "README").write_text("not a model: the gate must refuse before anything reads it")
    version = versions.register_bundle(settings, tracking.start_run(settings, "t"), bundle, {})
    if decision:
        tags = {"promotion.reasons": json.dumps(["test recall 0.60 < minimum 0.72"]),
                "promotion.dry_run": str(dry_run).lower()}  # fmt: skip
        if over is not None:
            tags["promotion.champion_version"] = over
        versions.set_version_tags(settings, version, {**tags, "promotion.decision": decision})
    return version


def _commit(settings, version: str, kind: str = "release", **kw: str) -> Entry:
    """A committed ledger entry over the current head (what a deploy's commit step writes)."""
    import uuid

    from tasks.release.ledger import commit, head

    return commit(settings, _e(version, kind, release_id=uuid.uuid4().hex, **kw), head(settings))


def test_two_claims_of_one_head_one_wins(deploy_settings) -> None:
    """Issue 20, item 5: two releases that read the same head; exactly one commits, the other is refused
    (committed: no) and the ledger is one chain, whatever lock or Prefect server each used."""
    import threading
    import uuid

    from tasks.release.ledger import commit, head, read_ledger

    first = _commit(deploy_settings, "1")
    expected = head(deploy_settings)
    barrier, outcomes = threading.Barrier(2), {}

    def claim(version: str) -> None:
        barrier.wait()
        try:
            outcomes[version] = commit(deploy_settings, _e(version, release_id=uuid.uuid4().hex), expected)
        except ReleaseFailed as exc:
            outcomes[version] = exc

    threads = [threading.Thread(target=claim, args=(v,)) for v in ("2", "3")]
    [t.start() for t in threads]
    [t.join() for t in threads]
    won = [o for o in outcomes.values() if isinstance(o, Entry)]
    lost = [o for o in outcomes.values() if isinstance(o, ReleaseFailed)]
    assert len(won) == 1 and len(lost) == 1, outcomes
    assert lost[0].committed == "no" and "the champion moved while this release was prepared" in str(lost[0])
    assert [(e.seq, e.version, e.from_version) for e in read_ledger(deploy_settings)] == [
        (1, "1", ""), (2, won[0].version, first.version)]  # fmt: skip


def test_a_retried_commit_reads_back_and_rewrites_nothing(deploy_settings) -> None:
    """Issue 20, item 2: a commit retried after its answer was lost finds its own entry; the record still says
    what it replaced (before: the retry read the new version as its own previous champion)."""
    import uuid

    from tasks.release.ledger import commit, head, read_ledger

    _commit(deploy_settings, "1")
    before = head(deploy_settings)
    entry = _e("2", release_id=uuid.uuid4().hex)
    commit(deploy_settings, entry, before)
    again = commit(deploy_settings, _e("2", release_id=entry.release_id), before)  # the retry
    assert again.seq == 2 and again.from_version == "1"
    assert [(e.version, e.from_version) for e in read_ledger(deploy_settings)] == [("1", ""), ("2", "1")]


def test_the_ledger_keeps_every_fact_past_thirty_releases(deploy_settings) -> None:
    """Issue 20, item 6: v2 is rolled back from, then 31 releases follow; walking rollbacks all the way back
    never returns to v2 (before: the history kept 30 entries and the mark fell off)."""
    from tasks.release.ledger import read_ledger

    s = deploy_settings
    _commit(s, "1"), _commit(s, "2")
    _commit(s, "1", "rollback", frm="2", digest="sha256:" + "1" * 8)
    for v in range(3, 34):
        _commit(s, str(v), digest=f"sha256:{v:08d}")
    walked = []
    while (target := rollback_target(read_ledger(s))) is not None:
        walked.append(target.version)
        _commit(s, target.version, "rollback", frm=read_ledger(s)[-1].version, digest=target.digest)
    assert "2" not in walked and walked[-1] == "1" and len(walked) == 31, walked
    assert len(read_ledger(s)) == 3 + 31 + 31
    # and the gate still knows v2 was left: it is not deployable again without --force
    from tasks.release.record import deployability_problems

    promoted = {"promotion.decision": "promoted", "promotion.dry_run": "false", "promotion.reasons": "[]",
                "promotion.champion_version": "1"}  # fmt: skip
    ledger = read_ledger(s)
    assert deployability_problems("2", promoted, ledger, ledger[-1]) == ["it was rolled back from"]


@pytest.mark.parametrize(
    ("decision", "dry_run", "over", "why"),
    [
        (
            "rejected",
            False,
            "",
            r"promotion decision is 'rejected' \(gate: test recall 0.60 < minimum 0.72\)",
        ),
        ("promoted", True, "", "promotion decision was a dry run"),
        (None, False, "", "no promotion decision"),
        ("promoted", False, None, r"promotion record is incomplete \(no promotion.champion_version\)"),
    ],
)
def test_deploy_refuses_what_the_gate_did_not_promote(
    deploy_settings, tmp_path, decision, dry_run, over, why
) -> None:
    from flows.deploy import deploy_flow
    from tasks.release.record import NotDeployable

    version = _register(deploy_settings, tmp_path, decision, dry_run, over)
    with pytest.raises(
        NotDeployable, match=rf"v{version} is not deployable: .*{why}.*--force --reason"
    ) as info:
        deploy_flow(model_version=version)
    assert info.value.step == "gate" and info.value.committed == "no"


def test_a_stale_promotion_is_not_deployable(deploy_settings, tmp_path) -> None:
    """Issue 20, item 3: a version promoted over v1 may not replace v2, which its gate never saw (before: the
    deploy gate never read the champion the gate compared against)."""
    from tasks.registry import versions
    from tasks.release.plan import plan_release
    from tasks.release.record import NotDeployable

    s = deploy_settings
    v1 = _register(s, tmp_path, "promoted", over="")
    v2 = _register(s, tmp_path, "promoted", over=v1)
    stale = _register(s, tmp_path, "promoted", over=v1)
    for v in (v1, v2):
        _commit(s, v)
        versions.set_alias(s, "champion", v)
    with pytest.raises(NotDeployable, match=rf"compared it against v{v1}, but the champion is now v{v2}"):
        plan_release(s, stale, None, False, None, "ops@host")
    fresh = _register(s, tmp_path, "promoted", over=v2)
    plan = plan_release(s, fresh, None, False, None, "ops@host")
    assert plan.expected.version == v2 and plan.gated_against == v2 and not plan.noop
    forced = plan_release(s, stale, None, True, "INC-9: v2 misprices, v3 is the known fix", "ops@host")
    assert forced.kind == "forced" and "compared it against" in forced.overrode


def test_force_needs_a_reason_of_ten_characters(deploy_settings, tmp_path, capsys) -> None:
    from flows.deploy import deploy_flow, main
    from tasks.release.record import NotDeployable

    version = _register(deploy_settings, tmp_path, "rejected")
    with pytest.raises(NotDeployable, match="--force needs a --reason of at least 10 characters"):
        deploy_flow(model_version=version, force=True, reason="  fix   it ")
    with pytest.raises(SystemExit) as exit_info:
        main(["--model-version", version, "--force", "--reason", "x"])
    assert exit_info.value.code == 2 and "--force needs a --reason of at least 10" in capsys.readouterr().err


def test_a_rollback_refuses_when_the_champion_changed_since_it_was_asked(deploy_settings) -> None:
    """Issue 20, item 4: asked to leave v2, queued; a deploy made v3 the champion meanwhile. The rollback is
    refused and nothing changes (before: it rolled back v3, possibly to the bad v2)."""
    from flows.rollback import rollback_flow
    from tasks.registry import versions
    from tasks.release.ledger import read_ledger

    s = deploy_settings
    for v in ("1", "2", "3"):
        _register(s, Path(s.state_dir), "promoted", over="")
        _commit(s, v)
    versions.set_alias(s, "champion", "3")
    before = read_ledger(s)
    with pytest.raises(ReleaseFailed, match="asked to leave v2, but the champion is now v3") as info:
        rollback_flow(from_version="2", reason="INC-4: v2 misprices")
    assert info.value.step == "plan" and info.value.committed == "no" and read_ledger(s) == before


def _legacy_store(s, tmp_path: Path, with_history: bool) -> None:
    """A registry as the earlier release record left it: version tags, a champion, maybe the history tag."""
    from tasks.registry import versions

    for v in ("1", "2", "3"):
        _register(s, tmp_path, "promoted", over="")
        versions.set_version_tags(s, v, {"release.digest": f"sha256:{v * 8}", "release.image": f"r/loan-risk:{v}",
                                         "release.by": "ci@old", "release.at": f"2026-0{v}-01T00:00:00Z",
                                         "release.previous_champion": str(int(v) - 1) if v != "1" else ""})  # fmt: skip
    versions.set_alias(s, "champion", "3")
    if with_history:
        old = [{"version": v, "image": f"r/loan-risk:{v}", "digest": f"sha256:{v * 8}", "at": "2026-01-01T00:00:00Z",
                "kind": "release", "by": "ci@old"} for v in ("1", "2", "3")]  # fmt: skip
        versions.set_model_tag(s, "release.history", json.dumps(old))


@pytest.mark.parametrize("with_history", [True, False])
def test_the_first_rollback_after_an_upgrade_has_the_history(deploy_settings, tmp_path, with_history) -> None:
    """Issue 20, item 6: the ledger is seeded from the earlier record on first use (its history tag, or the
    champion's recorded previous champions), so a first rollback finds v2 by its digest."""
    from tasks.release.history import read_history
    from tasks.release.ledger import read_ledger
    from tasks.release.plan import plan_rollback

    s = deploy_settings
    _legacy_store(s, tmp_path, with_history)
    assert [r["version"] for r in read_history(s)] == ["v1", "v2", "v3"]  # shown before anything is written
    assert read_ledger(s) == []
    plan = plan_rollback(s, 1, None, "3", "INC-5: v3 misprices", "ops@host")
    assert (plan.version, plan.reuse_digest, plan.expected.version) == ("2", "sha256:" + "2" * 8, "3")
    assert [(e.seq, e.version) for e in read_ledger(s)] == [(1, "1"), (2, "2"), (3, "3")]


def test_history_prints_every_change_who_and_why(deploy_settings, capsys) -> None:
    from flows.deploy import main

    s = deploy_settings
    _commit(s, "1", by="ci (deployment run)")
    _commit(s, "2", "forced", by="ops@host", reason="INC-7: hotfix for the pricing bug", gated_against="1")
    _commit(s, "1", "rollback", frm="2", by="oncall@host", reason="INC-8: v2 declines everyone")
    assert main(["--history"]) == 0
    text = capsys.readouterr().out
    assert "3 champion change(s)" in text and "INC-7: hotfix for the pricing bug" in text
    assert main(["--history", "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(r["version"], r["kind"], r["by"], r["rolled back from"]) for r in rows] == [
        ("v1", "release", "ci (deployment run)", ""), ("v2", "forced", "ops@host", ""),
        ("v1", "rollback", "oncall@host", "v2")]  # fmt: skip
    assert rows[1]["gated against"] == "v1" and rows[1]["replaced"] == "v1"


def test_the_requester_is_who_asked_not_the_worker(deploy_settings) -> None:
    """Issue 20, item 8: outside a Prefect run that records a creator, the requester is what the caller stated
    (the CLI states its user); a run nobody identified says so rather than naming the worker's OS user."""
    from prefect import flow

    from tasks.release.record import operator, requester

    @flow(name="who-asked")
    def who(stated: str | None) -> str:
        return requester(stated)

    assert who("ops@desk") == "ops@desk" and who(None) == "unknown"
    assert requester(None) == "unknown" and "@" in operator()


def test_a_dirty_checkout_labels_its_image_dirty(tmp_path: Path) -> None:
    """Issue 20, item 8: the revision label says when the files differ from the commit."""
    import runpy
    import shutil
    import subprocess

    from tasks.release import build

    repo = tmp_path / "repo"
    (repo / "tasks/release").mkdir(parents=True)
    shutil.copy(build.__file__, repo / "tasks/release/build.py")
    git = ["git", "-C", str(repo), "-c", "user.email=t@t", "-c", "user.name=t"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-qm", "x"], check=True)
    sha = subprocess.run(
        [*git, "rev-parse", "HEAD"], check=True, capture_output=True, text=True
    ).stdout.strip()
    git_commit = runpy.run_path(str(repo / "tasks/release/build.py"))["git_commit"]
    assert git_commit() == sha
    (repo / "tasks/release/new.py").write_text("x = 1\n")
    assert git_commit() == f"{sha}-dirty"


def test_one_digest_released_twice_gets_both_notes_on_one_github_release(
    github: GitHubStandIn, tmp_path
) -> None:
    """Issue 20, item 8: GitHub releases are keyed by digest; a forced re-release of the same image adds its
    own notes (before: it wrote none) and the tag is made at the image's source commit."""
    from tasks.release.converge import github_tag, publish_github_release
    from tasks.release.record import release_marker
    from tasks.settings import Settings

    s = Settings(state_dir=tmp_path / "state", github_token="t", github_repository="lending/loan-risk",
                 github_api_url=github.url)  # fmt: skip
    tag = github_tag("loan-risk", "3", "sha256:" + "ab" * 32)
    first, again = _e("3", release_id="r1"), _e("3", "forced", release_id="r2", reason="INC-3: re-release v3")
    sha = "c" * 40
    publish_github_release(
        s.release, tag, "loan-risk v3", "notes one " + release_marker(first), release_marker(first), sha
    )
    publish_github_release(
        s.release, tag, "loan-risk v3", "notes one " + release_marker(first), release_marker(first), sha
    )
    publish_github_release(
        s.release, tag, "loan-risk v3", "notes two " + release_marker(again), release_marker(again), sha
    )
    (release,) = github.releases.values()
    assert tag == "loan-risk-v3-" + "ab" * 6 and release["target_commitish"] == sha
    assert release["body"].count("notes one") == 1 and release["body"].startswith("notes two")
    assert len(github.posts()) == 1 and [r["method"] for r in github.requests].count("PATCH") == 1


@pytest.mark.parametrize("lost_answer", [False, True])
def test_github_step_retries_a_500_and_creates_one_release(
    github: GitHubStandIn, tmp_path: Path, lost_answer
) -> None:
    """GitHub answers 500 once (with ``lost_answer`` after creating the release): retried, one release."""
    from prefect import flow

    from tasks.release.converge import github_task
    from tasks.settings import Settings

    github.fail_posts, github.create_before_failing = [500], lost_answer
    s = Settings(state_dir=tmp_path / "state", github_token="t", github_repository="lending/loan-risk",
                 github_api_url=github.url, task_retry_delay_seconds=0)  # fmt: skip
    entry = _e("3", release_id="r1")

    @flow(name="github-release-with-a-500")
    def release() -> str | None:
        return github_task(s, entry, "notes <!-- loan-risk release r1 -->")

    (tag,) = [release()[len("http://github.invalid/") :]]
    assert list(github.releases) == [tag] and tag.startswith("loan-risk-v3-")
    assert len(github.posts()) == (1 if lost_answer else 2)
    release()  # a re-run finds it by tag
    assert len(github.posts()) == (1 if lost_answer else 2)


# --- the training flow when its deploy fails (issue 8, item 4) ---------------------------------------------


@pytest.mark.docker
def test_training_run_is_finished_when_its_deploy_fails(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    docker_services: DockerServices,  # noqa: F811 - the fixture imported above
) -> None:
    """Another deploy holds the lock longer than this one waits: the deploy fails before the commit point. The
    training run's MLflow run still ends FINISHED with the outcome as tags; the flow then raises, saying so.
    The engine and registry answer (a required deploy checks them first), so the lock is what stops it."""
    from mlflow import MlflowClient

    from flows.training import training_flow
    from tasks.release.lock import release_lock
    from tasks.settings import get_settings

    env = {"LOANRISK_STATE_DIR": str(tmp_path / "state"), "LOANRISK_DEPLOY_LOCK_TIMEOUT_SECONDS": "1",
           "LOANRISK_DEPLOY_LOCK_NAME": f"deploy-lock-{tmp_path.name}", "LOANRISK_MIN_PRECISION": "0.5",
           "LOANRISK_MIN_RECALL": "0.5", "LOANRISK_MAX_ITERATIONS": "80",
           "LOANRISK_DOCKER_HOST": docker_services.docker_host,
           "LOANRISK_IMAGE_REGISTRY": docker_services.registry}  # fmt: skip
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    get_settings.cache_clear()
    try:
        s = get_settings()
        # the test holds the lock with a wait of its own: under load, taking a free slot took over the flow's 1 s
        holder = s.model_copy(update={"deploy_lock_timeout_seconds": 120.0})
        with (
            release_lock(holder.release),
            pytest.raises(ReleaseFailed, match="before the commit point: nothing was released") as info,
        ):
            training_flow(source="sample", scale=0.02, n_trials=2, deploy=True)
        assert info.value.committed == "no" and info.value.step == "lock"
        client = MlflowClient(tracking_uri=s.tracking_uri)
        (run,) = client.search_runs([client.get_experiment_by_name(s.registry.mlflow_experiment).experiment_id],
                                    "attributes.run_name LIKE 'training-%'")  # fmt: skip
        assert run.info.status == "FINISHED"
        assert run.data.tags["deploy.status"] == "failed" and run.data.tags["deploy.committed"] == "no"
        assert "deploy lock" in run.data.tags["deploy.error"]
    finally:
        get_settings.cache_clear()
