"""Ingest: bring the three loan CSV files into the state folder and fingerprint them.

A source is one of

* ``sample`` - the synthetic generator (:func:`tasks.sample.generate`), written once into
  ``settings.data_dir / f"sample-scale{scale}-seed{seed}"`` and reused while its manifest says it is complete;
* a local directory holding ``loan.csv``, ``payment.csv`` and ``clarity_underwriting_variables.csv``;
* ``hf://datasets/<owner>/<name>[@<revision>]`` - a dataset repository on the Hugging Face Hub (or on the
  endpoint named by ``HF_ENDPOINT``). The revision (default: ``settings.hf_revision`` or ``main``) is resolved to
  its commit sha first and all three files are downloaded at that sha, so they always come from one commit.
  ``hf`` alone is short for ``hf://datasets/{settings.hf_repo}[@{settings.hf_revision}]``.

Transient Hub errors (connection errors, timeouts, HTTP 408/429/5xx) are retried with exponential backoff up to
``settings.hf_max_attempts``; a missing repository, revision or file, or a refused access (401/403, gated repo)
fails at once with a :class:`~tasks.common.PermanentError` naming what is missing.

The plain functions (:func:`parse_source`, :func:`ingest`, :func:`record_ingest`) work without Prefect; the Prefect
task :data:`ingest_task` wraps them (use :func:`ingest_task_for` to apply the settings' retry policy).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, TypeVar

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from tasks.common import PermanentError, retry_options
from tasks.settings import Settings, get_settings

log = logging.getLogger(__name__)

LOAN_FILE = "loan.csv"
PAYMENT_FILE = "payment.csv"
CLARITY_FILE = "clarity_underwriting_variables.csv"
DATA_FILES: tuple[str, ...] = (LOAN_FILE, PAYMENT_FILE, CLARITY_FILE)

MANIFEST_NAME = "ingest-manifest.json"
DEFAULT_HF_ENDPOINT = "https://huggingface.co"
HF_SOURCE_PREFIX = "hf://datasets/"
DEFAULT_BACKOFF_SECONDS = 1.0
MAX_BACKOFF_SECONDS = 60.0
HASH_CHUNK_BYTES = 1 << 20

_COMMIT_SHA = re.compile(r"[0-9a-f]{40}")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_REPO_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*")

SourceKind = Literal["sample", "local", "hub"]
T = TypeVar("T")
LoggerLike = logging.Logger | logging.LoggerAdapter


# --------------------------------------------------------------------------------------------------
# errors


class IngestError(RuntimeError):
    """Base class of the ingest failures raised by this module."""


class HubNotFoundError(IngestError, PermanentError):
    """The Hub repository, revision or file does not exist (or is private and the token cannot see it)."""


class HubAccessError(IngestError, PermanentError):
    """The Hub refused access (401/403, gated repository) or the endpoint does not behave like a Hub."""


class HubUnavailableError(IngestError):
    """Transient Hub errors persisted through every allowed attempt (a later retry may succeed)."""


class MissingSourceFileError(IngestError, PermanentError, FileNotFoundError):
    """A local source folder lacks one of the three files."""


# --------------------------------------------------------------------------------------------------
# data classes


@dataclass(frozen=True)
class Source:
    """A parsed source string."""

    kind: SourceKind
    raw: str
    path: Path | None = None  # local folder
    repo_id: str | None = None  # hub: owner/name
    revision: str | None = None  # hub: as written after '@' (None: use the default)


@dataclass
class IngestResult:
    """Where the three files are, where they came from and their checksums."""

    data_dir: Path
    source: str
    kind: SourceKind
    revision: str | None  # the resolved commit sha for the Hub, None otherwise
    files: dict[str, dict[str, Any]]  # file name -> {"path": str, "size": int, "sha256": str}
    cached: bool  # True when nothing had to be generated or downloaded
    repo_id: str | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def path(self, name: str) -> Path:
        """The local path of one of the three files (``loan.csv`` ...)."""
        return Path(self.files[name]["path"])

    @property
    def fingerprint(self) -> str:
        """One sha256 over the three files' names and checksums: identifies the data, not where it came from."""
        h = hashlib.sha256()
        for name in sorted(self.files):
            h.update(f"{name}:{self.files[name]['sha256']}\n".encode())
        return h.hexdigest()

    def to_dict(self) -> dict[str, Any]:
        return {
            "data_dir": str(self.data_dir),
            "source": self.source,
            "kind": self.kind,
            "revision": self.revision,
            "repo_id": self.repo_id,
            "files": {k: dict(v) for k, v in self.files.items()},
            "cached": self.cached,
            "fingerprint": self.fingerprint,
            "details": dict(self.details),
        }


# --------------------------------------------------------------------------------------------------
# parsing


def parse_source(source: str) -> Source:
    """Parse ``sample``, a local directory path, or ``hf://datasets/<owner>/<name>[@<revision>]``.

    Raises ``ValueError`` for anything else (other URL schemes, Hub model repos, malformed repo ids, paths that
    are not existing directories).
    """
    if not isinstance(source, str) or not source.strip():
        raise ValueError(f"empty data source {source!r}: {_ACCEPTED}")
    raw = source.strip()
    if raw.lower() == "sample":
        return Source(kind="sample", raw="sample")
    if raw.startswith("hf://"):
        if not raw.startswith(HF_SOURCE_PREFIX):
            raise ValueError(
                f"unsupported Hub source {raw!r}: only dataset repositories are supported; {_ACCEPTED}"
            )
        rest = raw[len(HF_SOURCE_PREFIX) :]
        repo_part, sep, revision = rest.partition("@")
        repo_id = repo_part.rstrip("/")
        if not _REPO_ID.fullmatch(repo_id) or ".." in repo_id:
            raise ValueError(f"malformed Hub dataset id {repo_id!r} in source {raw!r}: {_ACCEPTED}")
        if sep and (not revision or any(c.isspace() for c in revision)):
            raise ValueError(f"malformed revision {revision!r} in source {raw!r}: {_ACCEPTED}")
        return Source(kind="hub", raw=raw, repo_id=repo_id, revision=revision or None)
    if "://" in raw:
        raise ValueError(f"unsupported data source {raw!r}: {_ACCEPTED}")
    path = Path(raw).expanduser()
    if not path.exists():
        raise ValueError(
            f"data source {raw!r} is not 'sample', not an hf:// URL and no such directory exists"
        )
    if not path.is_dir():
        raise ValueError(
            f"data source {raw!r} is a file; a local source must be a directory holding {_FILES_TEXT}"
        )
    return Source(kind="local", raw=raw, path=path.resolve())


_FILES_TEXT = ", ".join(DATA_FILES)
_ACCEPTED = "expected 'sample', a local directory, or 'hf://datasets/<owner>/<name>[@<revision>]'"


def expand_source(source: str | None, settings: Settings) -> str:
    """``None`` -> ``settings.source``; ``hf``/``hub`` -> the Hub URL built from ``hf_repo``/``hf_revision``."""
    raw = (source if source is not None else settings.source).strip()
    if raw.lower() in {"hf", "hub"}:
        raw = HF_SOURCE_PREFIX + settings.hf_repo
        if settings.hf_revision:
            raw += f"@{settings.hf_revision}"
    return raw


# --------------------------------------------------------------------------------------------------
# checksums


def sha256_file(path: str | Path, chunk_size: int = HASH_CHUNK_BYTES) -> str:
    """The sha256 hex digest of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(chunk_size):
            h.update(chunk)
    return h.hexdigest()


def describe_file(path: Path) -> dict[str, Any]:
    return {"path": str(path), "size": path.stat().st_size, "sha256": sha256_file(path)}


# --------------------------------------------------------------------------------------------------
# the entry point


def ingest(
    source: str | None,
    settings: Settings,
    *,
    backoff_seconds: float = DEFAULT_BACKOFF_SECONDS,
    logger: LoggerLike | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> IngestResult:
    """Make the three files available locally and describe them.

    ``source`` defaults to ``settings.source``. ``backoff_seconds`` is the first wait between Hub attempts (it
    doubles each time, capped at one minute); ``sleep`` is injectable for tests.
    """
    logger = logger or log
    raw = expand_source(source, settings)
    src = parse_source(raw)
    if src.kind == "sample":
        return _ingest_sample(settings, logger)
    if src.kind == "local":
        return _ingest_local(src)
    return _ingest_hub(src, settings, backoff_seconds=backoff_seconds, logger=logger, sleep=sleep)


# --------------------------------------------------------------------------------------------------
# sample


def sample_dir(settings: Settings) -> Path:
    return settings.data_dir / f"sample-scale{settings.sample_scale}-seed{settings.sample_seed}"


def _read_complete_manifest(folder: Path) -> dict[str, Any] | None:
    """The manifest of a completely written folder, or None (missing, unreadable, or files changed size)."""
    try:
        manifest = json.loads((folder / MANIFEST_NAME).read_text())
        files = manifest["files"]
        for name in DATA_FILES:
            entry = files[name]
            if (folder / name).stat().st_size != int(entry["size"]) or not _SHA256.fullmatch(entry["sha256"]):
                return None
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return manifest


def _ingest_sample(settings: Settings, logger: LoggerLike) -> IngestResult:
    scale, seed = settings.sample_scale, settings.sample_seed
    out = sample_dir(settings)
    manifest = _read_complete_manifest(out)
    cached = manifest is not None
    if manifest is None:
        logger.info("Generating the synthetic sample (scale=%s, seed=%s) into %s", scale, seed, out)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.parent / f".{out.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        try:
            tmp.mkdir(parents=True)
            from tasks.sample import generate

            info = generate(tmp, scale=scale, seed=seed)
            missing = [name for name in DATA_FILES if not (tmp / name).is_file()]
            if missing:
                raise IngestError(f"tasks.sample.generate did not write {missing} into {tmp}")
            files = {name: describe_file(tmp / name) for name in DATA_FILES}
            manifest = {
                "kind": "sample",
                "scale": scale,
                "seed": seed,
                "created_at": datetime.now(UTC).isoformat(),
                "files": {n: {"size": f["size"], "sha256": f["sha256"]} for n, f in files.items()},
                "other_files": sorted(p.name for p in tmp.iterdir() if p.name not in DATA_FILES),
                "generator": _jsonable(info),
            }
            # The manifest is written last: a folder without it is incomplete and gets regenerated.
            _write_json_atomic(tmp / MANIFEST_NAME, manifest)
            if out.exists():
                shutil.rmtree(out)  # an incomplete earlier attempt
            try:
                tmp.rename(out)
            except OSError:
                # Another process finished the same sample first: keep theirs if it is complete.
                manifest = _read_complete_manifest(out)
                if manifest is None:
                    raise
                cached = True
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    else:
        logger.info("Reusing the synthetic sample in %s", out)
    files = {
        name: {
            "path": str(out / name),
            "size": int(manifest["files"][name]["size"]),
            "sha256": manifest["files"][name]["sha256"],
        }
        for name in DATA_FILES
    }
    return IngestResult(
        data_dir=out,
        source="sample",
        kind="sample",
        revision=None,
        files=files,
        cached=cached,
        details={"scale": scale, "seed": seed},
    )


def _jsonable(value: Any) -> Any:
    try:
        return json.loads(json.dumps(value, default=str))
    except (TypeError, ValueError):
        return repr(value)


def _write_json_atomic(path: Path, data: Mapping[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
    os.replace(tmp, path)


# --------------------------------------------------------------------------------------------------
# local folder


def _ingest_local(src: Source) -> IngestResult:
    folder = src.path
    assert folder is not None
    missing = [name for name in DATA_FILES if not (folder / name).is_file()]
    if missing:
        raise MissingSourceFileError(
            f"local data folder {folder} is missing {', '.join(missing)} (a source folder must hold {_FILES_TEXT})"
        )
    files = {name: describe_file(folder / name) for name in DATA_FILES}
    return IngestResult(
        data_dir=folder, source=src.raw, kind="local", revision=None, files=files, cached=False
    )


# --------------------------------------------------------------------------------------------------
# Hugging Face Hub


def hf_endpoint() -> str:
    """``HF_ENDPOINT`` read now (huggingface_hub reads it only at import time), else the public Hub."""
    return (os.environ.get("HF_ENDPOINT") or DEFAULT_HF_ENDPOINT).rstrip("/")


def _token(settings: Settings) -> str | None:
    return settings.hf_token.get_secret_value() if settings.hf_token is not None else None


def _is_transient(exc: BaseException) -> bool:
    """Whether an error from huggingface_hub is worth another attempt."""
    import httpx2
    from huggingface_hub.errors import (
        FileMetadataError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
    )

    if isinstance(exc, OfflineModeIsEnabled):
        return False
    if isinstance(exc, HfHubHTTPError):
        status = exc.response.status_code if exc.response is not None else None
        return status in (408, 429) or (status is not None and status >= 500)
    if isinstance(exc, LocalEntryNotFoundError):
        # hf_hub_download's "could not reach the Hub and nothing cached": transient unless the server answered
        # without Hub metadata (a misconfigured endpoint).
        cause = exc.__cause__
        if cause is None or isinstance(cause, FileMetadataError):
            return False
        return _is_transient(cause) or isinstance(
            cause, httpx2.TransportError | ConnectionError | TimeoutError
        )
    if isinstance(exc, FileMetadataError):
        return False
    if isinstance(exc, httpx2.TransportError | ConnectionError | TimeoutError):
        return True
    # hf_hub_download's size check after an interrupted transfer
    return isinstance(exc, OSError) and "Consistency check failed" in str(exc)


def _permanent_error(exc: BaseException, repo_id: str, revision: str, filename: str | None, endpoint: str):
    """A PermanentError naming what is missing for a non-transient huggingface_hub error, or None."""
    from huggingface_hub.errors import (
        DisabledRepoError,
        FileMetadataError,
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RemoteEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    where = f"dataset repository {repo_id!r} on {endpoint}"
    what = (
        f"file {filename!r} at revision {revision!r} of {where}"
        if filename
        else f"revision {revision!r} of {where}"
    )
    if isinstance(exc, RevisionNotFoundError):
        return HubNotFoundError(f"revision {revision!r} not found in {where}")
    if isinstance(exc, GatedRepoError):
        return HubAccessError(
            f"{where} is gated: accept its conditions on the Hub and set LOANRISK_HF_TOKEN to a token that may read it"
        )
    if isinstance(exc, RepositoryNotFoundError):
        return HubNotFoundError(
            f"{where} not found (or it is private and LOANRISK_HF_TOKEN is missing or cannot read it)"
        )
    if isinstance(exc, RemoteEntryNotFoundError):
        return HubNotFoundError(f"file {filename!r} not found at revision {revision!r} of {where}")
    if isinstance(exc, DisabledRepoError):
        return HubAccessError(f"{where} is disabled")
    if isinstance(exc, OfflineModeIsEnabled):
        return HubAccessError(f"HF_HUB_OFFLINE is set and {what} is not in the local cache")
    if isinstance(exc, LocalEntryNotFoundError) and isinstance(exc.__cause__, FileMetadataError):
        return HubAccessError(
            f"{endpoint} does not answer like a Hugging Face Hub for {what}: {exc.__cause__}"
        )
    if isinstance(exc, FileMetadataError):
        return HubAccessError(f"{endpoint} does not answer like a Hugging Face Hub for {what}: {exc}")
    if isinstance(exc, HfHubHTTPError) and exc.response is not None:
        status = exc.response.status_code
        if status in (401, 403):
            return HubAccessError(f"access to {what} refused (HTTP {status}): check LOANRISK_HF_TOKEN")
        if 400 <= status < 500:
            return HubNotFoundError(f"request for {what} failed with HTTP {status}: {exc}")
    return None


def _call_with_retries(
    fn: Callable[[], T],
    *,
    describe: str,
    repo_id: str,
    revision: str,
    filename: str | None,
    endpoint: str,
    max_attempts: int,
    backoff_seconds: float,
    logger: LoggerLike,
    sleep: Callable[[float], None],
) -> T:
    """Run ``fn``; retry transient Hub errors with exponential backoff; translate permanent ones at once."""
    attempts = max(1, int(max_attempts))
    for attempt in range(1, attempts + 1):
        try:
            return fn()
        except PermanentError:
            raise
        except Exception as exc:  # noqa: BLE001 - classified below
            if not _is_transient(exc):
                permanent = _permanent_error(exc, repo_id, revision, filename, endpoint)
                if permanent is not None:
                    raise permanent from exc
                raise
            if attempt == attempts:
                raise HubUnavailableError(
                    f"{describe} failed after {attempts} attempt(s) with transient errors; last: "
                    f"{type(exc).__name__}: {_first_line(exc)}"
                ) from exc
            wait = min(MAX_BACKOFF_SECONDS, backoff_seconds * 2 ** (attempt - 1))
            logger.warning(
                "%s failed (attempt %d/%d: %s: %s); retrying in %.2fs",
                describe,
                attempt,
                attempts,
                type(exc).__name__,
                _first_line(exc),
                wait,
            )
            sleep(wait)
    raise AssertionError("unreachable")  # pragma: no cover


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else ""


def _storage_folder(settings: Settings, repo_id: str) -> Path:
    from huggingface_hub.file_download import repo_folder_name

    return settings.data_dir / "hf" / repo_folder_name(repo_id=repo_id, repo_type="dataset")


def _snapshot_complete(storage: Path, sha: str) -> bool:
    return all((storage / "snapshots" / sha / name).is_file() for name in DATA_FILES)


def _ingest_hub(
    src: Source,
    settings: Settings,
    *,
    backoff_seconds: float,
    logger: LoggerLike,
    sleep: Callable[[float], None],
) -> IngestResult:
    from huggingface_hub import HfApi, hf_hub_download
    from huggingface_hub import constants as hf_constants

    repo_id = src.repo_id
    assert repo_id is not None
    revision = src.revision or settings.hf_revision or "main"
    endpoint = hf_endpoint()
    token = _token(settings)
    cache_dir = settings.data_dir / "hf"
    storage = _storage_folder(settings, repo_id)
    retry_kw = {
        "repo_id": repo_id,
        "revision": revision,
        "endpoint": endpoint,
        "max_attempts": settings.hf_max_attempts,
        "backoff_seconds": backoff_seconds,
        "logger": logger,
        "sleep": sleep,
    }

    # 1. the commit sha: no network when a pinned sha is fully cached (or when offline and the ref is cached)
    sha: str | None = None
    if _COMMIT_SHA.fullmatch(revision) and _snapshot_complete(storage, revision):
        sha = revision
    elif hf_constants.is_offline_mode():
        ref = storage / "refs" / revision
        cached_sha = ref.read_text().strip() if ref.is_file() else None
        if cached_sha and _snapshot_complete(storage, cached_sha):
            logger.warning(
                "HF_HUB_OFFLINE is set: using the cached %s of %s (%s)", revision, repo_id, cached_sha
            )
            sha = cached_sha
        else:
            raise HubAccessError(
                f"HF_HUB_OFFLINE is set and revision {revision!r} of dataset repository {repo_id!r} is not fully cached"
                f" in {cache_dir}"
            )
    if sha is None:
        api = HfApi(endpoint=endpoint, token=token)
        info = _call_with_retries(
            lambda: api.dataset_info(repo_id, revision=revision, timeout=60),
            describe=f"resolving revision {revision!r} of {repo_id}",
            filename=None,
            **retry_kw,
        )
        sha = info.sha
        if not sha:
            from huggingface_hub import get_hf_file_metadata, hf_hub_url

            url = hf_hub_url(
                repo_id, DATA_FILES[0], repo_type="dataset", revision=revision, endpoint=endpoint
            )
            meta = _call_with_retries(
                lambda: get_hf_file_metadata(url, token=token, endpoint=endpoint),
                describe=f"resolving revision {revision!r} of {repo_id}",
                filename=DATA_FILES[0],
                **retry_kw,
            )
            sha = meta.commit_hash
        if not sha or not _COMMIT_SHA.fullmatch(sha):
            raise HubAccessError(
                f"{endpoint} returned no commit sha for revision {revision!r} of {repo_id!r}"
            )
        siblings = {s.rfilename for s in (info.siblings or [])}
        if info.siblings is not None:
            missing = [name for name in DATA_FILES if name not in siblings]
            if missing:
                raise HubNotFoundError(
                    f"file(s) {', '.join(repr(m) for m in missing)} not found at revision {revision!r} ({sha}) of"
                    f" dataset repository {repo_id!r} on {endpoint}"
                )
    logger.info("Dataset %s@%s resolved to commit %s", repo_id, revision, sha)

    # 2. the three files, all at that sha
    cached = _snapshot_complete(storage, sha)
    files: dict[str, dict[str, Any]] = {}
    for name in DATA_FILES:
        kw = {**retry_kw, "revision": sha}

        def download(name: str = name, force: bool = False) -> str:
            return hf_hub_download(
                repo_id,
                name,
                repo_type="dataset",
                revision=sha,
                cache_dir=cache_dir,
                token=token,
                endpoint=endpoint,
                force_download=force,
            )

        path = Path(
            _call_with_retries(
                download, describe=f"downloading {name} from {repo_id}@{sha}", filename=name, **kw
            )
        )
        entry = describe_file(path)
        expected = _expected_sha256(path)
        if expected is not None and entry["sha256"] != expected:
            # The blob is named after the Hub's sha256 (LFS files): a mismatch means a corrupted cache entry.
            logger.warning("Cached %s of %s@%s fails its checksum; downloading it again", name, repo_id, sha)
            cached = False
            path = Path(
                _call_with_retries(
                    lambda name=name: download(name, force=True),
                    describe=f"downloading {name} from {repo_id}@{sha}",
                    filename=name,
                    **kw,
                )
            )
            entry = describe_file(path)
            if entry["sha256"] != expected:
                raise HubUnavailableError(
                    f"{name} from {repo_id}@{sha} has sha256 {entry['sha256']}, but the Hub announced {expected}"
                )
        files[name] = entry
    if revision != sha:
        _remember_ref(storage, revision, sha)
    data_dir = Path(files[DATA_FILES[0]]["path"]).parent
    logger.info("%s %s@%s into %s", "Reused cached" if cached else "Downloaded", repo_id, sha, data_dir)
    return IngestResult(
        data_dir=data_dir,
        source=src.raw,
        kind="hub",
        revision=sha,
        files=files,
        cached=cached,
        repo_id=repo_id,
        details={"requested_revision": revision, "endpoint": endpoint},
    )


def _remember_ref(storage: Path, revision: str, sha: str) -> None:
    """Record ``revision -> sha`` the way huggingface_hub does (``refs/<revision>``), for offline runs."""
    ref = storage / "refs" / revision
    try:
        if ref.is_file() and ref.read_text().strip() == sha:
            return
        ref.parent.mkdir(parents=True, exist_ok=True)
        tmp = ref.with_name(f".{ref.name}.{uuid.uuid4().hex[:8]}")
        tmp.write_text(sha)
        os.replace(tmp, ref)
    except OSError:  # a read-only cache still works online
        log.debug("could not record ref %s -> %s in %s", revision, sha, storage, exc_info=True)


def _expected_sha256(path: Path) -> str | None:
    """The sha256 the Hub announced (the blob's name for LFS files), when the cache layout reveals it."""
    if not path.is_symlink():
        return None
    name = path.resolve().name
    return name if _SHA256.fullmatch(name) else None


# --------------------------------------------------------------------------------------------------
# MLflow


def ingest_params(result: IngestResult) -> dict[str, str]:
    """The MLflow params describing an ingest result."""
    params = {
        "data.source": result.source,
        "data.kind": result.kind,
        "data.fingerprint": result.fingerprint,
    }
    if result.revision:
        params["data.revision"] = result.revision
    if result.repo_id:
        params["data.repo_id"] = result.repo_id
    for name, entry in result.files.items():
        stem = Path(name).stem
        params[f"data.{stem}.size"] = str(entry["size"])
        params[f"data.{stem}.sha256"] = entry["sha256"]
    return params


def record_ingest(
    result: IngestResult, run_id: str, *, settings: Settings | None = None, client: Any = None
) -> None:
    """Record the source, resolved revision and each file's size and sha256 on an MLflow run (client API only).

    Params (immutable): ``data.source``, ``data.kind``, ``data.fingerprint``, ``data.revision`` (Hub),
    ``data.repo_id`` (Hub), ``data.<stem>.size`` and ``data.<stem>.sha256``. Tags (searchable): ``data.source``,
    ``data.revision``, ``data.fingerprint``.
    """
    import mlflow
    from mlflow.entities import Param, RunTag

    if client is None:
        settings = settings or get_settings()
        client = mlflow.MlflowClient(tracking_uri=settings.tracking_uri)
    params = ingest_params(result)
    tags = {"data.source": result.source, "data.fingerprint": result.fingerprint}
    if result.revision:
        tags["data.revision"] = result.revision
    client.log_batch(
        run_id,
        params=[Param(k, v[:6000]) for k, v in params.items()],
        tags=[RunTag(k, v) for k, v in tags.items()],
    )


# --------------------------------------------------------------------------------------------------
# Prefect


@task(name="ingest", cache_policy=NO_CACHE)
def ingest_task(
    source: str | None = None,
    settings: Settings | None = None,
    mlflow_run_id: str | None = None,
) -> IngestResult:
    """Prefect task: :func:`ingest`, logged to the run logger, recorded on ``mlflow_run_id`` when given."""
    logger = get_run_logger()
    settings = settings or get_settings()
    result = ingest(source, settings, logger=logger)
    for name, entry in result.files.items():
        logger.info("%s: %d bytes, sha256 %s", name, entry["size"], entry["sha256"])
    logger.info(
        "Ingested %s (%s, revision %s, %s) into %s",
        result.source,
        result.kind,
        result.revision or "-",
        "cached" if result.cached else "fresh",
        result.data_dir,
    )
    if mlflow_run_id:
        record_ingest(result, mlflow_run_id, settings=settings)
        logger.info("Recorded the data checksums on MLflow run %s", mlflow_run_id)
    return result


def ingest_task_for(settings: Settings):
    """``ingest_task`` with the settings' retries and delay; permanent errors are never retried."""
    return ingest_task.with_options(**retry_options(settings))
