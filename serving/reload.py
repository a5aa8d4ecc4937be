"""Reload across workers: :class:`ModelHolder` holds this worker's model (a reload loads the new bundle fully,
then swaps one reference) and shares reloads through ``LOANRISK_RELOAD_SYNC_DIR``: ``target.json`` (the bundle
to serve, a token per reload) and ``worker-<pid>-<id>.json`` (each worker's state), polled by every worker."""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import orjson

from serving.bundle import BundleError, _write_json, load_bundle
from serving.config import ServiceConfig
from serving.logs import LOGGER_NAME
from serving.metrics import Metrics
from serving.model import ServedModel, check_reference

SYNC_POLL_S = 0.1
RETRY_FIRST_S, RETRY_MAX_S = 0.5, 30.0
TARGET_FILE = "target.json"

logger = logging.getLogger(LOGGER_NAME)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError as exc:
        return isinstance(exc, PermissionError)  # another user's process
    return True


def _read(path: Path) -> dict[str, Any] | None:
    try:
        data = orjson.loads(path.read_bytes())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


class ModelHolder:
    """The current model, swapped whole by :meth:`load`; this worker's state in the sync folder if any."""

    def __init__(self, config: ServiceConfig, metrics: Metrics) -> None:
        self.config, self.metrics, self.sync_dir = config, metrics, config.reload_sync_dir
        self.current: ServedModel | None = None
        self.load_error: str | None = None
        self.worker_id = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.health: tuple[int, bytes] = (503, b"")
        self._state_lock = threading.RLock()
        self._reload_lock = (
            threading.RLock()
        )  # a load; a reload's load + publish, or the watcher's load + record
        # what this worker was asked to serve (the sync target) and how far it got
        self._state = {"state": "loading"} | dict.fromkeys(("token", "wanted_version", "error"))
        self._attempts = 0
        self._refresh()

    def load(self, directory: str | Path, origin: str) -> ServedModel:
        """Load and check a bundle fully, then swap it in; :class:`BundleError` keeps the old one."""
        with self._reload_lock:
            t0 = time.perf_counter()
            try:
                bundle = load_bundle(directory, thread_count=self.config.model_threads)
                checked = check_reference(bundle) if self.config.verify_reference else 0
                served = ServedModel.from_bundle(bundle)
            except Exception as exc:  # a BundleError, corrupt model file, unreadable directory, odd path...
                known = isinstance(exc, BundleError)
                self.metrics.reloads.labels("failed").inc()
                error = str(exc) if known else repr(exc)
                logger.error("model load failed", extra={"fields": {"origin": origin, "error": error}})
                if known:
                    raise
                raise BundleError(f"{directory}: cannot load bundle ({type(exc).__name__}: {exc})") from exc
            # the swap: requests in flight keep the model they took
            previous, self.current, self.load_error = self.current, served, None
            self.metrics.set_model(
                served.name, served.version, (previous.name, previous.version or "") if previous else None
            )
            self.metrics.reloads.labels("ok").inc()
            ms = round((time.perf_counter() - t0) * 1000, 1)
            fields = {"origin": origin, "model_name": served.name, "model_version": served.version}
            fields |= {"previous_version": previous and previous.version, "bundle_dir": str(served.directory)}
            fields |= {"reference_rows_checked": checked, "load_ms": ms}
            logger.info("model loaded", extra={"fields": fields})
            self._refresh()
            return served

    def start(self) -> None:
        """Serve the published target if any, else the configured bundle."""
        self._write_state()  # seen by a reload in progress before this worker reads the target
        target, directory = self.read_target(), self.config.bundle_dir
        if target is not None:
            self._apply(target, origin="start")
        if directory is None and target is None:
            self.load_error = "no model bundle configured (set LOANRISK_BUNDLE_DIR or POST /model/reload)"
            logger.warning("no model loaded", extra={"fields": {"reason": self.load_error}})
        elif directory is not None and (target is None or self.current is None):
            try:
                self.load(directory, origin="start")
            except BundleError as exc:
                self.load_error = str(exc)
        if target is None:
            self._set_state("loaded" if self.current else "failed", None, None, self.load_error)
        if self.sync_dir is not None:
            threading.Thread(target=self._watch, name="bundle-sync", daemon=True).start()

    def state(self) -> dict[str, Any]:
        served = self.current
        with self._state_lock:
            state = {"worker": self.worker_id, "pid": os.getpid(), **self._state, "attempts": self._attempts}
        state["model_version"] = served.version if served else None
        state["bundle_dir"] = str(served.directory) if served else None
        return state | {"updated_at": time.time()}

    def _set_state(self, state: str, token: str | None, wanted: str | None, error: str | None) -> None:
        """Record this worker's progress with the target ``token``, in memory and on disk."""
        with self._state_lock:
            self._state = {"state": state, "token": token, "wanted_version": wanted, "error": error}
            self._refresh()
            self._write_state()

    def _refresh(self) -> None:
        """Recompute the /health answer (once per change, not per request)."""
        served, state = self.current, self._state
        if served is None:
            body = {"status": "unavailable", "error": "model_unavailable", "message": self.load_error or ""}
        else:
            body = {"status": "ok", "model_name": served.name, "model_version": served.version}
            if state["state"] == "failed" and state["token"] is not None:
                body |= {"status": "degraded"} | {k: state[k] for k in ("wanted_version", "error")}
        self.health = (200 if served else 503, orjson.dumps(body, default=str))

    def _write_state(self) -> None:
        if self.sync_dir is None:
            return
        try:
            _write_json(self.sync_dir / f"worker-{self.worker_id}.json", self.state())
        except OSError as exc:
            logger.warning("could not record worker state", extra={"fields": {"error": repr(exc)}})

    def read_target(self) -> dict[str, Any] | None:
        data = None if self.sync_dir is None else _read(self.sync_dir / TARGET_FILE)
        return data if data is not None and isinstance(data.get("bundle_dir"), str) else None

    def reload(self, directory: str | Path) -> tuple[ServedModel, str | None]:
        """Load a bundle here, then publish it to every worker (BundleError: nothing published); its token."""
        with self._reload_lock:
            served = self.load(directory, origin="reload")
            if self.sync_dir is None:
                self._set_state("loaded", None, served.version, None)
                return served, None
            token = uuid.uuid4().hex
            target = {"token": token, "bundle_dir": str(served.directory.resolve())}
            target |= dict(model_version=served.version, published_by=os.getpid(), published_at=time.time())
            # the watcher compares tokens under this lock: it never reloads our own publish
            with self._state_lock:
                _write_json(self.sync_dir / TARGET_FILE, target)
                self._attempts = 1
                self._set_state("loaded", token, served.version, None)
            return served, token

    def workers(self) -> list[dict[str, Any]]:
        """Every live worker's state; dead workers' files removed."""
        if self.sync_dir is None:
            return [self.state()]
        out = []
        for path in sorted(self.sync_dir.glob("worker-*.json")):
            if (data := _read(path)) is not None and isinstance(data.get("pid"), int) and _alive(data["pid"]):
                out.append(data)
            elif data is not None:
                path.unlink(missing_ok=True)
        return out

    def wait_for_workers(self, token: str | None, timeout_s: float) -> tuple[str, list[dict[str, Any]]]:
        """Wait for every live worker to serve ``token``: ``("loaded"|"superseded"|"timeout", states)``."""
        deadline = time.monotonic() + timeout_s
        while True:
            workers = self.workers()
            if token is None or all(w.get("token") == token and w.get("state") == "loaded" for w in workers):
                return "loaded", workers
            if (target := self.read_target()) is not None and target.get("token") != token:
                return "superseded", workers
            if time.monotonic() >= deadline:
                return "timeout", workers
            time.sleep(0.02)

    def _watch(self) -> None:
        retry_at, delay = 0.0, RETRY_FIRST_S
        while True:
            time.sleep(SYNC_POLL_S)
            if (target := self.read_target()) is None:
                continue
            with self._state_lock:
                same = target.get("token") == self._state["token"]
                if same and (self._state["state"] == "loaded" or time.monotonic() < retry_at):
                    continue
                if not same:
                    self._attempts, delay = 0, RETRY_FIRST_S
            if self._apply(target, origin="sync"):
                retry_at = 0.0
            else:
                retry_at, delay = time.monotonic() + delay, min(delay * 2, RETRY_MAX_S)

    def _apply(self, target: dict[str, Any], origin: str) -> bool:
        """Load a published target and record the outcome; True when it is served."""
        token, wanted = target.get("token"), target.get("model_version")
        with self._reload_lock:
            if origin == "sync" and (now := self.read_target()) is not None and now.get("token") != token:
                return True  # superseded while waiting for the lock: the next poll takes the newer one
            with self._state_lock:
                self._attempts += 1
                self._set_state("loading", token, wanted, None)
            try:
                self.load(target["bundle_dir"], origin=origin)
            except BundleError as exc:
                self.load_error = self.load_error if self.current is not None else str(exc)
                self._set_state("failed", token, wanted, str(exc))
                return False
            self._set_state("loaded", token, wanted, None)
            return True
