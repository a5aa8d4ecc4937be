"""gunicorn settings of the prediction service (``gunicorn -c serving/gunicorn_conf.py``).

Environment: ``LOANRISK_BIND`` (default ``0.0.0.0:$PORT``), ``LOANRISK_WORKERS`` (or ``WEB_CONCURRENCY``; 2),
``LOANRISK_THREADS`` (2), ``LOANRISK_TIMEOUT`` (60 s), ``LOANRISK_LOG_LEVEL``, ``PROMETHEUS_MULTIPROC_DIR``,
``LOANRISK_RELOAD_SYNC_DIR`` (a temporary folder when unset; :mod:`serving.reload`)."""

from __future__ import annotations

import gc
import os
import shutil
import tempfile
from pathlib import Path

# One BLAS thread per worker: the reasons' matrix products are small, and OpenBLAS's spinning threads fought
# the requests and the other workers for the cores. Set before numpy is imported.
for _name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_name, "1")

from gunicorn import util  # noqa: E402
from gunicorn.glogging import Logger  # noqa: E402
from gunicorn.http import wsgi  # noqa: E402


def _int(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    try:
        return int(raw) if raw else default
    except ValueError:
        raise SystemExit(f"{name} must be an integer, got {raw!r}") from None


wsgi_app = "serving.app:create_app()"
pythonpath = str(Path(__file__).resolve().parent.parent)
bind = os.environ.get("LOANRISK_BIND") or f"0.0.0.0:{_int('PORT', 8080)}"
workers = _int("LOANRISK_WORKERS", _int("WEB_CONCURRENCY", 2))
# gthread keeps HTTP connections alive between requests (sync workers close each one).
worker_class = os.environ.get("LOANRISK_WORKER_CLASS", "gthread")
threads = _int("LOANRISK_THREADS", 2)
timeout = _int("LOANRISK_TIMEOUT", 60)
graceful_timeout = 30
keepalive = 5
preload_app = False  # each worker loads its own model (and its own metric values)
worker_tmp_dir = "/dev/shm" if os.path.isdir("/dev/shm") else None  # None: gunicorn's default

# The app logs each request (one JSON line); gunicorn's own logs go out as JSON too.
accesslog = None
errorlog = "-"
loglevel = os.environ.get("LOANRISK_LOG_LEVEL", "info").lower()
_JSON = {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stderr"}
logconfig_dict = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"json": {"()": "serving.logs.JsonFormatter"}},
    "handlers": {"console": _JSON, "error_console": dict(_JSON)},  # "console": the root logger's in gunicorn
    "loggers": {
        "gunicorn.error": {"level": loglevel.upper(), "handlers": ["error_console"], "propagate": False},
        # off: the app writes the one access line per request (gunicorn's would add the client address)
        "gunicorn.access": {"level": "CRITICAL", "handlers": [], "propagate": False},
    },
}


# gunicorn's logger without its access log (which would build its atoms for every request)
logger_class = type("AppWritesAccessLog", (Logger,), {"access_log_enabled": False})


class OneSendResponse(wsgi.Response):
    """gunicorn's response, sending headers and a whole ``bytes`` body in one ``sendall`` (else as usual)."""

    def write(self, arg: bytes) -> None:
        whole = type(arg) is bytes and arg and self.response_length == len(arg)  # the body in one bytes
        if self.headers_sent or not whole or self.chunked or self._omits_body:
            return super().write(arg)
        lines = self.default_headers()
        lines.extend([f"{k}: {v}\r\n" for k, v in self.headers])  # send_headers' formatting
        head = util.to_bytestring("{}\r\n".format("".join(lines)), "latin-1")
        self.headers_sent = True
        self.sent += len(arg)
        util.write(self.sock, head + arg)


wsgi.Response = OneSendResponse  # wsgi.create() builds each request's response from this module name

_state: dict[str, str] = {}
# Emptied before the workers fork: a previous run's metric files, a sync folder's target and worker states.
_STALE = {"PROMETHEUS_MULTIPROC_DIR": ("*.db",), "LOANRISK_RELOAD_SYNC_DIR": ("worker-*.json", "target.json")}


def on_starting(server) -> None:  # noqa: ANN001 - gunicorn's Arbiter
    """Before the workers fork: fresh metric files and a reload sync folder they all share."""
    for variable, patterns in _STALE.items():
        if folder := os.environ.get(variable, "").strip():
            Path(folder).mkdir(parents=True, exist_ok=True)
            for stale in [p for pattern in patterns for p in Path(folder).glob(pattern)]:
                stale.unlink(missing_ok=True)
    if not os.environ.get("LOANRISK_RELOAD_SYNC_DIR", "").strip():
        _state["sync_dir"] = tempfile.mkdtemp(prefix="loanrisk-sync-")  # removed on exit
        os.environ["LOANRISK_RELOAD_SYNC_DIR"] = _state["sync_dir"]


def post_worker_init(worker) -> None:  # noqa: ANN001 - gunicorn's Worker
    """Keep the loaded app and model out of every garbage collection."""
    gc.collect()
    gc.freeze()


def worker_exit(server, worker) -> None:  # noqa: ANN001
    from serving.predlog import close_all

    close_all()


def child_exit(server, worker) -> None:  # noqa: ANN001
    """Drop a dead worker's live gauges and its state in the sync folder."""
    if sync_dir := os.environ.get("LOANRISK_RELOAD_SYNC_DIR"):
        for state in Path(sync_dir).glob(f"worker-{worker.pid}-*.json"):
            state.unlink(missing_ok=True)
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)


def on_exit(server) -> None:  # noqa: ANN001
    if sync_dir := _state.get("sync_dir"):
        shutil.rmtree(sync_dir, ignore_errors=True)
