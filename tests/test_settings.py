"""The settings: sections of typed values, read from flat names (environment, config file, keywords)."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from tasks.settings import SECTIONS, Settings
from tasks.settings.sections import RunSettings


def test_every_name_is_in_one_place_only() -> None:
    names = [n for cls in (RunSettings, *SECTIONS.values()) for n in cls.model_fields]
    assert len(names) == len(set(names)), sorted({n for n in names if names.count(n) > 1})


def test_a_flat_environment_name_lands_in_its_section(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOANRISK_N_TRIALS", "5")
    monkeypatch.setenv("LOANRISK_SPLIT_FRACTIONS", "[0.6, 0.2, 0.2]")
    monkeypatch.setenv("LOANRISK_REGISTRY_PASSWORD", "pw")
    settings = Settings(hf_revision="abc")
    assert settings.tuning.n_trials == 5
    assert settings.data.split_fractions == (0.6, 0.2, 0.2)
    assert settings.data.hf_revision == "abc"
    assert settings.release.registry_password.get_secret_value() == "pw"


def test_a_keyword_wins_over_the_environment_and_the_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    config = tmp_path / "loanrisk.toml"
    config.write_text('n_trials = 7\nimage_repository = "from-file"\nhf_revision = "file"\n')
    monkeypatch.setenv("LOANRISK_CONFIG", str(config))
    monkeypatch.setenv("LOANRISK_HF_REVISION", "env")
    settings = Settings(n_trials=3)
    assert settings.tuning.n_trials == 3
    assert settings.release.image_repository == "from-file"
    assert settings.data.hf_revision == "env"
    assert Settings(hf_revision=None).data.hf_revision is None


def test_a_bad_value_is_refused_naming_its_section_and_name() -> None:
    with pytest.raises(ValidationError, match=r"tuning\.n_trials"):
        Settings(n_trials=0)
    with pytest.raises(ValidationError, match="tune_grace_seconds"):
        Settings(tune_grace_seconds=3, tune_heartbeat_seconds=5)


def test_a_changed_copy_is_validated_and_keeps_the_rest(tmp_path: Path) -> None:
    settings = Settings(state_dir=tmp_path, registry_password="pw")
    copy = settings.replace(n_trials=2, deploy_mode="off")
    assert (copy.tuning.n_trials, copy.release.deploy_mode, copy.state_dir) == (2, "off", tmp_path)
    assert copy.release.registry_password.get_secret_value() == "pw"
    assert settings.tuning.n_trials == 20
    with pytest.raises(ValidationError):
        settings.replace(deploy_mode="sometimes")
