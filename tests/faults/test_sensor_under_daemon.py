"""The retrain sensor ticked by the real `dagster-daemon`: seven queued monitoring runs, one drifting day.

The unit tests (tests/defs/test_sensors.py) evaluate the sensor by hand between runs. Here the daemon ticks it
on its own clock while the queued run coordinator starts the runs one by one, each in its own process, so
ticks land wherever they land: before a run's check evaluations, between them, after its end. Promised:
exactly one retrain per failing day, whatever the timing. Three timings (ticks every 1, 3 and 7 s) with the
drifting day last, in the middle and first of the seven. The cooldown is 0, so a second request would launch
a second run instead of being deferred.

Real parts: `dagster-daemon run` on the repository's workspace, a SQLite Dagster instance, `dagster job
backfill` to queue the seven runs, the real monitoring and retrain jobs on a tiny warehouse (200 rows a day).
Expensive (about ten runs' process start-ups per timing): marked ``slow``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
from api_support import use_home
from faults_support import BIN, REPO, running_daemon, tail, wait_for

from exampass_pipeline.cli import simulate
from exampass_pipeline.contract import registry
from exampass_pipeline.contract.settings import threshold_env_var
from exampass_pipeline.defs.sensors import SENSOR_INTERVAL_ENV, WATCHED_CHECKS, sensor_interval_s

DAYS = [date(2026, 11, 1) + timedelta(days=i) for i in range(13)]
DRIFT_DAY = DAYS[6]
# (tick interval in seconds, the seven days queued): the drifting day comes last, in the middle, first.
TIMINGS = [(1, DAYS[0:7]), (3, DAYS[3:10]), (7, DAYS[6:13])]
SETTLED_WITHIN_S = 1200.0  # eight runs one after the other, each its own process, on 2 busy cores
TICKS_AFTER_LAST_RUN = 3  # ticks that must see every run ended before "exactly one" is believed
SENSOR = "retrain_on_failed_checks"


@pytest.fixture(scope="module")
def monitored_template(
    tmp_path_factory: pytest.TempPathFactory, trained_store: Path, data_file: Path
) -> Path:
    """A home with the trained warehouse, its own copy of the registry and thirteen days of labelled logs."""
    home = tmp_path_factory.mktemp("sensor-daemon") / "exampass"
    (home / "mlflow").mkdir(parents=True)
    shutil.copy(trained_store / "warehouse.duckdb", home / "warehouse.duckdb")
    shutil.copy(trained_store / "mlflow" / "mlflow.db", home / "mlflow" / "mlflow.db")
    with use_home(home, EXAMPASS_DATA=str(data_file)) as settings:
        registry.configure(settings)
        champion = registry.load_champion()
        for days, scenario, seed in (
            ([d for d in DAYS if d != DRIFT_DAY], "none", 3),
            ([DRIFT_DAY], "lunch_shift", 4),
        ):
            simulate.write_history(
                settings.logs_dir,
                champion,
                days,
                200,
                scenario,
                feedback_rate=1.0,
                feedback_delay_days=0,
                seed=seed,
                progress=False,
            )
    return home


def _failed_watched_checks(instance: dg.DagsterInstance, run_id: str) -> list[str]:
    failed = []
    for entry in instance.all_logs(run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION):
        evaluation: Any = entry.dagster_event.event_specific_data if entry.dagster_event else None
        if evaluation is not None and evaluation.asset_check_key in WATCHED_CHECKS and not evaluation.passed:
            failed.append(evaluation.asset_check_key.to_user_string())
    return failed


def _sensor_ticks(instance: dg.DagsterInstance) -> list[Any]:
    states = [s for s in instance.all_instigator_state() if s.instigator_name == SENSOR]
    return [t for s in states for t in instance.get_ticks(s.instigator_origin_id, s.selector_id)]


def _settled(dagster_home: Path, queued: int) -> list[dg.DagsterRun] | None:
    """Every run, once the queued ones, the retrain and a few ticks after the last of them have all ended."""
    with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
        runs = list(instance.get_runs())
        if len(runs) <= queued or not all(run.is_finished for run in runs):
            return None
        ended = max(instance.get_run_record_by_id(run.run_id).end_time or 0.0 for run in runs)  # type: ignore[union-attr]
        later = [t for t in _sensor_ticks(instance) if t.timestamp > ended]
    return runs if len(later) >= TICKS_AFTER_LAST_RUN else None


@pytest.mark.slow
@pytest.mark.parametrize(("interval_s", "days"), TIMINGS, ids=[f"every-{t}s" for t, _ in TIMINGS])
def test_seven_queued_runs_one_drifting_day_exactly_one_retrain(
    monitored_template: Path, tmp_path: Path, data_file: Path, interval_s: int, days: list[date]
) -> None:
    home = tmp_path / "exampass"
    shutil.copytree(monitored_template, home)
    dagster_home = home / "dagster"
    shutil.rmtree(dagster_home, ignore_errors=True)  # a fresh instance: no runs, no sensor cursor
    dagster_home.mkdir()
    shutil.copy(REPO / "dagster.yaml", dagster_home / "dagster.yaml")
    with dg.DagsterInstance.from_config(str(dagster_home)):
        pass  # the instance's tables, made once before the daemon and the CLI race to make them
    extra = {
        "EXAMPASS_DATA": str(data_file),
        "DAGSTER_HOME": str(dagster_home),
        SENSOR_INTERVAL_ENV: str(interval_s),
        threshold_env_var("retrain_cooldown_s"): "0",
    }
    daemon_log = tmp_path / "daemon.log"
    with use_home(home, **extra), running_daemon(dict(os.environ), daemon_log) as daemon:
        queued = subprocess.run(
            [str(BIN / "dagster"), "job", "backfill", "-w", str(REPO / "workspace.yaml"), "--noprompt"]
            + ["-j", "monitoring_job", "--partitions", ",".join(d.isoformat() for d in days)],
            cwd=REPO,
            env=dict(os.environ),
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        assert queued.returncode == 0, queued.stdout + queued.stderr
        runs = wait_for(
            lambda: daemon.alive() and _settled(dagster_home, len(days)),
            f"the queued runs, one retrain and {TICKS_AFTER_LAST_RUN} later ticks\n{tail(daemon_log)}",
            SETTLED_WITHIN_S,
            every_s=2.0,
        )
    with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
        monitoring = [run for run in runs if run.job_name == "monitoring_job"]
        failing = {
            run.tags.get("dagster/partition"): _failed_watched_checks(instance, run.run_id)
            for run in monitoring
        }
        ticks = _sensor_ticks(instance)
    assert len(monitoring) == len(days), [run.job_name for run in runs]
    assert {day for day, failed in failing.items() if failed} == {DRIFT_DAY.isoformat()}, failing
    retrains = [run for run in runs if run.job_name == "retrain_job"]
    assert len(retrains) == 1, f"{len(retrains)} retrains launched at a {interval_s} s tick"
    assert DRIFT_DAY.isoformat() in retrains[0].tags["exampass/trigger"], retrains[0].tags
    assert retrains[0].status == dg.DagsterRunStatus.SUCCESS, tail(daemon_log)
    assert sorted(run_id for tick in ticks for run_id in tick.run_ids) == [retrains[0].run_id]


@pytest.mark.parametrize("raw", ["0", "-3", "2.5", "soon"])
def test_a_bad_sensor_interval_stops_the_load_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, raw: str
) -> None:
    monkeypatch.setenv(SENSOR_INTERVAL_ENV, raw)
    with pytest.raises(ValueError, match=SENSOR_INTERVAL_ENV):
        sensor_interval_s()


def test_the_sensor_interval_defaults_to_30_s_and_follows_the_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(SENSOR_INTERVAL_ENV, raising=False)
    assert sensor_interval_s() == 30
    monkeypatch.setenv(SENSOR_INTERVAL_ENV, " 7 ")
    assert sensor_interval_s() == 7
