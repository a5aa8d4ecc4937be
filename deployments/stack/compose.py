"""What ``compose.yaml`` needs before ``docker-compose up``: its secrets, its ``.env`` and its three images.

python -m deployments.stack.compose init  [--dir deployments/stack]  # secrets/ and .env, only what is missing
python -m deployments.stack.compose build [--base-image IMAGE] [--tag latest]
"""

from __future__ import annotations

import argparse
import logging
import os
import secrets
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

logger = logging.getLogger("deployments.stack.compose")

STACK_DIR = Path(__file__).resolve().parent
# each secret's file under secrets/ (compose.yaml's top-level `secrets:` names the same files)
SECRETS = (
    "postgres-password",
    "registry-password",
    "prefect-auth-string",
    "mlflow-admin-password",
    "mlflow-pipeline-password",
    "mlflow-reader-password",
    "mlflow-flask-secret-key",
    "pseudonym-key",
)
SECRET_MARKERS = ("PASSWORD", "_TOKEN", "SECRET_KEY", "PSEUDONYM_KEY", "AUTH_STRING")  # never in .env
# the stack's images besides the training image: name -> Dockerfile under images/
IMAGES = {"loan-risk-postgres": "postgres.Dockerfile", "loan-risk-registry": "registry.Dockerfile"}
DEFAULT_ENV = {
    "LOANRISK_STACK_BIND": "127.0.0.1",
    "POSTGRES_PORT": "5432",
    "PREFECT_PORT": "4200",
    "MLFLOW_PORT": "5000",
    "REGISTRY_PORT": "5001",
    "SERVICE_PORT": "8080",
    "WORKERS": "2",
    "LOANRISK_TRAINING_IMAGE": "loan-risk-training:latest",
    "LOANRISK_POSTGRES_IMAGE": "loan-risk-postgres:latest",
    "LOANRISK_REGISTRY_IMAGE": "loan-risk-registry:latest",
    "LOANRISK_BASE_IMAGE": "python:3.11-slim",
    "DOCKER_SOCKET": "/var/run/docker.sock",
}


def secret_value(name: str) -> str:
    """A new value for the secret ``name`` (the Prefect auth string is ``user:password``)."""
    if name == "pseudonym-key" and (given := os.environ.get("LOANRISK_PSEUDONYM_KEY")):
        from serving.privacy import given_key

        given_key(given)  # refuses a short or published key, saying how to make one
        return given
    token = secrets.token_hex(32)
    return f"loan-risk:{token}" if name == "prefect-auth-string" else token


def write_secrets(folder: Path) -> list[str]:
    """Each missing secret file of :data:`SECRETS` in ``folder``; the names written. The files are 0644 in the
    0700 folder: Compose (without Swarm) mounts them as they are, and the containers' uid 10001 reads them."""
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o700)
    written = [n for n in SECRETS if not ((folder / n).is_file() and (folder / n).read_text().strip())]
    for name in written:  # in the 0700 folder: no one else reads it before its chmod
        (folder / name).write_text(secret_value(name))
        (folder / name).chmod(0o644)
    return written


def write_env(path: Path, overrides: Mapping[str, str] | None = None) -> dict[str, str]:
    """``.env`` with :data:`DEFAULT_ENV`, the group owning the engine's socket (the worker joins it to build
    and push; '0' if unknown) and ``overrides``; values already in the file are kept. Refuses a secret-looking
    key (secrets live in files)."""
    given = {**DEFAULT_ENV, **(overrides or {})}
    try:
        given.setdefault("DOCKER_GID", str(os.stat(given["DOCKER_SOCKET"]).st_gid))
    except OSError:
        given.setdefault("DOCKER_GID", "0")
    lines = path.read_text().splitlines() if path.is_file() else []
    pairs = (line.split("=", 1) for line in lines if "=" in line)
    values = {k.strip(): v.strip() for k, v in pairs if not k.strip().startswith("#")}
    values |= {k: v for k, v in given.items() if k not in values}
    if leaked := [k for k in values if any(m in k for m in SECRET_MARKERS)]:
        raise SystemExit(f"{path} holds {', '.join(leaked)}: secrets go in files under secrets/, not in .env")
    header = "# The Compose stack's knobs (no secrets: those are files in secrets/). Made by\n"
    header += "#   python -m deployments.stack.compose init\n"
    path.write_text(header + "".join(f"{k}={v}\n" for k, v in values.items()))
    return values


def build(base_image: str | None, tag: str = "latest") -> dict[str, str]:
    """Build the training image and :data:`IMAGES` on the engine ``DOCKER_HOST`` names; ``{image: id}``."""
    from deployments.stack import image
    from tasks.release.build import build_image
    from tasks.release.engine import get_client

    logger.info("building loan-risk-training:%s", tag)
    built = {"loan-risk-training": image.build(f"loan-risk-training:{tag}", base_image=base_image)}
    buildargs, client = {"BASE_IMAGE": base_image} if base_image else {}, get_client()
    for name, dockerfile_name in IMAGES.items():
        logger.info("building %s:%s", name, tag)
        built[name] = build_image(
            STACK_DIR, name, [tag], buildargs, client=client, dockerfile=f"images/{dockerfile_name}"
        )
    return built


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deployments.stack.compose", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    init = sub.add_parser("init", help="secrets/ and .env for compose.yaml (only what is missing)")
    init.add_argument("--dir", type=Path, default=STACK_DIR, help="where .env and secrets/ go")
    init.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a new .env value")
    bld = sub.add_parser("build", help="the training, PostgreSQL and registry images")
    bld.add_argument("--base-image", default=None, help="default: the Dockerfiles' (python:3.11-slim)")
    bld.add_argument("--tag", default="latest")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[compose] %(message)s", stream=sys.stderr)
    if args.command == "init":
        written = write_secrets(args.dir / "secrets")
        write_env(args.dir / ".env", dict(item.split("=", 1) for item in args.set))
        logger.info("secrets made: %s; .env at %s", ", ".join(written) or "none", args.dir / ".env")
        return 0
    for name, image_id in build(args.base_image, args.tag).items():
        sys.stdout.write(f"{name}:{args.tag} {image_id}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
