"""Hugging Face Hub client: resolve a revision to a commit with its files' checksums (LFS sha256 or git blob
id), download the files at that commit and verify each. The checksums are kept beside the cache
(``<storage>/loanrisk-commits/<sha>.json``) so a pinned, fully cached commit needs no network call."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tasks.data.hub_retry import (
    HubAccessError,
    HubIntegrityError,
    HubNotFoundError,
    Retry,
    call_with_retries,
    hf_endpoint,
)

log = logging.getLogger(__name__)

HASH_CHUNK_BYTES = 1 << 20
RECORDS_DIR = "loanrisk-commits"

COMMIT_SHA = re.compile(r"[0-9a-f]{40}")
SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class RemoteFile:
    """What a commit says one file is."""

    name: str
    size: int | None = None
    sha256: str | None = None  # LFS files: the sha256 of the content
    git_sha1: str | None = None  # files stored in git: the blob id, sha1("blob <size>\0" + content)

    @property
    def checksum(self) -> str:
        return f"sha256 {self.sha256}" if self.sha256 else f"git blob {self.git_sha1}"


@dataclass(frozen=True)
class Commit:
    """A revision resolved to a commit of a dataset repository, with its files' checksums."""

    repo_id: str
    revision: str  # as requested
    sha: str
    endpoint: str
    files: dict[str, RemoteFile] = field(default_factory=dict)


def digests(path: str | Path, chunk_size: int = HASH_CHUNK_BYTES) -> tuple[str, str]:
    """sha256 and git blob id (sha1 of ``blob <size>\\0`` and the content) of a file, in one read."""
    sha256, sha1 = hashlib.sha256(), hashlib.sha1(f"blob {Path(path).stat().st_size}\0".encode())
    with open(path, "rb") as fh:
        while chunk := fh.read(chunk_size):
            sha256.update(chunk)
            sha1.update(chunk)
    return sha256.hexdigest(), sha1.hexdigest()


def storage_folder(cache_dir: Path, repo_id: str) -> Path:
    """Where huggingface_hub keeps a dataset repository's blobs, snapshots and refs under ``cache_dir``."""
    from huggingface_hub.file_download import repo_folder_name

    return Path(cache_dir) / repo_folder_name(repo_id=repo_id, repo_type="dataset")


def _record_path(storage: Path, sha: str) -> Path:
    return storage / RECORDS_DIR / f"{sha}.json"


def _read_record(storage: Path, sha: str, files: Sequence[str]) -> dict[str, RemoteFile] | None:
    """The checksums kept after an earlier verified download of ``sha``, when they cover ``files``."""
    try:
        data = json.loads(_record_path(storage, sha).read_text())
        out = {name: RemoteFile(**data[name]) for name in files}
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return out if all(f.sha256 or f.git_sha1 for f in out.values()) else None


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file beside it, so a reader sees the old or the new file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}")
    tmp.write_text(text)
    os.replace(tmp, path)


def _write_record(storage: Path, commit: Commit) -> None:
    path = _record_path(storage, commit.sha)
    try:
        write_atomic(
            path, json.dumps({n: asdict(f) for n, f in commit.files.items()}, indent=2, sort_keys=True)
        )
    except OSError:  # a read-only cache still works online
        log.debug("could not keep the checksums of %s in %s", commit.sha, path, exc_info=True)


def _remember_ref(storage: Path, revision: str, sha: str) -> None:
    """Record ``revision -> sha`` the way huggingface_hub does (``refs/<revision>``), for offline runs."""
    ref = storage / "refs" / revision
    try:
        if not (ref.is_file() and ref.read_text().strip() == sha):
            write_atomic(ref, sha)
    except OSError:
        log.debug("could not record ref %s -> %s in %s", revision, sha, storage, exc_info=True)


def _snapshot_complete(storage: Path, sha: str, files: Sequence[str]) -> bool:
    return all((storage / "snapshots" / sha / name).is_file() for name in files)


def _from_etag(name: str, metadata: Any) -> RemoteFile:
    etag = (metadata.etag or "").strip('"').lower()
    if SHA256.fullmatch(etag):
        return RemoteFile(name, metadata.size, sha256=etag)
    if COMMIT_SHA.fullmatch(etag):
        return RemoteFile(name, metadata.size, git_sha1=etag)
    raise HubAccessError(f"{hf_endpoint()} gives no checksum for {name!r} (ETag {metadata.etag!r})")


def resolve_commit(
    repo_id: str,
    revision: str,
    files: Sequence[str],
    *,
    cache_dir: Path,
    token: str | None = None,
    retry: Retry | None = None,
) -> Commit:
    """Resolve ``revision`` of dataset ``repo_id`` to its commit and the checksums of ``files`` there.

    Offline when the commit is fully cached (a sha, or ``HF_HUB_OFFLINE`` with the ref cached).
    """
    from huggingface_hub import HfApi, get_hf_file_metadata, hf_hub_url
    from huggingface_hub import constants as hf_constants

    retry = retry or Retry()
    endpoint = hf_endpoint()
    storage = storage_folder(cache_dir, repo_id)
    retrying = {"repo_id": repo_id, "revision": revision, "retry": retry}

    if COMMIT_SHA.fullmatch(revision) and _snapshot_complete(storage, revision, files):
        known = _read_record(storage, revision, files)
        if known is not None:
            return Commit(repo_id, revision, revision, endpoint, known)
    if hf_constants.is_offline_mode():
        ref = storage / "refs" / revision
        sha = (
            revision if COMMIT_SHA.fullmatch(revision) else (ref.read_text().strip() if ref.is_file() else "")
        )
        known = _read_record(storage, sha, files) if sha and _snapshot_complete(storage, sha, files) else None
        if known is None:
            raise HubAccessError(
                f"HF_HUB_OFFLINE is set and revision {revision!r} of dataset repository {repo_id!r} is not fully"
                f" cached (with its checksums) in {cache_dir}"
            )
        retry.logger.warning("HF_HUB_OFFLINE is set: using the cached %s of %s (%s)", revision, repo_id, sha)
        return Commit(repo_id, revision, sha, endpoint, known)

    api = HfApi(endpoint=endpoint, token=token)
    info = call_with_retries(
        lambda: api.dataset_info(repo_id, revision=revision, files_metadata=True, timeout=60),
        describe=f"resolving revision {revision!r} of {repo_id}",
        filename=None,
        **retrying,
    )
    sha = info.sha
    listed = {s.rfilename: s for s in info.siblings} if info.siblings is not None else None
    if listed is not None:
        missing = [name for name in files if name not in listed]
        if missing:
            raise HubNotFoundError(
                f"file(s) {', '.join(repr(m) for m in missing)} not found at revision {revision!r} ({sha}) of"
                f" dataset repository {repo_id!r} on {endpoint}"
            )
    remote: dict[str, RemoteFile] = {}
    for name in files:
        sibling = listed.get(name) if listed is not None else None
        if sibling is not None and (sibling.lfs is not None or sibling.blob_id):
            lfs = sibling.lfs
            remote[name] = RemoteFile(
                name,
                lfs.size if lfs is not None else sibling.size,
                sha256=lfs.sha256 if lfs is not None else None,
                git_sha1=None if lfs is not None else sibling.blob_id,
            )
            continue
        # an endpoint that does not list files with their blobs: ask for this file's metadata at the revision
        url = hf_hub_url(repo_id, name, repo_type="dataset", revision=sha or revision, endpoint=endpoint)
        metadata = call_with_retries(
            lambda url=url: get_hf_file_metadata(url, token=token, endpoint=endpoint),
            describe=f"reading the checksum of {name} in {repo_id}@{revision}",
            filename=name,
            **retrying,
        )
        sha = sha or metadata.commit_hash
        remote[name] = _from_etag(name, metadata)
    if not sha or not COMMIT_SHA.fullmatch(sha):
        raise HubAccessError(f"{endpoint} returned no commit sha for revision {revision!r} of {repo_id!r}")
    if revision != sha:
        _remember_ref(storage, revision, sha)
    retry.logger.info("Dataset %s@%s resolved to commit %s", repo_id, revision, sha)
    return Commit(repo_id, revision, sha, endpoint, remote)


@dataclass(frozen=True)
class LocalFile:
    """A downloaded, verified file."""

    path: Path
    size: int
    sha256: str


def _check(path: Path, expected: RemoteFile) -> tuple[LocalFile, str | None]:
    """The file described, and the checksum that differs from the commit's (None when it matches)."""
    sha256, git_sha1 = digests(path)
    got = sha256 if expected.sha256 else git_sha1
    return LocalFile(path, path.stat().st_size, sha256), (
        None if got == (expected.sha256 or expected.git_sha1) else got
    )


def _discard(path: Path) -> None:
    """Remove a cached snapshot file and the blob it points to."""
    blob = path.resolve()
    path.unlink(missing_ok=True)
    blob.unlink(missing_ok=True)


def download_verified(
    commit: Commit, *, cache_dir: Path, token: str | None = None, retry: Retry | None = None
) -> tuple[dict[str, LocalFile], bool]:
    """Download ``commit``'s files (verified cached copies reused); returns them and whether all were cached.

    A fresh download that fails its checksum is removed and raises :class:`HubIntegrityError` naming both sums.
    """
    from huggingface_hub import hf_hub_download

    retry = retry or Retry()
    storage = storage_folder(cache_dir, commit.repo_id)
    local: dict[str, LocalFile] = {}
    all_cached = True
    for name, expected in commit.files.items():
        cached = storage / "snapshots" / commit.sha / name
        if cached.is_file():
            described, wrong = _check(cached, expected)
            if wrong is None:
                local[name] = described
                continue
            retry.logger.warning(
                "Cached %s of %s@%s fails its checksum; downloading it again",
                name,
                commit.repo_id,
                commit.sha,
            )
            _discard(cached)
        all_cached = False
        path = Path(
            call_with_retries(
                lambda name=name: hf_hub_download(
                    commit.repo_id,
                    name,
                    repo_type="dataset",
                    revision=commit.sha,
                    cache_dir=cache_dir,
                    token=token,
                    endpoint=commit.endpoint,
                ),
                describe=f"downloading {name} from {commit.repo_id}@{commit.sha}",
                repo_id=commit.repo_id,
                revision=commit.sha,
                filename=name,
                retry=retry,
            )
        )
        described, got = _check(path, expected)
        if got is not None:
            _discard(path)
            kind = "sha256" if expected.sha256 else "git blob id"
            raise HubIntegrityError(
                f"{name} downloaded from {commit.repo_id}@{commit.sha} on {commit.endpoint} has {kind} {got}, but "
                f"the commit lists {expected.sha256 or expected.git_sha1}: the download is corrupt or was altered "
                "on the way (removed from the cache)"
            )
        local[name] = described
    _write_record(storage, commit)
    return local, all_cached
