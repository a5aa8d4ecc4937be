"""``python -m deployments.stack up|status|env|down``: the shared stack as local processes.

    up      start what is not running (idempotent), deploy the flows to the pool, start N workers; prints status
    status  each service's URL, health and PID; exit 0 when all are healthy, 1 otherwise
    env     ``export`` lines that point a shell at the stack (``eval "$(python -m deployments.stack env)"``)
    down    stop everything ``up`` started, nothing else (``--purge`` also removes the stack's data)

The state folder (``--state-dir``, else ``LOANRISK_STACK_DIR``, else ``<repo>/.state/stack``) holds the data, the
logs and ``stack.json`` (ports, PIDs and the generated passwords; mode 0600).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from deployments.stack.launcher import REPO_ROOT, Stack
from deployments.stack.urls import DEFAULT_POOL, as_dict


def _print_status(stack: Stack, as_json: bool) -> int:
    rows = stack.status()
    if as_json:
        print(json.dumps(as_dict(rows)), flush=True)
    elif not rows:
        print(f"no stack in {stack.dir}", flush=True)
    else:
        for r in rows:
            health = "healthy" if r.healthy else "DOWN"
            print(f"{r.name:<10} {health:<8} {r.url:<40} pid {r.pid or '-':<8} {r.detail}", flush=True)
    return 0 if rows and all(r.healthy for r in rows) else 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deployments.stack", description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["up", "status", "env", "down"])
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=Path(os.environ.get("LOANRISK_STACK_DIR") or REPO_ROOT / ".state" / "stack"),
    )
    parser.add_argument("--workers", type=int, default=2, help="process workers on the pool (default 2)")
    parser.add_argument("--host", default="127.0.0.1", help="address the servers bind to and the URLs name")
    parser.add_argument("--pool", default=DEFAULT_POOL)
    parser.add_argument("--no-ui", action="store_true", help="Prefect server without its web UI")
    parser.add_argument("--no-registry", action="store_true", help="do not start the image registry")
    parser.add_argument("--purge", action="store_true", help="down: also remove the stack's data")
    parser.add_argument("--json", action="store_true", help="status: one JSON document")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[stack] %(message)s", stream=sys.stderr)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    stack = Stack(
        args.state_dir,
        workers=args.workers,
        host=args.host,
        pool=args.pool,
        ui=not args.no_ui,
        registry=not args.no_registry,
    )
    try:
        if args.command == "up":
            stack.up()
            return _print_status(stack, args.json)
        if args.command == "status":
            return _print_status(stack, args.json)
        if args.command == "env":
            for key, value in stack.urls().env().items():
                print(f"export {key}={shlex.quote(value)}", flush=True)
            return 0
        stopped = stack.down(purge=args.purge)
        print(json.dumps({"stopped": stopped, "purged": args.purge}), flush=True)
        return 0
    except RuntimeError as exc:
        logging.getLogger("deployments.stack").error("%s", exc)
        return 1


if __name__ == "__main__":
    sys.exit(main())
