"""The tracking server's accounts: MLflow's own authentication app (``mlflow server --app-name basic-auth``).

    python -m deployments.stack.mlflow_auth config --out FILE --database-uri URI   # the app's ini (mode 0600)
    python -m deployments.stack.mlflow_auth accounts --tracking-uri URL             # pipeline and reader accounts

The admin (``MLFLOW_AUTH_ADMIN_USERNAME`` / ``_PASSWORD``) only makes the others; the pipeline
(``LOANRISK_MLFLOW_USERNAME`` / ``_PASSWORD``) holds MANAGE on what it creates; a reader
(``LOANRISK_MLFLOW_READER_USERNAME`` / ``_PASSWORD``) gets READ. Anonymous requests get 401. Each value may
also be given as a file named by ``<NAME>_FILE`` (as Compose mounts secrets).
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

APP = "basic-auth"
DEFAULT_PERMISSION = "READ"
PIPELINE_USER = "loan-risk-pipeline"
READER_USER = "loan-risk-reader"
ADMIN_USER = "loan-risk-admin"


@dataclass(frozen=True)
class Account:
    username: str
    password: str = field(repr=False)


def env_value(name: str, default: str | None = None) -> str | None:
    """``NAME`` from the environment, else the content of the file ``NAME_FILE`` names, else ``default``."""
    if os.environ.get(name):
        return os.environ[name]
    path = os.environ.get(f"{name}_FILE")
    if path:
        return Path(path).read_text().strip()
    return default


def write_config(path: Path, database_uri: str, *, admin: Account | None = None) -> Path:
    """The auth app's ini: READ for every signed-in user by default, the users kept in ``database_uri``. The
    admin's credentials go in only when given (else MLflow reads MLFLOW_AUTH_ADMIN_* itself)."""
    config = configparser.ConfigParser()
    config["mlflow"] = {
        "default_permission": DEFAULT_PERMISSION,
        "database_uri": database_uri,
        "authorization_function": "mlflow.server.auth:authenticate_request_basic_auth",
        "grant_default_workspace_access": "false",
    }
    if admin is not None:
        config["mlflow"]["admin_username"] = admin.username
        config["mlflow"]["admin_password"] = admin.password
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        config.write(fh)
    os.chmod(path, 0o600)
    return path


def ensure_accounts(tracking_uri: str, admin: Account, users: Sequence[Account]) -> list[str]:
    """Create each of ``users`` unless it exists (signed in as ``admin``); the names created."""
    from mlflow.exceptions import MlflowException
    from mlflow.server import get_app_client

    previous = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")}
    os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"] = (
        admin.username,
        admin.password,
    )
    created = []
    try:
        client = get_app_client(APP, tracking_uri=tracking_uri)
        for user in users:
            try:
                client.get_user(user.username)
            except MlflowException as exc:
                if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
                    raise
                client.create_user(user.username, user.password)
                created.append(user.username)
    finally:
        for key, value in previous.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    return created


def accounts_from_env() -> tuple[Account, list[Account]]:
    """The admin and the (pipeline, reader) accounts from the environment (or ``*_FILE`` files)."""
    names = (
        ("MLFLOW_AUTH_ADMIN_USERNAME", "MLFLOW_AUTH_ADMIN_PASSWORD", ADMIN_USER),
        ("LOANRISK_MLFLOW_USERNAME", "LOANRISK_MLFLOW_PASSWORD", PIPELINE_USER),
        ("LOANRISK_MLFLOW_READER_USERNAME", "LOANRISK_MLFLOW_READER_PASSWORD", READER_USER),
    )
    found = []
    for user_var, password_var, default in names:
        password = env_value(password_var)
        if not password:
            raise SystemExit(f"{password_var} (or {password_var}_FILE) is not set")
        found.append(Account(env_value(user_var, default) or default, password))
    return found[0], found[1:]


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
        uri = args.database_uri or env_value("MLFLOW_AUTH_DATABASE_URI")
        if not uri:
            parser.error("--database-uri (or MLFLOW_AUTH_DATABASE_URI[_FILE]) is needed")
        write_config(args.out, uri)
        logger.info("wrote %s", args.out)
        return 0
    admin, users = accounts_from_env()
    created = ensure_accounts(args.tracking_uri, admin, users)
    logger.info("accounts created: %s", ", ".join(created) or "none (all existed)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
