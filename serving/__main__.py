"""``python -m serving --bundle DIR``: run the service locally under gunicorn (or ``--server flask``)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m serving", description="Serve a loan-risk model bundle.")
    parser.add_argument("--bundle", required=True, type=Path, help="model bundle directory")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--workers", type=int, help="gunicorn workers (default: LOANRISK_WORKERS or 2)")
    parser.add_argument("--server", choices=("gunicorn", "flask"), default="gunicorn")
    args = parser.parse_args(argv)
    bundle = args.bundle.resolve()
    if not bundle.is_dir():
        sys.stderr.write(f"error: bundle directory {bundle} does not exist\n")
        return 2
    os.environ["LOANRISK_BUNDLE_DIR"] = str(bundle)
    if args.server == "flask":
        from serving.app import create_app

        create_app().run(host=args.host, port=args.port, threaded=True)
        return 0
    conf = Path(__file__).with_name("gunicorn_conf.py").resolve()
    command = [sys.executable, "-m", "gunicorn", "--config", str(conf), "--bind", f"{args.host}:{args.port}"]
    command += ["--workers", str(args.workers)] if args.workers else []
    os.execv(sys.executable, command)  # replaces this process: signals reach gunicorn directly
    return 0  # pragma: no cover


if __name__ == "__main__":
    sys.exit(main())
