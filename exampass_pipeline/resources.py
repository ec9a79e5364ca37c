"""Resources: where state lives (from settings) and the thresholds that checks judge by.

Everything that differs between a laptop and production is a resource built from Settings, so the production
path (Postgres, an MLflow server, object storage) is a change of environment variables, never of code.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import dagster as dg
import mlflow
from dagster_duckdb import DuckDBResource
from dagster_duckdb_pandas import DuckDBPandasIOManager
from dagster_mlflow import mlflow_tracking
from dagster_mlflow.resources import CONFIG_SCHEMA
from mlflow.entities import RunStatus

from exampass_pipeline import registry
from exampass_pipeline.settings import Settings, env_number

WAREHOUSE_SCHEMA = "exampass"


class ExamPassPaths(dg.ConfigurableResource):
    """The folders outside the warehouse that assets read and write: the data file, logs and reports."""

    home: str
    data_path: str
    logs_dir: str
    reports_dir: str
    mlflow_ui_url: str = "http://localhost:5000"
    dagster_ui_url: str = "http://localhost:3000"

    @property
    def logs(self) -> Path:
        return Path(self.logs_dir)

    @property
    def reports(self) -> Path:
        return Path(self.reports_dir)

    def mlflow_run_url(self, experiment_id: str, run_id: str) -> str:
        return f"{self.mlflow_ui_url.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"

    def mlflow_version_url(self, model_name: str, version: str) -> str:
        return f"{self.mlflow_ui_url.rstrip('/')}/#/models/{model_name}/versions/{version}"


class Thresholds(dg.ConfigurableResource):
    """Every number an asset check judges by, in one place so operators can tune them without code.

    Each field can be set by the environment variable EXAMPASS_<FIELD> (see threshold_env_var), for the
    CLI, `make run` and the webserver alike.
    """

    min_student_rows: int = 500
    pass_rate_min: float = 0.70
    pass_rate_max: float = 0.97
    promotion_margin: float = 0.005
    drift_alpha: float = 0.05
    drift_min_rows: int = 50
    quality_alpha: float = 0.05
    quality_min_labelled: int = 50
    segment_max_gap: float = 0.20
    segment_min_fail: int = 5


def threshold_env_var(field: str) -> str:
    """The variable that overrides one Thresholds field, e.g. min_student_rows -> EXAMPASS_MIN_STUDENT_ROWS."""
    return f"EXAMPASS_{field.upper()}"


def thresholds_from_env() -> Thresholds:
    """The default thresholds with every field whose EXAMPASS_<FIELD> variable is set replaced by it."""
    overrides: dict[str, Any] = {}
    for name, field in Thresholds.model_fields.items():
        var = threshold_env_var(name)
        if os.environ.get(var, "").strip():
            overrides[name] = env_number(var, "", field.annotation)  # type: ignore[arg-type]
    return Thresholds(**overrides)


@dg.resource(config_schema=CONFIG_SCHEMA)
def mlflow_resource(context: dg.InitResourceContext) -> Iterator[Any]:
    """dagster-mlflow's ``mlflow_tracking``, plus the guarantee that its MLflow run always ends.

    dagster-mlflow ends the run only through an op hook, which asset materializations never fire, so a failed
    Dagster run would leave an MLflow run RUNNING forever. The training asset ends the run itself when it
    finishes; anything still open at teardown means training never completed, and is marked FAILED.
    """
    settings = Settings.from_env()
    tracking_uri = context.resource_config.get("mlflow_tracking_uri") or settings.mlflow_tracking_uri
    # Create the experiment ourselves first, so its artifacts land under EXAMPASS_HOME, not ./mlruns.
    registry.configure(replace(settings, mlflow_tracking_uri=tracking_uri))
    generator = mlflow_tracking.resource_fn(context)
    tracker = next(generator)
    started = mlflow.active_run()
    try:
        yield tracker
    finally:
        active = mlflow.active_run()
        if active is not None and started is not None and active.info.run_id == started.info.run_id:
            mlflow.set_tag("exampass.outcome", "dagster run ended before training completed")
            mlflow.end_run(status=RunStatus.to_string(RunStatus.FAILED))


def build_resources(settings: Settings | None = None) -> dict[str, Any]:
    """All resources for one settings object; tests pass their own temp-dir settings."""
    settings = settings or Settings.from_env()
    database = str(settings.duckdb_path)
    return {
        "io_manager": DuckDBPandasIOManager(database=database, schema=WAREHOUSE_SCHEMA),
        "warehouse": DuckDBResource(database=database),
        "mlflow": mlflow_resource.configured(
            {
                "experiment_name": registry.EXPERIMENT_NAME,
                "mlflow_tracking_uri": settings.mlflow_tracking_uri,
                "extra_tags": {"exampass.component": "training"},
            }
        ),
        "paths": ExamPassPaths(
            home=str(settings.home),
            data_path=str(settings.data_path),
            logs_dir=str(settings.logs_dir),
            reports_dir=str(settings.reports_dir),
            mlflow_ui_url=settings_mlflow_ui(settings),
        ),
        "thresholds": thresholds_from_env(),
        "alerter": _alerter(settings),
    }


def settings_mlflow_ui(settings: Settings) -> str:
    """Where a person opens MLflow: the tracking server itself, or the local `mlflow ui` on port 5000."""
    uri = settings.mlflow_tracking_uri
    return uri if uri.startswith("http") else "http://localhost:5000"


def _alerter(settings: Settings) -> Any:
    from exampass_pipeline.alerts import Alerter

    return Alerter(webhook_url=settings.alert_webhook or "")
