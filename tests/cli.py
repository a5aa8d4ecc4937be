"""Running a project command line the way the README does, and reading the one JSON line it prints."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def json_line(module: str, args: list[str], env: Mapping[str, str], timeout: float = 600) -> dict[str, Any]:
    """``python -m module args...`` from the repository root; asserts exit 0 and exactly one stdout line (JSON)."""
    proc = subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=ROOT,
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-2000:]
    lines = [ln for ln in proc.stdout.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stdout
    return json.loads(lines[0])
