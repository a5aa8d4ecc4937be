"""GitHub releases through the REST API, created once: looked up by tag first, created when missing.

Unavailability (no answer, 5xx, 429) is retried; any other refusal is a :class:`GitHubReleaseError`.
"""

from __future__ import annotations

from typing import Any

import httpx

from tasks.errors import PermanentError, TransientError
from tasks.settings import Settings


class GitHubReleaseError(PermanentError):
    """GitHub refused the release for good (credentials, permissions, repository)."""


class GitHubUnavailable(TransientError):
    """GitHub did not answer, or answered 5xx / 429: retried."""


def _github(
    method: str, url: str, token: str, timeout: float, body: dict[str, Any] | None = None
) -> httpx.Response:
    """One GitHub REST call; no answer, 5xx or 429 raise :class:`GitHubUnavailable` (retried)."""
    headers = {
        "Authorization": f"Bearer {token}",
        "Accept": "application/vnd.github+json",
        "X-GitHub-Api-Version": "2022-11-28",
    }
    try:
        response = httpx.request(method, url, json=body, headers=headers, timeout=timeout)
    except httpx.HTTPError as exc:
        raise GitHubUnavailable(f"GitHub {method} {url}: {type(exc).__name__}: {exc}") from exc
    if response.status_code >= 500 or response.status_code == 429:
        raise GitHubUnavailable(f"GitHub {method} {url}: HTTP {response.status_code} {response.text[:300]}")
    return response


def find_github_release(
    api_url: str, repository: str, token: str, tag: str, timeout: float = 30.0
) -> dict[str, Any] | None:
    """The GitHub release of ``tag`` (``GET /repos/{repo}/releases/tags/{tag}``), or None when there is none."""
    url = f"{api_url.rstrip('/')}/repos/{repository}/releases/tags/{tag}"
    response = _github("GET", url, token, timeout)
    if response.status_code == 404:
        return None
    if response.status_code != 200:
        raise GitHubReleaseError(
            f"GitHub release {tag!r} on {repository}: HTTP {response.status_code} {response.text[:300]}"
        )
    return response.json()


def create_github_release(
    api_url: str,
    repository: str,
    token: str,
    tag: str,
    name: str,
    body: str,
    target_commitish: str | None = None,
    timeout: float = 30.0,
) -> dict[str, Any]:
    """Create a GitHub release (and its tag, at ``target_commitish`` when given) through the REST API; returns
    the created release. A 422 "already_exists" (created meanwhile) returns the existing release instead."""
    payload: dict[str, Any] = {
        "tag_name": tag,
        "name": name,
        "body": body,
        "draft": False,
        "prerelease": False,
    }
    if target_commitish:
        payload["target_commitish"] = target_commitish
    response = _github("POST", f"{api_url.rstrip('/')}/repos/{repository}/releases", token, timeout, payload)
    if response.status_code == 422 and "already_exists" in response.text:
        found = find_github_release(api_url, repository, token, tag, timeout)
        if found is not None:
            return found
    if response.status_code >= 300:
        raise GitHubReleaseError(
            f"GitHub release {tag!r} on {repository}: HTTP {response.status_code} {response.text[:300]}"
        )
    return response.json()


def edit_github_release_body(
    api_url: str, repository: str, token: str, release_id: int, body: str, timeout: float = 30.0
) -> dict[str, Any]:
    """Replace the body of release ``release_id`` (``PATCH /repos/{repo}/releases/{id}``)."""
    url = f"{api_url.rstrip('/')}/repos/{repository}/releases/{release_id}"
    response = _github("PATCH", url, token, timeout, {"body": body})
    if response.status_code != 200:
        raise GitHubReleaseError(f"GitHub release {release_id} on {repository}: HTTP {response.status_code}")
    return response.json()


def github_tag(model_name: str, version: str, digest: str) -> str:
    """The GitHub release's tag: one per image digest (a version rebuilt into another image is another release)."""
    return f"{model_name}-v{version}-{digest.removeprefix('sha256:')[:12]}"


def publish_github_release(
    settings: Settings, tag: str, name: str, notes: str, marker: str, target_commitish: str | None
) -> dict[str, Any] | None:
    """The GitHub release ``tag`` holds ``notes``: created (at the image's source commit) unless it exists; an
    existing one whose body lacks ``marker`` (another release of the same digest) gets ``notes`` added. None when
    no token and repository are configured. ``created`` says whether this call created it."""
    if not (settings.release.github_token and settings.release.github_repository):
        return None
    api, repo = settings.release.github_api_url, settings.release.github_repository
    token = settings.release.github_token.get_secret_value()
    found = find_github_release(api, repo, token, tag)
    if found is None:
        created = create_github_release(api, repo, token, tag, name, notes, target_commitish)
        return {**created, "created": True}
    if marker not in (found.get("body") or ""):
        found = edit_github_release_body(
            api, repo, token, found["id"], f"{notes}\n---\n\n{found.get('body') or ''}"
        )
    return {**found, "created": False}
