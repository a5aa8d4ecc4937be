"""The three kinds of data source and how each brings the three CSV files in with their checksums: ``sample``
(generated once into ``data_dir/sample-scale{scale}-seed{seed}``, reused while its manifest is complete), a
local folder, and ``hf://datasets/<owner>/<name>[@<revision>]`` (``hf`` alone: the settings' repo and
revision), whose revision is resolved to a commit and every file verified against it."""

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
from tasks.data.hub import SHA256, LoggerLike, Retry, download_verified, resolve_commit, write_atomic
from tasks.errors import PermanentError
from tasks.settings import DataSettings

MANIFEST_NAME = "ingest-manifest.json"
HF_SOURCE_PREFIX = "hf://datasets/"
_REPO_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*")
_FILES_TEXT = ", ".join(DATA_FILES)
_ACCEPTED = "expected 'sample', a local directory, or 'hf://datasets/<owner>/<name>[@<revision>]'"

SourceKind = Literal["sample", "local", "hub"]
MissingSourceFileError = PermanentError  # a local source folder lacks one of the three files


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
        lines = "".join(f"{name}:{self.files[name]['sha256']}\n" for name in sorted(self.files))
        return hashlib.sha256(lines.encode()).hexdigest()

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"data_dir": str(self.data_dir), "content_sha256": self.content_sha256}


def parse_source(source: str) -> Source:
    """Parse ``sample``, a local directory path, or ``hf://datasets/<owner>/<name>[@<revision>]``; else ValueError."""
    raw = source.strip() if isinstance(source, str) else ""
    if not raw:
        raise ValueError(f"empty data source {source!r}: {_ACCEPTED}")
    if raw.lower() == "sample":
        return Source(kind="sample", raw="sample")
    if raw.startswith("hf://"):
        if not raw.startswith(HF_SOURCE_PREFIX):
            raise ValueError(
                f"unsupported Hub source {raw!r}: only dataset repositories are supported; {_ACCEPTED}"
            )
        repo_part, sep, revision = raw.removeprefix(HF_SOURCE_PREFIX).partition("@")
        repo_id = repo_part.rstrip("/")
        if not _REPO_ID.fullmatch(repo_id) or ".." in repo_id:
            raise ValueError(f"malformed Hub dataset id {repo_id!r} in source {raw!r}: {_ACCEPTED}")
        if sep and (not revision or any(c.isspace() for c in revision)):
            raise ValueError(f"malformed revision {revision!r} in source {raw!r}: {_ACCEPTED}")
        return Source(kind="hub", raw=raw, repo_id=repo_id, revision=revision or None)
    if "://" in raw:
        raise ValueError(f"unsupported data source {raw!r}: {_ACCEPTED}")
    path = Path(raw).expanduser()
    if not path.is_dir():
        raise ValueError(
            f"data source {raw!r} is a file; a local source must be a directory holding {_FILES_TEXT}"
            if path.exists()
            else f"data source {raw!r} is not 'sample', not an hf:// URL and no such directory exists"
        )
    return Source(kind="local", raw=raw, path=path.resolve())


def expand_source(source: str | None, data: DataSettings) -> str:
    """``None`` -> ``data.source``; ``hf``/``hub`` -> the Hub URL built from ``hf_repo``/``hf_revision``."""
    raw = (source if source is not None else data.source).strip()
    if raw.lower() in {"hf", "hub"}:
        raw = HF_SOURCE_PREFIX + data.hf_repo + (f"@{data.hf_revision}" if data.hf_revision else "")
    return raw


def sha256_file(path: str | Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def _describe(folder: Path) -> dict[str, dict[str, Any]]:
    return {
        n: {"path": str(folder / n), "size": (folder / n).stat().st_size, "sha256": sha256_file(folder / n)}
        for n in DATA_FILES
    }


def sample_dir(data: DataSettings, data_dir: Path) -> Path:
    """Where the sample of ``data`` is generated under ``data_dir`` (``bench/train`` reads it there)."""
    return data_dir / f"sample-scale{data.sample_scale}-seed{data.sample_seed}"


def _read_complete_manifest(folder: Path) -> dict[str, Any] | None:
    """The manifest of a completely written folder, or None (missing, unreadable, or files changed size)."""
    try:
        manifest = json.loads((folder / MANIFEST_NAME).read_text())
        for name in DATA_FILES:
            entry = manifest["files"][name]
            if (folder / name).stat().st_size != int(entry["size"]) or not SHA256.fullmatch(entry["sha256"]):
                return None
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return manifest


def _generate_sample(out: Path, scale: float, seed: int) -> dict[str, Any]:
    """Generate the sample into a temporary folder beside ``out``, move it there and return its manifest (when
    another process finished the same sample first, theirs is kept)."""
    from tasks.data.sample import generate

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        tmp.mkdir(parents=True)
        info = generate(tmp, scale=scale, seed=seed)
        release_freed_memory()  # the generator's tables (~0.5 GB at full size) are gone
        manifest = {
            "kind": "sample",
            "scale": scale,
            "seed": seed,
            "created_at": datetime.now(UTC).isoformat(),
            "files": {n: {"size": f["size"], "sha256": f["sha256"]} for n, f in _describe(tmp).items()},
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
            manifest = _read_complete_manifest(out) or {}
            if not manifest:
                raise
        return manifest
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def from_sample(data: DataSettings, data_dir: Path, logger: LoggerLike) -> IngestResult:
    scale, seed = data.sample_scale, data.sample_seed
    out = sample_dir(data, data_dir)
    manifest = _read_complete_manifest(out)
    cached = manifest is not None
    if manifest is None:
        logger.info("Generating the synthetic sample (scale=%s, seed=%s) into %s", scale, seed, out)
        manifest = _generate_sample(out, scale, seed)
    else:
        logger.info("Reusing the synthetic sample in %s", out)
    files = {name: {"path": str(out / name)} | manifest["files"][name] for name in DATA_FILES}
    return IngestResult(out, "sample", "sample", None, files, cached, details={"scale": scale, "seed": seed})


def from_local(src: Source) -> IngestResult:
    folder = src.path
    assert folder is not None
    missing = [name for name in DATA_FILES if not (folder / name).is_file()]
    if missing:
        raise MissingSourceFileError(
            f"local data folder {folder} is missing {', '.join(missing)} (a source folder must hold {_FILES_TEXT})"
        )
    return IngestResult(folder, src.raw, "local", None, _describe(folder), cached=False)


def from_hub(src: Source, data: DataSettings, data_dir: Path, *, retry: Retry) -> IngestResult:
    repo_id = src.repo_id
    assert repo_id is not None
    revision = src.revision or data.hf_revision or "main"
    token = data.hf_token.get_secret_value() if data.hf_token is not None else None
    cache_dir = data_dir / "hf"
    commit = resolve_commit(repo_id, revision, DATA_FILES, cache_dir=cache_dir, token=token, retry=retry)
    files, cached = download_verified(commit, cache_dir=cache_dir, token=token, retry=retry)
    folder = Path(files[DATA_FILES[0]]["path"]).parent
    done = "Reused cached" if cached else "Downloaded"
    retry.logger.info(
        f"{done} {repo_id}@{commit.sha} into {folder} (each file verified against the commit's checksum)"
    )
    details = {
        "requested_revision": revision,
        "endpoint": commit.endpoint,
        "verified": {name: f"{f.kind} {f.digest}" for name, f in commit.files.items()},
    }
    return IngestResult(folder, src.raw, "hub", commit.sha, files, cached, repo_id, details)
