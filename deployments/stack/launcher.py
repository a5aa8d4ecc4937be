"""The shared stack as local processes. ``up`` keeps what runs (restarting the dead on their recorded ports),
``down`` stops what ``up`` started and nothing else; ``<state_dir>/stack.json`` (0600) holds ports, PIDs and
the generated secrets."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import shutil
import subprocess
import sys
import uuid
from dataclasses import KW_ONLY, InitVar, dataclass, field
from pathlib import Path
from typing import Any

import httpx

from deployments.stack import mlflow_auth, postgres, procs
from deployments.stack.urls import DEFAULT_POOL, ServiceStatus, StackUrls, basic, http_status

logger = logging.getLogger("deployments.stack")

REPO_ROOT = Path(__file__).resolve().parents[2]
PREFECT_USER = "loan-risk"
REGISTRY_USER = "loanrisk"
START_TIMEOUT_S = float(os.environ.get("LOANRISK_STACK_START_TIMEOUT", "240"))
QUIET = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "1",
    "PREFECT_CLI_COLORS": "false",
    "COLUMNS": "160",
    "PYTHONUNBUFFERED": "1",
}
# each server's health endpoint and the answer it gives when up
HEALTH = {"prefect": ("/api/health", 200), "mlflow": ("/health", 200), "registry": ("/v2/", 401)}
# Settings a caller's environment may hold that would point a child at another server, store or profile.
_LEAKS = {
    f"PREFECT_{n}" for n in ("API_URL", "API_KEY", "API_AUTH_STRING", "PROFILE", "SERVER_API_AUTH_STRING")
}
_LEAKS |= {"PREFECT_API_DATABASE_CONNECTION_URL", "PREFECT_SERVER_DATABASE_CONNECTION_URL"}
_LEAKS |= {"MLFLOW_TRACKING_URI", "LOANRISK_OPTUNA_STORAGE", "LOANRISK_STATE_DIR"}


def _py(*args: str) -> list[str]:
    return [sys.executable, "-m", *args]


def _new_secrets() -> dict[str, str]:
    """Strong secrets (passwords, pseudonym key, server accounts), made once and kept in the 0600 state."""
    sizes = {"postgres_password": 18, "registry_password": 18, "prefect_auth_password": 24}
    sizes |= {"mlflow_admin_password": 24, "mlflow_pipeline_password": 24, "mlflow_reader_password": 24}
    made = {name: secrets.token_urlsafe(size) for name, size in sizes.items()}
    return {**made, "pseudonym_key": secrets.token_hex(32), "mlflow_flask_secret": secrets.token_urlsafe(32)}


@dataclass(eq=False)
class Stack:
    """The stack kept in ``state_dir``. ``host``: the address the servers bind to and the URLs name (one that
    workers elsewhere reach); ``deploy`` runs ``deployments.setup``; ``worker_env`` goes to the workers."""

    state_dir: InitVar[Path]
    _: KW_ONLY
    workers: int = 2
    host: str = "127.0.0.1"
    pool: str = DEFAULT_POOL
    ui: bool = False
    registry: bool = True
    deploy: bool = True
    worker_env: dict[str, str] | None = None
    state: dict[str, Any] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self, state_dir: Path) -> None:
        self.dir = Path(state_dir).resolve()
        self.state_file = self.dir / "stack.json"
        self.worker_env = dict(self.worker_env or {})

    def _load(self) -> bool:
        """Read the state file; whether there is a stack."""
        if self.state_file.exists():
            self.state = json.loads(self.state_file.read_text())
        return bool(self.state)

    def _save(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.state, indent=2))
        os.chmod(tmp, 0o600)
        tmp.replace(self.state_file)

    @property
    def _addr(self) -> str:
        """The address clients use: the bind address, or loopback when bound to every interface."""
        host = self.state.get("host", self.host)
        return "127.0.0.1" if host in ("0.0.0.0", "*", "") else host

    def _port(self, name: str) -> int:
        ports = self.state["ports"]
        return int(ports[name] if name in ports else ports.setdefault(name, procs.free_port(self._addr)))

    def _url(self, name: str, path: str = "") -> str:
        return f"http://{self._addr}:{self.state['ports'][name]}{path}"

    def urls(self) -> StackUrls:
        """The URLs of the stack (from its state file)."""
        if not self._load():
            raise RuntimeError(f"no stack in {self.dir}: run python -m deployments.stack up")
        s, p = self.state["secrets"], self.state["ports"]
        has_registry = "registry" in p and self.state["pids"].get("registry")
        reg = f"{self._addr}:{p['registry']}" if has_registry else None
        return StackUrls(
            prefect_api_url=self._url("prefect", "/api"),
            mlflow_tracking_uri=self._url("mlflow"),
            optuna_storage=self._pg("optuna"),
            postgres_url=self._pg("postgres"),
            registry=reg,
            registry_username=REGISTRY_USER if reg else None,
            registry_password=s["registry_password"] if reg else None,
            pseudonym_key=s["pseudonym_key"],
            pool=self.state.get("pool", self.pool),
            prefect_auth_string=f"{PREFECT_USER}:{s['prefect_auth_password']}",
            mlflow_username=mlflow_auth.PIPELINE_USER,
            mlflow_password=s["mlflow_pipeline_password"],
            mlflow_reader_username=mlflow_auth.READER_USER,
            mlflow_reader_password=s["mlflow_reader_password"],
        )

    def _env(self, home: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
        home.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if k not in _LEAKS}
        return {**env, **QUIET, "PREFECT_HOME": str(home), procs.MARKER: self.state["id"], **(extra or {})}

    def _log(self, name: str) -> Path:
        return self.dir / "logs" / f"{name}.log"

    def _tail(self, name: str) -> str:
        return f"log {self._log(name)}:\n{procs.tail(self._log(name))}"

    def _pg(self, database: str, driver: str = "psycopg2") -> str:
        pw, port = self.state["secrets"]["postgres_password"], self.state["ports"]["postgres"]
        return f"postgresql+{driver}://postgres:{pw}@{self._addr}:{port}/{database}"  # a SQLAlchemy URL

    def _pid(self, name: str) -> int | None:
        pid = self.state["pids"].get(name)
        return pid if pid and procs.alive(pid) and procs.carries(pid, self.state["id"]) else None

    def up(self) -> StackUrls:
        """Start what is not running; returns the URLs once every service answers."""
        if not self._load():
            stack_id = uuid.uuid4().hex[:12]
            self.state = {"id": stack_id, "host": self.host, "pool": self.pool, "ports": {}, "pids": {}}
            self.state["pg_dir"] = str(postgres.cluster_dir(self.dir, stack_id))
        # new secrets for a new stack, and those a stack made before the servers had accounts lacks
        self.state["secrets"] = _new_secrets() | self.state.get("secrets", {})
        self.state["workers"] = self.workers
        self._save()
        self._postgres()
        started_prefect = self._prefect()
        self._mlflow()
        if self.registry:
            self._registry()
        self._save()
        urls = self.urls()
        deployed = self._url("prefect", "/api/deployments/name/loan-risk-training/retrain")
        if self.deploy and (started_prefect or http_status(deployed, basic(urls.prefect_auth_string)) != 200):
            self._setup(urls)
        self._workers(urls)
        self._save()
        return urls

    def _postgres(self) -> None:
        cluster, pw = Path(self.state["pg_dir"]), self.state["secrets"]["postgres_password"]
        port = self._port("postgres")
        self._save()
        if postgres.init(cluster, pw):
            logger.info("initialised a PostgreSQL cluster in %s", cluster)
        if postgres.pid(cluster) is None:
            logger.info("starting PostgreSQL on %s:%s", self._addr, port)
            postgres.start(cluster, self.state["host"], port, {procs.MARKER: self.state["id"]})
        self.state["pids"]["postgres"] = postgres.pid(cluster)
        postgres.ensure_databases(pw, self._addr, port)

    def _serve(self, name: str, cmd: list[str], env: dict[str, str]) -> bool:
        """Start ``cmd`` unless its PID is alive; wait until its :data:`HEALTH` answer. True if started."""
        health, ok = self._url(name, HEALTH[name][0]), HEALTH[name][1]
        if self._pid(name) and http_status(health) == ok:
            return False
        if not self._pid(name):
            logger.info("starting %s", name)
            self.state["pids"][name] = procs.spawn(cmd, env, self._log(name), self.dir)
            self._save()
        pid = self.state["pids"][name]
        exited = lambda: None if procs.alive(pid) else f"exited; {self._tail(name)}"  # noqa: E731
        procs.wait_until(lambda: http_status(health) == ok, START_TIMEOUT_S, f"{name} ({health})", exited)
        return True

    def _prefect(self) -> bool:
        port, host = self._port("prefect"), self.state["host"]
        auth = f"{PREFECT_USER}:{self.state['secrets']['prefect_auth_password']}"
        env = self._env(
            self.dir / "prefect-server",
            {
                "PREFECT_SERVER_DATABASE_CONNECTION_URL": self._pg("prefect", "asyncpg"),
                "PREFECT_SERVER_API_HOST": host,
                "PREFECT_SERVER_API_PORT": str(port),
                "PREFECT_SERVER_UI_ENABLED": "true" if self.ui else "false",
                "PREFECT_SERVER_LOGGING_LEVEL": "WARNING",
                "PREFECT_UI_API_URL": self._url("prefect", "/api"),
                "PREFECT_SERVER_API_AUTH_STRING": auth,
            },
        )
        cmd = _py("prefect", "server", "start", "--host", host, "--port", str(port))
        return self._serve("prefect", cmd, env)

    def _mlflow(self) -> bool:
        port, s, host = self._port("mlflow"), self.state["secrets"], self.state["host"]
        (artifacts := self.dir / "mlflow-artifacts").mkdir(parents=True, exist_ok=True)
        # Its authentication app: anonymous requests get 401, the reader account 403 on any write.
        home = self.dir / "mlflow-server"
        config = mlflow_auth.write_config(home / "basic_auth.ini", self._pg("mlflow_auth"))
        admin = mlflow_auth.Account(mlflow_auth.ADMIN_USER, s["mlflow_admin_password"])
        env = self._env(
            home,
            {
                # MLflow's GenAI job runners (eight huey_consumer processes, ~250 MB each) serve nothing this
                # project uses: off. The marker sweep would still stop them if a user turns them on.
                "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
                "MLFLOW_AUTH_CONFIG_PATH": str(config),
                "MLFLOW_AUTH_ADMIN_USERNAME": admin.username,
                "MLFLOW_AUTH_ADMIN_PASSWORD": admin.password,
                "MLFLOW_FLASK_SERVER_SECRET_KEY": s["mlflow_flask_secret"],
            },
        )
        hosts = ",".join(sorted({f"{self._addr}:{port}", f"{host}:{port}", f"localhost:{port}"}))
        cmd = _py("mlflow", "server", "--app-name", "basic-auth", "--backend-store-uri", self._pg("mlflow"))
        cmd += ["--serve-artifacts", "--artifacts-destination", str(artifacts)]
        cmd += ["--host", host, "--port", str(port), "--workers", "2", "--allowed-hosts", hosts]
        started = self._serve("mlflow", cmd, env)
        pipeline = mlflow_auth.Account(mlflow_auth.PIPELINE_USER, s["mlflow_pipeline_password"])
        reader = mlflow_auth.Account(mlflow_auth.READER_USER, s["mlflow_reader_password"])
        mlflow_auth.ensure_accounts(self._url("mlflow"), admin, [pipeline, reader])
        return started

    def _registry(self) -> bool:
        """The registry's config (storage in ``registry/data``) and htpasswd file, then the registry."""
        binary, htpasswd = shutil.which("docker-registry"), shutil.which("htpasswd")
        if not (binary and htpasswd):
            logger.warning("no docker-registry/htpasswd on PATH: the stack runs without its image registry")
            return False
        port, folder = self._port("registry"), self.dir / "registry"
        (folder / "data").mkdir(parents=True, exist_ok=True)
        login = [htpasswd, "-Bbn", REGISTRY_USER, self.state["secrets"]["registry_password"]]
        hashed = subprocess.run(login, capture_output=True, text=True, check=True, timeout=60)
        (folder / "htpasswd").write_text(hashed.stdout)
        (config := folder / "config.yml").write_text(
            "version: 0.1\nlog: {level: warn, accesslog: {disabled: true}}\n"
            f"storage: {{filesystem: {{rootdirectory: {folder / 'data'}}}, delete: {{enabled: true}}}}\n"
            f"http: {{addr: '{self.state['host']}:{port}', secret: {self.state['id']}}}\n"
            f"auth: {{htpasswd: {{realm: loan-risk, path: {folder / 'htpasswd'}}}}}\n"
        )
        # distribution reads REGISTRY_* variables as overrides of its config
        env = {k: v for k, v in self._env(folder).items() if not k.startswith("REGISTRY_")}
        return self._serve("registry", [binary, "serve", str(config)], env)

    def _setup(self, urls: StackUrls) -> None:
        """``python -m deployments.setup --pool POOL`` against the stack's server."""
        auth = {"PREFECT_API_AUTH_STRING": urls.prefect_auth_string or ""}
        env = self._env(self.dir / "client", {"PREFECT_API_URL": urls.prefect_api_url, **auth})
        env.pop(procs.MARKER)
        logger.info("deploying the flows to %s (pool %s)", urls.prefect_api_url, urls.pool)
        cmd = _py("deployments.setup", "--pool", urls.pool)
        proc = subprocess.run(
            cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=900, stdin=subprocess.DEVNULL
        )
        if proc.returncode != 0:
            raise RuntimeError(f"deployments.setup exited {proc.returncode}:\n{proc.stderr[-3000:]}")

    def _worker_keys(self) -> list[str]:
        return sorted(k for k in self.state["pids"] if k.startswith("worker-"))

    def worker_names(self) -> list[str]:
        return [f"stack-{self.state['id']}-{i}" for i in range(1, self.workers + 1)]

    def _workers(self, urls: StackUrls) -> None:
        """Start the missing workers (and stop those beyond ``workers``); wait until the pool lists them."""
        for name in self._worker_keys():
            if int(name.removeprefix("worker-")) > self.workers:
                procs.stop(self.state["pids"].pop(name), self.state["id"])
        for i, name in enumerate(self.worker_names(), start=1):
            if self._pid(key := f"worker-{i}"):
                continue
            home = self.dir / "workers" / str(i)
            extra = {"LOANRISK_STATE_DIR": str(home / "state"), "PREFECT_WORKER_QUERY_SECONDS": "3"}
            extra |= {"PREFECT_WORKER_HEARTBEAT_SECONDS": "10"}
            env = self._env(home / "prefect", {**urls.env(), **extra, **self.worker_env})
            cmd = _py("prefect", "worker", "start", "--pool", urls.pool, "--type", "process", "--name", name)
            logger.info("starting worker %s on pool %s", name, urls.pool)
            self.state["pids"][key] = procs.spawn(cmd, env, self._log(key), REPO_ROOT)
            self._save()
        online = lambda: set(self.worker_names()) <= self._online_workers(urls)  # noqa: E731
        what = f"{self.workers} worker(s) on pool {urls.pool}"
        procs.wait_until(online, START_TIMEOUT_S, what, self._dead_worker)

    def _dead_worker(self) -> str | None:
        dead = [key for key in self._worker_keys() if not procs.alive(self.state["pids"][key])]
        return f"{dead[0]} exited; {self._tail(dead[0])}" if dead else None

    def _online_workers(self, urls: StackUrls) -> set[str]:
        url = f"{urls.prefect_api_url}/work_pools/{urls.pool}/workers/filter"
        with contextlib.suppress(httpx.HTTPError, ValueError):
            rows = httpx.post(url, json={}, timeout=10, auth=basic(urls.prefect_auth_string))
            if rows.status_code == 200:
                return {w["name"] for w in rows.json() if w.get("status") == "ONLINE"}
        return set()

    def status(self) -> list[ServiceStatus]:
        """Each service's URL and health (from its own health endpoint)."""
        if not self._load():
            return []
        urls, a, ports = self.urls(), self._addr, self.state["ports"]
        pg_pid, pw = postgres.pid(Path(self.state["pg_dir"])), self.state["secrets"]["postgres_password"]
        pg_ok = pg_pid is not None and postgres.healthy(pw, a, ports["postgres"])
        pg_url, databases = f"postgresql://{a}:{ports['postgres']}", ", ".join(postgres.DATABASES)
        out = [ServiceStatus("postgres", pg_url, pg_ok, pg_pid, databases)]
        shown = {"prefect": urls.prefect_api_url, "mlflow": urls.mlflow_tracking_uri}
        for name, (path, ok) in ((n, h) for n, h in HEALTH.items() if n != "registry" or n in ports):
            code, pid = http_status(health := self._url(name, path)), self._pid(name)
            detail = f"{health} -> {code or 'no answer'}"
            url = shown.get(name, f"{a}:{ports.get(name)}")
            out.append(ServiceStatus(name, url, bool(pid) and code == ok, pid, detail))
        online = self._online_workers(urls) if out[1].healthy else set()
        for key in self._worker_keys():
            name = f"stack-{self.state['id']}-{key.removeprefix('worker-')}"
            pid = self._pid(key)
            out.append(ServiceStatus(key, f"pool {urls.pool}", bool(pid) and name in online, pid, name))
        return out

    def down(self, purge: bool = False) -> list[str]:
        """Stop what ``up`` started (workers first, PostgreSQL last); ``purge`` also removes the data."""
        if not self._load():
            return []
        stopped, stack_id = [], self.state["id"]
        for name in [*self._worker_keys(), "mlflow", "prefect", "registry"]:
            if procs.stop(self.state["pids"].pop(name, None), stack_id):
                stopped.append(name)
        if postgres.stop(cluster := Path(self.state["pg_dir"])):
            stopped.append("postgres")
        self.state["pids"].pop("postgres", None)
        if left := procs.sweep(stack_id):
            logger.info("stopped %d more process(es) of the stack: %s", len(left), left)
        self._save()
        if purge:
            shutil.rmtree(cluster, ignore_errors=True)
            shutil.rmtree(self.dir, ignore_errors=True)
        return stopped

    def __enter__(self) -> StackUrls:
        try:
            return self.up()
        except BaseException:
            self.down(purge=True)
            raise

    def __exit__(self, *exc: object) -> None:
        self.down(purge=True)
