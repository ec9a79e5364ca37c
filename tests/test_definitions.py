"""The code location loads the way the webserver loads it: from workspace.yaml, in a separate process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
from support import REPO_ROOT

from exampass_pipeline.contract.settings import Settings

EXPECTED_ASSETS = {
    "raw_students",
    "students",
    "train_split",
    "validation_split",
    "test_split",
    "pass_classifier",
    "model_evaluation",
    "prediction_batches",
    "drift_report",
    "quality_report",
    "trusted_set",
    "labelled_production",
    "feedback_quarantine",
    "feedback_screening",
    "alerts",
}


def test_workspace_yaml_loads_the_code_location(exampass_home: Settings) -> None:
    dagster = Path(sys.executable).parent / "dagster"
    result = subprocess.run(
        [str(dagster), "definitions", "validate", "-w", "workspace.yaml"],
        cwd=REPO_ROOT,
        env={**os.environ},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "exampass" in result.stdout + result.stderr


def test_dg_check_defs_loads_the_project(exampass_home: Settings) -> None:
    """Dagster's project CLI finds the code location through [tool.dg] and definitions.py on top of defs/."""
    result = subprocess.run(
        [str(Path(sys.executable).parent / "dg"), "check", "defs"],
        cwd=REPO_ROOT,
        env={**os.environ, "VIRTUAL_ENV": str(Path(sys.executable).parents[1])},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "All definitions loaded successfully" in result.stdout + result.stderr


def test_definitions_wire_every_asset_check_job_sensor_and_schedule(exampass_home: Settings) -> None:
    from exampass_pipeline.definitions import build_defs

    defs = build_defs(exampass_home)
    graph = defs.resolve_asset_graph()
    assert {k.to_user_string() for k in graph.get_all_asset_keys()} == EXPECTED_ASSETS
    check_names = {k.name for k in graph.asset_check_keys}
    assert {
        "no_data_drift",
        "prediction_drift",
        "model_quality",
        "segment_quality",
        "students_schema",
        "students_no_nulls",
        "students_min_rows",
        "students_pass_rate",
        "splits_disjoint_and_sized",
        "trusted_set_is_curated",
        "feedback_plausibility",
    } == check_names
    jobs = {job.name for job in defs.resolve_all_job_defs()} - {"__ASSET_JOB"}
    assert jobs == {"training_job", "retrain_job", "monitoring_job"}
    sensor = defs.resolve_sensor_def("retrain_on_failed_checks")
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING
    assert defs.resolve_schedule_def("nightly_monitoring").cron_schedule == "15 2 * * *"
    monitoring = defs.resolve_job_def("monitoring_job")
    assert isinstance(monitoring.partitions_def, dg.DailyPartitionsDefinition)
