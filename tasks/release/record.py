"""The deploy gate (promoted against today's champion, not rolled back; ``force`` overrides) and the release
record's words: who asked, why, and the release notes."""

from __future__ import annotations

import contextlib
import getpass
import json
import re
import socket
from typing import Any

from tasks.release.ledger import (
    REASON_MAX_CHARS,
    REASON_MIN_CHARS,
    Entry,
    ReleaseFailed,
    rolled_back_versions,
)

PROMOTION_RECORD = ("promotion.dry_run", "promotion.reasons", "promotion.champion_version")
NOTES_METRICS = [f"test_{m}" for m in "roc_auc gini ks pr_auc precision recall f1 log_loss brier".split()]


class NotDeployable(ReleaseFailed):
    """The version may not be released without ``--force --reason``; the message says why (nothing changed)."""

    def __init__(self, message: str) -> None:
        super().__init__("gate", message, "no")


def check_reason(reason: str | None, force: bool) -> str:
    """The stated reason, stripped; a forced release needs one of at least ten characters."""
    text = " ".join((reason or "").split())
    if force and len(text) < REASON_MIN_CHARS:
        raise NotDeployable(
            f"--force needs a --reason of at least {REASON_MIN_CHARS} characters (got {len(text)}): why the gate "
            "was overridden is recorded for whoever reads the release record"
        )
    return text[:REASON_MAX_CHARS]


def escape_markdown(text: str) -> str:
    """``text`` as literal Markdown (a reason or a name written into release notes renders as typed)."""
    return re.sub(r"([\\`*_{}\[\]()#+\-.!|<>~])", r"\\\1", " ".join(text.split()))


def operator() -> str:
    """The CLI's user: ``user@host``."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


def requester(stated: str | None) -> str:
    """Who asked for this run: the Prefect flow run's ``created_by`` when Prefect recorded one, else what the caller
    stated (the CLI states its user), else ``unknown``."""
    with contextlib.suppress(Exception):  # outside a flow run, or a server that records no creator
        from prefect.client.orchestration import get_client
        from prefect.runtime import flow_run

        if flow_run.id:
            with get_client(sync_client=True) as client:
                created = client.read_flow_run(flow_run.id).created_by
            if created is not None and created.display_value:
                return f"{created.display_value} ({str(created.type or 'prefect').lower()})"
    return stated.strip() if stated and stated.strip() else "unknown"


def ran_on() -> str:
    """Where the run ran: OS user and host, and the Prefect flow run and deployment when in one."""
    parts = [operator()]
    with contextlib.suppress(Exception):  # outside Prefect there is nothing more to say
        from prefect.runtime import deployment, flow_run

        if flow_run.id:
            parts.append(f"flow run {flow_run.id}")
        if deployment.id:
            parts.append(f"deployment {flow_run.flow_name}/{deployment.name}")
    return ", ".join(parts)


def deployability_problems(
    version: str, tags: dict[str, str], entries: list[Entry], current: Entry | None
) -> list[str]:
    """Why ``version`` may not be released over ``current`` (the ledger's head) ([] when it may)."""
    problems = []
    decision = tags.get("promotion.decision")
    if not decision:
        problems.append("it has no promotion decision (it never went through the gate)")
    elif decision != "promoted":
        problems.append(f"its promotion decision is {decision!r}")
    elif missing := [k for k in PROMOTION_RECORD if k not in tags]:
        problems.append(f"its promotion record is incomplete (no {', '.join(missing)})")
    elif tags.get("promotion.dry_run") == "true":
        problems.append("its promotion decision was a dry run")
    elif (gated := tags["promotion.champion_version"]) != (now := current.version if current else ""):
        problems.append(
            f"its gate compared it against {f'v{gated}' if gated else 'no champion'}, but the champion is now "
            f"{f'v{now}' if now else 'none'} (train again to be compared against today's champion)"
        )
    if str(version) in rolled_back_versions(entries):
        problems.append("it was rolled back from")
    return problems


def check_deployable(
    model_name: str,
    version: str,
    tags: dict[str, str],
    entries: list[Entry],
    current: Entry | None,
    force: bool,
) -> list[str]:
    """Raise :class:`NotDeployable` unless ``version`` may be released or ``force`` overrides; returns what a
    forced release overrides ([] when nothing needed overriding)."""
    problems = deployability_problems(version, tags, entries, current)
    if problems and not force:
        try:
            gate = "; ".join(json.loads(tags.get("promotion.reasons") or "[]"))
        except ValueError:
            gate = tags.get("promotion.reasons", "")
        raise NotDeployable(
            f"model {model_name!r} v{version} is not deployable: {'; '.join(problems)}"
            + (f" (gate: {gate})" if gate else "")
            + ". To release it anyway: --force --reason TEXT"
        )
    return problems


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, int | float) else "—"


def release_marker(entry: Entry) -> str:
    """The line that identifies one release inside notes (how a re-run finds that it wrote them already)."""
    return f"<!-- loan-risk release {entry.release_id} -->"


def release_notes(
    model_name: str,
    entry: Entry,
    metrics: dict[str, float],
    previous_metrics: dict[str, float],
    data: dict[str, Any],
    card: str | None = None,
) -> str:
    """Markdown notes of one ledger entry: who asked and why (escaped), what a forced release overrode,
    metrics against the replaced champion, image, digest, source commit, data, the model card (``card``)."""
    prev_label = f"v{entry.from_version}" if entry.from_version else "none"
    rows = "\n".join(
        f"| {m} | {_fmt(metrics.get(m))} | {_fmt(previous_metrics.get(m))} |" for m in NOTES_METRICS
    )
    files = "\n".join(
        f"- `{name}` sha256 `{f.get('sha256', '?')[:16]}…`" for name, f in (data.get("files") or {}).items()
    )
    what = {"forced": "**Forced release**", "rollback": "**Rollback**", "seed": "Champion before the ledger"}
    why = f": {escape_markdown(entry.reason)}" if entry.reason else ""
    lines = [
        f"{what.get(entry.kind, 'Release')} (ledger entry {entry.seq}, {entry.at}) by {escape_markdown(entry.by)}{why}"
    ]
    if entry.kind == "forced":
        lines.append(f"Overrode: {escape_markdown(entry.overrode or 'nothing (the version was deployable)')}")
    if entry.kind == "rollback":
        lines.append(f"Rolled back from v{entry.from_version}")
    elif entry.gated_against or entry.kind == "release":
        lines.append(
            f"Gate compared it against: {f'v{entry.gated_against}' if entry.gated_against else 'no champion'}"
        )
    return (
        f"# {model_name} v{entry.version}\n\n" + "  \n".join(lines) + "\n\n"
        f"Image: `{entry.image}`  \nDigest: `{entry.digest}`  \nSource commit: `{entry.commit or 'unknown'}`  \n"
        f"Replaced: {prev_label}\n\n"
        f"| metric | v{entry.version} | replaced ({prev_label}) |\n|---|---|---|\n{rows}\n\n"
        "Figures of the replaced champion are from its own test split, as recorded at its training time.\n\n"
        f"Data: source `{data.get('source', '?')}`, revision `{data.get('revision') or 'n/a'}`\n{files}\n"
        + (f"\nModel card: {card}\n" if card else "")
        + f"\n{release_marker(entry)}\n"
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
    """The Prefect artifact key of one release's notes; the digest keeps another registry's ``v1`` apart."""
    name = re.sub(r"[^a-z0-9-]+", "-", model_name.lower())
    return f"release-notes-{name}-v{version}-{digest.removeprefix('sha256:')[:12]}"
