"""The one typed settings object of the pipeline, in sections (data, tuning, evaluation, registry, release,
serving, monitoring). Values come, in increasing priority, from the offline defaults, a TOML/YAML file
(``LOANRISK_CONFIG``, else ``loanrisk.toml`` in the working directory) and ``LOANRISK_*`` environment
variables; names are flat, unique across sections (``LOANRISK_N_TRIALS=5`` sets ``settings.tuning.n_trials``).
"""

from __future__ import annotations

import os
import sys
import tomllib
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from pydantic import BaseModel, Field, create_model, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from tasks.settings.sections import (
    SECTION_OF,
    SECTIONS,
    DataSettings,
    EvaluationSettings,
    MonitoringSettings,
    RegistrySettings,
    ReleaseSettings,
    RunSettings,
    ServingSettings,
    TuningSettings,
)

if TYPE_CHECKING:
    from serving.privacy import Pseudonymiser


def _config_file() -> dict[str, Any]:
    """The optional TOML/YAML config file (flat keys, the same names as the settings)."""
    path = os.environ.get("LOANRISK_CONFIG")
    file = Path(path) if path else Path.cwd() / "loanrisk.toml"
    if not file.exists():
        if path:
            raise FileNotFoundError(f"LOANRISK_CONFIG names {file}, which does not exist")
        return {}
    data = tomllib.loads(file.read_text()) if file.suffix == ".toml" else yaml.safe_load(file.read_text())
    if not isinstance(data, dict):
        raise ValueError(f"config file {file} must hold a mapping of setting names to values")
    return data


class _Env(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LOANRISK_", extra="ignore")


# Every flat name as optional, read from the init values and the environment: a value not given anywhere is left
# to its section's default (and validators).
_Flat = create_model(  # type: ignore[call-overload]
    "_Flat",
    __base__=_Env,
    **{
        name: (info.annotation | None, None)
        for cls in (RunSettings, *SECTIONS.values())
        for name, info in cls.model_fields.items()
    },
)


def _in_state(*parts: str) -> Any:
    """A location in the state folder, as a read-only property."""
    return property(lambda self: self.state_dir.joinpath(*parts))


class Settings(RunSettings):
    """All knobs of the pipeline, typed, in sections, with offline defaults; ``Settings()`` reads the sources."""

    data: DataSettings = Field(default_factory=DataSettings)
    tuning: TuningSettings = Field(default_factory=TuningSettings)
    evaluation: EvaluationSettings = Field(default_factory=EvaluationSettings)
    registry: RegistrySettings = Field(default_factory=RegistrySettings)
    release: ReleaseSettings = Field(default_factory=ReleaseSettings)
    serving: ServingSettings = Field(default_factory=ServingSettings)
    monitoring: MonitoringSettings = Field(default_factory=MonitoringSettings)

    def __init__(self, **values: Any) -> None:
        given = self.flat(values)
        in_file = {k: v for k, v in _config_file().items() if k in _Flat.model_fields}
        read = _Flat(**given).model_dump(exclude_none=True)  # the keywords, else the environment
        super().__init__(**in_file | read | {k: None for k, v in given.items() if v is None})

    @model_validator(mode="before")
    @classmethod
    def _route_flat_names(cls, data: Any) -> Any:
        """Flat names (and section objects or dicts) routed into ``{top-level..., section: {...}}``."""
        if not isinstance(data, dict):
            return data
        flat = cls.flat(data)
        sections = {sec: {k: flat.pop(k) for k in c.model_fields if k in flat} for sec, c in SECTIONS.items()}
        return flat | sections

    @staticmethod
    def flat(values: dict[str, Any]) -> dict[str, Any]:
        """``{section: {...}}`` values as flat names (the names of the environment and the config file)."""
        out = {k: v for k, v in values.items() if k not in SECTIONS}
        for part in (values.get(sec) or {} for sec in SECTIONS):
            out |= part.model_dump() if isinstance(part, BaseModel) else part
        return out

    def replace(self, **changes: Any) -> Settings:
        """A validated copy with some values changed, named flat (``replace(n_trials=3)``)."""
        return type(self).model_validate(self.flat(dict(self)) | changes)

    def model_copy(self, *, update: dict[str, Any] | None = None, deep: bool = False) -> Settings:  # type: ignore[override]
        return self.replace(**update) if update else super().model_copy(deep=deep)

    def value(self, name: str) -> Any:
        """The value of the flat name ``name`` (for records that list settings by name)."""
        return getattr(getattr(self, SECTION_OF[name]), name) if name in SECTION_OF else getattr(self, name)

    data_dir = _in_state("data")
    quarantine_dir = _in_state("quarantine")
    secrets_dir = _in_state("secrets")
    prefect_home = _in_state("prefect")
    artifact_root = _in_state("mlflow", "artifacts")

    @property
    def tracking_uri(self) -> str:
        """The MLflow tracking URI: MLFLOW_TRACKING_URI, else the setting, else local SQLite."""
        return (
            os.environ.get("MLFLOW_TRACKING_URI")
            or self.registry.mlflow_tracking_uri
            or f"sqlite:///{self.state_dir / 'mlflow' / 'mlflow.db'}"
        )

    @property
    def score_root(self) -> Path:
        """The folder batch scoring may write under (``score_output_root``, else <state_dir>/scores)."""
        return (self.monitoring.score_output_root or self.state_dir / "scores").resolve()

    @property
    def wheel_cache_dir(self) -> Path:
        return self.release.wheel_cache or self.state_dir / "wheels"

    @property
    def study_storage(self) -> str:
        return self.tuning.optuna_storage or f"sqlite:///{self.state_dir / 'optuna' / 'optuna.db'}"

    def pseudonymiser(self) -> Pseudonymiser:
        """The keyed pseudonymiser of identifiers: ``pseudonym_key``, else the key kept in :attr:`secrets_dir`."""
        from serving.privacy import Pseudonymiser, load_key

        key = self.serving.pseudonym_key
        return Pseudonymiser(load_key(key.get_secret_value() if key else None, self.secrets_dir))


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings (cached; call ``get_settings.cache_clear()`` after changing the env)."""
    return Settings()


def configure_environment(settings: Settings | None = None) -> Settings:
    """Point Prefect's state into the state folder and give it the API account, unless the user set them:
    called by each flow's ``main()``, never at import; Prefect's settings are read again."""
    settings = settings or get_settings()
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    defaults = {
        "PREFECT_HOME": str(settings.prefect_home),
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
        "PREFECT_LOGGING_LEVEL": "INFO",
    }
    if settings.prefect_api_auth_string is not None:
        defaults["PREFECT_API_AUTH_STRING"] = settings.prefect_api_auth_string.get_secret_value()
    for key, value in defaults.items():
        os.environ.setdefault(key, value)
    if (context := sys.modules.get("prefect.context")) is not None:
        context.refresh_global_settings_context()
    return settings


def mlflow_environment(registry: RegistrySettings) -> None:
    """MLflow's variables from the settings (the tracking account; no progress bars), unless already set."""
    defaults = {"MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false", "GIT_PYTHON_REFRESH": "quiet"}
    if registry.mlflow_username:
        defaults["MLFLOW_TRACKING_USERNAME"] = registry.mlflow_username
    if registry.mlflow_password is not None:
        defaults["MLFLOW_TRACKING_PASSWORD"] = registry.mlflow_password.get_secret_value()
    for key, value in defaults.items():
        os.environ.setdefault(key, value)
