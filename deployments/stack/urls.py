"""Where the stack's services are (:class:`StackUrls`) and how healthy (:class:`ServiceStatus`)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from deployments.stack import procs

DEFAULT_POOL = "loan-risk-pool"


@dataclass(frozen=True)
class StackUrls:
    """Where the stack's services are, and the environment that points the project at them."""

    prefect_api_url: str
    mlflow_tracking_uri: str
    optuna_storage: str
    postgres_url: str
    registry: str | None
    registry_username: str | None
    registry_password: str | None = field(repr=False)
    pseudonym_key: str = field(repr=False)
    pool: str = DEFAULT_POOL
    prefect_auth_string: str | None = field(default=None, repr=False)  # "user:password" (Basic)
    mlflow_username: str | None = None  # the pipeline's account on the tracking server
    mlflow_password: str | None = field(default=None, repr=False)
    mlflow_reader_username: str | None = None  # an account that may read but not move aliases or tags
    mlflow_reader_password: str | None = field(default=None, repr=False)

    def env(self) -> dict[str, str]:
        """The settings a client, a worker or a flow run needs: URLs, registry, the shared pseudonym key."""
        out = {
            "PREFECT_API_URL": self.prefect_api_url,
            "MLFLOW_TRACKING_URI": self.mlflow_tracking_uri,
            "LOANRISK_OPTUNA_STORAGE": self.optuna_storage,
            "LOANRISK_PSEUDONYM_KEY": self.pseudonym_key,
            "LOANRISK_WORK_POOL": self.pool,
            # a promoted model that cannot ship fails its run here (never a silent "deploy skipped")
            "LOANRISK_DEPLOY_MODE": "required",
        }
        if self.prefect_auth_string:
            out["PREFECT_API_AUTH_STRING"] = self.prefect_auth_string
        if self.mlflow_username:
            out["MLFLOW_TRACKING_USERNAME"] = self.mlflow_username
            out["MLFLOW_TRACKING_PASSWORD"] = self.mlflow_password or ""
        if self.registry:
            out["LOANRISK_IMAGE_REGISTRY"] = self.registry
            out["LOANRISK_REGISTRY_USERNAME"] = self.registry_username or ""
            out["LOANRISK_REGISTRY_PASSWORD"] = self.registry_password or ""
        return out

    def client_env(self, home: Path, **extra: str) -> dict[str, str]:
        """This process's environment without its own Prefect/MLflow/LOANRISK settings, pointed at the stack,
        with a Prefect home and state folder of its own under ``home`` (for a CLI call or a worker)."""
        own = ("PREFECT_", "MLFLOW_", "LOANRISK_")
        base = {k: v for k, v in os.environ.items() if not k.startswith(own) and k != procs.MARKER}
        homes = {"PREFECT_HOME": str(home / "prefect"), "LOANRISK_STATE_DIR": str(home / "state")}
        return {**base, **self.env(), **homes, "DO_NOT_TRACK": "1", **extra}


@dataclass
class ServiceStatus:
    name: str
    url: str
    healthy: bool
    pid: int | None
    detail: str = ""


def basic(auth_string: str | None) -> tuple[str, str] | None:
    """httpx's Basic credentials from a Prefect API auth string ``user:password``."""
    user, _, password = (auth_string or "").partition(":")
    return (user, password) if auth_string else None


def http_status(url: str, auth: tuple[str, str] | None = None) -> int:
    try:
        return httpx.get(url, timeout=5, auth=auth).status_code
    except httpx.HTTPError:
        return 0
