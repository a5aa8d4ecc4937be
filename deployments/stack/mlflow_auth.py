"""The tracking server's accounts in MLflow's auth app (``mlflow server --app-name basic-auth``).

python -m deployments.stack.mlflow_auth config --out FILE --database-uri URI   # the app's ini (0600)
python -m deployments.stack.mlflow_auth accounts --tracking-uri URL            # pipeline and reader
"""

from __future__ import annotations

import argparse
import configparser
import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

logger = logging.getLogger("deployments.stack.mlflow_auth")

PIPELINE_USER = "loan-risk-pipeline"
READER_USER = "loan-risk-reader"
ADMIN_USER = "loan-risk-admin"
# (username variable, password variable, default username) of the admin, the pipeline and the reader
ACCOUNT_ENV = (
    ("MLFLOW_AUTH_ADMIN_USERNAME", "MLFLOW_AUTH_ADMIN_PASSWORD", ADMIN_USER),
    ("LOANRISK_MLFLOW_USERNAME", "LOANRISK_MLFLOW_PASSWORD", PIPELINE_USER),
    ("LOANRISK_MLFLOW_READER_USERNAME", "LOANRISK_MLFLOW_READER_PASSWORD", READER_USER),
)


@dataclass(frozen=True)
class Account:
    username: str
    password: str = field(repr=False)


def write_config(path: Path, database_uri: str) -> Path:
    """The auth app's ini: READ for every signed-in user by default, the users kept in ``database_uri``
    (MLflow reads the admin's credentials from MLFLOW_AUTH_ADMIN_*)."""
    config = configparser.ConfigParser()
    config["mlflow"] = {
        "default_permission": "READ",
        "database_uri": database_uri,
        "authorization_function": "mlflow.server.auth:authenticate_request_basic_auth",
        "grant_default_workspace_access": "false",
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as fh:
        config.write(fh)
    os.chmod(path, 0o600)
    return path


def ensure_accounts(tracking_uri: str, admin: Account, users: Sequence[Account]) -> list[str]:
    """Create each of ``users`` unless it exists (signed in as ``admin``); the names created."""
    from mlflow.server.auth.routes import CREATE_USER, GET_USER
    from mlflow.utils.rest_utils import MlflowHostCreds, http_request, verify_rest_response

    creds = MlflowHostCreds(tracking_uri, username=admin.username, password=admin.password)
    created = []
    for user in users:
        found = http_request(creds, GET_USER, "GET", params={"username": user.username})
        if found.status_code != 404:  # RESOURCE_DOES_NOT_EXIST: create it; any other failure raises
            verify_rest_response(found, GET_USER)
            continue
        body = {"username": user.username, "password": user.password}
        verify_rest_response(http_request(creds, CREATE_USER, "POST", json=body), CREATE_USER)
        created.append(user.username)
    return created


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deployments.stack.mlflow_auth", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    cfg = sub.add_parser("config", help="write the auth app's ini")
    cfg.add_argument("--out", required=True, type=Path)
    cfg.add_argument(
        "--database-uri", help="where the app keeps its users (default: $MLFLOW_AUTH_DATABASE_URI)"
    )
    acc = sub.add_parser("accounts", help="create the pipeline and reader accounts unless they exist")
    acc.add_argument("--tracking-uri", required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.command == "config":
        if not (uri := args.database_uri or os.environ.get("MLFLOW_AUTH_DATABASE_URI")):
            parser.error("--database-uri (or MLFLOW_AUTH_DATABASE_URI) is needed")
        logger.info("wrote %s", write_config(args.out, uri))
        return 0
    if missing := [password for _, password, _ in ACCOUNT_ENV if not os.environ.get(password)]:
        raise SystemExit(f"{missing[0]} is not set")
    admin, *users = (Account(os.environ.get(u) or default, os.environ[p]) for u, p, default in ACCOUNT_ENV)
    created = ensure_accounts(args.tracking_uri, admin, users)
    logger.info("accounts created: %s", ", ".join(created) or "none (all existed)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
