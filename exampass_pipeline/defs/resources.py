"""Resources: where state lives (from settings) and the thresholds that checks judge by.

Everything that differs between a laptop and production is a resource built from Settings, so the production
path (Postgres, an MLflow server, object storage) is a change of environment variables, never of code.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, cast

import dagster as dg
import mlflow
import pandas as pd
from dagster_duckdb import DuckDBIOManager, DuckDBResource
from dagster_duckdb_pandas import DuckDBPandasTypeHandler
from dagster_mlflow import mlflow_tracking
from dagster_mlflow.resources import CONFIG_SCHEMA
from mlflow import MlflowClient
from mlflow.entities import RunStatus
from pydantic import PrivateAttr, SecretStr

from exampass_pipeline.contract import registry
from exampass_pipeline.contract.settings import Settings, ThresholdValues, restrict_new_files
from exampass_pipeline.io import alerts
from exampass_pipeline.io.warehouse import WAREHOUSE_SCHEMA, WriterLock, follow_columns

__all__ = ["WAREHOUSE_SCHEMA"]


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


class EvolvingPandasTypeHandler(DuckDBPandasTypeHandler):
    """DuckDBPandasTypeHandler, after making an existing table's columns those of the frame, in its order.

    dagster-duckdb-pandas inserts positionally (``insert into t select * from obj``) into a table created by
    the first write. When a release adds a column (``client`` beside ``source``, say), every existing warehouse
    would then refuse the next materialization; ``io.warehouse.follow_columns`` adds the missing columns first.
    ``table_slice`` is dagster's ``TableSlice``, which has no public import path, so it is typed as Any here.
    """

    def handle_output(
        self, context: dg.OutputContext, table_slice: Any, obj: pd.DataFrame, connection: Any
    ) -> None:
        if not obj.empty:
            follow_columns(connection, f"{table_slice.schema}.{table_slice.table}", obj)
        super().handle_output(context, table_slice, obj, connection)


class WarehouseIOManager(DuckDBIOManager):
    """Every asset's DataFrame as a DuckDB table in the one warehouse file, written by one run at a time.

    Every asset stores its output through this IO manager, so every run that writes the warehouse
    initialises it; that is where the run takes the writer lock, released when the run's resources are
    torn down (the code location executes runs in one process).
    """

    lock_timeout_s: float = 3600.0
    _lock: WriterLock | None = PrivateAttr(default=None)

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        lock = WriterLock(self.database)
        run = context.run_id or "no run"
        log = context.log.info if context.log is not None else print
        lock.acquire(f"pid {os.getpid()}, run {run}", self.lock_timeout_s, log)
        self._lock = lock

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    @staticmethod
    def type_handlers() -> Sequence[Any]:
        return [EvolvingPandasTypeHandler()]

    @staticmethod
    def default_load_type() -> type | None:
        return pd.DataFrame


SEVERITY = {dg.AssetCheckSeverity.ERROR: "ERROR", dg.AssetCheckSeverity.WARN: "WARN"}
# The alerts table as an asset of the graph (defs/checks.py declares it); every alert records a materialization.
ALERTS_ASSET = "alerts"


def _jsonable(metadata: dict[str, Any]) -> dict[str, Any]:
    return {k: (v.value if isinstance(v, dg.MetadataValue) else v) for k, v in metadata.items()}


class Alerter(dg.ConfigurableResource):
    """Records alerts in the warehouse and delivers them (``io.alerts``); webhook_url empty means record only."""

    webhook_url: str = ""
    retries: int = 3
    backoff_s: float = 0.5
    timeout_s: float = 5.0

    def raise_alert(
        self,
        warehouse: DuckDBResource,
        *,
        check_name: str,
        asset: str,
        partition_key: str | None,
        severity: str,
        message: str,
        figures: dict[str, Any],
        context: Any = None,
    ) -> dict[str, Any]:
        """Deliver and record one alert; with a run's ``context``, also say so in its log and record a
        materialization of the ``alerts`` table, so the asset graph shows when and by which run it grew."""
        alert = alerts.new_alert(
            check_name=check_name,
            asset=asset,
            partition_key=partition_key,
            severity=severity,
            message=message,
            figures=figures,
        )
        webhook = alerts.Webhook(self.webhook_url, self.retries, self.backoff_s, self.timeout_s)
        status, attempts, error = webhook.deliver(alerts.slack_payload(alert))
        alert.update(delivery_status=status, delivery_attempts=attempts, delivery_error=error)
        with warehouse.get_connection() as conn:
            alerts.store(conn, alert)
        if context is not None:
            note = f"alert {check_name} ({severity}) recorded; webhook: {status}"
            (context.log.warning if status == "failed" else context.log.info)(
                note + (f" ({error})" if error else "")
            )
            getattr(context, "op_execution_context", context).log_event(
                dg.AssetMaterialization(
                    asset_key=ALERTS_ASSET,
                    partition=None,
                    metadata={
                        "check": check_name,
                        "asset": asset,
                        "partition": partition_key or "-",
                        "severity": severity,
                        "delivery": status,
                    },
                )
            )
        return alert

    def check_result(
        self,
        context: dg.OpExecutionContext | dg.AssetCheckExecutionContext | dg.AssetExecutionContext,
        warehouse: DuckDBResource,
        *,
        asset: str,
        check_name: str,
        passed: bool,
        message: str,
        metadata: dict[str, Any],
        severity: dg.AssetCheckSeverity = dg.AssetCheckSeverity.ERROR,
        partition_key: str | None = None,
    ) -> dg.AssetCheckResult:
        """The check's result; when it failed, the alert is recorded and delivered before it is returned.

        Every asset check of ExamPass ends here, so a failed check is always an alert too.
        """
        if not passed:
            self.raise_alert(
                warehouse,
                check_name=check_name,
                asset=asset,
                partition_key=partition_key,
                severity=SEVERITY[severity],
                message=message,
                figures=_jsonable(metadata),
                context=context,
            )
        return dg.AssetCheckResult(
            asset_key=asset,
            check_name=check_name,
            passed=passed,
            severity=severity,
            description=message,
            metadata={**metadata, "message": message},
        )


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


@dg.definitions
def resources() -> dg.Definitions:
    """The resources of this process's environment (``definitions.build_defs`` binds other settings)."""
    return dg.Definitions(resources=build_resources())
