"""The ExamPass code location: the only place where assets, checks, jobs, sensors and resources meet."""

from __future__ import annotations

import dagster as dg

from exampass_pipeline.assets.evaluation import model_evaluation
from exampass_pipeline.assets.ingest import prediction_batches, raw_students
from exampass_pipeline.assets.monitoring import drift_report, quality_report
from exampass_pipeline.assets.students import students
from exampass_pipeline.assets.training import pass_classifier, splits
from exampass_pipeline.checks import (
    splits_disjoint_and_sized,
    students_min_rows,
    students_no_nulls,
    students_pass_rate,
    students_schema,
    trusted_set_is_curated,
)
from exampass_pipeline.jobs import monitoring_job, retrain_job, training_job
from exampass_pipeline.resources import build_resources
from exampass_pipeline.schedules import nightly_monitoring
from exampass_pipeline.sensors import retrain_on_failed_checks
from exampass_pipeline.settings import Settings

ASSETS = [
    raw_students,
    students,
    splits,
    pass_classifier,
    model_evaluation,
    prediction_batches,
    drift_report,
    quality_report,
]
ASSET_CHECKS = [
    students_schema,
    students_no_nulls,
    students_min_rows,
    students_pass_rate,
    splits_disjoint_and_sized,
    trusted_set_is_curated,
]


def build_defs(settings: Settings | None = None) -> dg.Definitions:
    """Definitions for one settings object; the module-level `defs` uses the process environment.

    Runs execute in process: every asset writes the one DuckDB file, which admits a single writer process.
    """
    return dg.Definitions(
        assets=ASSETS,
        asset_checks=ASSET_CHECKS,
        jobs=[training_job, retrain_job, monitoring_job],
        schedules=[nightly_monitoring],
        sensors=[retrain_on_failed_checks],
        resources=build_resources(settings),
        executor=dg.in_process_executor,
    )


defs = build_defs()
