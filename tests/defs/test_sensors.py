"""The retrain sensor, evaluated against a real instance whose check evaluations come from real monitoring runs."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import date

import dagster as dg

from exampass_pipeline.cli.runs import materialize_monitoring
from exampass_pipeline.contract.settings import Settings
from exampass_pipeline.defs.resources import Thresholds
from exampass_pipeline.defs.sensors import retrain_on_failed_checks

NORMAL_DAY = date(2026, 11, 10)
DRIFT_DAY = date(2026, 11, 11)


def evaluate(
    instance: dg.DagsterInstance, cursor: str | None = None, cooldown_s: float = 0
) -> tuple[object, str | None]:
    context = dg.build_sensor_context(
        instance=instance, cursor=cursor, resources={"thresholds": Thresholds(retrain_cooldown_s=cooldown_s)}
    )
    result = retrain_on_failed_checks(context)
    new_cursor = result.cursor if isinstance(result, dg.SensorResult) else context.cursor
    return result, new_cursor


def test_one_failure_requests_exactly_one_retrain(
    monitoring_home: Settings,
    write_days: Callable[[list[date], str, int], None],
) -> None:
    write_days([NORMAL_DAY], "none", 3)
    write_days([DRIFT_DAY], "lunch_shift", 4)
    with dg.instance_for_test() as instance:
        result, cursor = evaluate(instance)
        assert isinstance(result, dg.SkipReason)

        normal = materialize_monitoring(instance, monitoring_home, NORMAL_DAY.isoformat())
        verdicts = {e.check_name: e.passed for e in normal.get_asset_check_evaluations()}
        assert verdicts["no_data_drift"] is True
        result, cursor = evaluate(instance, cursor)
        assert isinstance(result, dg.SkipReason)

        drifted = materialize_monitoring(instance, monitoring_home, DRIFT_DAY.isoformat())
        assert {e.check_name: e.passed for e in drifted.get_asset_check_evaluations()}[
            "no_data_drift"
        ] is False
        result, cursor = evaluate(instance, cursor)
        assert isinstance(result, dg.SensorResult)
        assert len(result.run_requests) == 1
        request = result.run_requests[0]
        assert "drift_report:no_data_drift@2026-11-11" in request.tags["exampass/trigger"]
        assert drifted.run_id[:8] in request.run_key
        assert request.job_name in (None, "retrain_job")

        again, cursor = evaluate(instance, cursor)
        assert isinstance(again, dg.SkipReason), "the same failure must not request a second run"
        assert json.loads(cursor)["after"] > 0 and json.loads(cursor)["pending"] == []


def test_cooldown_holds_back_a_second_retrain(
    monitoring_home: Settings,
    write_days: Callable[[list[date], str, int], None],
) -> None:
    days = [DRIFT_DAY, date(2026, 11, 12)]
    write_days(days, "lunch_shift", 5)
    with dg.instance_for_test() as instance:
        materialize_monitoring(instance, monitoring_home, days[0].isoformat())
        first, cursor = evaluate(instance, cooldown_s=3600)
        assert isinstance(first, dg.SensorResult) and len(first.run_requests) == 1
        materialize_monitoring(instance, monitoring_home, days[1].isoformat())
        second, cursor = evaluate(instance, cursor, cooldown_s=3600)
        assert isinstance(second, dg.SkipReason)
        assert "cooldown" in str(second.skip_message) and "deferred, not forgotten" in str(
            second.skip_message
        )
        assert "2026-11-12" in str(second.skip_message)
        # Still inside the cooldown: still deferred, still remembered.
        third, cursor = evaluate(instance, cursor, cooldown_s=3600)
        assert isinstance(third, dg.SkipReason) and "2026-11-12" in str(third.skip_message)
        # The cooldown over, the deferred failure gets its retrain: one run, for that day only.
        fourth, cursor = evaluate(instance, cursor, cooldown_s=0)
        assert isinstance(fourth, dg.SensorResult) and len(fourth.run_requests) == 1
        assert "2026-11-12" in fourth.run_requests[0].tags["exampass/trigger"]
        assert "2026-11-11" not in fourth.run_requests[0].tags["exampass/trigger"]
        fifth, _ = evaluate(instance, cursor, cooldown_s=0)
        assert isinstance(fifth, dg.SkipReason)
