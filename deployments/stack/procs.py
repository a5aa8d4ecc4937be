"""Child processes of the stack: started in sessions of their own, marked, and stopped by PID.

Every process the launcher starts, and every process those start, carries ``LOANRISK_STACK_ID=<id>``. ``down``
stops the recorded PIDs by process group, then sweeps ``/proc`` for the marker: a child that left its group
(MLflow's ``huey_consumer``) is stopped too, a process of another stack or developer never is.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping
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
    """Start ``cmd`` detached in a session of its own, output appended to ``log_path``; returns its PID.

    The launcher does not wait for it: ``up`` returns while the services keep running, and a later ``down`` (in
    another process) stops them by the PID recorded in the state file.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            cmd,
            cwd=cwd,
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return proc.pid


def _environ(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return b""


def is_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[-1].split()[0] in ("Z", "X")


def alive(pid: int | None) -> bool:
    """Whether ``pid`` names a running process (a zombie is not running)."""
    return bool(pid) and not is_zombie(int(pid or 0))


def carries(pid: int, stack_id: str) -> bool:
    """Whether process ``pid`` carries this stack's marker (so a recycled PID is never ours by mistake)."""
    return f"{MARKER}={stack_id}".encode() in _environ(pid).split(b"\0")


def marked(stack_id: str) -> list[int]:
    """Every live process that carries this stack's marker, except this process."""
    pids = (int(e.name) for e in Path("/proc").iterdir() if e.name.isdigit())
    return [p for p in pids if p != os.getpid() and carries(p, stack_id) and not is_zombie(p)]


def _reap(pid: int) -> None:
    """Collect ``pid`` if it is our own child (the launcher started it in this process), so it is not a zombie."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def wait_gone(pids: Iterable[int], timeout: float) -> list[int]:
    """Wait until none of ``pids`` is alive; returns those still alive at the deadline."""
    left = list(pids)
    deadline = time.monotonic() + timeout
    while left:
        for pid in left:
            _reap(pid)
        left = [p for p in left if alive(p)]
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    return left


def _signal(pid: int, sig: int, group: bool) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        if group:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)


def stop(pid: int | None, stack_id: str, timeout: float = 20.0) -> bool:
    """SIGTERM the process group ``pid`` leads (only when ``pid`` carries the marker), SIGKILL it after
    ``timeout``. Returns True when something was stopped."""
    if not pid or not alive(pid) or not carries(pid, stack_id):
        return False
    _signal(pid, signal.SIGTERM, group=True)
    if wait_gone([pid], timeout):
        _signal(pid, signal.SIGKILL, group=True)
        wait_gone([pid], 10)
    return True


def sweep(stack_id: str, timeout: float = 15.0) -> list[int]:
    """Stop every process still carrying the marker (TERM, then KILL); returns their PIDs."""
    found = marked(stack_id)
    for pid in found:
        _signal(pid, signal.SIGTERM, group=False)
    for pid in wait_gone(found, timeout):
        _signal(pid, signal.SIGKILL, group=False)
    wait_gone(found, 5)
    return found


def wait_until(
    check: Callable[[], bool], timeout: float, what: str, fail: Callable[[], Any] | None = None
) -> float:
    """Poll ``check`` until it holds; ``fail`` (returning a reason or None) aborts early. Returns seconds waited."""
    t0 = time.monotonic()
    while True:
        if check():
            return time.monotonic() - t0
        reason = fail() if fail else None
        if reason:
            raise RuntimeError(f"{what}: {reason}")
        if time.monotonic() - t0 > timeout:
            raise RuntimeError(f"{what}: not ready in {timeout:.0f}s")
        time.sleep(0.5)


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
