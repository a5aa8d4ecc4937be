"""The promotion gate: minimum precision and recall, and a gain over the champion on the same test data.

It fails closed: a registry that cannot say whether a champion exists fails the task; a champion that cannot be
re-scored is decided by ``champion_unscorable`` (default: not promoted).
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from serving.bundle import BundleError, load_bundle
from tasks.common import run_logger, stage
from tasks.errors import PermanentError
from tasks.model.evaluate import classification_metrics
from tasks.model.features import ModelTable
from tasks.monitoring.events import PROMOTED, emit_model_event, metrics_summary
from tasks.registry import versions
from tasks.registry.aliases import Alias
from tasks.registry.versions import RegistryUnavailable
from tasks.settings import RegistrySettings, Settings

Policy = RegistrySettings  # the promotion policy: min_precision, min_recall, min_f1_gain, champion_unscorable


@dataclass
class Decision:
    """The gate's answer and why; truthy when promoted."""

    promoted: bool
    reasons: list[str]
    champion: dict[str, Any] | None = None
    metrics: dict[str, float] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return self.promoted


def decide(metrics: dict[str, float], champion: dict[str, Any] | None, policy: Policy) -> Decision:
    """Apply the policy. ``champion`` holds the champion's ``test_f1`` re-scored on this run's test split."""
    reasons, ok = [], True
    for name, minimum in (("precision", policy.min_precision), ("recall", policy.min_recall)):
        value = metrics[f"test_{name}"]
        passed = value >= minimum
        ok &= passed
        reasons.append(f"test {name} {value:.4f} {'>=' if passed else '<'} minimum {minimum:.2f}")
    if champion is None:
        reasons.append("no champion: the minimums alone decide")
    elif champion.get("error"):
        lenient = policy.champion_unscorable == "minimums"
        ok &= lenient
        outcome = "minimums decide" if lenient else "not promoted"
        reasons.append(
            f"champion v{champion['version']} could not be re-scored on this test split ({champion['error']}): "
            f"{outcome} (champion_unscorable={policy.champion_unscorable})"
        )
    else:
        new, old = metrics["test_f1"], champion["test_f1"]
        gain = (new - old) / old if old > 0 else float("inf")
        passed = gain >= policy.min_f1_gain
        ok &= passed
        reasons.append(
            f"F1 {new:.4f} vs champion v{champion['version']} {old:.4f} on the same test split: "
            f"gain {gain:+.2%} {'>=' if passed else '<'} required {policy.min_f1_gain:+.2%}"
        )
    return Decision(ok, reasons, champion, metrics)


def rescore_champion(settings: Settings, test: ModelTable) -> dict[str, Any] | None:
    """The champion's metrics on this run's test split at its own threshold; None without a champion,
    ``{"version", "error"}`` when it cannot be re-scored (a failing registry raises)."""
    version = versions.version_by_alias(settings, Alias.CHAMPION)
    if version is None:
        return None
    number = str(version.version)
    with tempfile.TemporaryDirectory(prefix="champion-") as tmp:
        try:
            bundle_dir = versions.download_bundle(settings, number, Path(tmp) / "bundle")
            bundle = load_bundle(bundle_dir, thread_count=-1)
            p, threshold = bundle.predict_records(test.records), bundle.meta.threshold
        except RegistryUnavailable:
            raise
        except Exception as exc:  # noqa: BLE001 - whatever stops the re-scoring is the champion's problem
            kind = "" if isinstance(exc, BundleError | PermanentError) else f"{type(exc).__name__}: "
            return {"version": number, "error": f"{kind}{exc}"[:500]}
    metrics = classification_metrics(test.label, np.asarray(p), threshold, "test")
    return {"version": number, "threshold": threshold, **metrics}


def apply_decision(settings: Settings, version: str, decision: Decision, dry_run: bool) -> None:
    """Tag the version with the decision (written last: a failure midway leaves none); on promotion (and not a
    dry run) point ``candidate`` at it."""
    versions.set_version_tags(
        settings,
        version,
        {
            "promotion.reasons": json.dumps(decision.reasons),
            "promotion.dry_run": str(dry_run).lower(),
            "promotion.champion_version": (decision.champion or {}).get("version", ""),
            "promotion.decision": "promoted" if decision.promoted else "rejected",
        },
    )
    if decision.promoted and not dry_run:
        versions.set_alias(settings, Alias.CANDIDATE, version)


@stage("promote")
def promote_task(
    settings: Settings, version: str, metrics: dict[str, float], test: ModelTable, dry_run: bool = False
) -> Decision:
    """Stage: decide, record the decision on the version and as an artifact; truthy when promoted."""
    from prefect.artifacts import create_markdown_artifact

    decision = decide(metrics, rescore_champion(settings, test), settings.registry)
    apply_decision(settings, version, decision, dry_run)
    if decision.promoted and not dry_run:
        emit_model_event(
            settings, PROMOTED, version, {"metrics": metrics_summary(metrics), "reasons": decision.reasons}
        )
    verdict = (f"PROMOTED to `{Alias.CANDIDATE}`" if decision.promoted else "NOT promoted") + (
        " (dry run: aliases untouched)" if dry_run else ""
    )
    create_markdown_artifact(
        key="promotion-decision",
        markdown=f"# {settings.registry.model_name} v{version}: {verdict}\n\n"
        + "".join(f"- {r}\n" for r in decision.reasons),
        description=f"{settings.registry.model_name} v{version} promotion decision",
    )
    run_logger().info("promotion of v%s: %s — %s", version, decision.promoted, "; ".join(decision.reasons))
    return decision
