"""Run a command with the Compose secrets as its environment: each file ``/run/secrets/NAME`` becomes ``NAME``.

    python -m deployments.stack.secret_env prefect server start ...

Compose mounts a secret as a file, so its value is in no ``docker inspect``, compose file or image; the servers
and clients of the stack (Prefect, MLflow, libpq's ``PGPASSWORD``) read their secrets from the environment, so
this wrapper puts the files there for the one process it execs. A value already in the environment wins; a
folder other than ``/run/secrets`` may be named with ``LOANRISK_SECRETS_FROM``.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

DEFAULT_DIR = Path("/run/secrets")
_NAME = re.compile(r"^[A-Z_][A-Z0-9_]*$")


def secret_environment(folder: Path) -> dict[str, str]:
    """``{NAME: value}`` of every file in ``folder`` whose name is an environment variable's (value stripped)."""
    if not folder.is_dir():
        return {}
    return {
        path.name: path.read_text().strip()
        for path in sorted(folder.iterdir())
        if path.is_file() and _NAME.match(path.name)
    }


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["--"]:
        args = args[1:]
    if not args:
        sys.stderr.write("usage: python -m deployments.stack.secret_env COMMAND [ARG...]\n")
        return 2
    folder = Path(os.environ.get("LOANRISK_SECRETS_FROM") or DEFAULT_DIR)
    env = {**secret_environment(folder), **{k: v for k, v in os.environ.items() if v}}
    os.execvpe(args[0], args, env)
    return 127  # not reached: execvpe replaces this process or raises


if __name__ == "__main__":
    sys.exit(main())
