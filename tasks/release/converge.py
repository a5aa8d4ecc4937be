"""Converge: make everything derived from the release ledger (alias, tags, notes, the GitHub release through
its REST API) match its head; each step looks first, and GitHub's 5xx/429/no answer is retried."""

from __future__ import annotations

import contextlib
import re
import tempfile
from pathlib import Path
from typing import Any

import httpx

from serving.bundle import CARD_HTML, load_bundle
from tasks.common import run_logger, stage
from tasks.errors import PermanentError, TransientError
from tasks.registry import versions
from tasks.registry.aliases import Alias
from tasks.release.ledger import (
    Committed,
    Entry,
    ReleaseFailed,
    head,
    history_rows,
    read_ledger,
    rolled_back_versions,
    seed,
)
from tasks.release.record import card_link, notes_artifact_key, release_marker, release_notes
from tasks.release.registry_api import registry_args, registry_retag, tag_digest
from tasks.settings import Settings
from tasks.settings.sections import ReleaseSettings

MAX_ROUNDS = 5


class GitHubReleaseError(PermanentError):
    """GitHub refused the release for good (credentials, permissions, repository)."""


class GitHubUnavailable(TransientError):
    """GitHub did not answer, or answered 5xx / 429: retried."""


def _github(
    method: str, url: str, token: str, what: str, body: dict | None = None, allow: int = 0
) -> httpx.Response:
    """One GitHub REST call about the release ``what``; no answer, 5xx or 429 raise :class:`GitHubUnavailable`
    (retried), any other answer but 2xx or ``allow`` raises :class:`GitHubReleaseError`."""
    headers = {
        "Authorization": f"Bearer {token}",
        "Accept": "application/vnd.github+json",
        "X-GitHub-Api-Version": "2022-11-28",
    }
    try:
        response = httpx.request(method, url, json=body, headers=headers, timeout=30.0)
    except httpx.HTTPError as exc:
        raise GitHubUnavailable(f"GitHub {method} {url}: {type(exc).__name__}: {exc}") from exc
    if response.status_code >= 500 or response.status_code == 429:
        raise GitHubUnavailable(f"GitHub {method} {url}: HTTP {response.status_code} {response.text[:300]}")
    if response.status_code >= 300 and response.status_code != allow:
        raise GitHubReleaseError(f"GitHub release {what}: HTTP {response.status_code} {response.text[:300]}")
    return response


def find_github_release(api_url: str, repository: str, token: str, tag: str) -> dict[str, Any] | None:
    """The GitHub release of ``tag`` (``GET /repos/{repo}/releases/tags/{tag}``), or None when there is none."""
    url = f"{api_url.rstrip('/')}/repos/{repository}/releases/tags/{tag}"
    response = _github("GET", url, token, f"{tag!r} on {repository}", allow=404)
    return None if response.status_code == 404 else response.json()


def create_github_release(
    api_url: str,
    repository: str,
    token: str,
    tag: str,
    name: str,
    body: str,
    target_commitish: str | None = None,
) -> dict[str, Any]:
    """Create a GitHub release (and its tag, at ``target_commitish`` when given) through the REST API; returns
    the created release. A 422 "already_exists" (created meanwhile) returns the existing release instead."""
    payload = {"tag_name": tag, "name": name, "body": body, "draft": False, "prerelease": False}
    payload |= {"target_commitish": target_commitish} if target_commitish else {}
    url, what = f"{api_url.rstrip('/')}/repos/{repository}/releases", f"{tag!r} on {repository}"
    response = _github("POST", url, token, what, payload, allow=422)
    if response.status_code == 422:
        exists = "already_exists" in response.text
        found = find_github_release(api_url, repository, token, tag) if exists else None
        if found is None:
            raise GitHubReleaseError(f"GitHub release {what}: HTTP 422 {response.text[:300]}")
        return found
    return response.json()


def github_tag(model_name: str, version: str, digest: str) -> str:
    """The GitHub release's tag: one per image digest (a version rebuilt into another image is another release)."""
    return f"{model_name}-v{version}-{digest.removeprefix('sha256:')[:12]}"


def publish_github_release(
    release: ReleaseSettings, tag: str, name: str, notes: str, marker: str, target_commitish: str | None
) -> dict[str, Any] | None:
    """The GitHub release ``tag`` holds ``notes``: created (at the image's source commit) unless it exists; an
    existing one whose body lacks ``marker`` (another release of the same digest) gets ``notes`` added. None when
    no token and repository are configured."""
    if not (release.github_token and release.github_repository):
        return None
    api, repo = release.github_api_url, release.github_repository
    token = release.github_token.get_secret_value()
    found = find_github_release(api, repo, token, tag)
    if found is None:
        return create_github_release(api, repo, token, tag, name, notes, target_commitish)
    if marker not in (found.get("body") or ""):  # PATCH /repos/{repo}/releases/{id}: the body, replaced
        url = f"{api.rstrip('/')}/repos/{repo}/releases/{found['id']}"
        body = {"body": f"{notes}\n---\n\n{found.get('body') or ''}"}
        found = _github("PATCH", url, token, f"{found['id']} on {repo}", body).json()
    return found


def converge_alias(settings: Settings) -> Entry | None:
    """Point ``champion`` at the ledger's head and read the head again until they agree; returns the head."""
    for _ in range(MAX_ROUNDS):
        top = head(settings)
        if top is None:
            return None
        current = versions.version_by_alias(settings, Alias.CHAMPION)
        if current is None or str(current.version) != top.version:
            versions.set_alias(settings, Alias.CHAMPION, top.version)
            run_logger().info("champion -> v%s (ledger entry %d)", top.version, top.seq)
        again = head(settings)
        if again is not None and again.seq == top.seq:
            return top
    raise ReleaseFailed("converge", f"the ledger's head kept moving over {MAX_ROUNDS} rounds", "yes")


def _set_changed(settings: Settings, version: str, tags: dict[str, str]) -> None:
    have = versions.get_version(settings, version).tags or {}
    changed = {k: v for k, v in tags.items() if have.get(k) != v}
    if changed:
        versions.set_version_tags(settings, version, changed)


def version_facts(settings: Settings, entries: list[Entry]) -> None:
    """The head's release and every rollback's mark, as tags on the versions they concern."""
    top, left = entries[-1], rolled_back_versions(entries)
    facts = {
        f"release.{k}": str(getattr(top, k)) for k in ("seq", "digest", "image", "at", "kind", "by", "reason")
    }
    _set_changed(settings, top.version, {**facts, "release.replaced": top.from_version})
    for e in entries:
        if e.kind == "rollback" and e.from_version:
            marks = {"": str(e.from_version in left).lower(), "_at": e.at, "_to": e.version, "_by": e.by}
            _set_changed(settings, e.from_version, {f"release.rolled_back{k}": v for k, v in marks.items()})


def _retag(settings: Settings, tag: str, digest: str, never_move: bool) -> str:
    """The image tag ``tag`` names ``digest`` in the registry: ``exists``, ``created`` or ``moved``."""
    registry, repository, user, password = registry_args(settings.release)
    held = tag_digest(registry, repository, tag, user, password)
    if held == digest:
        return "exists"
    if held is not None and never_move:
        raise PermanentError(
            f"image tag :{tag} names {held}, not the released {digest}: a version tag never moves; "
            "this release is known by its digest"
        )
    registry_retag(registry, repository, digest, tag, user, password)
    return "moved" if held else "created"


def notes_for(settings: Settings, entry: Entry) -> str:
    """The head's release notes (its bundle gives metrics, data and card; the replaced version's tags, its own)."""
    name = settings.registry.model_name
    with tempfile.TemporaryDirectory(prefix="loan-risk-notes-") as tmp:
        bundle = load_bundle(versions.download_bundle(settings, entry.version, Path(tmp) / "bundle"))
        metrics = bundle.meta.metrics
        tags = versions.get_version(settings, entry.from_version).tags or {} if entry.from_version else {}
        previous = {k: f for k, v in tags.items() if k.startswith("test_") and (f := _number(v)) is not None}
        card = card_link(name, entry.version, (bundle.directory / CARD_HTML).is_file())
        tested = {k: f"{v:.6f}" for k, v in metrics.items() if k.startswith("test_")}
        _set_changed(settings, entry.version, tested)
        return release_notes(name, entry, metrics, previous, bundle.meta.data_fingerprint, card)


def _number(v: str) -> float | None:
    with contextlib.suppress(TypeError, ValueError):
        return float(v)
    return None


def _artifacts(key: str) -> list[Any]:
    """Every version of the Prefect artifacts keyed ``key``."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        return client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])))


def publish_notes(settings: Settings, entry: Entry) -> str:
    """The head's notes as a Prefect artifact keyed by digest, written unless one holds its marker; returns the
    notes (read back when they exist)."""
    from prefect.artifacts import create_markdown_artifact

    key = notes_artifact_key(settings.registry.model_name, entry.version, entry.digest)
    marker = release_marker(entry)
    if written := next((str(a.data) for a in _artifacts(key) if marker in str(a.data or "")), None):
        return written
    notes = notes_for(settings, entry)
    about = f"{settings.registry.model_name} v{entry.version} ({entry.kind}, ledger entry {entry.seq})"
    create_markdown_artifact(key=key, markdown=notes, description=about)
    return notes


def publish_github(settings: Settings, entry: Entry, notes: str) -> str | None:
    """The GitHub release of the head's digest holds its notes; its tag is made at the image's source commit."""
    commit, name = entry.commit.removesuffix("-dirty"), settings.registry.model_name
    target = commit if re.fullmatch(r"[0-9a-f]{40}", commit) else None
    tag = github_tag(name, entry.version, entry.digest)
    release = publish_github_release(
        settings.release, tag, f"{name} v{entry.version}", notes, release_marker(entry), target
    )
    return (release or {}).get("html_url")


def history_artifact(settings: Settings, entries: list[Entry]) -> str:
    """The audit trail as a Prefect table artifact (a new version of it only when the ledger grew)."""
    from prefect.artifacts import create_table_artifact

    name = settings.registry.model_name
    key = "release-history-" + re.sub(r"[^a-z0-9-]+", "-", name.lower())
    description = f"{name}: every champion change, through ledger entry {entries[-1].seq}"
    if not any(a.description == description for a in _artifacts(key)):
        create_table_artifact(key=key, table=history_rows(entries), description=description)
    return key


def converge(settings: Settings, committed: Committed = "yes") -> dict[str, Any]:
    """Every step above, each tried; returns what it found and did, or raises :class:`ReleaseFailed` naming each
    step that failed. ``committed`` is what a failure says about the champion (``yes`` after this run's commit,
    ``unknown`` when converge runs on its own). Nothing released yet: ``{"status": "nothing released"}``."""
    try:
        entries = seed(settings)
        top = alias_task(settings) if entries else None
        if top is not None and top.seq != entries[-1].seq:
            entries = read_ledger(settings)
    except ReleaseFailed:
        raise
    except Exception as exc:
        raise ReleaseFailed(
            "converge", f"could not read the ledger or set the alias: {type(exc).__name__}: {exc}", committed
        ) from exc
    if top is None:
        return {"status": "nothing released"}
    done: dict[str, Any] = {"champion": top.version, "seq": top.seq, "digest": top.digest, "kind": top.kind}
    failed: list[str] = []

    def attempt(step: Any, *args: Any) -> Any:
        try:
            done[step.name] = step(settings, *args)
        except Exception as exc:  # noqa: BLE001 - every step is tried; the failures are reported together
            failed.append(f"{step.name}: {type(exc).__name__}: {exc}")
        return done.get(step.name)

    attempt(facts_task, entries)
    if top.digest:  # a seeded champion whose image the earlier record never noted has only its record
        attempt(version_tag_task, top.version, top.digest, True)
        attempt(latest_task, "latest", top.digest, False)
        notes = attempt(notes_task, top)
        if notes is not None:
            attempt(github_task, top, notes)
        done["release-notes"] = notes_artifact_key(settings.registry.model_name, top.version, top.digest)
    attempt(history_task, entries)
    newest = attempt(newest_task)
    if newest is not None and newest != top.seq:  # committed meanwhile: that release's converge follows it
        done["superseded_by"] = newest
    if failed:
        raise ReleaseFailed(
            "converge",
            f"v{top.version} is the champion (ledger entry {top.seq}), but {len(failed)} step(s) after the commit "
            "failed: " + "; ".join(failed) + ". `python -m flows.deploy --converge` completes them",
            "yes",
        )
    return done


def _ledger_seq(settings: Settings) -> int:
    """The ledger's newest entry now (another release may have committed during this converge)."""
    return top.seq if (top := head(settings)) else 0


# the stages: each step retried on its own (each looks before it writes)
alias_task = stage("converge-champion")(converge_alias)
newest_task = stage("ledger-head")(_ledger_seq)
facts_task = stage("version-facts")(version_facts)
version_tag_task = stage("version-tag")(_retag)  # a version tag is made once and never moved
latest_task = stage("tag-latest")(_retag)  # what the live service runs
notes_task = stage("release-notes")(publish_notes)
github_task = stage("github-release")(publish_github)
history_task = stage("release-history")(history_artifact)
