"""GitHub releases through the REST API, looked up by tag first; 5xx/429/no answer is retried."""

from __future__ import annotations

from typing import Any

import httpx

from tasks.errors import PermanentError, TransientError
from tasks.settings.sections import ReleaseSettings


class GitHubReleaseError(PermanentError):
    """GitHub refused the release for good (credentials, permissions, repository)."""


class GitHubUnavailable(TransientError):
    """GitHub did not answer, or answered 5xx / 429: retried."""


def _github(
    method: str, url: str, token: str, timeout: float, what: str, body: dict | None = None, allow: int = 0
) -> httpx.Response:
    """One GitHub REST call about the release ``what``; no answer, 5xx or 429 raise :class:`GitHubUnavailable`
    (retried), any other answer but 2xx or ``allow`` raises :class:`GitHubReleaseError`."""
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
    if response.status_code >= 300 and response.status_code != allow:
        raise GitHubReleaseError(f"GitHub release {what}: HTTP {response.status_code} {response.text[:300]}")
    return response


def find_github_release(
    api_url: str, repository: str, token: str, tag: str, timeout: float = 30.0
) -> dict[str, Any] | None:
    """The GitHub release of ``tag`` (``GET /repos/{repo}/releases/tags/{tag}``), or None when there is none."""
    url = f"{api_url.rstrip('/')}/repos/{repository}/releases/tags/{tag}"
    response = _github("GET", url, token, timeout, f"{tag!r} on {repository}", allow=404)
    return None if response.status_code == 404 else response.json()


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
    payload = {"tag_name": tag, "name": name, "body": body, "draft": False, "prerelease": False}
    payload |= {"target_commitish": target_commitish} if target_commitish else {}
    url, what = f"{api_url.rstrip('/')}/repos/{repository}/releases", f"{tag!r} on {repository}"
    response = _github("POST", url, token, timeout, what, payload, allow=422)
    if response.status_code == 422:
        exists = "already_exists" in response.text
        found = find_github_release(api_url, repository, token, tag, timeout) if exists else None
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
    no token and repository are configured. ``created`` says whether this call created it."""
    if not (release.github_token and release.github_repository):
        return None
    api, repo = release.github_api_url, release.github_repository
    token = release.github_token.get_secret_value()
    found = find_github_release(api, repo, token, tag)
    if found is None:
        return {
            **create_github_release(api, repo, token, tag, name, notes, target_commitish),
            "created": True,
        }
    if marker not in (found.get("body") or ""):  # PATCH /repos/{repo}/releases/{id}: the body, replaced
        url = f"{api.rstrip('/')}/repos/{repo}/releases/{found['id']}"
        body = {"body": f"{notes}\n---\n\n{found.get('body') or ''}"}
        found = _github("PATCH", url, token, 30.0, f"{found['id']} on {repo}", body).json()
    return {**found, "created": False}
