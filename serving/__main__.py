"""``python -m serving --bundle DIR``: run the service locally under gunicorn (or ``--server flask``)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from serving.config import ServiceConfig

CONF = Path(__file__).resolve().with_name("gunicorn_conf.py")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m serving", description="Serve a loan-risk model bundle.")
    parser.add_argument("--bundle", required=True, type=Path, help="model bundle directory")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument(
        "--workers", type=int, default=None, help="gunicorn workers (default: LOANRISK_WORKERS or 2)"
    )
    parser.add_argument("--server", choices=("gunicorn", "flask"), default="gunicorn")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    bundle = args.bundle.resolve()
    if not bundle.is_dir():
        sys.stderr.write(f"error: bundle directory {bundle} does not exist\n")
        return 2
    env = dict(os.environ, LOANRISK_BUNDLE_DIR=str(bundle))
    if args.server == "flask":
        os.environ.update(env)
        from serving.app import create_app

        create_app(ServiceConfig.from_env()).run(host=args.host, port=args.port, threaded=True)
        return 0
    command = [sys.executable, "-m", "gunicorn", "--config", str(CONF), "--bind", f"{args.host}:{args.port}"]
    if args.workers:
        command += ["--workers", str(args.workers)]
    os.execvpe(sys.executable, command, env)  # replaces this process: signals reach gunicorn directly
    return 0  # pragma: no cover


if __name__ == "__main__":
    sys.exit(main())
