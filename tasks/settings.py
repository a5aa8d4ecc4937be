"""The one typed settings object of the pipeline.

Values come, in increasing priority, from the defaults below (which work offline), an optional config file
(TOML or YAML, named by ``LOANRISK_CONFIG`` or ``loanrisk.toml`` in the working directory) and environment
variables prefixed ``LOANRISK_`` (``LOANRISK_N_TRIALS=5``). Every piece of state a run creates lives under
``state_dir`` (default ``.state`` in the project root), which is git-ignored.
"""

from __future__ import annotations

import os
import sys
import tomllib
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml
from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from tasks.data.contract import BAD_LABEL_STATUSES, GOOD_LABEL_STATUSES, LOAN_STATUSES, NOT_FINAL_STATUSES
from tasks.registry.aliases import Alias

if TYPE_CHECKING:
    from serving.privacy import Pseudonymiser

PROJECT_ROOT = Path(__file__).resolve().parent.parent


class _ConfigFileSource(PydanticBaseSettingsSource):
    """Reads the optional TOML/YAML config file (flat keys, same names as the fields)."""

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:  # pragma: no cover
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        path = os.environ.get("LOANRISK_CONFIG")
        candidate = Path(path) if path else Path.cwd() / "loanrisk.toml"
        if not candidate.exists():
            if path:
                raise FileNotFoundError(f"LOANRISK_CONFIG names {candidate}, which does not exist")
            return {}
        text = candidate.read_text()
        data = tomllib.loads(text) if candidate.suffix == ".toml" else yaml.safe_load(text)
        if not isinstance(data, dict):
            raise ValueError(f"config file {candidate} must hold a mapping of setting names to values")
        return data


class Settings(BaseSettings):
    """All knobs of the pipeline, typed, with offline defaults."""

    model_config = SettingsConfigDict(env_prefix="LOANRISK_", extra="ignore", validate_default=True)

    # --- where state goes -------------------------------------------------------------------------
    state_dir: Path = PROJECT_ROOT / ".state"

    # --- ingest --------------------------------------------------------------------------------------
    source: str = Field("sample", description="'sample', a local directory, or hf://datasets/<repo>[@<rev>]")
    sample_scale: float = Field(1.0, gt=0, le=5)
    sample_seed: int = 42
    hf_repo: str = "keanteng/loan"
    hf_revision: str | None = None
    hf_token: SecretStr | None = None
    hf_max_attempts: int = Field(4, ge=1)
    hf_backoff_seconds: float = Field(1.0, ge=0)  # first wait between Hub attempts; doubles, capped at 60 s

    # --- orchestration -------------------------------------------------------------------------------
    task_retries: int = Field(2, ge=0)
    task_retry_delay_seconds: float = Field(10.0, ge=0)

    # --- validation ----------------------------------------------------------------------------------
    quarantine_max_share: float = Field(0.01, ge=0, le=1)

    # --- label and split -----------------------------------------------------------------------------
    label_bad_statuses: list[str] = Field(default_factory=lambda: list(BAD_LABEL_STATUSES))
    label_good_statuses: list[str] = Field(default_factory=lambda: list(GOOD_LABEL_STATUSES))
    split_fractions: tuple[float, float, float] = (0.70, 0.15, 0.15)
    # "seed": the statuses above as they are; "matured": loans whose outcome is not final yet (NOT_FINAL_STATUSES:
    # "New Loan", "Pending Paid Off") are left out instead of counted good (censoring; docs/pipeline.md, "Evaluation").
    label_policy: str = Field("seed", pattern="^(seed|matured)$")

    # --- tuning and training -------------------------------------------------------------------------
    n_trials: int = Field(20, ge=1)
    tune_timeout_seconds: float = Field(420.0, gt=0)
    optuna_storage: str | None = None  # any SQLAlchemy URL; default: SQLite under state_dir
    # Resume this study instead of starting one per training run; it must hold the same data (its fingerprint is
    # checked) and the same fit settings, or the stage stops with a permanent error.
    optuna_study_name: str | None = None
    # Tuning across workers (docs/pipeline.md, "Tuning across workers"): trials fanned out to `tune_workers` workers sharing
    # the study; "local" runs them as processes of this machine, "pool" as flow runs of `tune_deployment_name`
    # on the work pool (any machine whose settings name the same optuna_storage and MLflow tracking URI).
    tune_workers: int = Field(1, ge=1)
    tune_mode: str = Field("local", pattern="^(local|pool)$")
    tune_deployment_name: str = "loan-risk-training/tune-worker"
    tune_worker_name: str | None = (
        None  # the worker id on its trials (user attr worker_id); default: host name
    )
    # Optuna's heartbeat: a running trial whose heartbeat is older than the grace period is failed and re-run
    # (at most tune_trial_retries times) by a worker still alive.
    tune_heartbeat_seconds: int = Field(5, ge=1)
    tune_grace_seconds: int = Field(20, ge=2)
    tune_trial_retries: int = Field(2, ge=0)
    max_iterations: int = Field(1500, ge=10)
    early_stopping_rounds: int = Field(60, ge=5)
    # Categorical features CatBoost may combine into one CTR: 1 (none) fits 2-3x faster in half the memory, at
    # the same test ROC-AUC on the sample (docs/benchmarks.md); raise it for data where combinations matter.
    max_ctr_complexity: int = Field(1, ge=1, le=4)
    seed: int = 42
    thread_count: int = -1
    # Feature name -> -1 (risk never rises with it), 0 (free) or 1 (risk never falls with it): CatBoost's own
    # monotone_constraints, numeric features only. JSON in the environment: LOANRISK_MONOTONE_CONSTRAINTS='{"apr": 1}'.
    monotone_constraints: dict[str, int] = Field(default_factory=dict)

    # --- evaluation and decision policy --------------------------------------------------------------
    bootstrap_samples: int = Field(200, ge=0)  # resamples behind the 95% intervals of AUC and KS (0: none)
    segment_min_count: int = Field(
        100, ge=1
    )  # segments (state, leadType, payFrequency) smaller are not scored
    psi_bins: int = Field(10, ge=2)  # quantile bins of the population stability index
    # "f1": best validation F1 within the promotion minimums; "expected_cost": the validation threshold with the
    # least cost_bad_approved * FN + cost_good_declined * FP.
    threshold_policy: str = Field("f1", pattern="^(f1|expected_cost)$")
    cost_bad_approved: float = Field(5.0, gt=0)  # cost of approving a loan that goes bad (a false negative)
    cost_good_declined: float = Field(
        1.0, gt=0
    )  # cost of declining a loan that would have paid (a false positive)
    # A calibrator is fitted on validation when the model's validation ECE exceeds this (1: never).
    calibration_max_ece: float = Field(0.02, ge=0, le=1)
    calibration_method: str = Field("platt", pattern="^(isotonic|platt)$")

    # --- tracking and registry -----------------------------------------------------------------------
    mlflow_tracking_uri: str | None = None  # default: SQLite store under state_dir; MLFLOW_TRACKING_URI wins
    mlflow_experiment: str = "loan-risk"
    model_name: str = "loan-risk"
    # The tracking server's account (MLflow's basic-auth app): exported as MLFLOW_TRACKING_USERNAME/PASSWORD
    # unless those are set. The pipeline's account may write; a reader's may not move aliases or tags.
    mlflow_username: str | None = None
    mlflow_password: SecretStr | None = None
    # The Prefect server's API auth string ("user:password"): exported as PREFECT_API_AUTH_STRING unless set.
    prefect_api_auth_string: SecretStr | None = None

    # --- personal data -------------------------------------------------------------------------------
    # Key of the keyed hash that pseudonymises identifiers (serving/privacy.py); unset: a random key made once
    # and kept in <state_dir>/secrets/ (mode 0600).
    pseudonym_key: SecretStr | None = None

    # --- promotion policy ----------------------------------------------------------------------------
    min_precision: float = Field(0.72, ge=0, le=1)
    min_recall: float = Field(0.72, ge=0, le=1)
    min_f1_gain: float = Field(0.02, ge=-1)
    # A champion that exists but cannot be re-scored on this run's test split (bundle missing or unloadable,
    # feature contract changed): "reject" keeps the new version out; "minimums" lets the minimums alone decide.
    champion_unscorable: str = Field("reject", pattern="^(reject|minimums)$")
    # What a promoted version's deploy needs: "auto" deploys when an engine answers and says when it skips (one
    # machine without Docker); "required" fails the training run naming what is missing (engine or registry);
    # "off" never deploys. The stack and the docker work pool set "required".
    deploy_mode: Literal["auto", "required", "off"] = "auto"
    deploy_deployment_name: str = "loan-risk-deploy/deploy"

    # --- image, registry and release -----------------------------------------------------------------
    docker_host: str | None = None  # default: DOCKER_HOST / the local socket
    image_registry: str = "localhost:5055"
    image_repository: str = "loan-risk"
    base_image: str = "python:3.11-slim"
    registry_username: str | None = None
    registry_password: SecretStr | None = None
    registry_secret_block: str | None = None  # a Prefect Secret block holding the registry password
    # Hosts (host or host:port) besides the registry's own that may receive its credentials as a token realm.
    registry_allowed_realms: list[str] = Field(default_factory=list)
    wheel_cache: Path | None = None  # wheels of the serving image; default: <state_dir>/wheels
    smoke_sample_size: int = Field(50, ge=1)
    health_timeout_seconds: float = Field(90.0, gt=0)
    deploy_lock_name: str = "loan-risk-deploy"  # Prefect global concurrency limit that serialises deploys
    deploy_lock_timeout_seconds: float = Field(3600.0, gt=0)  # how long a deploy waits for the lock
    github_token: SecretStr | None = None
    github_repository: str | None = None  # owner/name
    github_api_url: str = "https://api.github.com"

    # --- batch scoring (flows/score.py) ----------------------------------------------------------------
    score_alias: str = Alias.CHAMPION.value  # the version scored when neither a version nor an alias is given
    # rows read, scored and written at a time: bounds memory; 32,768 is faster than 65,536 (bench/score)
    score_chunk_rows: int = Field(32_768, ge=1)
    score_reasons: Literal["risky", "all", "none"] = "risky"  # batch scoring's reasons column: which rows
    # Batch scoring writes its outputs (scores, rejects) only under this folder; a relative output is taken
    # under it. Default: <state_dir>/scores.
    score_output_root: Path | None = None

    # --- alerts (deployments/alerts.py) ------------------------------------------------------------------
    # Where notifications go; secrets, so never in prefect.yaml: set them in the environment or loanrisk.toml.
    alert_webhook_url: SecretStr | None = None  # a generic webhook: a JSON document per alert (Webhook block)
    alert_apprise_urls: list[SecretStr] = Field(default_factory=list)  # Apprise URLs (slack://, json://, ...)
    alert_flows: list[str] = Field(
        default_factory=lambda: [
            "loan-risk-training",
            "loan-risk-deploy",
            "loan-risk-score",
            "loan-risk-monitor",
        ]
    )  # flows whose failed or crashed runs alert

    # --- monitoring: the reference profile, drift and the retrain trigger ------------------------------
    # The service's prediction log folder (the same LOANRISK_PREDICTION_LOG_DIR the service writes to).
    prediction_log_dir: Path | None = None
    monitor_window: str = Field("24h", pattern=r"^\d+(\.\d+)?[smhdw]$")  # how far back a monitor run reads
    profile_bins: int = Field(10, ge=2, le=50)  # quantile bins per numeric feature and for the score
    profile_top_categories: int = Field(20, ge=1)  # categories kept by name; the rest count as "other"
    drift_psi_threshold: float = Field(0.25, gt=0)  # a feature with PSI at or above this has drifted
    drift_score_psi_threshold: float = Field(0.25, gt=0)  # the score's PSI at or above this is drift
    drift_min_features: int = Field(3, ge=1)  # drifted features that make a detection on their own
    drift_min_records: int = Field(100, ge=1)  # fewer logged records: reported, but no drift event
    # Retrain at most once per cooldown: the `within` of the retrain deployment's drift trigger
    # (deployments.setup writes it into the deployed trigger).
    drift_cooldown_seconds: int = Field(86_400, ge=60)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, _ConfigFileSource(settings_cls), file_secret_settings)

    @field_validator("split_fractions")
    @classmethod
    def _fractions_sum_to_one(cls, v: tuple[float, float, float]) -> tuple[float, float, float]:
        if any(f <= 0 for f in v) or abs(sum(v) - 1.0) > 1e-6:
            raise ValueError(f"split_fractions must be three positive shares summing to 1, got {v}")
        return v

    @model_validator(mode="after")
    def _labels_disjoint(self) -> Settings:
        both = set(self.label_bad_statuses) & set(self.label_good_statuses)
        if both:
            raise ValueError(f"label statuses cannot be both bad and good: {sorted(both)}")
        unknown = [s for s in (*self.label_bad_statuses, *self.label_good_statuses) if s not in LOAN_STATUSES]
        if unknown:
            raise ValueError(
                f"label statuses {unknown} are no loanStatus of the dataset; known: {list(LOAN_STATUSES)}"
            )
        return self

    @field_validator("monotone_constraints")
    @classmethod
    def _known_numeric_features(cls, v: dict[str, int]) -> dict[str, int]:
        from serving.features import CATEGORICAL_FEATURES, FEATURE_NAMES

        for name, direction in v.items():
            if name not in FEATURE_NAMES:
                raise ValueError(
                    f"monotone_constraints: {name!r} is no model feature; known: {list(FEATURE_NAMES)}"
                )
            if name in CATEGORICAL_FEATURES:
                raise ValueError(
                    f"monotone_constraints: {name!r} is categorical; only numeric features take one"
                )
            if direction not in (-1, 0, 1):
                raise ValueError(f"monotone_constraints: {name!r} must be -1, 0 or 1, got {direction!r}")
        return v

    def label_statuses(self) -> tuple[list[str], list[str]]:
        """The (bad, good) statuses of the label policy: ``matured`` leaves out loans not final yet."""
        if self.label_policy == "matured":
            return list(self.label_bad_statuses), [
                s for s in self.label_good_statuses if s not in NOT_FINAL_STATUSES
            ]
        return list(self.label_bad_statuses), list(self.label_good_statuses)

    @model_validator(mode="after")
    def _grace_outlasts_heartbeat(self) -> Settings:
        if self.tune_grace_seconds <= self.tune_heartbeat_seconds:
            raise ValueError(
                f"tune_grace_seconds ({self.tune_grace_seconds}) must exceed tune_heartbeat_seconds "
                f"({self.tune_heartbeat_seconds}): a live trial would be failed between two heartbeats"
            )
        return self

    # --- derived locations ---------------------------------------------------------------------------
    @property
    def data_dir(self) -> Path:
        return self.state_dir / "data"

    @property
    def quarantine_dir(self) -> Path:
        return self.state_dir / "quarantine"

    @property
    def secrets_dir(self) -> Path:
        return self.state_dir / "secrets"

    def pseudonymiser(self) -> Pseudonymiser:
        """The keyed pseudonymiser of identifiers: ``pseudonym_key``, else the key kept in :attr:`secrets_dir`."""
        from serving.privacy import Pseudonymiser, load_key

        secret = self.pseudonym_key.get_secret_value() if self.pseudonym_key is not None else None
        return Pseudonymiser(load_key(secret, self.secrets_dir))

    @property
    def prefect_home(self) -> Path:
        return self.state_dir / "prefect"

    @property
    def tracking_uri(self) -> str:
        """The MLflow tracking URI: MLFLOW_TRACKING_URI, else the setting, else local SQLite."""
        env = os.environ.get("MLFLOW_TRACKING_URI")
        if env:
            return env
        if self.mlflow_tracking_uri:
            return self.mlflow_tracking_uri
        return f"sqlite:///{self.state_dir / 'mlflow' / 'mlflow.db'}"

    @property
    def artifact_root(self) -> Path:
        return self.state_dir / "mlflow" / "artifacts"

    @property
    def score_root(self) -> Path:
        """The folder batch scoring may write under (``score_output_root``, else <state_dir>/scores)."""
        return (self.score_output_root or self.state_dir / "scores").resolve()

    @property
    def wheel_cache_dir(self) -> Path:
        return self.wheel_cache or self.state_dir / "wheels"

    @property
    def study_storage(self) -> str:
        return self.optuna_storage or f"sqlite:///{self.state_dir / 'optuna' / 'optuna.db'}"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings (cached; call ``get_settings.cache_clear()`` after changing the env)."""
    return Settings()


def configure_environment(settings: Settings | None = None) -> Settings:
    """Point Prefect's state into the state folder and give it the configured API account: called by each
    flow's ``main()`` (never at import), so a module imported by a worker changes nothing.

    Variables the user already set win (``PREFECT_API_URL``, ``PREFECT_HOME``). Prefect reads its settings when
    it is imported; they are read again here. MLflow's variables are set by its one door
    (:func:`tasks.registry.tracking.client`).
    """
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
    context = sys.modules.get("prefect.context")
    if context is not None:
        context.refresh_global_settings_context()
    return settings


def mlflow_environment(settings: Settings) -> None:
    """MLflow's variables from the settings (the tracking account; no progress bars), unless already set."""
    defaults = {"MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false", "GIT_PYTHON_REFRESH": "quiet"}
    if settings.mlflow_username:
        defaults["MLFLOW_TRACKING_USERNAME"] = settings.mlflow_username
    if settings.mlflow_password is not None:
        defaults["MLFLOW_TRACKING_PASSWORD"] = settings.mlflow_password.get_secret_value()
    for key, value in defaults.items():
        os.environ.setdefault(key, value)
