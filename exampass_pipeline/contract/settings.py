"""Every environment setting ExamPass reads, in one typed pydantic-settings model.

This module is the only place that reads ``EXAMPASS_*`` (and the standard ``DAGSTER_HOME``,
``MLFLOW_TRACKING_URI``, ``MLFLOW_REGISTRY_URI``) variables. Settings are read when ``Settings.from_env()`` is
called, not at import, so tests and the CLIs can point a process at a fresh home by setting variables. Paths
not set explicitly derive from ``EXAMPASS_HOME``. The production path (Postgres, an MLflow server, object
storage) is reached only by setting the standard variables; no code here knows about it.

A malformed value is refused with a ``SettingsError`` whose message names the *variable* (not the Python
field) and the reason, e.g. ``EXAMPASS_API_PORT: '80a' is not a whole number``: the person who typed it should
not have to map a pydantic location back to an environment variable. Blank variables count as unset.

It must not import dagster: the API process reads the same settings.
"""

from __future__ import annotations

import argparse
import os
from datetime import date
from pathlib import Path
from typing import Any, Self

import limits
from pydantic import (
    AliasChoices,
    BaseModel,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, EnvSettingsSource, PydanticBaseSettingsSource, SettingsConfigDict

ENV_PREFIX = "EXAMPASS_"
DEFAULT_HOME = ".exampass"
DEFAULT_DATA = "data/StudentsPerformance.csv"


class SettingsError(ValueError):
    """A malformed setting; the message names the environment variable and says what is wrong."""


class ThresholdValues(BaseModel):
    """Every number a check or the champion gate judges by, each settable as ``EXAMPASS_<FIELD>``.

    Declared once here; ``Settings`` reads them from the environment and the Dagster ``Thresholds`` resource
    inherits the same fields, so an operator tunes a check without touching code or run config.
    """

    min_student_rows: int = Field(500, ge=1, description="Fewest rows `students` may hold to train.")
    pass_rate_min: float = Field(0.70, ge=0, le=1, description="Lowest plausible pass rate of `students`.")
    pass_rate_max: float = Field(0.97, ge=0, le=1, description="Highest plausible pass rate of `students`.")
    promotion_margin: float = Field(
        0.005, ge=0, le=1, description="How much worse (ROC-AUC) a challenger may be and still be promoted."
    )
    drift_alpha: float = Field(0.05, gt=0, lt=1, description="False-alarm budget of the drift checks.")
    drift_min_rows: int = Field(50, ge=1, description="Fewest rows a day needs before drift is judged.")
    quality_alpha: float = Field(0.05, gt=0, lt=1, description="False-alarm budget of `model_quality`.")
    quality_min_labelled: int = Field(50, ge=1, description="Fewest labelled rows before quality is judged.")
    segment_max_gap: float = Field(
        0.10,
        ge=0,
        le=1,
        description="Smallest fail-recall gap between groups worth a warning (it must also be significant).",
    )
    segment_alpha: float = Field(
        0.05, gt=0, lt=1, description="False-alarm budget of `segment_quality` (Holm across segments)."
    )
    segment_min_fail: int = Field(5, ge=1, description="Fewest fails a group needs to be judged.")
    retrain_cooldown_s: float = Field(3600, ge=0, description="Least time between two sensor retrains.")
    # Retraining that poisoned feedback cannot steer (exampass_pipeline.ml.trust and .gate; docs/security.md).
    plausibility_width: float = Field(
        4.0,
        gt=0,
        description="Reported maths scores further than this many sds from expected are quarantined.",
    )
    implausible_share_max: float = Field(
        0.05, ge=0, le=1, description="A client-day with a larger implausible share raises a WARN."
    )
    implausible_min_rows: int = Field(20, ge=1, description="Fewest reports before a client-day is judged.")
    client_bias_alpha: float = Field(
        0.01, gt=0, lt=1, description="Holm level of the test of one client's reports against the others'."
    )
    client_bias_min_gap: float = Field(
        0.5, ge=0, description="Smallest gap (residual sds) between a client and the others that counts."
    )
    client_bias_min_rows: int = Field(20, ge=1, description="Fewest reports per client and group to test.")
    client_max_share: float = Field(
        0.25, gt=0, lt=1, description="Most of a retrain's training rows one production client may supply."
    )
    behaviour_max_probability_shift: float = Field(
        0.02, ge=0, le=1, description="Largest move of a segment's mean pass probability on the trusted set."
    )
    behaviour_max_flag_shift: float = Field(
        0.10, ge=0, le=1, description="Largest move of a segment's flag rate on the trusted set."
    )
    behaviour_min_segment_rows: int = Field(10, ge=1, description="Smaller trusted segments are not judged.")
    corroboration_min_clients: int = Field(
        3, ge=1, description="Independent clients needed to let a behaviour move through without approval."
    )
    corroboration_min_rows: int = Field(10, ge=1, description="Fewest rows a client needs to corroborate.")
    corroboration_alpha: float = Field(0.01, gt=0, lt=1, description="One-sided level of each client's test.")


def env_var(name: str, field: FieldInfo | None = None) -> str:
    """The variable that sets one field: its alias when it has one, else EXAMPASS_<FIELD>."""
    alias = field.validation_alias if field is not None else None
    if isinstance(alias, str):
        return alias
    if isinstance(alias, AliasChoices):
        return str(alias.choices[0])
    return f"{ENV_PREFIX}{name.upper()}"


def threshold_env_var(name: str) -> str:
    """The variable that overrides one threshold, e.g. min_student_rows -> EXAMPASS_MIN_STUDENT_ROWS."""
    return env_var(name, ThresholdValues.model_fields[name])


class _StrippedEnv(EnvSettingsSource):
    """The environment with surrounding blanks removed and blank variables treated as unset.

    ``EXAMPASS_DRIFT_ALPHA="  "`` in a compose file means "not set", not "a malformed number".
    """

    def __call__(self) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for key, value in super().__call__().items():
            if isinstance(value, str):
                value = value.strip()
                if not value:
                    continue
            values[key] = value
        return values


def _reason(error: dict[str, Any]) -> str:
    """One pydantic error as the sentence an operator reads."""
    kind, value = str(error["type"]), error.get("input")
    shown = repr(value)
    if kind in {"int_parsing", "int_from_float", "int_type"}:
        return f"{shown} is not a whole number"
    if kind in {"float_parsing", "float_type", "finite_number"}:
        return f"{shown} is not a number"
    if kind in {"bool_parsing", "bool_type"}:
        return f"{shown} is not true or false"
    if kind.startswith("date"):
        return f"{shown} is not a date (YYYY-MM-DD)"
    message = str(error.get("msg", "invalid value"))
    message = message.removeprefix("Value error, ").removeprefix("Input should be ")
    return f"{shown} must be {message}" if message != str(error.get("msg")) else f"{shown}: {message}"


class Settings(BaseSettings, ThresholdValues):
    """Resolved settings for one process. Treat as immutable: derive a changed copy with ``model_copy``."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", validate_by_name=True)

    # -- where state lives -------------------------------------------------------------------------------------
    home: Path = Field(Path(DEFAULT_HOME), description="Everything ExamPass writes lives under here.")
    data_path: Path = Field(
        Path(DEFAULT_DATA), validation_alias="EXAMPASS_DATA", description="The curated Kaggle-format CSV."
    )
    dagster_home: Path = Field(
        default_factory=lambda v: _home(v) / "dagster", validation_alias="DAGSTER_HOME"
    )
    mlflow_tracking_uri: str = Field(
        default_factory=lambda v: f"sqlite:///{_home(v) / 'mlflow' / 'mlflow.db'}",
        validation_alias="MLFLOW_TRACKING_URI",
    )
    mlflow_registry_uri: str | None = Field(None, validation_alias="MLFLOW_REGISTRY_URI")
    # Basic auth: MLflow's clients read these two themselves; ExamPass reads the name to record who approved a
    # promotion, and `exampass-mlflow-users` both, as the admin that provisions the two service users below.
    mlflow_tracking_username: str | None = Field(None, validation_alias="MLFLOW_TRACKING_USERNAME")
    mlflow_tracking_password: SecretStr | None = Field(None, validation_alias="MLFLOW_TRACKING_PASSWORD")
    mlflow_pipeline_username: str = Field("exampass-pipeline", validation_alias="MLFLOW_PIPELINE_USERNAME")
    mlflow_pipeline_password: SecretStr | None = Field(None, validation_alias="MLFLOW_PIPELINE_PASSWORD")
    mlflow_api_username: str = Field("exampass-api", validation_alias="MLFLOW_API_USERNAME")
    mlflow_api_password: SecretStr | None = Field(None, validation_alias="MLFLOW_API_PASSWORD")
    duckdb_path: Path = Field(
        default_factory=lambda v: _home(v) / "warehouse.duckdb", validation_alias="EXAMPASS_DUCKDB"
    )
    logs_dir: Path = Field(default_factory=lambda v: _home(v) / "logs", validation_alias="EXAMPASS_LOGS")
    reports_dir: Path = Field(
        default_factory=lambda v: _home(v) / "reports", validation_alias="EXAMPASS_REPORTS"
    )
    alert_webhook: SecretStr | None = Field(None, description="Slack-compatible URL failed checks POST to.")
    partitions_start: date = Field(date(2026, 1, 1), description="The first daily monitoring partition.")

    # -- the prediction API ------------------------------------------------------------------------------------
    api_host: str = "127.0.0.1"
    api_port: int = Field(8000, ge=1, le=65535)
    api_workers: int = Field(1, ge=1)
    model_poll_s: float = Field(30, gt=0, description="How often the API checks the champion alias.")
    metrics: bool = Field(
        True, description="false: no GET /metrics and no counting (the benchmark's baseline)."
    )
    telemetry: bool = Field(
        False,
        description="true: FastAPI's OpenTelemetry traces and metrics, to the globally configured providers.",
    )
    advice: bool = Field(
        True,
        description="false: no advice for flagged students (a school's policy; the benchmark's baseline).",
    )

    # -- who may write (docs/security.md) ----------------------------------------------------------------------
    api_keys_file: Path = Field(
        default_factory=lambda v: _home(v) / "api_keys.json",
        description="The key store: names, scopes and salted hashes, never tokens.",
    )
    public_predict: bool = Field(True, description="false: the predict routes need a key with `predict`.")
    rate_limit_public: str = Field("60/minute", description="Per address, for callers without a key.")
    rate_limit_keyed: str | None = Field(
        None, description="Per key; unset means keyed clients are unlimited."
    )
    rate_limit_storage: str = Field(
        "memory://",
        description="Where counters live (limits storage URI); redis:// shares them across workers.",
    )
    trusted_proxies: str | None = Field(
        None, description="Comma-separated proxy addresses whose X-Forwarded-For is believed; unset: none."
    )
    api_key: SecretStr | None = Field(
        None, description="The token ExamPass's own clients (simulator, benchmarks) send to the API."
    )
    log_retention_days: int | None = Field(
        None, ge=8, description="Delete ingested log day files older than this; unset keeps them forever."
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Keyword arguments (tests), then the environment; no .env file is read behind anyone's back."""
        return init_settings, _StrippedEnv(settings_cls)

    @field_validator(
        "home", "data_path", "dagster_home", "duckdb_path", "logs_dir", "reports_dir", "api_keys_file"
    )
    @classmethod
    def _absolute(cls, path: Path) -> Path:
        # Resolved once, against the directory the process started in, so a later chdir cannot move state.
        return path.expanduser().absolute()

    @field_validator("rate_limit_public", "rate_limit_keyed")
    @classmethod
    def _rate_limit(cls, text: str | None) -> str | None:
        # Checked at start-up with the limiter's own parser, so a typo stops the API instead of a request.
        if text is not None:
            try:
                limits.parse(text)
            except ValueError:
                raise ValueError("a rate limit such as '60/minute' or '1000/hour'") from None
        return text

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.pass_rate_min > self.pass_rate_max:
            raise ValueError(
                f"{threshold_env_var('pass_rate_min')}: {self.pass_rate_min} is above "
                f"{threshold_env_var('pass_rate_max')} {self.pass_rate_max}"
            )
        return self

    @classmethod
    def from_env(cls, **overrides: Any) -> Settings:
        """The settings of this process; a malformed variable raises SettingsError naming it."""
        try:
            return cls(**overrides)
        except ValidationError as exc:
            raise SettingsError(_describe(exc)) from None

    @classmethod
    def for_command(cls, parser: argparse.ArgumentParser) -> Settings:
        """The settings of a command-line tool: a malformed variable is a usage error naming it (exit 2).

        Every ExamPass command reads its settings through here, so each refuses a typo the same way.
        """
        try:
            return cls.from_env()
        except SettingsError as exc:
            parser.error(str(exc))

    # -- derived locations -------------------------------------------------------------------------------------
    @property
    def predictions_dir(self) -> Path:
        return self.logs_dir / "predictions"

    @property
    def feedback_dir(self) -> Path:
        return self.logs_dir / "feedback"

    @property
    def mlflow_artifacts_dir(self) -> Path:
        return self.home / "mlflow" / "artifacts"

    @property
    def mlflow_ui_url(self) -> str:
        """Where a person opens MLflow: the tracking server itself, or the local `mlflow ui` on port 5000."""
        uri = self.mlflow_tracking_uri
        return uri if uri.startswith("http") else "http://localhost:5000"

    def from_environment(self, name: str) -> str | None:
        """The variable a setting was read from, or None when it is a default or derived value."""
        return env_var(name, type(self).model_fields[name]) if name in self.model_fields_set else None

    def thresholds(self) -> dict[str, Any]:
        """Just the threshold values, e.g. to build the Dagster resource."""
        return {name: getattr(self, name) for name in ThresholdValues.model_fields}

    def ensure_dirs(self) -> None:
        """Create the local folders, owner-only; a no-op for the parts that configuration moved elsewhere.

        The home folder is set to 0700 even when it already existed: whatever an older version or another
        tool left inside with looser modes is then out of other users' reach too.
        """
        restrict_new_files()
        for path in (self.home, self.dagster_home, self.logs_dir, self.reports_dir, self.duckdb_path.parent):
            path.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.home.chmod(0o700)


def _describe(exc: ValidationError) -> str:
    """Every problem of one load, each as ``VARIABLE: reason``, so one run shows all typos at once."""
    parts = []
    for error in exc.errors():
        if error["type"] == "default_factory_not_called":  # a path derived from a field that itself failed
            continue
        loc = error.get("loc") or ()
        name = str(loc[0]) if loc else ""
        field = Settings.model_fields.get(name)
        if field is None:  # a cross-field rule (model validator) already names its variables
            parts.append(str(error.get("msg", "")).removeprefix("Value error, "))
            continue
        parts.append(f"{env_var(name, field)}: {_reason(dict(error))}")
    return "; ".join(parts)


def restrict_new_files() -> None:
    """Make everything this process creates from now on owner-only: files 0600, folders 0700.

    The logs hold every student's background and the warehouse and MLflow store hold the same data, so no
    other account on the machine may read them. A process-wide umask covers the files third-party code
    creates too (DuckDB, SQLite and its journals, MLflow artifacts, Dagster's storage), which no per-call
    mode could. Every ExamPass entry point calls this before it writes anything.
    """
    os.umask(0o077)


def _home(values: dict[str, Any]) -> Path:
    """EXAMPASS_HOME as already validated (fields are validated in order), for the paths derived from it."""
    home = values.get("home")
    return home if isinstance(home, Path) else Path(DEFAULT_HOME).absolute()
