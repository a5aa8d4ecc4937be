"""The deploy and rollback flows against a real Docker engine and a real registry with password authentication.

A copy of the session's trained bundle (tests/training.py) is registered as a promoted version and the deploy
flow releases it; then, in order: the release leaves only its tagged image and the registry only its build and
version tags; the gate refuses a rejected version until it is forced with a reason; converge completes what went
missing after a commit without building; rollbacks walk back release by release, by digest, never to a version
they left, and a version rolled back from is not released again unless forced (then without a build). The fault
rows (push refused, broken images, lost answers, MLflow dying, concurrent deploys) are in ``tests/faults/``.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from tests.github_stand_in import GitHubStandIn
from tests.infra.docker_fixtures import DockerServices, docker_services  # noqa: F401
from tests.integration.deploy_helpers import (  # noqa: F401 - fixtures
    assert_nothing_moved,
    build_leftovers,
    champion,
    client,
    deploy_env,
    github,
    local_refs,
    register_variant,
    registry_tag,
    remote,
    settings,
    smoke_containers,
)
from tests.training import TrainedRun, register_copy

pytestmark = [pytest.mark.docker, pytest.mark.slow]


@pytest.fixture(scope="module")
def first_release(deploy_env: dict, trained_run: TrainedRun) -> dict:  # noqa: F811
    """The session's trained bundle, registered here as a promoted version, deployed: built, pushed under a
    build tag, pulled back by digest, tested, committed, converged."""
    from flows.deploy import deploy_flow

    version = register_copy(settings(), trained_run.bundle_dir)
    return {"model_version": version, "deploy": deploy_flow(model_version=version, requested_by="ops@desk")}


def ledger() -> list:
    from tasks.release.ledger import read_ledger

    return read_ledger(settings())


def notes_artifacts(version: str, digest: str) -> list:
    """The notes artifacts of this module's releases of ``version`` at ``digest`` (another module's release of an
    identical image, built from the same cache into its own registry, shares the key, not the release ids)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from tasks.release.record import notes_artifact_key, release_marker

    key = notes_artifact_key(settings().registry.model_name, version, digest)
    ours = {release_marker(e) for e in ledger() if e.version == version and e.digest == digest}
    with get_client(sync_client=True) as c:
        found = c.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])))
    return [a for a in found if any(m in str(a.data) for m in ours)]


def version_tags(version: str) -> dict[str, str]:
    from tasks.registry import versions

    return versions.get_version(settings(), version).tags


def gh_tag(version: str, digest: str) -> str:
    from tasks.release.converge import github_tag

    return github_tag(settings().registry.model_name, version, digest)


def test_a_promoted_version_is_built_tested_pushed_and_released(
    first_release: dict,
    github: GitHubStandIn,  # noqa: F811
) -> None:
    deploy = first_release["deploy"]
    version = first_release["model_version"]
    assert (deploy["status"], deploy["build"], deploy["model_version"]) == ("released", "built", version)
    assert champion() == version and deploy["requested_by"] == "ops@desk"
    digest = deploy["digest"]
    assert registry_tag(version) == digest and registry_tag("latest") == digest
    assert registry_tag(f"build-{deploy['build_id'][:16]}") == digest  # pushed under its build tag first
    assert deploy["smoke"]["rows_compared"] > 0 and deploy["smoke"]["max_abs_diff"] <= 1e-6
    assert not smoke_containers()
    (entry,) = ledger()
    assert (entry.seq, entry.version, entry.digest, entry.kind, entry.by) == (
        1,
        version,
        digest,
        "release",
        "ops@desk",
    )
    assert entry.gated_against == "" and entry.from_version == "" and entry.commit
    tags = version_tags(version)
    assert (
        tags["release.digest"] == digest and tags["release.seq"] == "1" and tags["release.by"] == "ops@desk"
    )
    tag = gh_tag(version, digest)
    (sent,) = github.posts(tag)
    assert sent["path"] == "/repos/lending/loan-risk/releases" and sent["auth"] == "Bearer test-token"
    assert sent["body"]["target_commitish"] == entry.commit.removesuffix("-dirty")
    assert digest in sent["body"]["body"] and "ops@desk" in sent["body"]["body"]
    (notes,) = notes_artifacts(version, digest)
    assert f"v{version}" in notes.data and digest in notes.data
    assert deploy["lock"]["acquired_at"] < deploy["lock"]["released_at"]


def test_release_leaves_only_its_tagged_image(first_release: dict) -> None:
    """No dangling build stage (1.26 GB before this fix), no other image: only registry/repository:version."""
    deploy = first_release["deploy"]
    version = first_release["model_version"]
    assert deploy["build_id"] and build_leftovers(deploy["build_id"]) == []
    image = client().images.get(f"{remote()}@{deploy['digest']}")
    assert {r for r in local_refs() if "@" not in r} == {f"{remote()}:{version}"}
    from tasks.release.build import LABEL_BUILD_ID, LABEL_MODEL_NAME, LABEL_MODEL_VERSION, OCI_REVISION

    labels = image.labels
    assert labels[LABEL_MODEL_VERSION] == version and labels[LABEL_MODEL_NAME] == "loan-risk"
    assert labels[OCI_REVISION] == ledger()[0].commit  # the commit, "-dirty" when files differed from it
    assert LABEL_BUILD_ID not in labels  # the build-stage label stays in the build stage
    assert not [k for k in labels if k.startswith("ai.") and not k.startswith("ai.loanrisk.")]


def test_pushed_image_pulls_back_and_answers(first_release: dict) -> None:
    """Remove the local image, pull it from the registry by digest with credentials, run it, ask /predict."""
    from serving.bundle import load_bundle
    from tasks.registry import versions
    from tasks.release.container import remove_container, run_container, wait_healthy
    from tasks.release.push import pull_by_digest

    s = settings()
    version, deploy = first_release["model_version"], first_release["deploy"]
    remove_local_image(f"{remote()}:{version}")
    ref = pull_by_digest(client(), s.release.image_registry, s.release.image_repository, deploy["digest"], s.release.registry_username,
                         s.release.registry_password.get_secret_value())  # fmt: skip
    bundle = load_bundle(versions.download_bundle(s, version, Path(s.state_dir) / "check-bundle"))
    ref_data = bundle.reference()
    running = run_container(ref, client=client(), name_prefix="loan-risk-it-pull")
    try:
        wait_healthy(running.base_url, timeout_s=90, container=running)
        answer = httpx.post(f"{running.base_url}/predict", json=ref_data["records"][0], timeout=30).json()
    finally:
        remove_container(running)
    assert answer["model_version"] == version
    assert abs(answer["probability"] - ref_data["probabilities"][0]) <= 1e-6


def test_gate_refuses_a_rejected_version_until_forced_with_a_reason(
    first_release: dict,
    github: GitHubStandIn,  # noqa: F811
) -> None:
    from flows.deploy import deploy_flow
    from tasks.release.record import NotDeployable

    first = first_release["model_version"]
    rejected = register_variant(first, decision="rejected")
    refs_before = local_refs()
    with pytest.raises(
        NotDeployable, match=rf"v{rejected} is not deployable: its promotion decision is 'rejected'"
    ):
        deploy_flow(model_version=rejected)
    assert champion() == first and local_refs() == refs_before  # refused before anything was built

    reason = "INC-1234: emergency fix, approved by risk"
    released = deploy_flow(model_version=rejected, force=True, reason=reason, requested_by="risk-lead@desk")
    assert released["status"] == "released" and released["kind"] == "forced" and champion() == rejected
    entry = ledger()[-1]
    assert (entry.kind, entry.reason, entry.by, entry.from_version) == (
        "forced",
        reason,
        "risk-lead@desk",
        first,
    )
    assert "promotion decision is 'rejected'" in entry.overrode and "flow run" in entry.ran_on
    assert version_tags(rejected)["release.kind"] == "forced"
    (sent,) = github.posts(gh_tag(rejected, entry.digest))
    assert "Forced release" in sent["body"]["body"] and "INC\\-1234" in sent["body"]["body"]
    (notes,) = notes_artifacts(rejected, entry.digest)
    assert "risk\\-lead@desk" in notes.data and "Overrode: its promotion decision is 'rejected'" in notes.data


def test_converge_completes_what_is_missing_after_a_commit(
    first_release: dict,
    github: GitHubStandIn,  # noqa: F811
) -> None:
    """After the commit point, things went missing (latest elsewhere, no GitHub release, the alias moved by
    hand): ``--converge`` (and a re-run of the champion's deploy) completes them without a build, and creates
    nothing twice; a second run does nothing."""
    from flows.deploy import converge_flow, deploy_flow
    from tasks.registry import versions
    from tasks.release.registry_api import registry_retag

    s = settings()
    version = champion()
    digest = ledger()[-1].digest
    registry_retag(s.release.image_registry, s.release.image_repository, first_release["deploy"]["digest"], "latest",
                   s.release.registry_username, s.release.registry_password.get_secret_value())  # fmt: skip
    versions.set_alias(s, "champion", first_release["model_version"])
    tag = gh_tag(version, digest)
    github.releases.pop(tag)
    posts, entries, refs = len(github.posts(tag)), len(ledger()), local_refs()

    done = converge_flow()
    assert done["champion"] == version and champion() == version
    assert registry_tag("latest") == digest and registry_tag(version) == digest
    assert len(github.posts(tag)) == posts + 1 and tag in github.releases
    assert len(ledger()) == entries and len(notes_artifacts(version, digest)) == 1 and local_refs() == refs

    again = deploy_flow(model_version=version)
    assert again["status"] == "already-released" and again["build"] == "none"
    assert len(github.posts(tag)) == posts + 1 and len(ledger()) == entries
    assert len(notes_artifacts(version, digest)) == 1


def test_rollback_walks_back_by_digest_and_never_returns(first_release: dict) -> None:
    from flows.deploy import deploy_flow
    from flows.rollback import rollback_flow
    from tasks.release.ledger import ReleaseFailed
    from tasks.release.record import NotDeployable

    first, forced = first_release["model_version"], champion()
    third = register_variant(first)
    assert deploy_flow(model_version=third)["build"] == "built" and champion() == third
    digests = {e.version: e.digest for e in ledger()}
    remove_local_image(f"{remote()}:{forced}")  # the rollback must pull it, by digest

    back = rollback_flow(from_version=third, reason="INC-2: v3 misprices", requested_by="oncall@desk")
    assert (back["status"], back["rolled_back_from"], back["model_version"]) == ("rolled-back", third, forced)
    assert champion() == forced and registry_tag("latest") == digests[forced]
    assert registry_tag(forced) == digests[forced]  # the version tag stays where it was made
    assert f"{remote()}@{digests[forced]}" in local_refs()  # pulled by digest
    last = ledger()[-1]
    assert (last.kind, last.from_version, last.by, last.reason) == (
        "rollback",
        third,
        "oncall@desk",
        "INC-2: v3 misprices",
    )
    assert version_tags(third)["release.rolled_back_to"] == forced

    again = rollback_flow()
    assert again["rolled_back_from"] == forced and again["model_version"] == first  # not back to v3
    assert champion() == first and registry_tag("latest") == digests[first]
    with pytest.raises(ReleaseFailed, match=rf"nothing to roll back to from champion v{first}"):
        rollback_flow()
    assert champion() == first
    entries = len(ledger())  # a re-run for a champion a rollback made adds no second entry
    assert deploy_flow(model_version=first)["status"] == "already-released" and len(ledger()) == entries

    running_latest_answers(first)
    with pytest.raises(NotDeployable, match=rf"v{third} is not deployable: .*it was rolled back from"):
        deploy_flow(model_version=third)
    redo = deploy_flow(model_version=third, force=True, reason="INC-2 resolved: v3 pricing confirmed")
    assert redo["build"] == "reused" and redo["digest"] == digests[third] and champion() == third
    assert registry_tag("latest") == digests[third]
    back_to = rollback_flow(to_digest=digests[first], reason="INC-3: back to the first release's image")
    assert (
        back_to["model_version"] == first and champion() == first and registry_tag("latest") == digests[first]
    )
    with pytest.raises(ReleaseFailed, match="holds no release of sha256:"):
        rollback_flow(to_digest=digests[forced])  # rolled back from: only a forced release brings it back
    # the audit trail: --history and the Prefect artifact say the same, every change with who and why
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from tasks.release.history import read_history

    rows = read_history(settings())
    assert [r["kind"] for r in rows] == [
        "release",
        "forced",
        "release",
        "rollback",
        "rollback",
        "forced",
        "rollback",
    ]
    assert rows[3]["by"] == "oncall@desk" and rows[3]["rolled back from"] == f"v{third}"
    key = ArtifactFilterKey(any_=["release-history-loan-risk"])
    with get_client(sync_client=True) as c:
        shown = [json.loads(a.data) for a in c.read_artifacts(artifact_filter=ArtifactFilter(key=key))]
    assert rows in shown  # the version the last converge wrote (other modules' ledgers share the key)


def test_consecutive_releases_share_the_environment_layer(first_release: dict) -> None:
    """Two releases of different models built one after the other carry the same virtual-environment layer (the
    same diff id, so the registry receives it once): only the application and model layer is new."""
    built = list(dict.fromkeys(e.version for e in ledger() if e.kind in ("release", "forced")))
    assert len(built) == 3, ledger()
    first, forced, third = built  # the rollback test built the third while the forced one's image was there
    digests = {e.version: e.digest for e in ledger()}
    layers = {
        v: client().images.get(f"{remote()}@{digests[v]}").attrs["RootFS"]["Layers"] for v in (forced, third)
    }
    base = client().images.get(settings().release.base_image).attrs["RootFS"]["Layers"]
    assert layers[forced][: len(base)] == layers[third][: len(base)] == base
    venv = len(base) + 1  # the final stage: the user's layer, then /opt/venv, then the application
    assert layers[forced][: venv + 1] == layers[third][: venv + 1]
    assert layers[forced][venv + 1 :] != layers[third][venv + 1 :]


def running_latest_answers(version: str) -> None:
    """The registry's ``latest`` runs and reports ``version``."""
    from tasks.release.container import remove_container, run_container, wait_healthy
    from tasks.release.push import pull_image

    s = settings()
    ref = pull_image(client(), s.release.image_registry, s.release.image_repository, "latest", s.release.registry_username,
                     s.release.registry_password.get_secret_value())  # fmt: skip
    running = run_container(ref, client=client(), name_prefix="loan-risk-it-rollback")
    try:
        wait_healthy(running.base_url, timeout_s=90, container=running)
        info = httpx.get(f"{running.base_url}/model/info", timeout=30).json()
    finally:
        remove_container(running)
        remove_local_image(f"{remote()}:latest")
    assert str(info["version"]) == version


def remove_local_image(ref: str) -> None:
    from tasks.release.engine import remove_local_image as remove

    remove(client(), ref)


def test_bundle_that_does_not_reproduce_its_reference_never_builds(first_release: dict) -> None:
    """A bundle whose recorded predictions its own model cannot reproduce is refused at build time, and the
    failed build leaves no image behind."""
    from flows.deploy import deploy_flow
    from tasks.release.ledger import ReleaseFailed

    def skew(bundle: Path) -> None:
        ref = json.loads((bundle / "reference.json").read_text())
        ref["probabilities"] = [min(1.0, p + 0.01) for p in ref["probabilities"]]
        (bundle / "reference.json").write_text(json.dumps(ref))

    before, latest = champion(), registry_tag("latest")
    version = register_variant(first_release["model_version"], skew)
    with pytest.raises(ReleaseFailed, match=r"^build: ") as info:
        deploy_flow(model_version=version)
    assert info.value.committed == "no"
    assert_nothing_moved(before, latest, version)
    assert info.value.facts["build_id"] and build_leftovers(info.value.facts["build_id"]) == []


@pytest.mark.nightly
def test_training_hands_a_promoted_model_to_the_deploy_flow(first_release: dict) -> None:
    """A training run with deploy required: the gate promotes (lenient here, whatever the champion), and the
    training flow's deploy releases the new version; the outcome is recorded on the training run."""
    from mlflow import MlflowClient

    from flows.training import training_flow

    result = training_flow(source="sample", deploy=True)
    assert result["promoted"], result["reasons"]
    deploy = result["deploy"]
    assert deploy["status"] == "released" and deploy["model_version"] == result["model_version"]
    assert champion() == result["model_version"] and registry_tag("latest") == deploy["digest"]
    tags = MlflowClient(tracking_uri=settings().tracking_uri).get_run(result["run_id"]).data.tags
    assert tags["deploy.status"] == "released" and tags["deploy.digest"] == deploy["digest"]
