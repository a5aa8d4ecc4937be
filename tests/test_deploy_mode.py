"""Deploy mode (auto | required | off): what a promoted version's deploy does when the engine or registry is
missing. The engine here is a real one stopped: a socket path nobody listens on."""

from __future__ import annotations

from pathlib import Path

import pytest

from flows.training import deploy_mode, run_deploy, wants_deploy
from tasks.release.ledger import ReleaseFailed
from tasks.settings import Settings


def _settings(tmp_path: Path, mode: str) -> Settings:
    return Settings(
        state_dir=tmp_path / "state",
        deploy_mode=mode,
        docker_host=f"unix://{tmp_path / 'stopped.sock'}",
    )


def test_required_without_an_engine_fails_naming_it(tmp_path: Path) -> None:
    s = _settings(tmp_path, "required")
    with pytest.raises(ReleaseFailed, match="deploy_mode is required and no Docker engine answers") as info:
        run_deploy(s, "3", None)
    assert info.value.step == "engine" and info.value.committed == "no"
    assert str(tmp_path / "stopped.sock") in str(info.value)


def test_auto_without_an_engine_skips_and_says_so(tmp_path: Path) -> None:
    out = run_deploy(_settings(tmp_path, "auto"), "3", None)
    assert out["status"] == "skipped" and out["missing"] == "engine"
    assert "no Docker engine answers" in out["reason"]


def test_the_run_parameter_overrides_the_setting(tmp_path: Path) -> None:
    auto = _settings(tmp_path, "auto").release.deploy_mode
    assert deploy_mode(auto, True) == "required" and deploy_mode(auto, False) == "off"
    assert deploy_mode(_settings(tmp_path, "required").release.deploy_mode, None) == "required"
    assert not wants_deploy(_settings(tmp_path, "off").release.deploy_mode, True, False, None)
    assert wants_deploy(auto, True, False, None) and not wants_deploy(auto, True, True, None)
    assert not wants_deploy(auto, False, False, True)  # a version that was not promoted is never deployed
    with pytest.raises(ValueError, match="deploy_mode"):
        _settings(tmp_path, "sometimes")
