"""Resources: where state lives (from settings) and the thresholds that checks judge by.

Everything that differs between a laptop and production is a resource built from Settings, so the production
path (Postgres, an MLflow server, object storage) is a change of environment variables, never of code.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

import dagster as dg
import mlflow
from dagster_duckdb import DuckDBResource
from dagster_mlflow import mlflow_tracking
from dagster_mlflow.resources import CONFIG_SCHEMA
from mlflow import MlflowClient
from mlflow.entities import RunStatus
from pydantic import SecretStr

from exampass_pipeline import registry
from exampass_pipeline.alerts import Alerter
from exampass_pipeline.settings import Settings, ThresholdValues, restrict_new_files
from exampass_pipeline.warehouse import WarehouseIOManager

WAREHOUSE_SCHEMA = "exampass"


class ExamPassPaths(dg.ConfigurableResource):
    """The folders outside the warehouse that assets read and write: the data file, logs and reports."""

    home: str
    data_path: str
    logs_dir: str
    reports_dir: str
    mlflow_ui_url: str = "http://localhost:5000"
    dagster_ui_url: str = "http://localhost:3000"
    # EXAMPASS_LOG_RETENTION_DAYS; 0 keeps the log day files forever.
    log_retention_days: int = 0

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


class Thresholds(dg.ConfigurableResource, ThresholdValues):
    """Every number an asset check, the gate or the retraining sensor judges by, in one resource.

    The fields are declared once, in ``settings.ThresholdValues``; ``build_resources`` fills them from the
    settings, so each is set by EXAMPASS_<FIELD> for the CLI, `make run` and the webserver alike.
    """


class MlflowRegistry(dg.ConfigurableResource):
    """Where models are tracked and registered. The tracking URI may carry credentials, so it is an EnvVar
    whenever it came from the environment, and the Dagster UI never shows it."""

    tracking_uri: str
    registry_uri: str = ""
    artifacts_dir: str

    def connect(self) -> str:
        """Point this process at the store (MLflow's URIs are process-global); returns the experiment id."""
        return registry.connect(self.tracking_uri, self.registry_uri or None, Path(self.artifacts_dir))

    def client(self) -> MlflowClient:
        self.connect()
        return MlflowClient()


@dg.resource(config_schema=CONFIG_SCHEMA, required_resource_keys={"mlflow_registry"})
def mlflow_resource(context: dg.InitResourceContext) -> Iterator[Any]:
    """dagster-mlflow's ``mlflow_tracking``, plus the guarantee that its MLflow run always ends.

    dagster-mlflow ends the run only through an op hook, which asset materializations never fire, so a failed
    Dagster run would leave an MLflow run RUNNING forever. The training asset ends the run itself when it
    finishes; anything still open at teardown means training never completed, and is marked FAILED.
    """
    # Create the experiment ourselves first, so its artifacts land under EXAMPASS_HOME, not ./mlruns.
    context.resources.mlflow_registry.connect()
    # dagster-mlflow's resource function is a generator of the tracker; its declared type hides the argument.
    resource_fn = cast(Callable[[dg.InitResourceContext], Iterator[Any]], mlflow_tracking.resource_fn)
    generator = resource_fn(context)
    tracker = next(generator)
    started = mlflow.active_run()
    try:
        yield tracker
    finally:
        active = mlflow.active_run()
        if active is not None and started is not None and active.info.run_id == started.info.run_id:
            mlflow.set_tag("exampass.outcome", "dagster run ended before training completed")
            mlflow.end_run(status=RunStatus.to_string(RunStatus.FAILED))


def _secret(settings: Settings, name: str) -> Any:
    """A setting for a resource: an EnvVar when it came from the environment (the UI then shows the
    variable's name, never its value), else the plain value."""
    variable = settings.from_environment(name)
    if variable is not None:
        return dg.EnvVar(variable)
    value = getattr(settings, name)
    return value.get_secret_value() if isinstance(value, SecretStr) else (value or "")


def build_resources(settings: Settings | None = None) -> dict[str, Any]:
    """All resources for one settings object; tests pass their own temp-dir settings.

    Every process that wires the pipeline (code server, CLI, tests) writes student data from here on, so this
    is where its new files become owner-only.
    """
    settings = settings or Settings.from_env()
    restrict_new_files()
    database = str(settings.duckdb_path)
    tracking_uri = _secret(settings, "mlflow_tracking_uri")
    return {
        "io_manager": WarehouseIOManager(database=database, schema=WAREHOUSE_SCHEMA),
        "warehouse": DuckDBResource(database=database),
        "mlflow_registry": MlflowRegistry(
            tracking_uri=tracking_uri,
            registry_uri=settings.mlflow_registry_uri or "",
            artifacts_dir=str(settings.mlflow_artifacts_dir),
        ),
        "mlflow": mlflow_resource.configured(
            {
                "experiment_name": registry.EXPERIMENT_NAME,
                "mlflow_tracking_uri": (
                    {"env": tracking_uri.env_var_name}
                    if isinstance(tracking_uri, dg.EnvVar)
                    else tracking_uri
                ),
                "extra_tags": {"exampass.component": "training"},
            }
        ),
        "paths": ExamPassPaths(
            home=str(settings.home),
            data_path=str(settings.data_path),
            logs_dir=str(settings.logs_dir),
            reports_dir=str(settings.reports_dir),
            mlflow_ui_url=settings.mlflow_ui_url,
            log_retention_days=settings.log_retention_days or 0,
        ),
        "thresholds": Thresholds(**settings.thresholds()),
        "alerter": Alerter(webhook_url=_secret(settings, "alert_webhook")),
    }
