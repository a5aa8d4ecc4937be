"""GitHub releases through the REST API, created once: looked up by tag first, created when missing.

No answer, 5xx and 429 are :class:`GitHubUnavailable` (retried by the task); any other refusal (401, 403, 404 of
the repository, 422 other than "already exists") is a :class:`GitHubReleaseError`, which is not retried. A 500 that
hid a created release is harmless: the retry finds it by tag.
"""

from __future__ import annotations

from typing import Any

import httpx

from tasks.common import PermanentError, TransientError, run_logger, stage
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
    api_url: str, repository: str, token: str, tag: str, name: str, body: str, timeout: float = 30.0
) -> dict[str, Any]:
    """Create a GitHub release through the REST API; returns the created release (its ``html_url`` etc.).

    A 422 "already_exists" (created meanwhile) returns the existing release instead.
    """
    response = _github(
        "POST",
        f"{api_url.rstrip('/')}/repos/{repository}/releases",
        token,
        timeout,
        {"tag_name": tag, "name": name, "body": body, "draft": False, "prerelease": False},
    )
    if response.status_code == 422 and "already_exists" in response.text:
        found = find_github_release(api_url, repository, token, tag, timeout)
        if found is not None:
            return found
    if response.status_code >= 300:
        raise GitHubReleaseError(
            f"GitHub release {tag!r} on {repository}: HTTP {response.status_code} {response.text[:300]}"
        )
    return response.json()


def publish_github_release(settings: Settings, version: str, notes: str) -> dict[str, Any] | None:
    """The version's GitHub release, created unless it exists (looked up by tag first); None when no token and
    repository are configured. ``created`` says whether this call created it."""
    if not (settings.github_token and settings.github_repository):
        return None
    tag = f"{settings.model_name}-v{version}"
    token = settings.github_token.get_secret_value()
    found = find_github_release(settings.github_api_url, settings.github_repository, token, tag)
    if found is not None:
        return {**found, "created": False}
    created = create_github_release(
        settings.github_api_url,
        settings.github_repository,
        token,
        tag,
        f"{settings.model_name} v{version}",
        notes,
    )
    return {**created, "created": True}


@stage("github-release")
def github_task(settings: Settings, version: str, notes: str) -> dict[str, Any] | None:
    """Stage: the GitHub release of the version (looked up by tag first, created when missing)."""
    release = publish_github_release(settings, version, notes)
    if release is not None:
        run_logger().info(
            "GitHub release %s %s",
            release.get("html_url"),
            "created" if release["created"] else "exists already",
        )
    return release
