"""Schedules: monitoring re-runs the last week every night, because feedback arrives up to 7 days late."""

from datetime import timedelta

import dagster as dg

from exampass_pipeline.contract.predlog import FEEDBACK_WINDOW_DAYS
from exampass_pipeline.defs import jobs
from exampass_pipeline.defs.partitions import daily_partitions


@dg.schedule(
    cron_schedule="15 2 * * *",
    job=jobs.monitoring_job,
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
)
def nightly_monitoring(context: dg.ScheduleEvaluationContext) -> list[dg.RunRequest]:
    """One run per day of the last week; the run key makes a re-evaluated tick idempotent."""
    today = context.scheduled_execution_time.date()
    valid = set(daily_partitions.get_partition_keys(current_time=context.scheduled_execution_time))
    requests = []
    for back in range(FEEDBACK_WINDOW_DAYS, 0, -1):
        day = (today - timedelta(days=back)).isoformat()
        if day in valid:
            requests.append(dg.RunRequest(run_key=f"{today.isoformat()}:{day}", partition_key=day))
    return requests
