"""The release's Docker steps against a real engine and registry: build, run, health, push, verify, pull, and
the failures."""

from __future__ import annotations

import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path

import docker
import docker.errors
import httpx
import pytest

from tasks.release.build import build_image
from tasks.release.container import remove_container, run_container, wait_healthy
from tasks.release.engine import DeployStepError, get_client, remove_local_image
from tasks.release.push import push_image
from tasks.release.registry_api import registry_digest, tag_digest
from tests.infra.docker_fixtures import DockerServices, docker_services  # noqa: F401

pytestmark = [pytest.mark.docker, pytest.mark.timeout(600)]

SERVER = textwrap.dedent(
    """
    import http.server, os, sys

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = b"ok" if self.path == "/health" else os.environ.get("MESSAGE", "hello").encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    port = int(os.environ.get("PORT", "8080"))
    print(f"serving on {port}", flush=True)
    http.server.HTTPServer(("0.0.0.0", port), Handler).serve_forever()
    """
)

DOCKERFILE = textwrap.dedent(
    """
    ARG BASE_IMAGE=python:3.11-slim
    FROM ${BASE_IMAGE}
    COPY server.py /app/server.py
    RUN python3 -c "print('build step ran')"
    EXPOSE 8080
    CMD ["python3", "/app/server.py"]
    """
)


def _context(tmp_path: Path, dockerfile: str = DOCKERFILE) -> Path:
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    # A unique comment defeats the layer cache, so each build really runs its RUN steps.
    (ctx / "server.py").write_text(f"# {uuid.uuid4().hex}\n{SERVER}")
    (ctx / "Dockerfile").write_text(dockerfile)
    return ctx


@pytest.fixture()
def client(docker_services: DockerServices) -> Iterator[docker.DockerClient]:  # noqa: F811
    c = get_client(docker_services.docker_host)
    yield c
    c.close()


@pytest.fixture()
def repo(client: docker.DockerClient, docker_services: DockerServices) -> Iterator[str]:  # noqa: F811
    """A unique repository name; every local tag of it (bare and registry-prefixed) is removed afterwards, with
    the untagged layers under it, so the shared engine keeps nothing of the test."""
    name = f"loan-risk-it-{uuid.uuid4().hex[:8]}"
    yield name
    for image in client.images.list():
        for ref in image.tags:
            if ref.rsplit(":", 1)[0] in (name, f"{docker_services.registry}/{name}"):
                remove_local_image(client, ref)


def test_build_run_push_pull_roundtrip(
    tmp_path: Path,
    client: docker.DockerClient,
    repo: str,
    docker_services: DockerServices,  # noqa: F811
) -> None:
    svc = docker_services
    lines: list[str] = []
    image_id = build_image(
        _context(tmp_path),
        repo,
        ["1.0.0", "latest"],
        buildargs={"BASE_IMAGE": svc.base_image},
        labels={"org.opencontainers.image.version": "1.0.0"},
        log=lines.append,
        client=client,
    )
    assert image_id.startswith("sha256:")
    assert any(line.startswith("Step 1/") for line in lines), lines
    assert "build step ran" in lines
    image = client.images.get(f"{repo}:latest")
    assert image.id == image_id == client.images.get(f"{repo}:1.0.0").id
    assert image.labels["org.opencontainers.image.version"] == "1.0.0"

    with run_container(f"{repo}:1.0.0", env={"MESSAGE": "from-env"}, client=client) as running:
        wait_healthy(running.base_url, timeout_s=60, container=running)
        assert httpx.get(running.base_url + "/").text == "from-env"
        assert "serving on 8080" in running.logs()
    with pytest.raises(docker.errors.NotFound):
        client.containers.get(running.name)

    digest = push_image(client, repo, "1.0.0", svc.username, svc.password, svc.registry)
    assert digest.startswith("sha256:")
    assert registry_digest(svc.registry, repo, "1.0.0", svc.username, svc.password) == digest

    # Drop every local reference so the next run really comes from the registry.
    remote = f"{svc.registry}/{repo}"
    for ref in (f"{repo}:1.0.0", f"{repo}:latest", f"{remote}:1.0.0"):
        assert remove_local_image(client, ref)
    with pytest.raises(docker.errors.ImageNotFound):
        client.images.get(image_id)
    pulled = client.images.pull(
        remote, tag="1.0.0", auth_config={"username": svc.username, "password": svc.password}
    )
    assert f"{remote}@{digest}" in pulled.attrs["RepoDigests"]
    with run_container(f"{remote}:1.0.0", client=client) as again:
        wait_healthy(again.base_url, container=again)
        assert httpx.get(again.base_url + "/").text == "hello"


def test_failing_run_step_raises_build_error_and_keeps_latest(
    tmp_path: Path,
    client: docker.DockerClient,
    repo: str,
    docker_services: DockerServices,  # noqa: F811
) -> None:
    good_id = build_image(
        _context(tmp_path),
        repo,
        ["latest"],
        {"BASE_IMAGE": docker_services.base_image},
        {},
        [].append,
        client=client,
    )
    broken = DOCKERFILE.replace(
        'CMD ["python3", "/app/server.py"]',
        'RUN echo boom-marker >&2 && exit 3\nCMD ["python3", "/app/server.py"]',
    )
    (tmp_path / "broken").mkdir()
    lines: list[str] = []
    with pytest.raises(DeployStepError) as info:
        build_image(
            _context(tmp_path / "broken", broken),
            repo,
            ["2.0.0", "latest"],
            {"BASE_IMAGE": docker_services.base_image},
            {},
            lines.append,
            client=client,
        )
    err = info.value
    assert isinstance(err, DeployStepError) and err.step == "build"
    assert str(err).startswith("[build] Step 6/7 : RUN echo boom-marker >&2 && exit 3 failed: ")
    assert "returned a non-zero code: 3" in str(err)
    assert err.details["build_step"] is not None and "exit 3" in err.details["build_step"]
    assert "boom-marker" in lines and "boom-marker" in err.details["log_tail"]
    assert client.images.get(f"{repo}:latest").id == good_id  # a failed build never moves latest
    with pytest.raises(docker.errors.ImageNotFound):
        client.images.get(f"{repo}:2.0.0")


def test_container_that_exits_at_once_raises_with_logs(
    client: docker.DockerClient,
    docker_services: DockerServices,  # noqa: F811
) -> None:
    running = run_container(
        docker_services.base_image,
        command=["python3", "-c", "import sys; print('crash-marker', flush=True); sys.exit(7)"],
        client=client,
    )
    try:
        with pytest.raises(DeployStepError) as info:
            wait_healthy(running.base_url, timeout_s=30, container=running)
    finally:
        remove_container(running)
    err = info.value
    assert err.step == "run" and str(err).startswith("[run] container exited with exit status 7")
    assert err.details["exit_status"] == 7
    assert "crash-marker" in err.details["logs"] and "crash-marker" in str(err)
    with pytest.raises(docker.errors.NotFound):
        client.containers.get(running.name)
    remove_container(running)  # already gone: no error


def test_missing_image_raises_container_start_error(client: docker.DockerClient) -> None:
    prefix = f"loan-risk-missing-{uuid.uuid4().hex[:6]}"
    with pytest.raises(DeployStepError, match=r"^\[run\] image loan-risk-missing:nope not found"):
        run_container("loan-risk-missing:nope", client=client, name_prefix=prefix)
    assert not client.containers.list(all=True, filters={"label": f"loan-risk.name-prefix={prefix}"})


def test_health_timeout_names_the_url(
    client: docker.DockerClient,
    docker_services: DockerServices,  # noqa: F811
) -> None:
    with run_container(
        docker_services.base_image, command=["sleep", "60"], client=client, name_prefix="loan-risk-sleepy"
    ) as running:
        with pytest.raises(DeployStepError, match=r"/health not healthy after 2s"):
            wait_healthy(running.base_url, timeout_s=2, container=running)


def test_wrong_password_push_is_refused_then_latest_moves_in_the_registry(
    tmp_path: Path,
    client: docker.DockerClient,
    repo: str,
    docker_services: DockerServices,  # noqa: F811
) -> None:
    svc = docker_services
    build_image(
        _context(tmp_path), repo, ["1.0.0"], {"BASE_IMAGE": svc.base_image}, {}, [].append, client=client
    )
    with pytest.raises(DeployStepError) as info:
        push_image(client, repo, "1.0.0", svc.username, "not-the-password", svc.registry)
    assert info.value.step == "push"
    assert "unauthorized" in str(info.value).lower() or "authentication" in str(info.value).lower()
    assert tag_digest(svc.registry, repo, "1.0.0", svc.username, svc.password) is None
    with pytest.raises(DeployStepError, match="has no"):
        registry_digest(svc.registry, repo, "1.0.0", svc.username, svc.password)
    with pytest.raises(DeployStepError, match="HTTP 401"):
        registry_digest(svc.registry, repo, "1.0.0", svc.username, "not-the-password")

    # pushed with the right password, ``latest`` is moved in the registry itself (no push), idempotently
    from tasks.release.registry_api import registry_retag

    digest = push_image(client, repo, "1.0.0", svc.username, svc.password, svc.registry)
    assert tag_digest(svc.registry, repo, "latest", svc.username, svc.password) is None
    assert registry_retag(svc.registry, repo, digest, "latest", svc.username, svc.password) == digest
    assert registry_digest(svc.registry, repo, "latest", svc.username, svc.password) == digest
    assert registry_retag(svc.registry, repo, digest, "latest", svc.username, svc.password) == digest
    with pytest.raises(DeployStepError, match="has no manifest|HTTP 401"):
        registry_retag(svc.registry, repo, digest, "other", svc.username, "not-the-password")


MULTI_STAGE = textwrap.dedent(
    """
    ARG BASE_IMAGE=python:3.11-slim
    FROM ${BASE_IMAGE} AS build
    RUN python3 -c "open('/environment', 'w').write('shared by every build')"
    ARG BUILD_ID=unknown
    LABEL ai.loanrisk.build.id="${BUILD_ID}"
    COPY server.py /stage/server.py
    RUN python3 -c "open('/stage/built', 'w').write('yes')"
    FROM ${BASE_IMAGE}
    COPY --from=build /stage/ /app/
    CMD ["python3", "/app/server.py"]
    """
)


def test_multi_stage_build_leaves_only_the_tagged_image(
    tmp_path: Path,
    client: docker.DockerClient,
    repo: str,
    docker_services: DockerServices,  # noqa: F811
) -> None:
    """The build stage ends dangling in every multi-stage build. A build that succeeds removes its own images of
    it (those after the build id) and keeps the steps before it as the builder's cache, which the next build
    uses; a build that fails leaves nothing it made (nothing carries its build id, no image a step of it
    committed stays) and keeps that cache too, so a failed release does not make the next one rebuild the
    environment."""
    from tasks.release.build import LABEL_BUILD_ID

    def labelled(build_id: str) -> list[str]:
        return [
            i["Id"] for i in client.api.images(all=True, filters={"label": f"{LABEL_BUILD_ID}={build_id}"})
        ]

    def committed(lines: list[str]) -> set[str]:
        return {ln.split()[-1] for ln in lines if ln.startswith(" ---> ") and "Using cache" not in ln}

    def dangling_steps(lines: list[str]) -> list[str]:
        steps = committed(lines)
        dangling = [i["Id"] for i in client.api.images(filters={"dangling": True})]
        return [d for d in dangling if d.removeprefix("sha256:")[:12] in steps]

    args = {"BASE_IMAGE": docker_services.base_image}
    (tmp_path / "first").mkdir()
    lines: list[str] = []
    ok_id = "ok-" + uuid.uuid4().hex
    image_id = build_image(_context(tmp_path / "first", MULTI_STAGE), repo, ["1"], args, {}, lines.append,
                           client=client, build_id=ok_id)  # fmt: skip
    assert client.images.get(f"{repo}:1").id == image_id
    assert f"removed 3 dangling image(s) of build {ok_id}" in lines  # LABEL, COPY, RUN of the build stage
    assert labelled(ok_id) == []
    kept = dangling_steps(lines)  # the steps before the build's own: the environment and the ARG, as cache
    assert len(kept) == 1 and not client.api.inspect_image(kept[0])["Config"]["Labels"], kept

    (tmp_path / "second").mkdir()
    again: list[str] = []
    second_id = "ok-" + uuid.uuid4().hex
    build_image(_context(tmp_path / "second", MULTI_STAGE.replace("yes", "again")), repo, ["2"], args, {},
                again.append, client=client, build_id=second_id)  # fmt: skip
    step = again.index(next(ln for ln in again if "/environment" in ln))
    assert again[step + 1] == " ---> Using cache", again[step : step + 3]  # not run again
    assert kept[0].removeprefix("sha256:").startswith(again[step + 5].split()[-1])  # the ARG's, reused
    assert labelled(second_id) == []

    broken = MULTI_STAGE.replace('CMD ["python3"', 'RUN exit 4\nCMD ["python3"')
    (tmp_path / "broken").mkdir()
    failed: list[str] = []
    build_id = "failed-" + uuid.uuid4().hex
    with pytest.raises(DeployStepError, match="returned a non-zero code: 4"):
        build_image(_context(tmp_path / "broken", broken), repo, ["3"], args, {}, failed.append, client=client,
                    build_id=build_id)  # fmt: skip
    # nothing it made is left; the cache it reused (the environment and the ARG) stays for the next build
    assert labelled(build_id) == [] and dangling_steps(failed) == kept
    assert any("dangling image(s) of build failed-" in ln for ln in failed)
