"""The three kinds of data source and how each brings the three CSV files in with their checksums: ``sample``
(generated once into ``data_dir/sample-scale{scale}-seed{seed}``, reused while its manifest is complete), a local
folder, and ``hf://datasets/<owner>/<name>[@<revision>]`` (``hf`` alone: the settings' repo and revision), whose
revision is resolved to a commit and every file verified against it."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import uuid
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from tasks.common import release_freed_memory
from tasks.data.contract import DATA_FILES
from tasks.data.hub import SHA256, download_verified, resolve_commit, write_atomic
from tasks.data.hub_retry import LoggerLike, Retry
from tasks.errors import PermanentError
from tasks.settings import Settings

MANIFEST_NAME = "ingest-manifest.json"
HF_SOURCE_PREFIX = "hf://datasets/"

_REPO_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*")

SourceKind = Literal["sample", "local", "hub"]


class IngestError(RuntimeError):
    """Base class of the ingest failures of local and sample sources (Hub failures: :class:`HubError`)."""


class MissingSourceFileError(IngestError, PermanentError, FileNotFoundError):
    """A local source folder lacks one of the three files."""


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

    @property
    def content_sha256(self) -> str:
        """One sha256 over the three files' names and checksums: identifies the data, not where it came from."""
        h = hashlib.sha256()
        for name in sorted(self.files):
            h.update(f"{name}:{self.files[name]['sha256']}\n".encode())
        return h.hexdigest()

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"data_dir": str(self.data_dir), "content_sha256": self.content_sha256}


def parse_source(source: str) -> Source:
    """Parse ``sample``, a local directory path, or ``hf://datasets/<owner>/<name>[@<revision>]``; else ValueError."""
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
    """``None`` -> ``settings.data.source``; ``hf``/``hub`` -> the Hub URL built from ``hf_repo``/``hf_revision``."""
    raw = (source if source is not None else settings.data.source).strip()
    if raw.lower() in {"hf", "hub"}:
        raw = HF_SOURCE_PREFIX + settings.data.hf_repo
        if settings.data.hf_revision:
            raw += f"@{settings.data.hf_revision}"
    return raw


def sha256_file(path: str | Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def describe_file(path: Path) -> dict[str, Any]:
    return {"path": str(path), "size": path.stat().st_size, "sha256": sha256_file(path)}


def sample_dir(settings: Settings) -> Path:
    return settings.data_dir / f"sample-scale{settings.data.sample_scale}-seed{settings.data.sample_seed}"


def _read_complete_manifest(folder: Path) -> dict[str, Any] | None:
    """The manifest of a completely written folder, or None (missing, unreadable, or files changed size)."""
    try:
        manifest = json.loads((folder / MANIFEST_NAME).read_text())
        files = manifest["files"]
        for name in DATA_FILES:
            entry = files[name]
            if (folder / name).stat().st_size != int(entry["size"]) or not SHA256.fullmatch(entry["sha256"]):
                return None
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return manifest


def from_sample(settings: Settings, logger: LoggerLike) -> IngestResult:
    scale, seed = settings.data.sample_scale, settings.data.sample_seed
    out = sample_dir(settings)
    manifest = _read_complete_manifest(out)
    cached = manifest is not None
    if manifest is None:
        logger.info("Generating the synthetic sample (scale=%s, seed=%s) into %s", scale, seed, out)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.parent / f".{out.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        try:
            tmp.mkdir(parents=True)
            from tasks.data.sample import generate

            info = generate(tmp, scale=scale, seed=seed)
            release_freed_memory()  # the generator's tables (~0.5 GB at full size) are gone
            missing = [name for name in DATA_FILES if not (tmp / name).is_file()]
            if missing:
                raise IngestError(f"tasks.data.sample.generate did not write {missing} into {tmp}")
            files = {name: describe_file(tmp / name) for name in DATA_FILES}
            manifest = {
                "kind": "sample",
                "scale": scale,
                "seed": seed,
                "created_at": datetime.now(UTC).isoformat(),
                "files": {n: {"size": f["size"], "sha256": f["sha256"]} for n, f in files.items()},
                "other_files": sorted(p.name for p in tmp.iterdir() if p.name not in DATA_FILES),
                "generator": info,  # row counts and paths: plain JSON
            }
            # The manifest is written last: a folder without it is incomplete and gets regenerated.
            write_atomic(tmp / MANIFEST_NAME, json.dumps(manifest, indent=2, sort_keys=True))
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
    files = {name: {"path": str(out / name)} | manifest["files"][name] for name in DATA_FILES}
    return IngestResult(
        data_dir=out,
        source="sample",
        kind="sample",
        revision=None,
        files=files,
        cached=cached,
        details={"scale": scale, "seed": seed},
    )


def from_local(src: Source) -> IngestResult:
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


def from_hub(src: Source, settings: Settings, *, retry: Retry) -> IngestResult:
    repo_id = src.repo_id
    assert repo_id is not None
    revision = src.revision or settings.data.hf_revision or "main"
    token = settings.data.hf_token.get_secret_value() if settings.data.hf_token is not None else None
    cache_dir = settings.data_dir / "hf"
    commit = resolve_commit(repo_id, revision, DATA_FILES, cache_dir=cache_dir, token=token, retry=retry)
    local, cached = download_verified(commit, cache_dir=cache_dir, token=token, retry=retry)
    files = {name: {"path": str(f.path), "size": f.size, "sha256": f.sha256} for name, f in local.items()}
    data_dir = local[DATA_FILES[0]].path.parent
    retry.logger.info(
        "%s %s@%s into %s (each file verified against the commit's checksum)",
        "Reused cached" if cached else "Downloaded",
        repo_id,
        commit.sha,
        data_dir,
    )
    return IngestResult(
        data_dir=data_dir,
        source=src.raw,
        kind="hub",
        revision=commit.sha,
        files=files,
        cached=cached,
        repo_id=repo_id,
        details={
            "requested_revision": revision,
            "endpoint": commit.endpoint,
            "verified": {name: f.checksum for name, f in commit.files.items()},
        },
    )
