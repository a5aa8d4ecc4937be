"""Acceptance (issue 8, item 5): no personal or identifier value of the source files leaves the feature boundary.

From a small sample whose ``anon_ssn``, ``loanId`` and ``clarityFraudId`` values are all known (a few rows broken
so the quarantine is used), the real training flow runs (2 trials, ``--no-deploy``) in a subprocess with its own
state folder, the serving image is built from the registered bundle on the shared engine, and then every one of
those values is searched for in: the bundle, the whole state folder (MLflow artifact store and database, the
quarantine folder, Optuna's and Prefect's databases), every layer of ``docker save``, the flow's stdout/stderr,
and Prefect's run logs and artifacts. Zero hits; the same search over the source files finds them (the control).
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import uuid
from collections import Counter
from pathlib import Path

import docker
import docker.errors
import pytest

from tasks.data.sample import generate
from tasks.registry.versions import download_bundle
from tasks.release.build import build_image
from tasks.release.build_context import prepare_build_context
from tasks.settings import Settings
from tests.infra.docker_fixtures import DockerServices, docker_services  # noqa: F401
from tests.privacy_scan import KnownValues, Scan

pytestmark = [pytest.mark.docker, pytest.mark.slow, pytest.mark.nightly, pytest.mark.timeout(2400)]

REPO_ROOT = Path(__file__).resolve().parents[2]
WHEEL_CACHE = Path(os.environ.get("LOANRISK_WHEEL_CACHE") or REPO_ROOT / ".state" / "wheels")
REPOSITORY = "loanrisk-privacy-test"


def _break_cells(path: Path, column: str, value: str, rows: list[int]) -> None:
    """Overwrite ``column`` with ``value`` in the given data rows (the generated files never quote)."""
    lines = path.read_text().splitlines(keepends=True)
    index = lines[0].rstrip("\n").split(",").index(column)
    for row in rows:
        cells = lines[row + 1].rstrip("\n").split(",")
        cells[index] = value
        lines[row + 1] = ",".join(cells) + "\n"
    path.write_text("".join(lines))


def _source(folder: Path) -> Path:
    generate(folder, scale=0.02, seed=11)
    _break_cells(folder / "loan.csv", "apr", "not-a-number", [3, 500, 1_000, 2_000, 5_000])
    _break_cells(folder / "payment.csv", "paymentAmount", "n/a", [10, 20])
    _break_cells(folder / "clarity_underwriting_variables.csv", "clearfraudscore", "high", [7])
    return folder


def _run_flow(source: Path, state: Path) -> tuple[dict, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LOANRISK_", "MLFLOW_", "PREFECT_"))}
    env |= {
        "LOANRISK_STATE_DIR": str(state),
        "PREFECT_HOME": str(state / "prefect"),
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",
        "LOANRISK_MAX_ITERATIONS": "120",
        "LOANRISK_TASK_RETRY_DELAY_SECONDS": "0",
    }
    proc = subprocess.run(
        [sys.executable, "-m", "flows.training", "--source", str(source), "--n-trials", "2", "--no-deploy"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
        check=False,
    )
    logs = proc.stdout + proc.stderr
    assert proc.returncode == 0, logs[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1]), logs


def _prefect_rows(state: Path) -> tuple[list[str], list[str]]:
    """Prefect's run log messages and artifacts (data and description) from the flow's database."""
    db = sqlite3.connect(state / "prefect" / "prefect.db")
    try:
        logs = [row[0] or "" for row in db.execute("SELECT message FROM log")]
        artifacts = [
            f"{row[0] or ''}\n{row[1] or ''}" for row in db.execute("SELECT data, description FROM artifact")
        ]
    finally:
        db.close()
    return logs, artifacts


def _created_image_ids(build_log: list[str]) -> list[str]:
    """Ids of the images a classic-builder build created (cache hits and FROM images were not created by it)."""
    created, step, cached = [], "", False
    for line in build_log:
        text = line.strip()
        if text.startswith("Step "):
            step, cached = text.split(" : ", 1)[-1], False
        elif text == "---> Using cache":
            cached = True
        elif text.startswith("---> ") and len(text.split()) == 2 and not step.upper().startswith("FROM"):
            if not cached:
                created.append(text.split()[1])
            cached = False
    return created


def _remove_images(client: docker.DockerClient, image_ids: list[str]) -> None:
    """Remove what this test built, children first; images others depend on are left (the engine refuses)."""
    for image_id in reversed(image_ids):
        try:
            client.images.remove(image_id, force=False, noprune=True)
        except docker.errors.ImageNotFound:
            pass
        except docker.errors.APIError as exc:
            if exc.status_code != 409:
                raise


def test_no_personal_value_reaches_bundle_mlflow_image_logs_or_artifacts(
    docker_services: DockerServices,  # noqa: F811
    tmp_path: Path,
) -> None:
    source = _source(tmp_path / "source")
    known = KnownValues.from_source(source)
    control = Scan(known)
    control.tree(source, "source files")
    assert {kind for _, kind, _ in control.hits} == {"anon_ssn", "loanId", "clarityFraudId"}, (
        control.summary()
    )

    state = tmp_path / "state"
    result, flow_logs = _run_flow(source, state)
    assert result["model_version"]
    quarantine = state / "quarantine"
    assert sum(len(p.read_text().splitlines()) - 1 for p in quarantine.glob("*.quarantine.csv")) >= 8

    bundle = download_bundle(Settings(state_dir=state), result["model_version"], tmp_path / "bundle")
    context = prepare_build_context(bundle, tmp_path / "context", WHEEL_CACHE)
    client = docker.DockerClient(base_url=docker_services.docker_host, timeout=900)
    build_log: list[str] = []
    tag = uuid.uuid4().hex[:12]
    image_id = ""
    try:
        image_id = build_image(
            context,
            REPOSITORY,
            [tag],
            buildargs={
                "BASE_IMAGE": docker_services.base_image,
                "MODEL_NAME": "loan-risk",
                "MODEL_VERSION": result["model_version"],
            },
            log=build_log.append,
            client=client,
        )
        image_tar = tmp_path / "image.tar"
        with image_tar.open("wb") as fh:
            for chunk in client.images.get(image_id).save(named=False):
                fh.write(chunk)

        scan = Scan(known)
        scan.tree(bundle, "bundle")
        scan.tree(state, "state folder (MLflow, quarantine, Optuna, Prefect)")
        scan.tar("image.tar", path=image_tar)
        scan.data("flow stdout/stderr", flow_logs.encode(), "flow logs")
        prefect_logs, artifacts = _prefect_rows(state)
        assert prefect_logs and artifacts, "the flow wrote no Prefect logs or artifacts: nothing was searched"
        scan.data("prefect run logs", "\n".join(prefect_logs).encode(), "prefect logs")
        scan.data("prefect artifacts", "\n".join(artifacts).encode(), "prefect artifacts")
        sys.stdout.write(f"\npersonal-data search: {scan.summary()}; control: {control.summary()}\n")

        assert scan.layers > 0 and scan.by_place["bundle"] >= 3 and scan.by_place["image"] > 1000
        where = Counter((w.replace(str(tmp_path), ""), k) for w, k, _ in scan.hits)
        assert not scan.hits, f"{len(scan.hits)} hits (file, kind: count): {where.most_common(12)}"
    finally:
        try:
            client.images.remove(f"{REPOSITORY}:{tag}", force=True, noprune=True)
        except docker.errors.ImageNotFound:
            pass
        _remove_images(client, [*_created_image_ids(build_log), *([image_id] if image_id else [])])
        client.close()
