"""The sections of the settings: each stage's knobs, typed, with offline defaults (flat names, unique across
sections, so each is also an environment variable ``LOANRISK_<NAME>``); docs/settings.md says what each is."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from tasks.data.contract import BAD_LABEL_STATUSES, GOOD_LABEL_STATUSES, LOAN_STATUSES, NOT_FINAL_STATUSES
from tasks.registry.aliases import Alias

PROJECT_ROOT = Path(__file__).resolve().parent.parent.parent


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


class DataSettings(_Section):
    """Ingest, validation, the label and the split."""

    source: str = Field("sample", description="'sample', a local directory, or hf://datasets/<repo>[@<rev>]")
    sample_scale: float = Field(1.0, gt=0, le=5)
    sample_seed: int = 42
    hf_repo: str = "keanteng/loan"
    hf_revision: str | None = None
    hf_token: SecretStr | None = None
    hf_max_attempts: int = Field(4, ge=1)
    hf_backoff_seconds: float = Field(1.0, ge=0)
    quarantine_max_share: float = Field(0.01, ge=0, le=1)
    label_bad_statuses: list[str] = Field(default_factory=lambda: list(BAD_LABEL_STATUSES))
    label_good_statuses: list[str] = Field(default_factory=lambda: list(GOOD_LABEL_STATUSES))
    split_fractions: tuple[float, float, float] = (0.70, 0.15, 0.15)
    label_policy: str = Field("seed", pattern="^(seed|matured)$")

    @field_validator("split_fractions")
    @classmethod
    def _fractions_sum_to_one(cls, v: tuple[float, float, float]) -> tuple[float, float, float]:
        if any(f <= 0 for f in v) or abs(sum(v) - 1.0) > 1e-6:
            raise ValueError(f"split_fractions must be three positive shares summing to 1, got {v}")
        return v

    @model_validator(mode="after")
    def _labels_disjoint(self) -> DataSettings:
        if both := set(self.label_bad_statuses) & set(self.label_good_statuses):
            raise ValueError(f"label statuses cannot be both bad and good: {sorted(both)}")
        unknown = [s for s in (*self.label_bad_statuses, *self.label_good_statuses) if s not in LOAN_STATUSES]
        if unknown:
            raise ValueError(
                f"label statuses {unknown} are no loanStatus of the dataset; known: {list(LOAN_STATUSES)}"
            )
        return self

    def label_statuses(self) -> tuple[list[str], list[str]]:
        """The (bad, good) statuses of the label policy: ``matured`` leaves out loans not final yet."""
        left_out = NOT_FINAL_STATUSES if self.label_policy == "matured" else ()
        return list(self.label_bad_statuses), [s for s in self.label_good_statuses if s not in left_out]


class TuningSettings(_Section):
    """Optuna's study, its workers and CatBoost's fit (docs/pipeline.md, "Tuning across workers")."""

    n_trials: int = Field(20, ge=1)
    tune_timeout_seconds: float = Field(420.0, gt=0)
    optuna_storage: str | None = None
    optuna_study_name: str | None = None
    tune_workers: int = Field(1, ge=1)
    tune_mode: str = Field("local", pattern="^(local|pool)$")
    tune_deployment_name: str = "loan-risk-training/tune-worker"
    tune_worker_name: str | None = None  # the worker id on its trials; default: host name
    tune_heartbeat_seconds: int = Field(5, ge=1)
    tune_grace_seconds: int = Field(20, ge=2)
    tune_trial_retries: int = Field(2, ge=0)
    max_iterations: int = Field(1500, ge=10)
    early_stopping_rounds: int = Field(60, ge=5)
    max_ctr_complexity: int = Field(1, ge=1, le=4)  # 1 (no combined CTRs) fits faster in less memory
    seed: int = 42
    thread_count: int = -1
    monotone_constraints: dict[str, int] = Field(default_factory=dict)

    @field_validator("monotone_constraints")
    @classmethod
    def _known_numeric_features(cls, v: dict[str, int]) -> dict[str, int]:
        from serving.features import CATEGORICAL_FEATURES, FEATURE_NAMES

        for name, direction in v.items():
            if name not in FEATURE_NAMES:
                problem = f"is no model feature; known: {list(FEATURE_NAMES)}"
            elif name in CATEGORICAL_FEATURES:
                problem = "is categorical; only numeric features take one"
            elif direction not in (-1, 0, 1):
                problem = f"must be -1, 0 or 1, got {direction!r}"
            else:
                continue
            raise ValueError(f"monotone_constraints: {name!r} {problem}")
        return v

    @model_validator(mode="after")
    def _grace_outlasts_heartbeat(self) -> TuningSettings:
        if self.tune_grace_seconds <= self.tune_heartbeat_seconds:
            raise ValueError(
                f"tune_grace_seconds ({self.tune_grace_seconds}) must exceed tune_heartbeat_seconds "
                f"({self.tune_heartbeat_seconds}): a live trial would be failed between two heartbeats"
            )
        return self


class EvaluationSettings(_Section):
    """Credit-grade evaluation and the decision threshold."""

    bootstrap_samples: int = Field(200, ge=0)
    segment_min_count: int = Field(100, ge=1)
    psi_bins: int = Field(10, ge=2)
    threshold_policy: str = Field("f1", pattern="^(f1|expected_cost)$")
    cost_bad_approved: float = Field(5.0, gt=0)
    cost_good_declined: float = Field(1.0, gt=0)
    calibration_max_ece: float = Field(0.02, ge=0, le=1)
    calibration_method: str = Field("platt", pattern="^(isotonic|platt)$")


class RegistrySettings(_Section):
    """Tracking, the registered model and the promotion policy."""

    mlflow_tracking_uri: str | None = None
    mlflow_experiment: str = "loan-risk"
    model_name: str = "loan-risk"
    mlflow_username: str | None = None
    mlflow_password: SecretStr | None = None
    min_precision: float = Field(0.72, ge=0, le=1)
    min_recall: float = Field(0.72, ge=0, le=1)
    min_f1_gain: float = Field(0.02, ge=-1)
    # A champion that cannot be re-scored on this run's test split: "reject" keeps the new version out;
    # "minimums" lets the minimums alone decide.
    champion_unscorable: str = Field("reject", pattern="^(reject|minimums)$")


class ReleaseSettings(_Section):
    """The deploy: image, registry, smoke test, release record and GitHub."""

    deploy_mode: Literal["auto", "required", "off"] = "auto"
    deploy_deployment_name: str = "loan-risk-deploy/deploy"
    docker_host: str | None = None  # default: DOCKER_HOST / the local socket
    image_registry: str = "localhost:5055"
    image_repository: str = "loan-risk"
    base_image: str = "python:3.11-slim"
    registry_username: str | None = None
    registry_password: SecretStr | None = None
    registry_secret_block: str | None = None
    registry_allowed_realms: list[str] = Field(default_factory=list)
    wheel_cache: Path | None = None  # wheels of the serving image; default: <state_dir>/wheels
    smoke_sample_size: int = Field(50, ge=1)
    health_timeout_seconds: float = Field(90.0, gt=0)
    deploy_lock_name: str = "loan-risk-deploy"  # Prefect global concurrency limit that serialises deploys
    deploy_lock_timeout_seconds: float = Field(3600.0, gt=0)
    github_token: SecretStr | None = None
    github_repository: str | None = None
    github_api_url: str = "https://api.github.com"


class ServingSettings(_Section):
    """What the pipeline shares with the service: identifiers' pseudonyms and the prediction log."""

    pseudonym_key: SecretStr | None = None
    prediction_log_dir: Path | None = None


class MonitoringSettings(_Section):
    """Batch scoring, the reference profile, drift, the retrain trigger and alerts."""

    score_alias: str = Alias.CHAMPION.value  # scored when neither a version nor an alias is given
    score_chunk_rows: int = Field(32_768, ge=1)  # rows read, scored and written at a time: bounds memory
    score_reasons: Literal["risky", "all", "none"] = "risky"  # which rows get the reasons column
    score_output_root: Path | None = None
    monitor_window: str = Field("24h", pattern=r"^\d+(\.\d+)?[smhdw]$")
    profile_bins: int = Field(10, ge=2, le=50)
    profile_top_categories: int = Field(20, ge=1)  # categories kept by name; the rest count as "other"
    drift_psi_threshold: float = Field(0.25, gt=0)
    drift_score_psi_threshold: float = Field(0.25, gt=0)
    drift_min_features: int = Field(3, ge=1)
    drift_min_records: int = Field(100, ge=1)
    drift_cooldown_seconds: int = Field(86_400, ge=60)
    # Where notifications go; secrets, so never in prefect.yaml: set them in the environment or loanrisk.toml.
    alert_webhook_url: SecretStr | None = None  # a generic webhook: a JSON document per alert
    alert_apprise_urls: list[SecretStr] = Field(default_factory=list)  # Apprise URLs (slack://, json://, ...)
    alert_flows: list[str] = Field(  # flows whose failed or crashed runs alert
        default_factory=lambda: [f"loan-risk-{f}" for f in ("training", "deploy", "score", "monitor")]
    )


class RunSettings(_Section):
    """Where state goes and how the orchestrator runs the stages."""

    state_dir: Path = PROJECT_ROOT / ".state"
    task_retries: int = Field(2, ge=0)
    task_retry_delay_seconds: float = Field(10.0, ge=0)
    prefect_api_auth_string: SecretStr | None = None


_ALL = (DataSettings, TuningSettings, EvaluationSettings, RegistrySettings, ReleaseSettings, ServingSettings)
SECTIONS: dict[str, type[_Section]] = {
    cls.__name__.removesuffix("Settings").lower(): cls for cls in (*_ALL, MonitoringSettings)
}
SECTION_OF: dict[str, str] = {name: sec for sec, cls in SECTIONS.items() for name in cls.model_fields}
