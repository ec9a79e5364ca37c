"""The production configuration runs the same code unchanged: Dagster storage and MLflow's store on Postgres.

The instance is built from deploy/dagster.yaml itself (the file baked into the image), pointed at the
loopback PostgreSQL that .ci/system-deps.sh starts, and MLflow's backend store is that server too. Training
goes through `exampass-train`, the command the README tells operators to run; monitoring through the same
materialize call the pipeline uses. Then the databases are read directly, so "it ran on Postgres" is a fact.

Without Postgres these tests fail under CI=true (see support.require).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from support import REPO_ROOT as REPO
from support import data_csv

TRAINING_ASSETS = {
    "raw_students",
    "students",
    "train_split",
    "validation_split",
    "test_split",
    "pass_classifier",
}
MONITORING_ASSETS = {"prediction_batches", "drift_report", "quality_report"}


@pytest.fixture()
def pg_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pg_server: Any, pg_databases: dict[str, str]
) -> dict[str, str]:
    """A fresh EXAMPASS_HOME: Dagster instance from deploy/dagster.yaml on Postgres, MLflow on Postgres."""
    data_csv_path = data_csv()
    home = tmp_path / "exampass"
    dagster_home = home / "dagster"
    dagster_home.mkdir(parents=True)
    shutil.copy(REPO / "deploy" / "dagster.yaml", dagster_home / "dagster.yaml")
    env = {
        "EXAMPASS_HOME": str(home),
        "EXAMPASS_DATA": str(data_csv_path),
        "DAGSTER_HOME": str(dagster_home),
        "MLFLOW_TRACKING_URI": pg_server.url(pg_databases["mlflow"]),
        **pg_server.dagster_env(pg_databases["dagster"], home / "dagster-storage"),
    }
    for name in ("MLFLOW_REGISTRY_URI", "EXAMPASS_DUCKDB", "EXAMPASS_LOGS", "EXAMPASS_REPORTS"):
        monkeypatch.delenv(name, raising=False)
    # No webhook: alerts from the drift checks stay in the DuckDB alerts table.
    monkeypatch.delenv("EXAMPASS_ALERT_WEBHOOK", raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return env


def _query(pg: Any, db: str, sql: str) -> list[tuple[Any, ...]]:
    conn = pg.connect(db)
    try:
        with conn.cursor() as cur:
            cur.execute(sql)
            return list(cur.fetchall())
    finally:
        conn.close()


def test_deploy_instance_is_postgres_backed_with_the_local_run_limits(
    pg_home: dict[str, str], tmp_path: Path
) -> None:
    import dagster as dg
    from dagster_postgres import PostgresEventLogStorage, PostgresRunStorage, PostgresScheduleStorage

    with dg.DagsterInstance.from_config(pg_home["DAGSTER_HOME"]) as instance:
        assert isinstance(instance.run_storage, PostgresRunStorage)
        assert isinstance(instance.event_log_storage, PostgresEventLogStorage)
        assert isinstance(instance.schedule_storage, PostgresScheduleStorage)
        assert type(instance.run_coordinator).__name__ == "QueuedRunCoordinator"
        assert not instance.telemetry_enabled
        deploy_queue = instance.get_concurrency_config().run_queue_config
    local_home = tmp_path / "local-dagster"
    local_home.mkdir()
    shutil.copy(REPO / "dagster.yaml", local_home / "dagster.yaml")
    with dg.DagsterInstance.from_config(str(local_home)) as local:
        local_queue = local.get_concurrency_config().run_queue_config
    assert deploy_queue is not None and local_queue is not None
    # The DuckDB single-writer rule is the same in production as on a laptop.
    assert deploy_queue.max_concurrent_runs == local_queue.max_concurrent_runs
    assert list(deploy_queue.tag_concurrency_limits) == list(local_queue.tag_concurrency_limits)


def test_training_and_a_monitoring_partition_run_on_postgres(pg_home: dict[str, str], pg_server: Any) -> None:
    import dagster as dg

    from exampass_pipeline.cli import runs as cli
    from exampass_pipeline.cli import simulate
    from exampass_pipeline.contract import registry, schema
    from exampass_pipeline.contract.settings import Settings

    # 1. Train with the operator's command, in its own process, exactly as `docker compose exec` would run it.
    train = subprocess.run(
        # The quick candidate set: this test is about where state lives, not about model selection.
        [str(Path(sys.executable).with_name("exampass-train")), "--candidate-set", "fast"],
        env={**os.environ, **pg_home},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert train.returncode == 0, f"exampass-train failed:\n{train.stdout}\n{train.stderr[-4000:]}"
    assert "model version" in train.stdout

    settings = Settings.from_env()
    registry.configure(settings)
    champion = registry.load_champion()
    assert champion is not None, "training on Postgres registered no @champion"
    assert set(schema.TEST_METRICS) <= set(champion.metrics)

    # 2. One day of production traffic scored by that champion, then that day's monitoring partition.
    day = (datetime.now(UTC) - timedelta(days=1)).date()
    simulate.write_history(
        settings.logs_dir, champion, [day], rows_per_day=150, feedback_delay_days=0, seed=7, progress=False
    )
    with dg.DagsterInstance.from_config(pg_home["DAGSTER_HOME"]) as instance:
        result = cli.materialize_monitoring(instance, settings, day.isoformat())
        assert result.success, [e.message for e in result.all_events if e.is_failure]
        materialized = {e.asset_key.to_user_string() for e in result.get_asset_materialization_events()}
        assert MONITORING_ASSETS <= materialized
        checks = {e.check_name for e in result.get_asset_check_evaluations()}
        assert {"no_data_drift", "prediction_drift", "model_quality", "segment_quality"} <= checks

        # 3. The instance reads its history back from Postgres: both runs, every asset, the partition.
        runs = instance.get_runs()
        assert len(runs) == 2 and all(run.is_success for run in runs)
        for key in TRAINING_ASSETS | MONITORING_ASSETS:
            assert instance.get_latest_materialization_event(dg.AssetKey(key)) is not None, key
        assert day.isoformat() in instance.get_materialized_partitions(dg.AssetKey("drift_report"))

    assert (settings.reports_dir / "drift" / f"{day.isoformat()}.html").is_file()

    # 4. ... and the rows really are in Postgres, not in a SQLite file that slipped in.
    dagster_db, mlflow_db = pg_home["DAGSTER_POSTGRES_DB"], pg_home["MLFLOW_TRACKING_URI"].rsplit("/", 1)[1]
    statuses = _query(pg_server, dagster_db, "SELECT status FROM runs")
    assert sorted(s for (s,) in statuses) == ["SUCCESS", "SUCCESS"]
    sql = "SELECT count(*) FROM event_logs WHERE dagster_event_type = 'ASSET_MATERIALIZATION'"
    ((materializations,),) = _query(pg_server, dagster_db, sql)
    assert materializations >= len(TRAINING_ASSETS | MONITORING_ASSETS)
    aliases = _query(pg_server, mlflow_db, "SELECT name, alias, version FROM registered_model_aliases")
    assert (schema.MODEL_NAME, schema.CHAMPION_ALIAS, int(champion.version)) in aliases
    sqlite_files = list(Path(pg_home["EXAMPASS_HOME"]).rglob("*.db"))
    assert not sqlite_files, f"a SQLite store was created beside Postgres: {sqlite_files}"


def test_compose_init_script_creates_the_mlflow_database_once(pg_server: Any) -> None:
    """docker/postgres-init.sh, run as the postgres image runs it on first start, creates MLflow's database.

    Run twice, the second time is a no-op: the official image only runs it on an empty volume, but a script
    that fails on a re-run would turn a manual recovery into a second outage.
    """
    if shutil.which("psql") is None:
        pytest.fail(
            "psql is not installed (Debian package postgresql-client, installed by .ci/system-deps.sh)"
        )
    name = f"exampass_test_init_{os.getpid()}"
    env = {
        **os.environ,
        "POSTGRES_USER": pg_server.user,
        "POSTGRES_DB": "postgres",
        "MLFLOW_POSTGRES_DB": name,
        "PGHOST": pg_server.host,
        "PGPORT": str(pg_server.port),
        "PGPASSWORD": pg_server.password,
    }
    script = REPO / "docker" / "postgres-init.sh"
    try:
        first = subprocess.run(["sh", str(script)], env=env, capture_output=True, text=True, timeout=60)
        assert first.returncode == 0, first.stderr
        assert f"created database {name}" in first.stdout
        assert _query(pg_server, "postgres", f"SELECT 1 FROM pg_database WHERE datname = '{name}'") == [(1,)]
        again = subprocess.run(["sh", str(script)], env=env, capture_output=True, text=True, timeout=60)
        assert again.returncode == 0, again.stderr
        assert "created database" not in again.stdout
        missing = subprocess.run(
            ["sh", str(script)],
            env={**env, "MLFLOW_POSTGRES_DB": ""},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert missing.returncode != 0 and "MLFLOW_POSTGRES_DB" in missing.stderr
    finally:
        conn = pg_server.connect()
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.close()
