"""``python -m deployments.stack.secret_env COMMAND...``: run COMMAND with each Compose secret file
``/run/secrets/NAME`` (or under ``LOANRISK_SECRETS_FROM``) as variable ``NAME``; a value already set wins."""

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
    os.execvpe(args[0], args, {**secrets, **{k: v for k, v in os.environ.items() if v}})  # never returns


if __name__ == "__main__":
    sys.exit(main())
