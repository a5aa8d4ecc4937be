"""The release ledger: one registry record per champion change, never rewritten; creating entry ``n + 1`` is a
compare-and-set on the registry's unique model name: the release's commit point."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from typing import Any, Literal

from tasks.common import run_logger
from tasks.errors import LoanRiskError, PermanentError
from tasks.registry import versions
from tasks.registry.aliases import Alias
from tasks.settings import Settings

LEGACY_HISTORY_TAG = "release.history"
KINDS = ("release", "forced", "rollback", "seed")
REASON_MIN_CHARS = 10
REASON_MAX_CHARS = 300
SEED_REASON = "champion before the release ledger existed"
Committed = Literal["yes", "no", "unknown"]


class ReleaseFailed(PermanentError):
    """A release or rollback stopped at ``step``; ``committed`` says whether the champion changed: ``yes`` (the
    ledger holds it: ``--converge`` completes what follows), ``no`` (nothing changed), ``unknown`` (the ledger could
    not be read back: ``--history`` tells, ``--converge`` completes)."""

    def __init__(self, step: str, message: str, committed: Committed = "no", **facts: Any) -> None:
        super().__init__(f"{step}: {message} [committed: {committed}]")
        self.step, self.committed, self.facts = step, committed, facts


@contextlib.contextmanager
def as_release_failure(step: str | None = None) -> Iterator[None]:
    """Wrap once: any error but :class:`ReleaseFailed` becomes one naming ``step`` (else the error's own ``step``,
    else ``plan``), committed ``no``: only the commit and converge steps change the champion, and raise their own."""
    try:
        yield
    except ReleaseFailed:
        raise
    except Exception as exc:
        cause = str(exc) if step and isinstance(exc, LoanRiskError) else f"{type(exc).__name__}: {exc}"
        raise ReleaseFailed(step or getattr(exc, "step", None) or "plan", cause, "no") from exc


one_error = as_release_failure()  # the flows' decorator: only ReleaseFailed leaves them


@dataclass
class Entry:
    """One champion change. ``from_version`` is the champion it replaced ("" for the first); a rollback's
    ``from_version`` is the version it rolled back from; ``gated_against`` the champion the gate compared the
    version with; ``by`` who asked; ``ran_on`` where it ran (OS user, host, flow run)."""

    version: str
    digest: str
    image: str
    kind: str
    by: str
    reason: str = ""
    from_version: str = ""
    gated_against: str = ""
    release_id: str = ""
    commit: str = ""
    build_tag: str = ""
    overrode: str = ""
    ran_on: str = ""
    at: str = field(
        default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    )
    seq: int = 0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"release kind must be one of {KINDS}, got {self.kind!r}")
        self.version, self.reason = str(self.version), self.reason[:REASON_MAX_CHARS]

    def tags(self) -> dict[str, str]:
        return {f"release.{k}": str(v) for k, v in asdict(self).items()}

    @classmethod
    def from_tags(cls, tags: dict[str, str]) -> Entry:
        values: dict[str, Any] = {
            f.name: tags[f"release.{f.name}"] for f in fields(cls) if f"release.{f.name}" in tags
        }
        return cls(**values | {"seq": int(values.get("seq") or 0)})


def entry_name(model_name: str, seq: int) -> str:
    return f"{model_name}.release.{seq:06d}"


def _entries(settings: Settings, newest_only: bool = False) -> list[Entry]:
    prefix = f"{settings.registry.model_name}.release."
    found = versions.records(settings, prefix, newest_only=newest_only)
    return [
        Entry.from_tags(t) for name, t in found.items() if name.startswith(prefix) and t.get("release.seq")
    ]


def read_ledger(settings: Settings) -> list[Entry]:
    """Every entry, oldest first ([] when nothing was released through the ledger yet)."""
    return sorted(_entries(settings), key=lambda e: e.seq)


def head(settings: Settings) -> Entry | None:
    """The newest entry (the champion as the ledger says), None when the ledger is empty."""
    return next(iter(_entries(settings, newest_only=True)), None)


def commit(settings: Settings, entry: Entry, expected: Entry | None) -> Entry:
    """THE commit point: claim the entry after ``expected`` (None: empty ledger); raises ReleaseFailed (step
    ``commit``) saying whether it committed when the registry refused, moved or did not answer."""
    entry.seq = (expected.seq if expected else 0) + 1
    entry.from_version = entry.from_version or (expected.version if expected else "")
    name = entry_name(settings.registry.model_name, entry.seq)
    try:
        versions.create_record(settings, name, entry.tags(), description=describe(entry))
        return entry
    except (versions.AlreadyExists, versions.RegistryUnavailable) as exc:
        failure = exc
    try:
        held = versions.record_tags(settings, name)
    except versions.RegistryUnavailable as exc:
        raise ReleaseFailed(
            "commit",
            f"the claim of {name} failed ({failure}) and reading it back failed too ({exc}): whether v{entry.version}"
            " is the champion is unknown; `python -m flows.deploy --history` tells once the registry answers",
            "unknown",
        ) from exc
    if held is not None and held.get("release.release_id") == entry.release_id:
        run_logger().warning("the claim of %s got no answer (%s); read back: it is committed", name, failure)
        return entry
    if held is None:
        raise ReleaseFailed("commit", f"the registry did not record {name}: {failure}", "no") from failure
    other = Entry.from_tags(held)
    raise ReleaseFailed(
        "commit",
        f"the champion moved while this release was prepared: it expected entry {entry.seq - 1} "
        f"(v{expected.version if expected else 'none'}), but entry {entry.seq} is v{other.version} "
        f"({other.kind} by {other.by} at {other.at}); nothing of this release was recorded",
        "no",
    )


def describe(entry: Entry) -> str:
    """One line a person reads in the registry's UI."""
    verbs = {"rollback": "rolled back to", "seed": "was champion (seeded) at", "forced": "forced release of"}
    why = f": {entry.reason}" if entry.reason else ""
    return f"{verbs.get(entry.kind, 'release of')} v{entry.version} ({entry.digest}) by {entry.by}{why}"


def rolled_back_versions(entries: list[Entry]) -> set[str]:
    """Versions a rollback left and that were not released again since."""
    left: set[str] = set()
    for e in entries:
        if e.kind == "rollback":
            left.add(e.from_version)
        left.discard(e.version)
    return left


def rollback_target(entries: list[Entry], steps: int = 1, to_digest: str | None = None) -> Entry | None:
    """The entry a rollback from the head restores: ``steps`` distinct earlier releases back, skipping the head's
    version and versions rolled back from; or the newest entry that served ``to_digest``. None: there is none."""
    if not entries:
        return None
    current, skip = entries[-1], rolled_back_versions(entries)
    seen: list[str] = []
    for e in reversed(entries[:-1]):
        if not e.digest or e.digest == current.digest or e.version == current.version or e.version in skip:
            continue
        if to_digest is not None:
            if e.digest == to_digest:
                return e
            continue
        if e.digest not in seen:
            seen.append(e.digest)
            if len(seen) == steps:
                return e
    return None


def history_rows(entries: list[Entry]) -> list[dict[str, str]]:
    """The audit trail as a person reads it: one row per champion change, newest last."""
    return [
        {
            "seq": str(e.seq),
            "at": e.at,
            "version": f"v{e.version}",
            "digest": e.digest,
            "kind": e.kind,
            "by": e.by,
            "why": e.reason,
            "gated against": f"v{e.gated_against}" if e.gated_against else "",
            "replaced": f"v{e.from_version}" if e.from_version and e.kind != "rollback" else "",
            "rolled back from": f"v{e.from_version}" if e.from_version and e.kind == "rollback" else "",
        }
        for e in entries
    ]


def legacy_entries(settings: Settings) -> list[Entry]:
    """What the earlier record knew: its history tag, or the champion's ``release.previous_champion`` chain."""
    try:
        data = json.loads(versions.model_tags(settings).get(LEGACY_HISTORY_TAG) or "[]")
    except ValueError:
        data = []
    out = [
        Entry(
            **{k: str(item.get(k, "")) for k in ("version", "digest", "image", "reason", "at")},
            kind=item["kind"],
            by=item.get("by", "unknown"),
            from_version=str(item.get("from", "")),
        )
        for item in data
        if isinstance(item, dict) and item.get("version") and item.get("kind") in KINDS
    ]
    champion = versions.version_by_alias(settings, Alias.CHAMPION)
    chain: list[Entry] = []
    version = str(champion.version) if champion is not None else ""
    while version and len(chain) < 100 and version not in {e.version for e in chain}:
        if out and out[-1].version == version:
            break  # the history tag ends with the champion
        tags = versions.get_version(settings, version).tags or {}
        facts = {k: tags.get(f"release.{k}", "") for k in ("digest", "image", "at")}
        seeded = Entry(
            version, **facts, kind="seed", by=tags.get("release.by", "unknown"), reason=SEED_REASON
        )
        chain.insert(0, seeded)
        # the history tag holds what came before; without one, follow the recorded previous champions
        version = "" if out else tags.get("release.previous_champion", "")
    entries = out + chain
    for i, e in enumerate(entries, 1):
        e.seq, e.release_id = i, f"seed-{i}"
    return entries


def seed(settings: Settings) -> list[Entry]:
    """The ledger, seeded from the earlier record when it is empty (each seed entry is claimed like a release, so
    two processes seeding at once leave one copy)."""
    entries = read_ledger(settings)
    if entries:
        return entries
    legacy, model_name = legacy_entries(settings), settings.registry.model_name
    for e in legacy:
        try:
            versions.create_record(settings, entry_name(model_name, e.seq), e.tags(), describe(e))
        except versions.AlreadyExists:
            break  # another process seeded it
    if legacy:
        run_logger().info("release ledger seeded with %d entries from the earlier record", len(legacy))
    return read_ledger(settings)
