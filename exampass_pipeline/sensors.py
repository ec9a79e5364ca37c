"""The retraining sensor: a failed drift or quality check asks for exactly one retrain run.

It reads the latest evaluation of each watched check and remembers, in its cursor, the evaluation ids it has
already acted on; the run key is built from those ids, so a re-evaluated tick can never launch a second run for
the same failure. A cooldown stops a burst of failing days (a backfill) from queueing a retrain per day.
"""

import json
import time
from typing import Any

import dagster as dg

from exampass_pipeline.assets.monitoring import MODEL_QUALITY, NO_DATA_DRIFT, PREDICTION_DRIFT
from exampass_pipeline.jobs import retrain_job
from exampass_pipeline.resources import Thresholds
from exampass_pipeline.settings import threshold_env_var

WATCHED_CHECKS: tuple[dg.AssetCheckKey, ...] = (
    dg.AssetCheckKey(dg.AssetKey("drift_report"), NO_DATA_DRIFT),
    dg.AssetCheckKey(dg.AssetKey("drift_report"), PREDICTION_DRIFT),
    dg.AssetCheckKey(dg.AssetKey("quality_report"), MODEL_QUALITY),
)


def _failed(record: object) -> bool:
    """True when the check ran and did not pass (an execution error is not a verdict on the data)."""
    event = getattr(record, "event", None)
    evaluation = getattr(getattr(event, "dagster_event", None), "event_specific_data", None)
    return evaluation is not None and getattr(evaluation, "passed", True) is False


@dg.sensor(
    job=retrain_job,
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Retrain when no_data_drift, prediction_drift or model_quality fails.",
)
def retrain_on_failed_checks(
    context: dg.SensorEvaluationContext, thresholds: Thresholds
) -> dg.SensorResult | dg.SkipReason:
    cursor: dict[str, Any] = (
        json.loads(context.cursor) if context.cursor else {"seen": {}, "last_request_ts": 0.0}
    )
    seen: dict[str, int] = cursor["seen"]
    failures: list[str] = []
    for key in WATCHED_CHECKS:
        record = context.instance.get_latest_asset_check_evaluation_record(key)
        name = key.to_user_string()
        if record is None or record.id <= seen.get(name, 0):
            continue
        seen[name] = record.id
        if _failed(record):
            run = context.instance.get_run_by_id(record.run_id)
            partition = record.partition or (run.tags.get("dagster/partition") if run else None) or "-"
            failures.append(f"{name}@{partition}#{record.id}")
    now = time.time()
    if not failures:
        context.update_cursor(json.dumps(cursor))
        return dg.SkipReason("no new failed drift or quality check")
    waited = now - float(cursor["last_request_ts"])
    cooldown = thresholds.retrain_cooldown_s
    if waited < cooldown:
        context.update_cursor(json.dumps(cursor))
        return dg.SkipReason(
            f"new failure(s) {failures} inside the retrain cooldown ({waited:.0f}s of {cooldown:.0f}s; "
            f"{threshold_env_var('retrain_cooldown_s')})"
        )
    cursor["last_request_ts"] = now
    context.log.info(f"requesting a retrain for {failures}")
    return dg.SensorResult(
        run_requests=[
            dg.RunRequest(
                run_key="retrain:" + ",".join(sorted(failures)),
                tags={"exampass/trigger": ";".join(failures)[:200]},
            )
        ],
        cursor=json.dumps(cursor),
    )
