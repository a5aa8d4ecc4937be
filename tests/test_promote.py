"""The promotion policy: passes, fails a minimum, fails against a champion; aliases and tags on a real store."""

from __future__ import annotations

import pytest

from tasks.registry.promote import Policy, apply_decision, decide
from tasks.settings import Settings
from tests.attempts import attempts_of

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
    assert s.registry == Policy(min_precision=0.9, min_recall=0.5, min_f1_gain=0.1)
    assert not decide(GOOD, None, s.registry).promoted


def test_decision_sets_candidate_alias_and_tags(settings: Settings, tmp_path) -> None:
    from tasks.registry import tracking, versions

    bundle = tmp_path / "b"
    bundle.mkdir()
    (bundle / "bundle.json").write_text('{"model_name": "loan-risk", "threshold": 0.5}')
    run = tracking.start_run(settings, "t")
    v1 = versions.register_bundle(settings, run, bundle, {})
    v2 = versions.register_bundle(settings, run, bundle, {})
    apply_decision(settings, v1, decide(GOOD, None, Policy()), dry_run=True)
    assert versions.version_by_alias(settings, "candidate") is None  # a dry run never moves aliases
    apply_decision(settings, v2, decide(GOOD, None, Policy()), dry_run=False)
    assert str(versions.version_by_alias(settings, "candidate").version) == v2
    tags = versions.get_version(settings, v2).tags
    assert tags["promotion.decision"] == "promoted" and "minimum" in tags["promotion.reasons"]
    rejected = decide(dict(GOOD, test_precision=0.1), None, Policy())
    apply_decision(settings, v1, rejected, dry_run=False)
    assert versions.get_version(settings, v1).tags["promotion.decision"] == "rejected"
    assert str(versions.version_by_alias(settings, "candidate").version) == v2


# --- the gate fails closed (issue 8, item 2) ---------------------------------------------------------------


def _minimal_bundle(tmp_path, name: str = "b"):
    bundle = tmp_path / name
    bundle.mkdir()
    (bundle / "bundle.json").write_text('{"model_name": "loan-risk", "threshold": 0.5}')
    return bundle


def _break_alias_table(settings: Settings, undo: bool = False) -> None:
    """A real fault in the real store: the registry's alias table disappears (as after a bad migration)."""
    import sqlite3

    names = ["registered_model_aliases", "registered_model_aliases_gone"]
    old, new = reversed(names) if undo else names
    with sqlite3.connect(settings.tracking_uri.removeprefix("sqlite:///")) as con:
        con.execute(f"ALTER TABLE {old} RENAME TO {new}")


def test_missing_alias_or_model_means_none(settings: Settings, tmp_path) -> None:
    from tasks.registry import tracking, versions

    assert versions.version_by_alias(settings, "champion") is None  # no registered model at all
    versions.register_bundle(settings, tracking.start_run(settings, "t"), _minimal_bundle(tmp_path), {})
    assert versions.version_by_alias(settings, "champion") is None  # the model exists, the alias does not


def test_a_failing_registry_is_not_no_champion(settings: Settings, tmp_path) -> None:
    import pytest

    from tasks.errors import TransientError
    from tasks.registry import tracking, versions

    v1 = versions.register_bundle(settings, tracking.start_run(settings, "t"), _minimal_bundle(tmp_path), {})
    versions.set_alias(settings, "champion", v1)
    _break_alias_table(settings)
    with pytest.raises(TransientError, match="champion"):
        versions.version_by_alias(settings, "champion")
    from tasks.registry.promote import rescore_champion

    test = type("Split", (), {"records": [{"apr": 590}], "label": [1]})()
    with pytest.raises(TransientError):  # never "no champion: the minimums alone decide"
        rescore_champion(settings, test)


def test_promote_retries_then_fails_when_the_registry_fails(settings: Settings, tmp_path) -> None:
    """The promote task against a registry that cannot answer: retried, then the run fails; nothing promoted."""
    import types

    import numpy as np
    import pytest
    from prefect import flow

    from tasks.registry import tracking, versions
    from tasks.registry.promote import promote_task

    run = tracking.start_run(settings, "t")
    v1 = versions.register_bundle(settings, run, _minimal_bundle(tmp_path, "one"), {})
    v2 = versions.register_bundle(settings, run, _minimal_bundle(tmp_path, "two"), {})
    versions.set_alias(settings, "champion", v1)
    _break_alias_table(settings)
    test = types.SimpleNamespace(records=[{}], label=np.array([1]))

    @flow(name="promote-against-a-failing-registry")
    def gate() -> object:
        return promote_task(settings.model_copy(update={"task_retries": 2}), v2, GOOD, test, False)

    with attempts_of(promote_task) as tries:
        state = gate(return_state=True)
    assert state.is_failed(), state
    with pytest.raises(Exception, match="registry"):
        state.result()
    assert len(tries) == 3  # the first try and two retries
    _break_alias_table(settings, undo=True)
    assert versions.version_by_alias(settings, "candidate") is None
    tags = versions.get_version(settings, v2).tags
    assert tags.get("promotion.decision") != "promoted"


def test_unscorable_champion_is_not_promoted_by_default(settings: Settings, tmp_path) -> None:
    """A champion whose bundle cannot be loaded (feature contract changed) blocks promotion unless set otherwise."""
    import numpy as np

    from tasks.registry import tracking, versions
    from tasks.registry.promote import rescore_champion

    run = tracking.start_run(settings, "t")
    v1 = versions.register_bundle(settings, run, _minimal_bundle(tmp_path), {})
    versions.set_alias(settings, "champion", v1)
    test = type("Split", (), {"records": [{"apr": 590}], "label": np.array([1])})()
    champion = rescore_champion(settings, test)
    assert champion is not None and champion["version"] == v1 and champion["error"]
    d = decide(GOOD, champion, settings.registry)
    assert not d.promoted
    assert any(f"champion v{v1} could not be re-scored" in r and "not promoted" in r for r in d.reasons)
    lenient = Settings(state_dir=settings.state_dir, champion_unscorable="minimums")
    d = decide(GOOD, champion, lenient.registry)
    assert d.promoted and any("minimums decide" in r for r in d.reasons)


def _refuse_tag(settings: Settings, key: str, undo: bool = False) -> None:
    """A real fault in the real store: the registry refuses to write one model-version tag (a trigger)."""
    import sqlite3

    with sqlite3.connect(settings.tracking_uri.removeprefix("sqlite:///")) as con:
        con.execute("DROP TRIGGER IF EXISTS refuse_tag")
        if not undo:
            con.execute(
                "CREATE TRIGGER refuse_tag BEFORE INSERT ON model_version_tags "
                f"WHEN NEW.key = '{key}' BEGIN SELECT RAISE(ABORT, 'injected: tag refused'); END"
            )


@pytest.mark.faults
def test_a_decision_cut_short_by_the_registry_is_never_deployable(settings: Settings, tmp_path) -> None:
    """The registry fails after some of a dry run's promotion tags: what was written must not read as a promotion
    the deploy gate accepts (the decision is written last, and the gate wants the whole record)."""
    from tasks.registry import tracking, versions
    from tasks.release.record import deployability_problems

    run = tracking.start_run(settings, "t")
    version = versions.register_bundle(settings, run, _minimal_bundle(tmp_path), {})
    _refuse_tag(settings, "promotion.dry_run")
    try:
        with pytest.raises(Exception, match="injected: tag refused"):
            apply_decision(settings, version, decide(GOOD, None, Policy()), dry_run=True)
    finally:
        _refuse_tag(settings, "promotion.dry_run", undo=True)
    tags = versions.get_version(settings, version).tags
    assert deployability_problems(version, tags, [], None), tags
    assert versions.version_by_alias(settings, "candidate") is None


def test_the_gate_wants_the_whole_promotion_record() -> None:
    from tasks.release.record import deployability_problems

    whole = {"promotion.decision": "promoted", "promotion.dry_run": "false", "promotion.reasons": "[]",
             "promotion.champion_version": ""}  # fmt: skip
    assert deployability_problems("3", whole, [], None) == []
    for missing in ("promotion.dry_run", "promotion.reasons", "promotion.champion_version"):
        cut = {k: v for k, v in whole.items() if k != missing}
        assert any("incomplete" in p for p in deployability_problems("3", cut, [], None)), missing
