"""The stack's image registry: Docker's distribution (Debian's ``docker-registry``) with htpasswd (bcrypt) auth."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

USER = "loanrisk"


def binaries() -> tuple[str, str] | None:
    """``docker-registry`` and ``htpasswd`` when both are on PATH."""
    binary, htpasswd = shutil.which("docker-registry"), shutil.which("htpasswd")
    return (binary, htpasswd) if binary and htpasswd else None


def write_config(folder: Path, htpasswd: str, address: str, password: str, secret: str) -> Path:
    """The registry's config (storage in ``folder/data``, listening on ``address``) and htpasswd file."""
    (folder / "data").mkdir(parents=True, exist_ok=True)
    hashed = subprocess.run(
        [htpasswd, "-Bbn", USER, password], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    (folder / "htpasswd").write_text(hashed)
    config = folder / "config.yml"
    config.write_text(
        "version: 0.1\nlog: {level: warn, accesslog: {disabled: true}}\n"
        f"storage: {{filesystem: {{rootdirectory: {folder / 'data'}}}, delete: {{enabled: true}}}}\n"
        f"http: {{addr: '{address}', secret: {secret}}}\n"
        f"auth: {{htpasswd: {{realm: loan-risk, path: {folder / 'htpasswd'}}}}}\n"
    )
    return config
