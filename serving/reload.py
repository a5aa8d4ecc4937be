"""Reload across workers: :class:`ModelHolder` holds this worker's current model and shares reloads through a
sync folder.

A request keeps the model it took; a reload loads the new bundle fully, then swaps one reference. Under gunicorn
the workers share a reload through ``LOANRISK_RELOAD_SYNC_DIR``: ``target.json`` (the bundle to serve, a token per
reload) and ``worker-<pid>-<id>.json`` (each worker's state). Each worker polls the target, loads a new one and
retries a failed load with backoff; the receiving worker answers 200 once every live worker has it loaded."""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import orjson

from serving.bundle import BundleError, load_bundle
from serving.config import ServiceConfig
from serving.logs import LOGGER_NAME
from serving.metrics import Metrics
from serving.model import ServedModel, check_reference

SYNC_POLL_S = 0.1
RETRY_FIRST_S = 0.5
RETRY_MAX_S = 30.0
TARGET_FILE = "target.json"

logger = logging.getLogger(LOGGER_NAME)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        pass
    return True


def _write_atomic(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}")
    tmp.write_bytes(orjson.dumps(data))
    os.replace(tmp, path)


def _read(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


class ModelHolder:
    """The current model, swapped whole by :meth:`load`; this worker's state in the sync folder when there is one."""

    def __init__(self, config: ServiceConfig, metrics: Metrics) -> None:
        self.config = config
        self.metrics = metrics
        self.current: ServedModel | None = None
        self.load_error: str | None = None
        self.sync_dir = config.reload_sync_dir
        self.worker_id = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.health: tuple[int, bytes] = (503, b"")
        self._load_lock = threading.Lock()
        self._reload_lock = threading.Lock()  # a reload's load + publish, or the watcher's load + record
        self._state_lock = threading.RLock()
        # what this worker was asked to serve (the sync target) and how far it got
        self._state: dict[str, Any] = {
            "state": "loading",
            "token": None,
            "wanted_version": None,
            "error": None,
        }
        self._attempts = 0
        self._refresh()

    def load(self, directory: str | Path, origin: str) -> ServedModel:
        """Load and check a bundle fully, then swap it in; raises :class:`BundleError` and keeps the old one."""
        with self._load_lock:
            t0 = time.perf_counter()
            try:
                bundle = load_bundle(directory, thread_count=self.config.model_threads)
                checked = check_reference(bundle) if self.config.verify_reference else 0
                served = ServedModel.from_bundle(bundle)
            except BundleError as exc:
                self._failed(origin, str(exc))
                raise
            except Exception as exc:  # a corrupt model file, unreadable directory, odd path, ...
                self._failed(origin, repr(exc))
                raise BundleError(f"{directory}: cannot load bundle ({type(exc).__name__}: {exc})") from exc
            previous = self.current
            self.current = served  # the swap: requests in flight keep the model they took
            self.load_error = None
            self.metrics.set_model(
                served.name, served.version, (previous.name, previous.version or "") if previous else None
            )
            self.metrics.reloads.labels("ok").inc()
            fields = {"origin": origin, "model_name": served.name, "model_version": served.version,
                      "previous_version": previous.version if previous else None,
                      "bundle_dir": str(served.directory), "reference_rows_checked": checked,
                      "load_ms": round((time.perf_counter() - t0) * 1000, 1)}  # fmt: skip
            logger.info("model loaded", extra={"fields": fields})
            self._refresh()
            return served

    def _failed(self, origin: str, error: str) -> None:
        self.metrics.reloads.labels("failed").inc()
        logger.error("model load failed", extra={"fields": {"origin": origin, "error": error}})

    def start(self) -> None:
        """Serve the published target if any, else the configured bundle."""
        self._write_state()  # seen by a reload in progress before this worker reads the target
        target = self.read_target()
        if target is not None:
            self._apply(target, origin="start")
            if self.current is not None or self.config.bundle_dir is None:
                self._start_watcher()
                return
        directory = self.config.bundle_dir
        if directory is None:
            self.load_error = "no model bundle configured (set LOANRISK_BUNDLE_DIR or POST /model/reload)"
            logger.warning("no model loaded", extra={"fields": {"reason": self.load_error}})
        else:
            try:
                self.load(directory, origin="start")
            except BundleError as exc:
                self.load_error = str(exc)
        if target is None:
            self._set_state("loaded" if self.current else "failed", None, None, self.load_error)
        self._start_watcher()

    def state(self) -> dict[str, Any]:
        served = self.current
        with self._state_lock:
            return {"worker": self.worker_id, "pid": os.getpid(), **self._state,
                    "model_version": served.version if served else None,
                    "bundle_dir": str(served.directory) if served else None,
                    "attempts": self._attempts, "updated_at": time.time()}  # fmt: skip

    def _set_state(self, state: str, token: str | None, wanted: str | None, error: str | None) -> None:
        """Record this worker's progress with the target ``token``, in memory and on disk."""
        with self._state_lock:
            self._state = {"state": state, "token": token, "wanted_version": wanted, "error": error}
            self._refresh()
            self._write_state()

    def _refresh(self) -> None:
        """Recompute the /health answer (once per change, not per request)."""
        served = self.current
        if served is None:
            body = {"status": "unavailable", "error": "model_unavailable", "message": self.load_error or ""}
            self.health = (503, orjson.dumps(body, default=str))
            return
        body = {"status": "ok", "model_name": served.name, "model_version": served.version}
        if self._state["state"] == "failed" and self._state["token"] is not None:
            body["status"] = "degraded"
            body["wanted_version"] = self._state["wanted_version"]
            body["error"] = self._state["error"]
        self.health = (200, orjson.dumps(body, default=str))

    def _write_state(self) -> None:
        if self.sync_dir is None:
            return
        try:
            self.sync_dir.mkdir(parents=True, exist_ok=True)
            _write_atomic(self.sync_dir / f"worker-{self.worker_id}.json", self.state())
        except OSError as exc:
            logger.warning("could not record worker state", extra={"fields": {"error": repr(exc)}})

    def read_target(self) -> dict[str, Any] | None:
        if self.sync_dir is None:
            return None
        data = _read(self.sync_dir / TARGET_FILE)
        return data if data is not None and isinstance(data.get("bundle_dir"), str) else None

    def reload(self, directory: str | Path) -> tuple[ServedModel, str | None]:
        """Load a bundle here, then publish it to every worker; returns it and the reload's token.
        Raises :class:`BundleError` (nothing published) when this worker cannot load it."""
        with self._reload_lock:
            served = self.load(directory, origin="reload")
            return served, self._publish(served)

    def _publish(self, served: ServedModel) -> str | None:
        if self.sync_dir is None:
            self._set_state("loaded", None, served.version, None)
            return None
        token = uuid.uuid4().hex
        target = {"token": token, "bundle_dir": str(served.directory.resolve()), "model_version": served.version,
                  "published_by": os.getpid(), "published_at": time.time()}  # fmt: skip
        # the watcher compares tokens under this lock: it never reloads our own publish
        with self._state_lock:
            self.sync_dir.mkdir(parents=True, exist_ok=True)
            _write_atomic(self.sync_dir / TARGET_FILE, target)
            self._attempts = 1
            self._set_state("loaded", token, served.version, None)
        return token

    def workers(self) -> list[dict[str, Any]]:
        """Every live worker's state; dead workers' files removed."""
        if self.sync_dir is None:
            return [self.state()]
        out = []
        for path in sorted(self.sync_dir.glob("worker-*.json")):
            data = _read(path)
            if data is None:
                continue
            if not isinstance(data.get("pid"), int) or not pid_alive(data["pid"]):
                path.unlink(missing_ok=True)
                continue
            out.append(data)
        return out

    def wait_for_workers(self, token: str | None, timeout_s: float) -> tuple[str, list[dict[str, Any]]]:
        """``("loaded"|"superseded"|"timeout", states)`` once every live worker serves
        ``token``, or at timeout."""
        deadline = time.monotonic() + timeout_s
        while True:
            workers = self.workers()
            if token is None or all(w.get("token") == token and w.get("state") == "loaded" for w in workers):
                return "loaded", workers
            target = self.read_target()
            if target is not None and target.get("token") != token:
                return "superseded", workers
            if time.monotonic() >= deadline:
                return "timeout", workers
            time.sleep(0.02)

    def _start_watcher(self) -> None:
        if self.sync_dir is not None:
            threading.Thread(target=self._watch, name="bundle-sync", daemon=True).start()

    def _watch(self) -> None:
        retry_at, delay = 0.0, RETRY_FIRST_S
        while True:
            time.sleep(SYNC_POLL_S)
            target = self.read_target()
            if target is None:
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
            current = self.read_target()
            if origin == "sync" and current is not None and current.get("token") != token:
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
