"""The promotion policy: passes, fails a minimum, fails against a champion; aliases and tags on a real store."""

from __future__ import annotations

from tasks.promote import Policy, apply_decision, decide
from tasks.settings import Settings

GOOD = {"test_precision": 0.80, "test_recall": 0.78, "test_f1": 0.79}


def test_passes_without_champion() -> None:
    d = decide(GOOD, None, Policy())
    assert d.promoted and bool(d) and any("no champion" in r for r in d.reasons)


def test_fails_a_minimum() -> None:
    d = decide(dict(GOOD, test_recall=0.70), None, Policy())
    assert not d.promoted
    assert any("recall 0.7000 < minimum 0.72" in r for r in d.reasons)


def test_fails_against_champion_without_enough_gain() -> None:
    d = decide(GOOD, {"version": "3", "test_f1": 0.785}, Policy(min_f1_gain=0.02))
    assert not d.promoted and any("champion v3" in r and "< required" in r for r in d.reasons)


def test_beats_champion() -> None:
    d = decide(GOOD, {"version": "3", "test_f1": 0.70}, Policy(min_f1_gain=0.02))
    assert d.promoted and any("gain +12.86%" in r for r in d.reasons)


def test_custom_policy_from_settings(tmp_path) -> None:
    s = Settings(state_dir=tmp_path, min_precision=0.9, min_recall=0.5, min_f1_gain=0.1)
    assert Policy.from_settings(s) == Policy(0.9, 0.5, 0.1)
    assert not decide(GOOD, None, Policy.from_settings(s)).promoted


def test_decision_sets_candidate_alias_and_tags(settings: Settings, tmp_path) -> None:
    from tasks import registry, tracking

    bundle = tmp_path / "b"
    bundle.mkdir()
    (bundle / "bundle.json").write_text('{"model_name": "loan-risk", "threshold": 0.5}')
    run = tracking.start_run(settings, "t")
    v1 = registry.register_bundle(settings, run, bundle, {})
    v2 = registry.register_bundle(settings, run, bundle, {})
    apply_decision(settings, v1, decide(GOOD, None, Policy()), dry_run=True)
    assert registry.version_by_alias(settings, "candidate") is None  # a dry run never moves aliases
    apply_decision(settings, v2, decide(GOOD, None, Policy()), dry_run=False)
    assert str(registry.version_by_alias(settings, "candidate").version) == v2
    tags = registry.get_version(settings, v2).tags
    assert tags["promotion.decision"] == "promoted" and "minimum" in tags["promotion.reasons"]
    rejected = decide(dict(GOOD, test_precision=0.1), None, Policy())
    apply_decision(settings, v1, rejected, dry_run=False)
    assert registry.get_version(settings, v1).tags["promotion.decision"] == "rejected"
    assert str(registry.version_by_alias(settings, "candidate").version) == v2
