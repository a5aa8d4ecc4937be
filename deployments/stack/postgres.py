"""The stack's own PostgreSQL cluster from the OS packages: ``initdb``, ``pg_ctl start``/``stop``, a database
per service. As root each command runs as ``postgres`` (``runuser``), in a folder that user reaches."""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tasks.errors import PermanentError

DATABASES = ("prefect", "mlflow", "mlflow_auth", "optuna")


class PostgresMissing(PermanentError):
    """The PostgreSQL server binaries (or the postgres user) are not installed."""


def bindir() -> Path:
    """Where ``initdb``/``pg_ctl`` are: ``LOANRISK_PG_BINDIR``, else Debian's newest, else ``PATH``."""
    if os.environ.get("LOANRISK_PG_BINDIR"):
        return Path(os.environ["LOANRISK_PG_BINDIR"])
    if versions := sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4])):
        return Path(versions[-1]).parent
    if found := shutil.which("initdb"):
        return Path(found).resolve().parent
    raise PostgresMissing(
        "PostgreSQL is not installed (no initdb): apt-get install postgresql "
        "(or bash tests/infra/services.sh install)"
    )


def _postgres_user() -> pwd.struct_passwd | None:
    """The ``postgres`` account when running as root (every command then runs as it), else None."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam("postgres")
    except KeyError as exc:
        raise PostgresMissing("no postgres user: apt-get install postgresql") from exc


def _run(cmd: list[str], env: Mapping[str, str] | None = None, timeout: float = 120) -> str:
    full = ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd
    env = {**os.environ, **(env or {})}
    proc = subprocess.run(
        full, env=env, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL, cwd="/"
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:2])} exited {proc.returncode}: {proc.stderr.strip()[-2000:]}")
    return proc.stdout


def cluster_dir(state_dir: Path, stack_id: str) -> Path:
    """The folder of the cluster: ``<state_dir>/postgres`` when the postgres user can reach it."""
    user = _postgres_user()
    for parent in [state_dir, *state_dir.parents] if user else []:
        st = parent.stat() if parent.exists() else None
        if st and st.st_uid != user.pw_uid and not st.st_mode & 0o001:
            return Path(tempfile.gettempdir()) / f"loanrisk-stack-pg-{stack_id}"
    return state_dir / "postgres"


def init(cluster: Path, password: str) -> bool:
    """``initdb`` the cluster unless it exists; True when made here."""
    if ((data := cluster / "data") / "PG_VERSION").exists():
        return False
    cluster.mkdir(parents=True, exist_ok=True)
    os.chmod(cluster, 0o700)
    (pwfile := cluster / ".pw").write_text(password + "\n")
    if user := _postgres_user():
        for path in (cluster, pwfile):
            os.chown(path, user.pw_uid, user.pw_gid)
    options = ["-D", str(data), "-U", "postgres", "--auth-host=scram-sha-256", f"--pwfile={pwfile}"]
    options += ["--auth-local=" + ("peer" if user else "trust"), "--encoding=UTF8", "--no-instructions"]
    try:
        _run([str(bindir() / "initdb"), *options])
    finally:
        pwfile.unlink(missing_ok=True)
    # Clients on other machines (workers) connect over TCP with the password; loopback is already allowed.
    with open(data / "pg_hba.conf", "a") as hba:
        hba.write("host all all 0.0.0.0/0 scram-sha-256\nhost all all ::/0 scram-sha-256\n")
    return True


def start(cluster: Path, host: str, port: int, env: Mapping[str, str]) -> None:
    """``pg_ctl start`` and wait for it (``-w``); its processes carry ``env`` (the stack's marker)."""
    loopback = {"127.0.0.1": "127.0.0.1", "localhost": "127.0.0.1", "0.0.0.0": "*", "*": "*"}
    addresses = loopback.get(host, f"127.0.0.1,{host}")
    options = f"-p {port} -k {cluster} -c listen_addresses='{addresses}' -c max_connections=200"
    pg_ctl = [str(bindir() / "pg_ctl"), "-D", str(cluster / "data"), "-o", options]
    _run([*pg_ctl, "-l", str(cluster / "log"), "-w", "-t", "120", "start"], env=env, timeout=180)


def stop(cluster: Path) -> bool:
    """``pg_ctl stop -m fast`` when it runs; True when it was stopped here."""
    if pid(cluster) is None:
        return False
    _run([str(bindir() / "pg_ctl"), "-D", str(cluster / "data"), "-m", "fast", "-w", "stop"], timeout=120)
    return True


def pid(cluster: Path) -> int | None:
    """The postmaster's PID when it runs (first line of postmaster.pid)."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        value = int((cluster / "data" / "postmaster.pid").read_text().splitlines()[0])
        os.kill(value, 0)
        return value
    return None


def _connect(password: str, host: str, port: int, timeout: int) -> Any:
    import psycopg2

    return psycopg2.connect(
        host=host, port=port, user="postgres", password=password, dbname="postgres", connect_timeout=timeout
    )


def ensure_databases(password: str, host: str, port: int) -> None:
    """Create the stack's databases that do not exist yet."""
    with contextlib.closing(_connect(password, host, port, 10)) as conn:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("SELECT datname FROM pg_database")
            have = {row[0] for row in cur.fetchall()}
            for name in (n for n in DATABASES if n not in have):
                cur.execute(f'CREATE DATABASE "{name}"')


def healthy(password: str, host: str, port: int) -> bool:
    with contextlib.suppress(Exception):  # any failure to connect means not healthy
        _connect(password, host, port, 3).close()
        return True
    return False
