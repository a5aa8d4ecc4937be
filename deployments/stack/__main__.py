"""``python -m deployments.stack up|status|env|down``: the shared stack as local processes (docs/team-stack.md).

``status`` exits 1 unless all are healthy; the state folder: ``--state-dir``, else ``LOANRISK_STACK_DIR``, else
``<repo>/.state/stack``."""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import sys
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from deployments.stack.launcher import DEFAULT_POOL, REPO_ROOT, Stack


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deployments.stack", description="The stack as processes")
    add = parser.add_argument
    add("command", choices=["up", "status", "env", "down"])
    state_dir = Path(os.environ.get("LOANRISK_STACK_DIR") or REPO_ROOT / ".state/stack")
    add("--state-dir", type=Path, default=state_dir)
    add("--workers", type=int, default=2, help="process workers on the pool (default 2)")
    add("--host", default="127.0.0.1", help="address the servers bind to and the URLs name")
    add("--pool", default=DEFAULT_POOL)
    add("--no-ui", action="store_true", help="Prefect server without its web UI")
    add("--no-registry", action="store_true", help="do not start the image registry")
    add("--purge", action="store_true", help="down: also remove the stack's data")
    add("--json", action="store_true", help="status: one JSON document")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[stack] %(message)s", stream=sys.stderr)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    options = {"host": args.host, "pool": args.pool, "ui": not args.no_ui, "registry": not args.no_registry}
    stack = Stack(args.state_dir, workers=args.workers, **options)
    try:
        if args.command == "env":
            for key, value in stack.urls().env().items():
                print(f"export {key}={shlex.quote(value)}", flush=True)
            return 0
        if args.command == "down":
            print(json.dumps({"stopped": stack.down(purge=args.purge), "purged": args.purge}), flush=True)
            return 0
        if args.command == "up":
            stack.up()
        rows = stack.status()
        if args.json:
            print(json.dumps([asdict(r) for r in rows]), flush=True)
        elif not rows:
            print(f"no stack in {stack.dir}", flush=True)
        for r in [] if args.json else rows:
            health = "healthy" if r.healthy else "DOWN"
            print(f"{r.name:<10} {health:<8} {r.url:<40} pid {r.pid or '-':<8} {r.detail}", flush=True)
        return 0 if rows and all(r.healthy for r in rows) else 1
    except RuntimeError as exc:
        logging.getLogger("deployments.stack").error("%s", exc)
        return 1


if __name__ == "__main__":
    sys.exit(main())
