"""Container health check: exit 0 when ``GET /health`` answers 200 (port: ``LOANRISK_BIND`` or ``PORT``)."""

from __future__ import annotations

import os
import sys
import urllib.request


def health_url() -> str:
    bind = os.environ.get("LOANRISK_BIND", "")
    port = bind.rsplit(":", 1)[1] if ":" in bind else os.environ.get("PORT", "8080")
    return f"http://127.0.0.1:{port}/health"


def main() -> int:
    try:  # URLError and HTTPError are OSErrors
        timeout = float(os.environ.get("HEALTHCHECK_TIMEOUT", "3"))
        with urllib.request.urlopen(health_url(), timeout=timeout) as r:
            return 0 if r.status == 200 else 1
    except (OSError, ValueError):
        return 1


if __name__ == "__main__":
    sys.exit(main())
