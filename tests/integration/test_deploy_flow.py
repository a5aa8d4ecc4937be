"""The deploy flow against a real Docker engine and a real registry with password authentication.

A copy of the session's trained bundle (tests/training.py) is registered as a promoted version and the deploy
flow releases it; then, in order: the release leaves only its tagged image; the gate refuses a rejected version until it is forced with a reason; a re-run of a released
version completes what is missing without building; rollbacks walk back release by release, by digest, and a
version rolled back from is not released again unless forced (then without a build). The fault rows (push
refused, broken images, GitHub errors, MLflow dying, concurrent deploys) are in ``tests/faults/``.
"""

from __future__ import annotations

import getpass
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
    """The session's trained bundle, registered here as a promoted version, deployed: built, tested, pushed,
    released."""
    from flows.deploy import deploy_flow

    version = register_copy(settings(), trained_run.bundle_dir)
    return {"model_version": version, "deploy": deploy_flow(model_version=version)}


def history() -> list[dict]:
    from tasks.release.record import read_history

    return read_history(settings())


def notes_artifacts(version: str, digest: str) -> list:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from tasks.release.record import notes_artifact_key

    key = notes_artifact_key(settings().model_name, version, digest)
    with get_client(sync_client=True) as c:
        return c.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])))


def version_tags(version: str) -> dict[str, str]:
    from tasks import registry

    return registry.get_version(settings(), version).tags


def test_a_promoted_version_is_built_tested_pushed_and_released(
    first_release: dict,
    github: GitHubStandIn,  # noqa: F811
) -> None:
    deploy = first_release["deploy"]
    version = first_release["model_version"]
    assert (
        deploy["status"] == "released" and deploy["build"] == "built" and deploy["model_version"] == version
    )
    assert champion() == version
    assert registry_tag(version) == deploy["digest"] and registry_tag("latest") == deploy["digest"]
    assert deploy["smoke"]["rows_compared"] > 0 and deploy["smoke"]["max_abs_diff"] <= 1e-6
    assert not smoke_containers()
    tags = version_tags(version)
    assert tags["release.image"] == deploy["image"] and tags["release.digest"] == deploy["digest"]
    assert tags["release.kind"] == "release" and tags["release.by"].startswith(f"{getpass.getuser()}@")
    (entry,) = history()
    assert (entry["version"], entry["digest"], entry["kind"]) == (version, deploy["digest"], "release")
    (sent,) = github.posts(f"loan-risk-v{version}")
    assert sent["path"] == "/repos/lending/loan-risk/releases" and sent["auth"] == "Bearer test-token"
    assert deploy["image"] in sent["body"]["body"] and deploy["digest"] in sent["body"]["body"]
    (notes,) = notes_artifacts(version, deploy["digest"])
    assert f"v{version}" in notes.data and deploy["digest"] in notes.data
    assert deploy["lock"]["acquired_at"] < deploy["lock"]["released_at"]


def test_release_leaves_only_its_tagged_image(first_release: dict) -> None:
    """No dangling build stage (1.26 GB before this fix), no other image: only registry/repository:version."""
    deploy = first_release["deploy"]
    assert deploy["build_id"] and build_leftovers(deploy["build_id"]) == []
    image = client().images.get(deploy["image"])
    assert {r for r in local_refs() if "@" not in r} == {deploy["image"]}
    from tasks.release.image import LABEL_BUILD_ID, LABEL_MODEL_NAME, LABEL_MODEL_VERSION

    labels = image.labels
    assert (
        labels[LABEL_MODEL_VERSION] == first_release["model_version"]
        and labels[LABEL_MODEL_NAME] == "loan-risk"
    )
    assert LABEL_BUILD_ID not in labels  # the build-stage label stays in the build stage
    assert not [k for k in labels if k.startswith("ai.") and not k.startswith("ai.loanrisk.")]


def test_pushed_image_pulls_back_and_answers(first_release: dict) -> None:
    """Remove the local image, pull it from the registry by digest with credentials, run it, ask /predict."""
    from serving.bundle import load_bundle
    from tasks import registry
    from tasks.release.image import (
        pull_by_digest,
        remove_container,
        remove_local_image,
        run_container,
        wait_healthy,
    )

    s = settings()
    version, deploy = first_release["model_version"], first_release["deploy"]
    remove_local_image(client(), deploy["image"])
    ref = pull_by_digest(client(), s.image_registry, s.image_repository, deploy["digest"], s.registry_username,
                         s.registry_password.get_secret_value())  # fmt: skip
    bundle = load_bundle(registry.download_bundle(s, version, Path(s.state_dir) / "check-bundle"))
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

    released = deploy_flow(
        model_version=rejected, force=True, reason="INC-1234: emergency fix, approved by risk"
    )
    assert released["status"] == "released" and released["kind"] == "forced" and champion() == rejected
    assert released["previous_champion"] == first
    tags = version_tags(rejected)
    assert tags["release.forced"] == "true" and tags["release.forced_reason"].startswith("INC-1234")
    assert (
        tags["release.forced_by"].startswith(f"{getpass.getuser()}@")
        and "flow run" in tags["release.forced_by"]
    )
    assert "promotion decision is 'rejected'" in tags["release.forced_override"]
    assert history()[-1]["kind"] == "forced" and history()[-1]["reason"].startswith("INC-1234")
    (sent,) = github.posts(f"loan-risk-v{rejected}")
    assert "Forced release" in sent["body"]["body"] and "INC-1234" in sent["body"]["body"]
    assert tags["release.forced_by"] in sent["body"]["body"]
    (notes,) = notes_artifacts(rejected, version_tags(rejected)["release.digest"])
    assert "INC-1234" in notes.data


def test_rerun_of_a_released_version_completes_what_is_missing(
    first_release: dict,
    github: GitHubStandIn,  # noqa: F811
) -> None:
    """After the commit point, steps went missing (latest elsewhere, no GitHub release): a re-run completes them
    without a build, and creates nothing twice; a second re-run does nothing."""
    from flows.deploy import deploy_flow
    from tasks.release.image import registry_retag

    s = settings()
    version = champion()
    digest = version_tags(version)["release.digest"]
    first_digest = first_release["deploy"]["digest"]
    registry_retag(s.image_registry, s.image_repository, first_digest, "latest", s.registry_username,
                   s.registry_password.get_secret_value())  # fmt: skip
    tag = f"loan-risk-v{version}"
    github.releases.pop(tag)
    posts, entries, refs = len(github.posts(tag)), len(history()), local_refs()

    done = deploy_flow(model_version=version)
    assert done["status"] == "already-released" and done["build"] == "none" and done["digest"] == digest
    assert registry_tag("latest") == digest and registry_tag(version) == digest
    assert len(github.posts(tag)) == posts + 1 and tag in github.releases
    assert len(history()) == entries and len(notes_artifacts(version, digest)) == 1 and local_refs() == refs

    again = deploy_flow(model_version=version)
    assert again["status"] == "already-released" and len(github.posts(tag)) == posts + 1
    assert len(history()) == entries and len(notes_artifacts(version, digest)) == 1


def test_rollback_walks_back_by_digest_and_never_returns(first_release: dict) -> None:
    from flows.deploy import DeployError, deploy_flow
    from tasks.release.image import remove_local_image
    from tasks.release.record import NotDeployable

    first, forced = first_release["model_version"], champion()
    third = register_variant(first)
    assert deploy_flow(model_version=third)["build"] == "built" and champion() == third
    digests = {v: version_tags(v)["release.digest"] for v in (first, forced, third)}
    remove_local_image(client(), f"{remote()}:{forced}")  # the rollback must pull it, by digest

    back = deploy_flow(rollback=True, reason="INC-2: v3 misprices")
    assert (back["status"], back["rolled_back_from"], back["model_version"]) == ("rolled-back", third, forced)
    assert champion() == forced and registry_tag("latest") == digests[forced]
    assert f"{remote()}@{digests[forced]}" in local_refs()  # pulled by digest
    assert history()[-1]["kind"] == "rollback" and history()[-1]["from"] == third
    assert version_tags(third)["release.rolled_back_to"] == forced

    again = deploy_flow(rollback=True)
    assert again["rolled_back_from"] == forced and again["model_version"] == first  # not back to v3
    assert champion() == first and registry_tag("latest") == digests[first]
    with pytest.raises(DeployError, match=rf"nothing to roll back to from champion v{first}"):
        deploy_flow(rollback=True)
    assert champion() == first
    entries = len(history())  # a re-run for a champion a rollback made adds no second entry
    assert deploy_flow(model_version=first)["status"] == "already-released" and len(history()) == entries

    running_latest_answers(first)
    with pytest.raises(NotDeployable, match=rf"v{third} is not deployable: it was rolled back from"):
        deploy_flow(model_version=third)
    redo = deploy_flow(model_version=third, force=True, reason="INC-2 resolved: v3 pricing confirmed")
    assert redo["build"] == "reused" and redo["digest"] == digests[third] and champion() == third
    assert registry_tag("latest") == digests[third]


def test_consecutive_releases_share_the_environment_layer(first_release: dict) -> None:
    """Two releases of different models built one after the other carry the same virtual-environment layer (the
    same diff id, so the registry receives it once): only the application and model layer is new."""
    built = list(dict.fromkeys(e["version"] for e in history() if e["kind"] in ("release", "forced")))
    assert len(built) == 3, history()
    first, forced, third = built  # the rollback test built the third while the forced one's image was there
    layers = {
        v: client().images.get(f"{remote()}@{version_tags(v)['release.digest']}").attrs["RootFS"]["Layers"]
        for v in (forced, third)
    }
    base = client().images.get(settings().base_image).attrs["RootFS"]["Layers"]
    assert layers[forced][: len(base)] == layers[third][: len(base)] == base
    venv = len(base) + 1  # the final stage: the user's layer, then /opt/venv, then the application
    assert layers[forced][: venv + 1] == layers[third][: venv + 1]
    assert layers[forced][venv + 1 :] != layers[third][venv + 1 :]


def running_latest_answers(version: str) -> None:
    """The registry's ``latest`` runs and reports ``version``."""
    from tasks.release.image import pull_image, remove_container, run_container, wait_healthy

    s = settings()
    ref = pull_image(client(), s.image_registry, s.image_repository, "latest", s.registry_username,
                     s.registry_password.get_secret_value())  # fmt: skip
    running = run_container(ref, client=client(), name_prefix="loan-risk-it-rollback")
    try:
        wait_healthy(running.base_url, timeout_s=90, container=running)
        info = httpx.get(f"{running.base_url}/model/info", timeout=30).json()
    finally:
        remove_container(running)
        remove_local_image(f"{remote()}:latest")
    assert str(info["version"]) == version


def remove_local_image(ref: str) -> None:
    from tasks.release.image import remove_local_image as remove

    remove(client(), ref)


def test_bundle_that_does_not_reproduce_its_reference_never_builds(first_release: dict) -> None:
    """A bundle whose recorded predictions its own model cannot reproduce is refused at build time, and the
    failed build leaves no image behind."""
    from flows.deploy import DeployError, deploy_flow

    def skew(bundle: Path) -> None:
        ref = json.loads((bundle / "reference.json").read_text())
        ref["probabilities"] = [min(1.0, p + 0.01) for p in ref["probabilities"]]
        (bundle / "reference.json").write_text(json.dumps(ref))

    before, latest = champion(), registry_tag("latest")
    version = register_variant(first_release["model_version"], skew)
    with pytest.raises(DeployError, match="deploy step 'build' failed") as info:
        deploy_flow(model_version=version)
    assert_nothing_moved(before, latest, version)
    assert info.value.build_id and build_leftovers(info.value.build_id) == []


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
