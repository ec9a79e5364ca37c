"""The retraining sensor: every failed drift or quality check evaluation leads to a retrain, none to two.

It reads runs that *ended* (success, failure or cancellation, from the run-status events after a storage-id
cursor) and, for each, the check evaluation events the run wrote. A run that has ended has written every
evaluation it ever will, so a verdict is never missed the way keying on a check's execution row missed it:
Dagster writes a PLANNED row when a run starts and updates that same row when the check evaluates, so a tick
that landed in between marked the row as seen and then ignored the failure that followed under it.

Failures are queued in the cursor. A cooldown stops a burst of failing days (a backfill) from queueing a
retrain per day: failures that arrive inside it wait in the queue, the tick's skip reason says so and when
the retrain will be asked for, and the first tick after the cooldown requests one retrain for all of them.
The run key is built from the failed runs' ids, so a re-evaluated tick never launches a second run.
"""

import json
import os
import time
from datetime import UTC, datetime
from typing import Any, Final

import dagster as dg

from exampass_pipeline.contract.settings import threshold_env_var
from exampass_pipeline.defs import jobs
from exampass_pipeline.defs.assets.monitoring import MODEL_QUALITY, NO_DATA_DRIFT, PREDICTION_DRIFT
from exampass_pipeline.defs.resources import Thresholds

WATCHED_CHECKS: tuple[dg.AssetCheckKey, ...] = (
    dg.AssetCheckKey(dg.AssetKey("drift_report"), NO_DATA_DRIFT),
    dg.AssetCheckKey(dg.AssetKey("drift_report"), PREDICTION_DRIFT),
    dg.AssetCheckKey(dg.AssetKey("quality_report"), MODEL_QUALITY),
)
ENDED: Final = (
    dg.DagsterEventType.RUN_SUCCESS,
    dg.DagsterEventType.RUN_FAILURE,
    dg.DagsterEventType.RUN_CANCELED,
)
SENSOR_INTERVAL_ENV: Final = "EXAMPASS_SENSOR_INTERVAL_S"
DEFAULT_SENSOR_INTERVAL_S: Final = 30


def sensor_interval_s() -> int:
    """How often the daemon ticks the sensor: EXAMPASS_SENSOR_INTERVAL_S, default 30 s.

    Read when the code location loads, because Dagster takes the interval as a number at definition time.
    The fault tests run the real daemon at several tick timings with it; a bad value stops the load naming it.
    """
    raw = os.environ.get(SENSOR_INTERVAL_ENV, "").strip()
    if not raw:
        return DEFAULT_SENSOR_INTERVAL_S
    if not raw.isdigit() or int(raw) < 1:
        raise ValueError(f"{SENSOR_INTERVAL_ENV} must be a whole number of seconds >= 1, got {raw!r}")
    return int(raw)


# Storage ids re-read on every tick: with Postgres, a transaction that took a lower id can commit after one
# that took a higher id, so the cursor alone could step over it. Runs already read are remembered by id.
LOOKBACK_IDS = 500
BATCH = 500


def _ended_runs(instance: dg.DagsterInstance, after: int, seen: set[str]) -> tuple[list[str], int]:
    """Ids of the runs that ended since ``after`` (and were not read before), and the highest storage id."""
    runs: list[tuple[int, str]] = []
    newest = after
    for event_type in ENDED:
        start = max(0, after - LOOKBACK_IDS)
        while True:
            found = instance.fetch_run_status_changes(
                dg.RunStatusChangeRecordsFilter(event_type=event_type, after_storage_id=start),
                limit=BATCH,
                ascending=True,
            ).records
            for record in found:
                newest = max(newest, record.storage_id)
                if record.run_id not in seen:
                    runs.append((record.storage_id, record.run_id))
            if len(found) < BATCH:
                break
            start = found[-1].storage_id
    return [run_id for _, run_id in sorted(runs)], newest


def _failed_checks(instance: dg.DagsterInstance, run_id: str) -> list[str]:
    """The watched checks that ran in this run and did not pass, as ``check@partition#run``."""
    labels: list[str] = []
    cursor = None
    run = instance.get_run_by_id(run_id)
    run_partition = run.tags.get("dagster/partition") if run is not None else None
    while True:
        page = instance.get_records_for_run(
            run_id, cursor=cursor, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION, limit=BATCH
        )
        for record in page.records:
            event = record.event_log_entry.dagster_event
            evaluation = event.event_specific_data if event is not None else None
            key = getattr(evaluation, "asset_check_key", None)
            # An execution error is not a verdict on the data: only a check that ran and did not pass counts.
            if key in WATCHED_CHECKS and getattr(evaluation, "passed", True) is False:
                partition = getattr(evaluation, "partition", None) or run_partition or "-"
                labels.append(f"{key.to_user_string()}@{partition}#{run_id[:8]}")
        if not page.has_more:
            return labels
        cursor = page.cursor


def _cursor(text: str | None) -> dict[str, Any]:
    cursor: dict[str, Any] = json.loads(text) if text else {}
    cursor.setdefault("after", 0)
    cursor.setdefault("seen_runs", [])
    cursor.setdefault("pending", [])
    cursor.setdefault("last_request_ts", 0.0)
    return cursor


@dg.sensor(
    job=jobs.retrain_job,
    minimum_interval_seconds=sensor_interval_s(),
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Retrain when no_data_drift, prediction_drift or model_quality fails.",
)
def retrain_on_failed_checks(
    context: dg.SensorEvaluationContext, thresholds: Thresholds
) -> dg.SensorResult | dg.SkipReason:
    cursor = _cursor(context.cursor)
    # [storage id, run id] pairs, so the ones the look-back window has passed can be forgotten.
    seen_runs: dict[str, int] = {run: int(sid) for sid, run in cursor["seen_runs"]}
    ended, newest = _ended_runs(context.instance, int(cursor["after"]), set(seen_runs))
    pending: list[str] = list(cursor["pending"])
    for run_id in ended:
        seen_runs[run_id] = newest
        pending.extend(_failed_checks(context.instance, run_id))
    cursor.update(
        after=newest,
        seen_runs=[[sid, run] for run, sid in seen_runs.items() if sid > newest - LOOKBACK_IDS],
        pending=pending,
    )
    if not pending:
        context.update_cursor(json.dumps(cursor))
        return dg.SkipReason("no new failed drift or quality check")
    now = time.time()
    cooldown = thresholds.retrain_cooldown_s
    waited = now - float(cursor["last_request_ts"])
    if waited < cooldown:
        context.update_cursor(json.dumps(cursor))
        due = datetime.fromtimestamp(float(cursor["last_request_ts"]) + cooldown, UTC).isoformat(
            timespec="seconds"
        )
        return dg.SkipReason(
            f"failure(s) {pending} deferred, not forgotten: inside the retrain cooldown ({waited:.0f}s of "
            f"{cooldown:.0f}s, {threshold_env_var('retrain_cooldown_s')}); one retrain is requested for all of "
            f"them at the first tick after {due}"
        )
    cursor.update(last_request_ts=now, pending=[])
    context.log.info(f"requesting a retrain for {pending}")
    runs = sorted({label.rsplit("#", 1)[-1] for label in pending})
    return dg.SensorResult(
        run_requests=[
            dg.RunRequest(
                run_key="retrain:" + ",".join(runs) + f"@{newest}",
                tags={"exampass/trigger": ";".join(pending)[:200]},
            )
        ],
        cursor=json.dumps(cursor),
    )
