"""Releases: the deploy gate, the commit point, the release history, and the steps after the commit point.

A release moves around one commit point, the move of the ``champion`` alias (:func:`commit_release`).
Everything before it (build, run, smoke test, push of the version tag, registry check) may fail and leaves
``champion`` and ``latest`` as they were; everything after it (history entry, ``latest``, release notes, GitHub
release) is retried and idempotent: each step first looks whether its result already exists, so re-running the
deploy of a released version completes what is missing and creates nothing twice.

The gate: a version is deployable when its promotion decision (tags written by ``tasks/promote.py``) is
``promoted``, was not a dry run, and the version was not rolled back from. ``force`` with a non-empty reason
overrides; the reason, what it overrode and who forced it are recorded on the version, in the release history,
the release notes and the GitHub release (``tasks/release/github.py``). Deploys hold ``tasks/release/lock.py``.

Release history: where and how
    In the MLflow registry, so every worker that reaches the registry sees the same one: the registered model's
    tag ``release.history`` holds compact JSON, the last ``release_history_size`` releases, oldest first. An
    entry: ``version``, ``image`` (``registry/repository:tag``), ``digest`` (the manifest's ``sha256:...``),
    ``at`` (UTC, ISO 8601), ``kind`` (``release``, ``forced`` or ``rollback``), ``reason`` (forced or rollback
    reason, at most 300 characters), ``by`` (user@host, and the Prefect flow run and deployment when in one),
    and for a rollback ``from`` (the version it left). The tag is written in one call, so a reader sees the old
    list or the new one; the deploy lock (``tasks/release/lock.py``) serialises writers. MLflow allows 100,000
    characters in a registry tag; an entry is ~400, and the oldest entries are dropped beyond the size setting
    or 60,000 characters (a MySQL TEXT column's size).

    A rollback goes to the newest entry whose version is neither the champion nor rolled back from (a rollback
    entry marks its ``from`` version; a later release of that version clears the mark), so each rollback walks
    one release further back and never returns to a version it left.
"""

from __future__ import annotations

import getpass
import json
import re
import socket
from datetime import UTC, datetime
from typing import Any

from tasks import registry
from tasks.common import PermanentError, run_logger, stage
from tasks.events import RELEASED, emit_model_event, metrics_summary
from tasks.settings import Settings

CHAMPION = "champion"
HISTORY_TAG = "release.history"
HISTORY_MAX_CHARS = 60_000
REASON_MAX_CHARS = 300
RELEASE_KINDS = ("release", "forced", "rollback")


class ReleaseError(PermanentError):
    """The release step failed for good (GitHub refused the release, or the registry state is inconsistent)."""


class NotDeployable(PermanentError):
    """The version may not be released without ``--force --reason``; the message says why."""


def now_utc() -> str:
    """The current time, UTC, ISO 8601 to the second."""
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def actor() -> str:
    """Who acts: ``user@host``, plus the Prefect flow run and deployment when running in one."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    parts = [f"{user}@{socket.gethostname()}"]
    try:
        from prefect.runtime import deployment, flow_run

        if flow_run.id:
            parts.append(f"flow run {flow_run.id}")
        if deployment.id:
            parts.append(f"deployment {flow_run.flow_name}/{deployment.name}")
    except Exception:  # noqa: BLE001 - outside Prefect there is nothing more to say
        pass
    return ", ".join(parts)


# --- release history ----------------------------------------------------------------------------------------
def history_entry(
    version: str,
    image: str,
    digest: str,
    kind: str,
    by: str,
    reason: str | None = None,
    at: str | None = None,
    rolled_back_from: str | None = None,
) -> dict[str, str]:
    """One release history entry (see the module docstring)."""
    if kind not in RELEASE_KINDS:
        raise ValueError(f"release kind must be one of {RELEASE_KINDS}, got {kind!r}")
    entry = {
        "version": str(version),
        "image": image,
        "digest": digest,
        "at": at or now_utc(),
        "kind": kind,
        "by": by,
    }
    if reason:
        entry["reason"] = reason[:REASON_MAX_CHARS]
    if rolled_back_from:
        entry["from"] = str(rolled_back_from)
    return entry


def read_history(settings: Settings) -> list[dict[str, str]]:
    """The release history, oldest first ([] when nothing was released yet)."""
    raw = registry.model_tags(settings).get(HISTORY_TAG)
    if not raw:
        return []
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise ReleaseError(
            f"tag {HISTORY_TAG!r} of model {settings.model_name!r} is not JSON: {exc}"
        ) from exc
    return [e for e in data if isinstance(e, dict) and e.get("version")]


def _same(a: dict[str, str], b: dict[str, str]) -> bool:
    return all(a.get(k) == b.get(k) for k in ("version", "digest", "kind", "from"))


def append_history(settings: Settings, entry: dict[str, str]) -> bool:
    """Add ``entry`` unless the newest entry already records it; False when there was nothing to add."""
    history = read_history(settings)
    if history and _same(history[-1], entry):
        return False
    history = [*history, entry][-settings.release_history_size :]
    text = json.dumps(history, separators=(",", ":"))
    while len(text) > HISTORY_MAX_CHARS and len(history) > 1:
        history = history[1:]
        text = json.dumps(history, separators=(",", ":"))
    registry.set_model_tag(settings, HISTORY_TAG, text)
    return True


def rolled_back_versions(history: list[dict[str, str]]) -> set[str]:
    """Versions that were rolled back from and not released again since."""
    left: set[str] = set()
    for entry in history:
        if entry.get("kind") == "rollback":
            if entry.get("from"):
                left.add(entry["from"])
        else:
            left.discard(entry["version"])
    return left


def rollback_target(history: list[dict[str, str]], current: str | None) -> dict[str, str] | None:
    """The release a rollback from ``current`` goes to: the newest entry whose version is not ``current`` and was
    not rolled back from; None when there is none."""
    skip = rolled_back_versions(history) | ({str(current)} if current else set())
    return next((e for e in reversed(history) if e["version"] not in skip), None)


# --- the gate -----------------------------------------------------------------------------------------------
def deployability_problems(version: str, tags: dict[str, str], history: list[dict[str, str]]) -> list[str]:
    """Why ``version`` may not be released ([] when it may)."""
    problems = []
    decision = tags.get("promotion.decision")
    if not decision:
        problems.append("it has no promotion decision (it never went through the gate)")
    elif decision != "promoted":
        problems.append(f"its promotion decision is {decision!r}")
    elif missing := [k for k in ("promotion.dry_run", "promotion.reasons") if k not in tags]:
        problems.append(f"its promotion record is incomplete (no {', '.join(missing)})")
    elif tags.get("promotion.dry_run") == "true":
        problems.append("its promotion decision was a dry run")
    if str(version) in rolled_back_versions(history):
        problems.append("it was rolled back from")
    return problems


def check_deployable(
    settings: Settings,
    version: str,
    tags: dict[str, str],
    history: list[dict[str, str]],
    force: bool,
) -> list[str]:
    """Raise :class:`NotDeployable` unless ``version`` may be released or ``force`` overrides; returns what a
    forced release overrides ([] when nothing needed overriding)."""
    problems = deployability_problems(version, tags, history)
    if problems and not force:
        try:
            gate = "; ".join(json.loads(tags.get("promotion.reasons") or "[]"))
        except ValueError:
            gate = tags.get("promotion.reasons", "")
        raise NotDeployable(
            f"model {settings.model_name!r} v{version} is not deployable: {'; '.join(problems)}"
            + (f" (gate: {gate})" if gate else "")
            + ". To release it anyway: --force --reason TEXT"
        )
    return problems


# --- the commit point ---------------------------------------------------------------------------------------
def champion_summary(settings: Settings) -> dict[str, Any] | None:
    """The current champion's version, image, digest and recorded metrics (None when there is no champion)."""
    current = registry.version_by_alias(settings, CHAMPION)
    if current is None:
        return None
    tags = current.tags or {}
    metrics = {k: float(v) for k, v in tags.items() if k.startswith("test_") and _is_float(v)}
    return {
        "version": str(current.version),
        "image": tags.get("release.image"),
        "digest": tags.get("release.digest"),
        "metrics": metrics,
        "tags": tags,
    }


def _is_float(v: str) -> bool:
    try:
        float(v)
    except (TypeError, ValueError):
        return False
    return True


def commit_release(
    settings: Settings, entry: dict[str, str], metrics: dict[str, float], overrode: list[str] | None = None
) -> dict[str, Any] | None:
    """Record the release on the version, then point ``champion`` at it: THE commit point.

    ``entry`` is the release's history entry (version, image, digest, kind, by, reason). Returns the previous
    champion's summary. Both calls are idempotent, so a retry after a lost answer does no harm.
    """
    version = entry["version"]
    previous = champion_summary(settings)
    tags = {
        "release.image": entry["image"],
        "release.digest": entry["digest"],
        "release.at": entry["at"],
        "release.kind": entry["kind"],
        "release.by": entry["by"],
        "release.previous_champion": previous["version"]
        if previous and previous["version"] != version
        else "",
        "release.rolled_back_from": entry.get("from", ""),
        **{k: f"{v:.6f}" for k, v in metrics.items() if k.startswith("test_")},
    }
    if entry["kind"] == "forced":
        tags |= {
            "release.forced": "true",
            "release.forced_reason": entry.get("reason", ""),
            "release.forced_by": entry["by"],
            "release.forced_override": "; ".join(overrode or []) or "nothing (the version was deployable)",
        }
    elif entry.get("reason"):
        tags["release.reason"] = entry["reason"]
    registry.set_version_tags(settings, version, tags)
    registry.set_alias(settings, CHAMPION, version)  # the commit point
    return previous


def entry_from_tags(version: str, tags: dict[str, str]) -> dict[str, str]:
    """The history entry of a committed release, rebuilt from the tags :func:`commit_release` wrote."""
    return history_entry(
        version,
        tags["release.image"],
        tags["release.digest"],
        tags.get("release.kind", "release"),
        tags.get("release.by", "unknown"),
        tags.get("release.forced_reason") or tags.get("release.reason"),
        tags.get("release.at"),
        tags.get("release.rolled_back_from") or None,
    )


# --- release notes ------------------------------------------------------------------------------------------
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
    forced: dict[str, str] | None = None,
    card: str | None = None,
) -> str:
    """Markdown release notes: model, metrics against the previous champion, image, data revision, the model
    card (``card``: where it is, see :func:`card_link`), and for a forced release who forced it, why, and what it
    overrode."""
    prev_metrics = (previous or {}).get("metrics", {})
    prev_label = f"v{previous['version']}" if previous else "none"
    rows = "\n".join(
        f"| {m} | {_fmt(metrics.get(m))} | {_fmt(prev_metrics.get(m))} |"
        for m in (
            "test_roc_auc",
            "test_gini",
            "test_ks",
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
    override = ""
    if forced:
        override = (
            f"**Forced release** by {forced.get('by', 'unknown')}: {forced.get('reason', '')}  \n"
            f"Overrode: {forced.get('overrode') or 'nothing (the version was deployable)'}\n\n"
        )
    return (
        f"# {model_name} v{version}\n\n{override}"
        f"Image: `{image_ref}`  \nDigest: `{digest}`  \nPrevious champion: {prev_label}\n\n"
        f"| metric | v{version} | previous ({prev_label}) |\n|---|---|---|\n{rows}\n\n"
        "Previous-champion figures are from its own test split, as recorded at its training time.\n\n"
        f"Data: source `{data.get('source', '?')}`, revision `{data.get('revision') or 'n/a'}`\n{files}\n"
        + (f"\nModel card: {card}\n" if card else "")
    )


def card_link(model_name: str, version: str, has_card: bool) -> str | None:
    """Where a version's model card is: the MLflow artifact of the version (``card.md``/``card.html`` in its
    bundle) and the released image's ``GET /model/card``; None when its bundle has no card."""
    if not has_card:
        return None
    uri = f"models:/{model_name}/{version}"
    return (
        f"`card.html` and `card.md` in the version's bundle (`mlflow artifacts download --artifact-uri {uri}`), "
        "and `GET /model/card` of the image (`Accept: text/markdown` for Markdown)"
    )


def notes_artifact_key(model_name: str, version: str, digest: str) -> str:
    """The Prefect artifact key of one release's notes (keys allow lowercase letters, digits, dashes).

    The image digest is part of it: one Prefect server may hold the releases of several registries (or a
    re-trained store whose numbering started again), and the notes of another ``v1`` are not this one's.
    """
    name = re.sub(r"[^a-z0-9-]+", "-", model_name.lower())
    return f"release-notes-{name}-v{version}-{digest.removeprefix('sha256:')[:12]}"


def _artifact_exists(key: str) -> bool:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])), limit=1
        )
    return bool(found)


# --- stages: the commit point and the steps after it ---------------------------------------------------------
@stage("commit-champion")
def commit_task(
    settings: Settings, entry: dict[str, str], metrics: dict[str, float], overrode: list[str] | None = None
) -> dict[str, Any] | None:
    """Stage: the commit point (``champion`` moves to the released version)."""
    previous = commit_release(settings, entry, metrics, overrode)
    emit_model_event(
        settings,
        RELEASED,
        entry["version"],
        {
            "image": entry["image"],
            "digest": entry["digest"],
            "kind": entry["kind"],
            "reason": entry.get("reason", ""),
            "previous_version": previous["version"] if previous else None,
            "metrics": metrics_summary(metrics),
        },
    )
    run_logger().info(
        "COMMIT: champion is now v%s (was %s); %s@%s",
        entry["version"],
        previous["version"] if previous else "none",
        entry["image"],
        entry["digest"],
    )
    return previous


@stage("release-history")
def history_task(settings: Settings, entry: dict[str, str]) -> bool:
    """Stage: the release history records ``entry`` (no second entry for the same release)."""
    added = append_history(settings, entry)
    run_logger().info(
        "release history %s v%s (%s)",
        "records" if added else "already records",
        entry["version"],
        entry["kind"],
    )
    return added


@stage("release-notes")
def notes_task(settings: Settings, version: str, digest: str, notes: str) -> str:
    """Stage: the version's release notes as a markdown artifact, unless it exists already."""
    from prefect.artifacts import create_markdown_artifact

    key = notes_artifact_key(settings.model_name, version, digest)
    if _artifact_exists(key):
        run_logger().info("release notes %r exist already", key)
        return key
    create_markdown_artifact(
        key=key, markdown=notes, description=f"{settings.model_name} v{version} release notes"
    )
    return key


@stage("mark-rolled-back")
def mark_rolled_back_task(settings: Settings, version: str, to_version: str, at: str, by: str) -> None:
    """Stage: tag the version a rollback left (its history entry is what the gate reads)."""
    registry.set_version_tags(
        settings,
        version,
        {"release.rolled_back_to": to_version, "release.rolled_back_at": at, "release.rolled_back_by": by},
    )
