"""What a deploy or a rollback means to do, decided before any image work, and its commit: the plan names the
ledger head it was made against, so a champion that changed since refuses the commit."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

from tasks.common import run_logger, stage
from tasks.monitoring.events import RELEASED, emit_model_event, metrics_summary
from tasks.registry import versions
from tasks.registry.aliases import Alias
from tasks.release.candidate import Candidate, discard_candidate
from tasks.release.ledger import Entry, ReleaseFailed, commit, rollback_target, seed
from tasks.release.record import NotDeployable, check_deployable, check_reason, ran_on, requester
from tasks.settings import Settings


@dataclass
class Plan:
    """One intended champion change. ``noop``: the version is the champion already (only converge runs)."""

    version: str
    kind: str
    by: str
    reason: str
    expected: Entry | None
    reuse_digest: str = ""
    gated_against: str = ""
    overrode: str = ""
    noop: bool = False
    commit: str = ""  # the source commit of a reused image (what the ledger entry that served it says)
    release_id: str = field(default_factory=lambda: uuid.uuid4().hex)

    def summary(self) -> dict[str, Any]:
        return {
            "model_version": self.version,
            "kind": self.kind,
            "requested_by": self.by,
            "reason": self.reason,
            "expected_entry": self.expected.seq if self.expected else 0,
            "release_id": self.release_id,
        }


def _ledger_head(settings: Settings) -> tuple[list[Entry], Entry | None]:
    """The ledger (seeded on first use) and its head, which a plan is made against; an alias ``champion``
    naming another version is set back by this run's converge, and the plan says so."""
    entries = seed(settings)
    top = entries[-1] if entries else None
    alias = versions.version_by_alias(settings, Alias.CHAMPION)
    named = str(alias.version) if alias is not None else None
    if top is not None and named != top.version:
        run_logger().warning(
            "the alias champion names %s but the ledger's head (entry %d) is v%s: this run's converge sets it",
            f"v{named}" if named else "nothing",
            top.seq,
            top.version,
        )
    return entries, top


def plan_release(
    settings: Settings,
    model_version: str | None,
    alias: str | None,
    force: bool,
    reason: str | None,
    requested_by: str | None,
) -> Plan:
    """The release of ``model_version`` (or the version ``alias`` names) over today's champion, after the gate."""
    reason_text = check_reason(reason, force)
    version = versions.resolve_version(settings, model_version, alias)
    tags = versions.get_version(settings, version).tags or {}
    entries, top = _ledger_head(settings)
    by = requester(requested_by)
    if top is not None and top.version == version:
        if force:
            run_logger().warning("v%s is the champion already: --force changes nothing", version)
        return Plan(version, top.kind, by, reason_text, top, reuse_digest=top.digest, noop=True)
    overrode = check_deployable(settings.registry.model_name, version, tags, entries, top, force)
    if force:
        run_logger().warning(
            "FORCED release of v%s (%s): %s",
            version,
            "; ".join(overrode) or "nothing to override",
            reason_text,
        )
    served = [e for e in entries if e.version == version and e.digest]
    return Plan(
        version,
        "forced" if force else "release",
        by,
        reason_text,
        top,
        reuse_digest=served[-1].digest if served else tags.get("release.digest", ""),
        commit=served[-1].commit if served else "",
        gated_against=tags.get("promotion.champion_version", ""),
        overrode="; ".join(overrode),
    )


def plan_rollback(
    settings: Settings,
    steps: int,
    to_digest: str | None,
    from_version: str | None,
    reason: str | None,
    requested_by: str | None,
) -> Plan:
    """The rollback from ``from_version`` (default: today's champion), refused when the champion is no longer it:
    ``steps`` releases back, or to the release that served ``to_digest``."""
    if steps < 1:
        raise NotDeployable(f"--steps must be at least 1 (got {steps})")
    entries, top = _ledger_head(settings)
    if top is None:
        raise ReleaseFailed("plan", "there is no champion to roll back from")
    if from_version is not None and str(from_version) != top.version:
        raise ReleaseFailed(
            "plan",
            f"this rollback was asked to leave v{from_version}, but the champion is now v{top.version} "
            f"(ledger entry {top.seq}, {top.kind} by {top.by} at {top.at}); ask again against v{top.version}",
        )
    target = rollback_target(entries, steps, to_digest)
    if target is None:
        seen = ", ".join(f"v{e.version} ({e.kind})" for e in entries[-10:])
        what = "no earlier release" if steps == 1 else f"fewer than {steps} earlier releases"
        what = f"no release of {to_digest}" if to_digest else what
        raise ReleaseFailed(
            "plan",
            f"nothing to roll back to from champion v{top.version}: the ledger ({seen}) holds {what} that was "
            "not rolled back from",
        )
    run_logger().warning(
        "rolling back: champion v%s -> v%s (%s@%s)", top.version, target.version, target.image, target.digest
    )
    why = check_reason(reason, False) or f"rollback from v{top.version}"
    return Plan(
        target.version, "rollback", requester(requested_by), why, top, target.digest, commit=target.commit
    )


_FROM_PLAN = ("version", "kind", "by", "reason", "gated_against", "release_id", "overrode")


def commit_plan(settings: Settings, plan: Plan, candidate: Candidate, revision: str | None) -> Entry:
    """THE commit point: the ledger entry after the plan's expected head (see :func:`tasks.release.ledger.commit`)."""
    entry = Entry(
        **{k: getattr(plan, k) for k in _FROM_PLAN},
        **{k: getattr(candidate, k) for k in ("digest", "image", "build_tag")},
        commit=revision if candidate.built and revision else plan.commit,
        ran_on=ran_on(),
    )
    try:
        committed = commit(settings, entry, plan.expected)
    except ReleaseFailed as exc:
        if exc.committed == "no":  # it never served: nothing of it stays (unknown: it may have, so it stays)
            discard_candidate(settings.release, candidate)
        raise
    run_logger().info(
        "COMMIT: ledger entry %d: champion is v%s (was %s); %s@%s",
        committed.seq,
        committed.version,
        f"v{committed.from_version}" if committed.from_version else "none",
        committed.image,
        committed.digest,
    )
    try:
        payload = {k: getattr(committed, k) for k in ("image", "digest", "kind", "reason")}
        payload |= {
            "previous_version": committed.from_version or None,
            "metrics": metrics_summary(candidate.metrics),
        }
        emit_model_event(settings, RELEASED, committed.version, payload)
    except Exception as exc:  # noqa: BLE001 - the release is committed; a lost event is only logged
        run_logger().warning("the released event was not emitted: %s", exc)
    return committed


plan_release_task = stage("plan-release")(plan_release)  # the gate and the head the release is made against
# what the rollback restores, refused when the champion is not the one it meant to leave
plan_rollback_task = stage("plan-rollback")(plan_rollback)
# the commit point, never retried as a whole: a lost answer is read back inside
commit_task = stage("commit-champion", max_retries=0)(commit_plan)
