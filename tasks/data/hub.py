"""Hugging Face Hub client: a revision resolved to a commit with its files' checksums, the files downloaded at
that commit and verified, transient errors retried with backoff, permanent ones raised at once naming what
is wrong. Checksums kept beside the cache let a pinned, fully cached commit need no network call."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any, Literal, TypeVar

from tasks.errors import PermanentError, TransientError

log = logging.getLogger(__name__)

MAX_BACKOFF_SECONDS = 60.0
COMMIT_SHA = re.compile(r"[0-9a-f]{40}")
SHA256 = re.compile(r"[0-9a-f]{64}")
RECORDS_DIR = "loanrisk-commits"

T = TypeVar("T")
LoggerLike = logging.Logger | logging.LoggerAdapter


@dataclass(frozen=True)
class Retry:
    """How transient errors are retried: attempts, the first wait (doubling, capped at a minute), logging."""

    max_attempts: int = 4
    backoff_seconds: float = 1.0
    logger: LoggerLike = log
    sleep: Callable[[float], None] = time.sleep


@dataclass(frozen=True)
class RemoteFile:
    """What a commit says a file is: an LFS file's ``sha256``, or the ``git blob id`` (sha1 of ``blob
    <size>\\0`` + content) of a file stored in git."""

    kind: Literal["sha256", "git blob id"]
    digest: str


@dataclass(frozen=True)
class Commit:
    """A revision resolved to a commit of a dataset repository, with its files' checksums."""

    repo_id: str
    sha: str
    endpoint: str
    files: dict[str, RemoteFile]


def hf_endpoint() -> str:
    """``HF_ENDPOINT`` read now (huggingface_hub reads it only at import time), else the public Hub."""
    return (os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [""])[0]


def _cause(exc: BaseException) -> BaseException:
    """hf_hub_download wraps a failed metadata call in LocalEntryNotFoundError."""
    from huggingface_hub.errors import LocalEntryNotFoundError

    wrapped = isinstance(exc, LocalEntryNotFoundError) and exc.__cause__ is not None
    return _cause(exc.__cause__) if wrapped else exc


def _is_transient(exc: BaseException) -> bool:
    import httpx2
    from huggingface_hub import errors as e

    if isinstance(exc, e.HfHubHTTPError):
        status = getattr(exc.response, "status_code", 0)
        return status in (408, 429) or status >= 500
    if isinstance(exc, e.OfflineModeIsEnabled | e.FileMetadataError | e.LocalEntryNotFoundError):
        return False  # offline with nothing cached, or an endpoint that answers without Hub metadata
    # "Consistency check failed": hf_hub_download's size check after an interrupted transfer
    return isinstance(exc, httpx2.TransportError | ConnectionError | TimeoutError) or (
        isinstance(exc, OSError) and "Consistency check failed" in str(exc)
    )


def _permanent_reason(exc: BaseException) -> str | None:
    """What is missing or refused, for a non-transient huggingface_hub error (None: not one it knows)."""
    from huggingface_hub import errors as e

    token = "LOANRISK_HF_TOKEN"
    known = {
        e.RevisionNotFoundError: "no such revision",
        e.GatedRepoError: f"the repository is gated: accept its conditions on the Hub and set {token} to a"
        " token that may read it",
        e.RepositoryNotFoundError: f"no such dataset repository (or it is private and {token} is missing or"
        " cannot read it)",
        e.RemoteEntryNotFoundError: "no such file at that revision",
        e.DisabledRepoError: "the repository is disabled",
        e.OfflineModeIsEnabled: "HF_HUB_OFFLINE is set and it is not in the local cache",
        e.FileMetadataError: f"the endpoint does not answer like a Hugging Face Hub: {exc}",
    }
    reason = next((text for kind, text in known.items() if isinstance(exc, kind)), None)
    status = getattr(exc.response, "status_code", 0) if isinstance(exc, e.HfHubHTTPError) else 0
    if reason is None and status in (401, 403):
        return f"access refused (HTTP {status}): check {token}"
    if reason is None and 400 <= status < 500:
        return f"HTTP {status}: {_first_line(exc)}"
    return reason


def call_with_retries(fn: Callable[[], T], retry: Retry, describe: str) -> T:
    """Run ``fn``; retry transient Hub errors with exponential backoff; raise permanent ones at once naming
    ``describe`` (the action: its repository, revision and file) and the reason."""
    attempt = 0
    while True:
        attempt += 1
        try:
            return fn()
        except Exception as exc:  # noqa: BLE001 - classified below
            reason = _cause(exc)
            if not _is_transient(reason):
                why = _permanent_reason(reason)
                if why is None:
                    raise
                raise PermanentError(f"{describe} on {hf_endpoint()}: {why}") from exc
            last = f"{type(reason).__name__}: {_first_line(reason)}"
            if attempt >= retry.max_attempts:
                raise TransientError(
                    f"{describe} failed after {attempt} attempt(s) with transient errors; last: {last}"
                ) from exc
            wait = min(MAX_BACKOFF_SECONDS, retry.backoff_seconds * 2 ** (attempt - 1))
            retry.logger.warning(
                f"{describe} failed (attempt {attempt}/{retry.max_attempts}: {last}); retrying in {wait:.2f}s"
            )
            retry.sleep(wait)


def digests(path: str | Path) -> tuple[str, str]:
    """sha256 and git blob id (sha1 of ``blob <size>\\0`` and the content) of a file, in one read."""
    sha256, sha1 = hashlib.sha256(), hashlib.sha1(f"blob {Path(path).stat().st_size}\0".encode())
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            sha256.update(chunk)
            sha1.update(chunk)
    return sha256.hexdigest(), sha1.hexdigest()


def write_atomic(path: Path, text: str) -> None:
    """Write ``path`` through a temporary file beside it, so a reader sees the old or the new file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _keep(path: Path, text: str) -> None:
    try:
        write_atomic(path, text)
    except OSError:  # a read-only cache still works online
        log.debug("could not write %s", path, exc_info=True)


def storage_folder(cache_dir: Path, repo_id: str) -> Path:
    """Where huggingface_hub keeps a dataset repository's blobs, snapshots and refs under ``cache_dir``."""
    from huggingface_hub.file_download import repo_folder_name

    return Path(cache_dir) / repo_folder_name(repo_id=repo_id, repo_type="dataset")


def _cached(storage: Path, sha: str, files: Sequence[str]) -> dict[str, RemoteFile] | None:
    """The checksums kept after an earlier verified download of ``sha``, if its snapshot has all ``files``."""
    if not all((storage / "snapshots" / sha / name).is_file() for name in files):
        return None
    try:
        data = json.loads((storage / RECORDS_DIR / f"{sha}.json").read_text())
        out = {name: RemoteFile(**data[name]) for name in files}
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return out if all(f.digest for f in out.values()) else None


def resolve_commit(
    repo_id: str, revision: str, files: Sequence[str], *, cache_dir: Path, token: str | None, retry: Retry
) -> Commit:
    """Resolve ``revision`` of dataset ``repo_id`` to its commit and the checksums of ``files`` there; offline
    when the commit is fully cached (a sha, or ``HF_HUB_OFFLINE`` with the ref cached)."""
    from huggingface_hub import HfApi, get_hf_file_metadata, hf_hub_url
    from huggingface_hub import constants as hf_constants

    endpoint = hf_endpoint()
    storage = storage_folder(cache_dir, repo_id)
    offline = hf_constants.is_offline_mode()
    sha = revision if COMMIT_SHA.fullmatch(revision) else ""
    ref = storage / "refs" / revision
    if not sha and offline and ref.is_file():
        sha = ref.read_text().strip()
    known = _cached(storage, sha, files) if sha else None
    if known is not None:
        if offline:
            retry.logger.warning(f"HF_HUB_OFFLINE is set: using the cached {revision} of {repo_id} ({sha})")
        return Commit(repo_id, sha, endpoint, known)
    if offline:
        raise PermanentError(
            f"HF_HUB_OFFLINE is set and revision {revision!r} of dataset repository {repo_id!r} is not fully"
            f" cached (with its checksums) in {cache_dir}"
        )

    api = HfApi(endpoint=endpoint, token=token)
    info = call_with_retries(
        lambda: api.dataset_info(repo_id, revision=revision, files_metadata=True, timeout=60),
        retry,
        f"resolving revision {revision!r} of dataset {repo_id!r}",
    )
    sha = info.sha
    listed = {s.rfilename: s for s in info.siblings} if info.siblings is not None else None
    missing = [name for name in files if listed is not None and name not in listed]
    if missing:
        raise PermanentError(
            f"file(s) {', '.join(repr(m) for m in missing)} not found at revision {revision!r} ({sha}) of"
            f" dataset repository {repo_id!r} on {endpoint}"
        )
    remote: dict[str, RemoteFile] = {}
    for name in files:
        sibling = (listed or {}).get(name)
        if sibling is not None and sibling.lfs is not None:
            remote[name] = RemoteFile("sha256", sibling.lfs.sha256)
        elif sibling is not None and sibling.blob_id:
            remote[name] = RemoteFile("git blob id", sibling.blob_id)
        else:  # an endpoint that does not list files with their blobs: ask for this file's metadata
            url = hf_hub_url(repo_id, name, repo_type="dataset", revision=sha or revision, endpoint=endpoint)
            metadata = call_with_retries(
                lambda url=url: get_hf_file_metadata(url, token=token, endpoint=endpoint),
                retry,
                f"reading the checksum of {name!r} at revision {revision!r} of dataset {repo_id!r}",
            )
            sha = sha or metadata.commit_hash
            etag = (metadata.etag or "").strip('"').lower()
            if not (SHA256.fullmatch(etag) or COMMIT_SHA.fullmatch(etag)):
                raise PermanentError(f"{endpoint} gives no checksum for {name!r} (ETag {metadata.etag!r})")
            remote[name] = RemoteFile("sha256" if SHA256.fullmatch(etag) else "git blob id", etag)
    if not sha or not COMMIT_SHA.fullmatch(sha):
        raise PermanentError(f"{endpoint} returned no commit sha for revision {revision!r} of {repo_id!r}")
    if revision != sha:  # as huggingface_hub records it, for offline runs
        _keep(ref, sha)
    retry.logger.info("Dataset %s@%s resolved to commit %s", repo_id, revision, sha)
    return Commit(repo_id, sha, endpoint, remote)


def _verify(path: Path, expected: RemoteFile) -> tuple[dict[str, Any], str | None]:
    """The file's path, size and sha256, and its checksum when that differs from the commit's (else None)."""
    sha256, git_sha1 = digests(path)
    got = sha256 if expected.kind == "sha256" else git_sha1
    wrong = None if got == expected.digest else got
    return {"path": str(path), "size": path.stat().st_size, "sha256": sha256}, wrong


def _discard(path: Path) -> None:
    """Remove a cached snapshot file and the blob it points to."""
    blob = path.resolve()
    path.unlink(missing_ok=True)
    blob.unlink(missing_ok=True)


def download_verified(
    commit: Commit, *, cache_dir: Path, token: str | None, retry: Retry
) -> tuple[dict[str, dict[str, Any]], bool]:
    """Each of ``commit``'s files' path, size and sha256 (verified cached copies reused; a download failing
    its checksum is removed and raises naming both sums), and whether all were cached."""
    from huggingface_hub import hf_hub_download

    storage = storage_folder(cache_dir, commit.repo_id)
    fetch = partial(hf_hub_download, repo_id=commit.repo_id, repo_type="dataset", revision=commit.sha)
    local: dict[str, dict[str, Any]] = {}
    all_cached = True
    for name, expected in commit.files.items():
        cached = storage / "snapshots" / commit.sha / name
        if cached.is_file():
            local[name], wrong = _verify(cached, expected)
            if wrong is None:
                continue
            retry.logger.warning(
                f"Cached {name} of {commit.repo_id}@{commit.sha} fails its checksum; downloading again"
            )
            _discard(cached)
        all_cached = False
        path = call_with_retries(
            lambda name=name: fetch(
                filename=name, cache_dir=cache_dir, token=token, endpoint=commit.endpoint
            ),
            retry,
            f"downloading {name!r} at revision {commit.sha} of dataset {commit.repo_id!r}",
        )
        local[name], wrong = _verify(Path(path), expected)
        if wrong is not None:
            _discard(Path(path))
            raise PermanentError(
                f"{name} downloaded from {commit.repo_id}@{commit.sha} on {commit.endpoint} has"
                f" {expected.kind} {wrong}, but the commit lists {expected.digest}: the download is corrupt"
                " or was altered on the way (removed from the cache)"
            )
    record = {n: asdict(f) for n, f in commit.files.items()}
    _keep(storage / RECORDS_DIR / f"{commit.sha}.json", json.dumps(record, indent=2, sort_keys=True))
    return local, all_cached
