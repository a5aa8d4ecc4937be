"""Releases: move ``champion``, tag the version with its image, write release notes, create a GitHub release."""

from __future__ import annotations

from typing import Any

import httpx
from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks import registry
from tasks.common import PermanentError
from tasks.settings import Settings

CHAMPION = "champion"


class ReleaseError(PermanentError):
    """The release step failed (GitHub refused the release, or the registry state is inconsistent)."""


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, int | float) else "—"


def release_notes(
    model_name: str,
    version: str,
    metrics: dict[str, float],
    previous: dict[str, Any] | None,
    image_ref: str,
    digest: str,
    data: dict[str, Any],
) -> str:
    """Markdown release notes: model, metrics against the previous champion, image, data revision."""
    prev_metrics = (previous or {}).get("metrics", {})
    prev_label = f"v{previous['version']}" if previous else "none"
    rows = "\n".join(
        f"| {m} | {_fmt(metrics.get(m))} | {_fmt(prev_metrics.get(m))} |"
        for m in (
            "test_roc_auc",
            "test_pr_auc",
            "test_precision",
            "test_recall",
            "test_f1",
            "test_log_loss",
            "test_brier",
        )
    )
    files = "\n".join(
        f"- `{name}` sha256 `{f.get('sha256', '?')[:16]}…`" for name, f in (data.get("files") or {}).items()
    )
    return (
        f"# {model_name} v{version}\n\n"
        f"Image: `{image_ref}`  \nDigest: `{digest}`  \nPrevious champion: {prev_label}\n\n"
        f"| metric | v{version} | previous ({prev_label}) |\n|---|---|---|\n{rows}\n\n"
        "Previous-champion figures are from its own test split, as recorded at its training time.\n\n"
        f"Data: source `{data.get('source', '?')}`, revision `{data.get('revision') or 'n/a'}`\n{files}\n"
    )


def create_github_release(
    api_url: str, repository: str, token: str, tag: str, name: str, body: str, timeout: float = 30.0
) -> dict[str, Any]:
    """Create a GitHub release through the REST API; returns the created release (its ``html_url`` etc.)."""
    response = httpx.post(
        f"{api_url.rstrip('/')}/repos/{repository}/releases",
        json={"tag_name": tag, "name": name, "body": body, "draft": False, "prerelease": False},
        headers={
            "Authorization": f"Bearer {token}",
            "Accept": "application/vnd.github+json",
            "X-GitHub-Api-Version": "2022-11-28",
        },
        timeout=timeout,
    )
    if response.status_code >= 300:
        raise ReleaseError(
            f"GitHub release {tag!r} on {repository}: HTTP {response.status_code} {response.text[:300]}"
        )
    return response.json()


def champion_summary(settings: Settings) -> dict[str, Any] | None:
    """The current champion's version, image and recorded metrics (None when there is no champion)."""
    current = registry.version_by_alias(settings, CHAMPION)
    if current is None:
        return None
    tags = current.tags or {}
    metrics = {k: float(v) for k, v in tags.items() if k.startswith("test_") and _is_float(v)}
    return {
        "version": str(current.version),
        "image": tags.get("release.image"),
        "metrics": metrics,
        "tags": tags,
    }


def _is_float(v: str) -> bool:
    try:
        float(v)
    except (TypeError, ValueError):
        return False
    return True


def make_champion(
    settings: Settings, version: str, image_ref: str, digest: str, metrics: dict[str, float]
) -> dict[str, Any] | None:
    """Point ``champion`` at ``version`` and record the image, digest, metrics and the previous champion."""
    previous = champion_summary(settings)
    tags = {
        "release.image": image_ref,
        "release.digest": digest,
        "release.previous_champion": previous["version"] if previous else "",
        **{k: f"{v:.6f}" for k, v in metrics.items() if k.startswith("test_")},
    }
    registry.set_version_tags(settings, version, tags)
    registry.set_alias(settings, CHAMPION, version)
    return previous


def publish_github_release(settings: Settings, version: str, notes: str) -> dict[str, Any] | None:
    """Create the GitHub release when a token and repository are configured; None otherwise."""
    if not (settings.github_token and settings.github_repository):
        return None
    tag = f"{settings.model_name}-v{version}"
    return create_github_release(
        settings.github_api_url,
        settings.github_repository,
        settings.github_token.get_secret_value(),
        tag,
        f"{settings.model_name} v{version}",
        notes,
    )


@task(name="release", cache_policy=NO_CACHE)
def release_task(
    settings: Settings,
    version: str,
    image_ref: str,
    digest: str,
    metrics: dict[str, float],
    data: dict[str, Any],
) -> dict[str, Any]:
    """Prefect task: champion moves to ``version``; release notes as an artifact; GitHub release when configured."""
    from prefect.artifacts import create_markdown_artifact

    from tasks.common import run_logger

    previous = make_champion(settings, version, image_ref, digest, metrics)
    notes = release_notes(settings.model_name, version, metrics, previous, image_ref, digest, data)
    create_markdown_artifact(
        key="release-notes", markdown=notes, description=f"{settings.model_name} v{version}"
    )
    github = publish_github_release(settings, version, notes)
    run_logger().info(
        "champion is now v%s (was %s); image %s@%s",
        version,
        previous["version"] if previous else "none",
        image_ref,
        digest,
    )
    return {
        "previous_champion": previous["version"] if previous else None,
        "github_release": (github or {}).get("html_url"),
        "notes": notes,
    }
