"""Running the pipeline headlessly: the instance the CLIs use, and one in-process run of each job.

The CLIs materialize into the real Dagster instance (DAGSTER_HOME), so their runs, checks and metadata show up
in the UI exactly as if they had been launched there; each run takes the warehouse's writer lock like every
other run (``io.warehouse.WriterLock``), so a CLI run and a scheduled run wait for each other instead of
fighting over the DuckDB file.
"""

from __future__ import annotations

import os
import shutil
import sys
import warnings
from pathlib import Path

import dagster as dg

from exampass_pipeline.contract import schema
from exampass_pipeline.contract.settings import Settings

REPO_ROOT = Path(__file__).resolve().parents[2]
# Headless runs print what happened at the end; the step-by-step DEBUG stream stays in the Dagster UI.
CONSOLE_WARNINGS_ONLY = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}


def quiet_beta_warnings() -> None:
    # dagster-mlflow is "beta" and says so on every import and run; on a terminal that drowns the metrics.
    warnings.filterwarnings("ignore", category=dg.BetaWarning)


def instance_for(settings: Settings) -> dg.DagsterInstance:
    """The project-local instance; seeded with the repo's dagster.yaml the first time."""
    os.environ.setdefault("DAGSTER_HOME", str(settings.dagster_home))  # what DagsterInstance.get() reads
    home = settings.dagster_home
    home.mkdir(parents=True, exist_ok=True)
    config = home / "dagster.yaml"
    if not config.exists() and (REPO_ROOT / "dagster.yaml").exists():
        shutil.copy(REPO_ROOT / "dagster.yaml", config)
    return dg.DagsterInstance.get()


def materialize_training(
    instance: dg.DagsterInstance,
    settings: Settings,
    *,
    selection: dg.AssetSelection | None = None,
    candidate_set: str = "default",
    tags: dict[str, str] | None = None,
) -> dg.ExecuteInProcessResult:
    from exampass_pipeline.definitions import materializable
    from exampass_pipeline.defs.jobs import TRAINING
    from exampass_pipeline.defs.resources import build_resources

    return dg.materialize(
        materializable(),
        selection=selection or TRAINING,
        instance=instance,
        resources=build_resources(settings),
        run_config={
            "ops": {"pass_classifier": {"config": {"candidate_set": candidate_set}}},
            **CONSOLE_WARNINGS_ONLY,
        },
        tags=tags,
        raise_on_error=False,
    )


def materialize_monitoring(
    instance: dg.DagsterInstance, settings: Settings, partition_key: str
) -> dg.ExecuteInProcessResult:
    from exampass_pipeline.definitions import materializable
    from exampass_pipeline.defs.jobs import MONITORING
    from exampass_pipeline.defs.resources import build_resources

    return dg.materialize(
        materializable(),
        selection=MONITORING,
        partition_key=partition_key,
        instance=instance,
        resources=build_resources(settings),
        run_config=CONSOLE_WARNINGS_ONLY,
        raise_on_error=False,
    )


def print_training(result: dg.ExecuteInProcessResult) -> int:
    if not result.success:
        for event in result.all_events:
            if event.is_step_failure and event.step_failure_data and event.step_failure_data.error:
                print(
                    f"FAILED {event.step_key}: {event.step_failure_data.error.message.strip()}",
                    file=sys.stderr,
                )
        for evaluation in result.get_asset_check_evaluations():
            if not evaluation.passed:
                print(f"CHECK FAILED {evaluation.check_name}: {evaluation.description}", file=sys.stderr)
        return 1
    for mat in result.get_asset_materialization_events():
        if mat.asset_key == dg.AssetKey("model_evaluation"):
            meta = mat.materialization.metadata
            print(
                f"model version {meta['model_version'].value}: {meta['decision'].value} ({meta['reason'].value})"
            )
            for name in schema.TEST_METRICS:
                print(f"  {name:24s} {meta[name].value:.4f}")
    return 0
