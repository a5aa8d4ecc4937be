"""Any non-empty CI value means CI: a missing Docker engine fails the tests there instead of skipping them."""

from __future__ import annotations

import pytest

from tests.infra import docker_fixtures


@pytest.mark.parametrize("value", ["true", "1", "yes", "True", "on", "anything"])
def test_missing_services_fail_under_any_ci_value(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("CI", value)
    with pytest.raises((pytest.fail.Exception, pytest.skip.Exception)) as outcome:
        docker_fixtures._unavailable("no engine")
    assert outcome.type is pytest.fail.Exception, f"CI={value!r} skipped instead of failing"
    assert "unavailable in CI" in str(outcome.value)


@pytest.mark.parametrize("value", [None, ""])
def test_missing_services_skip_outside_ci(monkeypatch: pytest.MonkeyPatch, value: str | None) -> None:
    if value is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", value)
    with pytest.raises((pytest.fail.Exception, pytest.skip.Exception)) as outcome:
        docker_fixtures._unavailable("no engine")
    assert outcome.type is pytest.skip.Exception, f"CI={value!r} failed instead of skipping"
