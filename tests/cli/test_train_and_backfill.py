"""Headless commands refuse bad arguments with a usage error naming the argument, before touching any state."""

from __future__ import annotations

from datetime import date, timedelta

import pytest

from exampass_pipeline.cli.backfill import backfill_main
from exampass_pipeline.cli.train import train_main
from exampass_pipeline.contract.settings import Settings
from exampass_pipeline.defs.partitions import daily_partitions

LAST_COMPLETE_DAY = date.fromisoformat(daily_partitions.get_partition_keys()[-1])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["2026-13-01", "2026-13-02"], "argument start: '2026-13-01' is not a date (YYYY-MM-DD)"),
        (["2026-11-01", "next tuesday"], "argument end: 'next tuesday' is not a date (YYYY-MM-DD)"),
        (["2026-11-05", "2026-11-01"], "end: 2026-11-01 is before start 2026-11-05"),
        (["1990-01-01", "2026-01-02"], "start/end: 1990-01-01 is not a daily partition"),
        (
            [
                (LAST_COMPLETE_DAY - timedelta(days=1)).isoformat(),
                (LAST_COMPLETE_DAY + timedelta(days=1)).isoformat(),
            ],
            f"start/end: {LAST_COMPLETE_DAY + timedelta(days=1)} is not a daily partition",
        ),
    ],
)
def test_backfill_refuses_a_bad_range_before_any_run(
    exampass_home: Settings, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        backfill_main([*args, "--no-retrain"])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
    # Refused up front: no day was re-monitored, so no warehouse and no Dagster run storage exist.
    assert not exampass_home.duckdb_path.exists()
    assert not (exampass_home.dagster_home / "history").exists()


def test_train_refuses_a_malformed_threshold_variable_before_any_run(
    exampass_home: Settings, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EXAMPASS_PASS_RATE_MIN", "seventy")
    with pytest.raises(SystemExit) as exit_info:
        train_main([])
    assert exit_info.value.code == 2
    assert "EXAMPASS_PASS_RATE_MIN: 'seventy' is not a number" in capsys.readouterr().err
    assert not exampass_home.duckdb_path.exists()
