"""Monitoring partitions for real: Evidently reports on disk, trend tables in DuckDB, checks and their alerts."""

from __future__ import annotations

from collections.abc import Callable
from datetime import date
from pathlib import Path

import dagster as dg
import duckdb

from exampass_pipeline.cli.backfill import backfill_main
from exampass_pipeline.cli.runs import materialize_monitoring
from exampass_pipeline.contract.settings import Settings

DAYS = [date(2026, 11, 3), date(2026, 11, 4)]


def checks_of(result: dg.ExecuteInProcessResult) -> dict[str, dg.AssetCheckEvaluation]:
    return {e.check_name: e for e in result.get_asset_check_evaluations()}


def test_ordinary_day_passes_and_drifted_day_fails_with_reports_and_alerts(
    monitoring_home: Settings, write_days: Callable[[list[date], str, int], None]
) -> None:
    write_days(DAYS[:1], "none", 11)
    write_days(DAYS[1:], "lunch_shift", 12)
    with dg.instance_for_test() as instance:
        ordinary = checks_of(materialize_monitoring(instance, monitoring_home, DAYS[0].isoformat()))
        drifted_run = materialize_monitoring(instance, monitoring_home, DAYS[1].isoformat())
        drifted = checks_of(drifted_run)
        assert drifted_run.success
        # a re-run of the same day must replace, not append
        materialize_monitoring(instance, monitoring_home, DAYS[1].isoformat())

    assert ordinary["no_data_drift"].passed
    assert ordinary["model_quality"].passed
    assert set(ordinary) == {"no_data_drift", "prediction_drift", "model_quality", "segment_quality"}
    assert not drifted["no_data_drift"].passed
    assert "lunch" in str(drifted["no_data_drift"].description)
    assert drifted["segment_quality"].severity == dg.AssetCheckSeverity.WARN

    for kind in ("drift", "quality"):
        for day in DAYS:
            html = monitoring_home.reports_dir / kind / f"{day.isoformat()}.html"
            assert html.stat().st_size > 10_000, f"{html} should be a real Evidently report"

    with duckdb.connect(str(monitoring_home.duckdb_path), read_only=True) as conn:
        per_day = conn.execute(
            "SELECT partition_date, count(*), count(DISTINCT metric) FROM exampass.drift_report GROUP BY 1 ORDER BY 1"
        ).fetchall()
        assert [row[0] for row in per_day] == DAYS
        assert all(row[1] == row[2] for row in per_day), "each metric once per day, even after a re-run"
        quality_days = conn.execute(
            "SELECT DISTINCT partition_date FROM exampass.quality_report ORDER BY 1"
        ).fetchall()
        assert [row[0] for row in quality_days] == DAYS
        alerts = conn.execute(
            "SELECT check_name, partition_key, severity, delivery_status FROM exampass.alerts "
            "WHERE check_name = 'no_data_drift'"
        ).fetchall()
    assert ("no_data_drift", DAYS[1].isoformat(), "ERROR", "not_configured") in alerts
    assert all(a[1] != DAYS[0].isoformat() for a in alerts)


def test_backfill_command_reingests_a_range_once(
    monitoring_home: Settings, write_days: Callable[[list[date], str, int], None]
) -> None:
    write_days(DAYS, "none", 21)
    args = [DAYS[0].isoformat(), DAYS[-1].isoformat(), "--no-retrain"]
    assert backfill_main(args) == 0
    assert backfill_main(args) == 0
    with duckdb.connect(str(monitoring_home.duckdb_path), read_only=True) as conn:
        rows = conn.execute(
            "SELECT partition_date, count(*) FROM exampass.prediction_batches GROUP BY 1 ORDER BY 1"
        ).fetchall()
    assert rows == [(DAYS[0], 200), (DAYS[1], 200)]
    assert Path(monitoring_home.dagster_home).exists()
