"""Run a command with the Compose secrets as its environment: each file ``/run/secrets/NAME`` as ``NAME``.

    python -m deployments.stack.secret_env prefect server start ...

Compose mounts a secret as a file (in no ``docker inspect``, compose file or image); the stack's programs read
theirs from the environment. A value already in the environment wins; ``LOANRISK_SECRETS_FROM`` names another
folder.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

_NAME = re.compile(r"^[A-Z_][A-Z0-9_]*$")


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    args = args[1:] if args[:1] == ["--"] else args
    if not args:
        sys.stderr.write("usage: python -m deployments.stack.secret_env COMMAND [ARG...]\n")
        return 2
    folder = Path(os.environ.get("LOANRISK_SECRETS_FROM") or "/run/secrets")
    files = sorted(folder.iterdir()) if folder.is_dir() else []
    secrets = {p.name: p.read_text().strip() for p in files if p.is_file() and _NAME.match(p.name)}
    os.execvpe(args[0], args, {**secrets, **{k: v for k, v in os.environ.items() if v}})
    return 127  # not reached: execvpe replaces this process or raises


if __name__ == "__main__":
    sys.exit(main())
