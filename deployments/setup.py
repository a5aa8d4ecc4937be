"""Create the work pool when it is missing, then apply every deployment in ``prefect.yaml``; idempotent.

    python -m deployments.setup [--pool NAME] [--prefect-file prefect.yaml]
    python -m deployments.setup --prefect-file prefect.docker.yaml --pool-type docker \
        --image loan-risk-training:latest [--network-mode host] [--pass-env NAME ...]

Then reads the deployments back, updates the alert automations and prints one JSON line; exit codes 0 done,
1 deploy failed or a deployment missing, 2 configuration error, 6 credentials refused.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml

from deployments.alerts import DRIFT_DETECTED, api_url, ensure_alerts  # automations: the same server
from tasks.errors import PermanentError

logger = logging.getLogger("deployments.setup")

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_PREFECT_FILE = REPO_ROOT / "prefect.yaml"
POOL_ENV = "LOANRISK_WORK_POOL"
POOL_DESCRIPTIONS = {
    "process": "Runs the loan-risk flows in subprocesses of a worker started from the checkout",
    "docker": "Runs each loan-risk flow run in a container of the training image",
}
DEPLOY_TIMEOUT_S = 600
CREDENTIALS = "PREFECT_API_KEY or PREFECT_API_AUTH_STRING"
# What a flow run in a container needs from the deploying environment (only the names set are passed).
PASS_ENV = (
    "MLFLOW_TRACKING_URI",
    "MLFLOW_TRACKING_USERNAME",
    "MLFLOW_TRACKING_PASSWORD",
    "LOANRISK_OPTUNA_STORAGE",
    "LOANRISK_PSEUDONYM_KEY",
    "LOANRISK_IMAGE_REGISTRY",
    "LOANRISK_REGISTRY_USERNAME",
    "LOANRISK_REGISTRY_PASSWORD",
    "LOANRISK_HF_TOKEN",
    "LOANRISK_GITHUB_TOKEN",
    "LOANRISK_DEPLOY_MODE",
    "PREFECT_API_AUTH_STRING",
)
# Variables whose values are secrets: the pool holds a reference to a Prefect Secret block, which the worker
# resolves when it starts a flow run, never the value (anyone who reads the API reads the pool).
SECRET_MARKERS = ("PASSWORD", "TOKEN", "_KEY", "AUTH_STRING", "SECRET")


def is_secret(name: str) -> bool:
    return any(marker in name for marker in SECRET_MARKERS)


def secret_block_name(name: str) -> str:
    """The Prefect Secret block that holds variable ``name``: ``loan-risk-env-<name>``, lower case, dashes."""
    return "loan-risk-env-" + name.lower().replace("_", "-")


def by_reference(env: dict[str, str]) -> dict[str, str]:
    """``env`` with each secret value saved as a Prefect Secret block and replaced by a template reference."""
    from prefect.blocks.system import Secret

    out = dict(env)
    for name in filter(is_secret, env):
        Secret(value=env[name]).save(secret_block_name(name), overwrite=True)
        out[name] = "{{ prefect.blocks.secret." + secret_block_name(name) + " }}"
    return out


class SetupError(PermanentError):
    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass(frozen=True)
class DeploymentSpec:
    name: str  # the deployment's own name ("retrain"); the flow name comes from the entrypoint's @flow
    entrypoint: str
    pool: str


def load_prefect_file(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise SetupError(f"cannot read {path}: {exc}", 2) from exc
    if not isinstance(data, dict) or not isinstance(data.get("deployments"), list) or not data["deployments"]:
        raise SetupError(f"{path} declares no deployments", 2)
    return data


def deployment_specs(data: dict[str, Any]) -> list[DeploymentSpec]:
    specs = []
    for item in data["deployments"]:
        pool = (item.get("work_pool") or {}).get("name")
        if not item.get("name") or not item.get("entrypoint") or not pool:
            raise SetupError(f"every deployment needs name, entrypoint and work_pool.name: {item!r}", 2)
        specs.append(DeploymentSpec(item["name"], item["entrypoint"], pool))
    return specs


def configured(data: dict[str, Any], pool: str | None = None, cooldown: int | None = None) -> dict[str, Any]:
    """A copy of the prefect.yaml content with every deployment on ``pool`` and drift triggers that fire at
    most once per ``cooldown`` seconds (each when given)."""
    out = json.loads(json.dumps(data))  # plain deep copy; YAML anchors are already expanded
    for item in out["deployments"]:
        item["work_pool"] = {**(item.get("work_pool") or {}), **({"name": pool} if pool else {})}
        for trigger in (item.get("triggers") or []) if cooldown is not None else []:
            if DRIFT_DETECTED in (trigger.get("expect") or []):
                trigger["within"] = int(cooldown)
    return out


@dataclass(frozen=True)
class PoolSpec:
    """The work pool to make: its type and, for ``docker``, what each flow run's container gets."""

    type: str = "process"
    image: str | None = None
    network_mode: str | None = None
    env: dict[str, str] | None = None

    def template(self) -> dict[str, Any]:
        if self.type == "process":
            from prefect.workers.process import ProcessWorker

            return ProcessWorker.get_default_base_job_template()
        from prefect_docker.worker import DockerWorker

        if not self.image:
            raise SetupError("a docker work pool needs --image (the training image, Dockerfile.training)", 2)
        template = DockerWorker.get_default_base_job_template()
        props = template["variables"]["properties"]
        # a flow run in a container ships what it promotes or fails: no silent "deploy skipped"
        env = by_reference({"LOANRISK_DEPLOY_MODE": "required", **(self.env or {})})
        defaults = {"image": self.image, "image_pull_policy": "IfNotPresent", "auto_remove": True, "env": env}
        if self.network_mode:
            defaults["network_mode"] = self.network_mode
        for key, value in defaults.items():
            props[key]["default"] = value
        return template


def ensure_pool(name: str, spec: PoolSpec | None = None) -> bool:
    """Create pool ``name`` of ``spec.type`` unless it exists (a docker pool then gets ``spec``'s template,
    another type is an error); True when created here."""
    from prefect import get_client
    from prefect.client.schemas.actions import WorkPoolCreate, WorkPoolUpdate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    spec = spec or PoolSpec()
    with get_client(sync_client=True) as client:
        try:
            pool = client.read_work_pool(name)
        except ObjectNotFound:
            pass
        else:
            if pool.type != spec.type:
                raise SetupError(
                    f"work pool {name!r} exists with type {pool.type!r}; it must be {spec.type!r}", 2
                )
            if spec.type != "process":
                client.update_work_pool(name, WorkPoolUpdate(base_job_template=spec.template()))
            updated = "" if spec.type == "process" else "; its job template is updated"
            logger.info("work pool %s (%s) exists%s", name, spec.type, updated)
            return False
        description = POOL_DESCRIPTIONS[spec.type]
        create = WorkPoolCreate(
            name=name, type=spec.type, description=description, base_job_template=spec.template()
        )
        try:
            client.create_work_pool(create)
        except ObjectAlreadyExists:  # created meanwhile by a concurrent setup
            logger.info("work pool %s was created concurrently", name)
            return False
        logger.info("created work pool %s (%s)", name, spec.type)
        return True


def run_prefect_deploy(prefect_file: Path) -> None:
    """``prefect --no-prompt deploy --all`` from the repository root; its output goes to the log."""
    cmd = [sys.executable, "-m", "prefect", "--no-prompt", "deploy", "--all", "--prefect-file"]
    cmd.append(str(prefect_file))
    env = {**os.environ, "COLUMNS": os.environ.get("COLUMNS", "160"), "PREFECT_CLI_COLORS": "false"}
    logger.info("running %s (cwd %s)", " ".join(cmd[2:]), REPO_ROOT)
    output = {"stdout": subprocess.PIPE, "stderr": subprocess.STDOUT, "stdin": subprocess.DEVNULL}
    try:
        proc = subprocess.run(cmd, cwd=REPO_ROOT, env=env, text=True, timeout=DEPLOY_TIMEOUT_S, **output)
    except subprocess.TimeoutExpired as exc:
        raise SetupError(f"prefect deploy did not finish in {DEPLOY_TIMEOUT_S}s") from exc
    for line in filter(str.strip, proc.stdout.splitlines()):
        logger.info("  %s", line.rstrip())
    if proc.returncode != 0:
        raise SetupError(f"prefect deploy --all exited {proc.returncode}")
    if "Skipping deployment configuration" in proc.stdout:
        raise SetupError(f"prefect deploy skipped the configuration in {prefect_file} (see the output above)")


def _trigger(automation: Any) -> dict[str, Any]:
    """What a deployment trigger became: name, events expected, posture, threshold, within."""
    trigger = automation.trigger
    within = getattr(trigger, "within", None)
    return {
        "name": automation.name,
        "enabled": automation.enabled,
        "expect": sorted(getattr(trigger, "expect", []) or []),
        "posture": str(getattr(getattr(trigger, "posture", None), "value", "")),
        "threshold": getattr(trigger, "threshold", None),
        "within": within.total_seconds() if within else 0,
    }


def read_back(specs: Sequence[DeploymentSpec], pool: str) -> list[dict[str, Any]]:
    """The applied deployments as the API has them; an error when one is missing."""
    from prefect import get_client
    from prefect.client.schemas import filters as f

    wanted = {s.name for s in specs}
    out = []
    with get_client(sync_client=True) as client:
        for dep in client.read_deployments(
            deployment_filter=f.DeploymentFilter(name=f.DeploymentFilterName(any_=sorted(wanted))),
            work_pool_filter=f.WorkPoolFilter(name=f.WorkPoolFilterName(any_=[pool])),
        ):
            limit, options = dep.global_concurrency_limit, dep.concurrency_options
            automations = client.read_resource_related_automations(f"prefect.deployment.{dep.id}")
            schedules = [
                {k: getattr(s.schedule, k, None) for k in ("cron", "timezone")} | {"active": s.active}
                for s in dep.schedules
            ]
            out.append(
                {
                    "name": f"{client.read_flow(dep.flow_id).name}/{dep.name}",
                    "id": str(dep.id),
                    "work_pool": dep.work_pool_name,
                    "entrypoint": dep.entrypoint,
                    "schedules": schedules,
                    "concurrency_limit": limit.limit if limit else None,
                    "collision_strategy": str(options.collision_strategy.value) if options else None,
                    "parameters": dep.parameters,
                    "triggers": [_trigger(a) for a in automations],
                }
            )
    if missing := wanted - {d["name"].split("/", 1)[1] for d in out}:
        raise SetupError(f"deployments {sorted(missing)} are not on pool {pool!r} after prefect deploy")
    return sorted(out, key=lambda d: d["name"])


def setup(
    pool: str | None = None, prefect_file: Path = DEFAULT_PREFECT_FILE, pool_spec: PoolSpec | None = None
) -> dict[str, Any]:
    """Pool + deployments; returns what ``main`` prints."""
    from tasks.settings import get_settings

    data = load_prefect_file(prefect_file)
    specs = deployment_specs(data)
    declared = {s.pool for s in specs}
    if not (pool := pool or os.environ.get(POOL_ENV)):
        if len(declared) != 1:
            raise SetupError(f"{prefect_file} names several pools {sorted(declared)}; pass --pool", 2)
        (pool,) = declared
    if not (url := api_url()):
        raise SetupError(
            "no Prefect API configured: start a server (prefect server start) and set PREFECT_API_URL, "
            "e.g. http://127.0.0.1:4200/api (or log in to Prefect Cloud)",
            2,
        )
    logger.info("Prefect API %s, work pool %s", url, pool)
    created = ensure_pool(pool, pool_spec)
    cooldown = get_settings().monitoring.drift_cooldown_seconds
    if (wanted := configured(data, pool, cooldown)) == configured(data):
        run_prefect_deploy(prefect_file)
    else:
        with tempfile.TemporaryDirectory(prefix="loanrisk-prefect-") as tmp:
            (changed := Path(tmp) / "prefect.yaml").write_text(yaml.safe_dump(wanted, sort_keys=False))
            what = "deploying a copy of %s with work pool %s, drift cooldown %d s"
            logger.info(what, prefect_file.name, pool, cooldown)
            run_prefect_deploy(changed)
    result = {"api_url": url, "pool": pool, "pool_created": created, "deployments": read_back(specs, pool)}
    return result | {"alerts": ensure_alerts()}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deployments.setup", description=__doc__.splitlines()[0])
    add = parser.add_argument
    add("--pool", help=f"work pool name (default: ${POOL_ENV}, else the one in prefect.yaml)")
    add("--prefect-file", type=Path, default=DEFAULT_PREFECT_FILE, help="default: <repo>/prefect.yaml")
    add("--pool-type", choices=tuple(POOL_DESCRIPTIONS), default="process", help="default: process")
    add("--image", help="docker pool: the training image each flow run runs in")
    add("--network-mode", help="docker pool: the containers' network mode (e.g. host)")
    default = ", ".join(PASS_ENV)
    pass_env = f"docker pool: a variable passed to each flow run's container when set (default: {default})"
    add("--pass-env", action="append", metavar="NAME", help=pass_env)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[setup] %(message)s", stream=sys.stderr)
    env = {n: os.environ[n] for n in args.pass_env or PASS_ENV if os.environ.get(n)}
    spec = PoolSpec(args.pool_type, args.image, args.network_mode, env)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    os.environ.setdefault("DO_NOT_TRACK", "1")
    started = time.monotonic()
    try:
        result = setup(args.pool, args.prefect_file.resolve(), spec)
    except SetupError as exc:
        logger.error("%s", exc)
        return exc.exit_code
    except httpx.HTTPStatusError as exc:
        if exc.response.status_code not in (401, 403):
            raise
        logger.error("the Prefect API refused the credentials (%s): check %s", exc, CREDENTIALS)
        return 6
    logger.info("done in %.1fs", time.monotonic() - started)
    print(json.dumps(result, default=str), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
