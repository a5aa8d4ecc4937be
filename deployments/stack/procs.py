"""The stack's child processes: each in a session of its own, carrying ``LOANRISK_STACK_ID=<id>``; ``down``
stops the recorded groups, then whatever still carries the marker (MLflow's ``huey_consumer`` leaves its
group), never another stack's or developer's process."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

MARKER = "LOANRISK_STACK_ID"


def free_port(host: str = "127.0.0.1") -> int:
    """A port nobody listens on now (bound to 0, then released)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def port_open(host: str, port: int, timeout: float = 1.0) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=timeout):
        return True
    return False


def spawn(cmd: list[str], env: Mapping[str, str], log_path: Path, cwd: Path) -> int:
    """Start ``cmd`` detached in a session of its own, output appended to ``log_path``; its PID."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        kwargs: dict[str, Any] = {"stdin": subprocess.DEVNULL, "stdout": log, "stderr": subprocess.STDOUT}
        return subprocess.Popen(cmd, cwd=cwd, env=dict(env), start_new_session=True, **kwargs).pid


def alive(pid: int | None) -> bool:
    """Whether ``pid`` names a running process (a zombie is not running)."""
    with contextlib.suppress(OSError):  # /proc/None or /proc/0 does not exist either
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0] not in "ZX"
    return False


def carries(pid: int, stack_id: str) -> bool:
    """Whether process ``pid`` carries this stack's marker (so a recycled PID is never ours by mistake)."""
    with contextlib.suppress(OSError):
        return f"{MARKER}={stack_id}".encode() in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return False


def marked(stack_id: str) -> list[int]:
    """Every live process that carries this stack's marker, except this process."""
    pids = (int(e.name) for e in Path("/proc").iterdir() if e.name.isdigit())
    return [p for p in pids if p != os.getpid() and carries(p, stack_id) and alive(p)]


def _terminate(pids: list[int], timeout: float, group: bool) -> None:
    """SIGTERM ``pids`` (their process groups when ``group``), SIGKILL those alive after ``timeout``."""
    kill = os.killpg if group else os.kill
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 10.0 if group else 5.0)):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                kill(pid, sig)
        deadline = time.monotonic() + wait
        while pids:
            for pid in pids:  # collect our own children (started in this process), so none stays a zombie
                with contextlib.suppress(ChildProcessError, OSError):
                    os.waitpid(pid, os.WNOHANG)
            pids = [p for p in pids if alive(p)]
            if not pids or time.monotonic() > deadline:
                break
            time.sleep(0.2)


def stop(pid: int | None, stack_id: str, timeout: float = 20.0) -> bool:
    """Stop the process group ``pid`` leads if it carries the marker (TERM, then KILL); True when stopped."""
    if not pid or not alive(pid) or not carries(pid, stack_id):
        return False
    _terminate([pid], timeout, group=True)
    return True


def sweep(stack_id: str, timeout: float = 15.0) -> list[int]:
    """Stop every process still carrying the marker (TERM, then KILL); returns their PIDs."""
    found = marked(stack_id)
    _terminate(found, timeout, group=False)
    return found


def wait_until(
    check: Callable[[], bool], timeout: float, what: str, fail: Callable[[], Any] | None = None
) -> None:
    """Poll ``check`` until it holds; ``fail`` (returning a reason or None) aborts early."""
    t0 = time.monotonic()
    while not check():
        if reason := fail() if fail else None:
            raise RuntimeError(f"{what}: {reason}")
        if time.monotonic() - t0 > timeout:
            raise RuntimeError(f"{what}: not ready in {timeout:.0f}s")
        time.sleep(0.5)


def tail(path: Path, lines: int = 30) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    return "(no log)"
