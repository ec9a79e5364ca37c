"""The nightly schedule re-monitors the last week, because feedback arrives up to 7 days late."""

from __future__ import annotations

from datetime import UTC, datetime

import dagster as dg

from exampass_pipeline.defs.schedules import nightly_monitoring


def test_nightly_run_requests_cover_the_last_seven_days_once() -> None:
    context = dg.build_schedule_context(scheduled_execution_time=datetime(2026, 11, 27, 2, 15, tzinfo=UTC))
    requests = nightly_monitoring(context)
    keys = [r.partition_key for r in requests]
    assert keys == [f"2026-11-{d:02d}" for d in range(20, 27)]
    assert len({r.run_key for r in requests}) == 7
    again = nightly_monitoring(context)
    assert [r.run_key for r in again] == [r.run_key for r in requests], "a re-evaluated tick must dedupe"


def test_days_before_the_first_partition_are_skipped() -> None:
    context = dg.build_schedule_context(scheduled_execution_time=datetime(2026, 1, 3, 2, 15, tzinfo=UTC))
    keys = [r.partition_key for r in nightly_monitoring(context)]
    assert keys == ["2026-01-01", "2026-01-02"]
