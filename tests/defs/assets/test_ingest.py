"""prediction_batches: a day of the log in DuckDB, exactly once, with quarantine, late feedback and orphans."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, date, datetime, timedelta

import dagster as dg
import duckdb
import pytest

from exampass_pipeline.contract import predlog
from exampass_pipeline.contract.settings import Settings
from exampass_pipeline.definitions import materializable
from exampass_pipeline.defs.jobs import STUDENTS
from exampass_pipeline.defs.resources import build_resources

DAY = date(2026, 11, 20)
STUDENT = {
    "gender": "male",
    "race_ethnicity": "group D",
    "parental_level_of_education": "high school",
    "lunch": "free/reduced",
    "test_preparation_course": "completed",
    "reading_score": 55,
    "writing_score": 58,
}


def at(day: date, hour: int = 10) -> datetime:
    return datetime(day.year, day.month, day.day, hour, tzinfo=UTC)


def ingest(instance: dg.DagsterInstance, settings: Settings, day: date = DAY) -> dg.ExecuteInProcessResult:
    return dg.materialize(
        materializable(),
        selection=["prediction_batches"],
        partition_key=day.isoformat(),
        instance=instance,
        resources=build_resources(settings),
    )


def meta(result: dg.ExecuteInProcessResult) -> dict[str, object]:
    event = result.get_asset_materialization_events()[0]
    return {k: v.value for k, v in event.materialization.metadata.items()}


def test_rematerializing_a_day_keeps_one_copy_and_picks_up_late_feedback(exampass_home: Settings) -> None:
    log = predlog.PredictionLog(exampass_home.logs_dir)
    ids = [
        log.log_prediction(STUDENT, 0.4 + i / 100, i % 2 == 0, "1", client="school-1", at=at(DAY))[
            "prediction_id"
        ]
        for i in range(20)
    ]
    log.log_prediction(
        STUDENT, 0.9, True, "1", client="school-1", at=at(DAY + timedelta(days=1))
    )  # another day's partition
    for pid in ids[:5]:
        log.log_feedback(pid, 62, client="school-1", at=at(DAY, 18))
    log.log_feedback(str(uuid.uuid4()), 30, client="school-1", at=at(DAY, 19))
    with open(predlog.day_file(exampass_home.logs_dir / "predictions", DAY), "a") as fh:
        fh.write('{"prediction_id": "cut off mid-')
    with dg.instance_for_test() as instance:
        first = meta(ingest(instance, exampass_home))
        assert first["dagster/row_count"] == 20
        assert first["labelled_rows"] == 5
        assert first["quarantined_lines"] == 1
        assert first["orphan_feedback"] == 1

        for pid in ids[5:12]:  # feedback that arrives three days later
            log.log_feedback(pid, 35, client="school-1", at=at(DAY + timedelta(days=3)))
        second = meta(ingest(instance, exampass_home))
        assert second["labelled_rows"] == 12
        ingest(instance, exampass_home, DAY + timedelta(days=1))

    with duckdb.connect(str(exampass_home.duckdb_path), read_only=True) as conn:
        per_day = conn.execute(
            "SELECT partition_date, count(*), count(math_score), sum(CASE WHEN pass_math THEN 1 ELSE 0 END) "
            "FROM exampass.prediction_batches GROUP BY 1 ORDER BY 1"
        ).fetchall()
        assert per_day == [(DAY, 20, 12, 5), (DAY + timedelta(days=1), 1, 0, 0)]
        column_type = conn.execute(
            "SELECT data_type FROM information_schema.columns WHERE table_name = 'prediction_batches' "
            "AND column_name = 'partition_date'"
        ).fetchone()
        assert column_type == ("DATE",)
        quarantined = conn.execute("SELECT partition_date, reason FROM exampass.quarantine").fetchall()
        assert quarantined == [(DAY, "truncated line (no newline)")]


def test_a_day_with_no_log_is_an_empty_partition(exampass_home: Settings) -> None:
    with dg.instance_for_test() as instance:
        assert meta(ingest(instance, exampass_home))["dagster/row_count"] == 0
    with duckdb.connect(str(exampass_home.duckdb_path), read_only=True) as conn:
        assert conn.execute("SELECT count(*) FROM exampass.prediction_batches").fetchone() == (0,)


def test_labelled_production_rows_join_the_student_table(exampass_home: Settings) -> None:
    log = predlog.PredictionLog(exampass_home.logs_dir)
    for i in range(30):
        pid = log.log_prediction(STUDENT, 0.7, True, "1", client="school-1", at=at(DAY))["prediction_id"]
        if i < 25:
            log.log_feedback(pid, 40 + i, client="school-1", at=at(DAY, 20))
    with dg.instance_for_test() as instance:
        ingest(instance, exampass_home)
        result = dg.materialize(
            materializable(),
            selection=STUDENTS,
            instance=instance,
            resources=build_resources(exampass_home),
        )
        by_source = json.loads(
            json.dumps(
                result.get_asset_materialization_events()[-1].materialization.metadata["rows_by_source"].value
            )
        )
    assert by_source == {"kaggle": 1000, "production": 25}
    with duckdb.connect(str(exampass_home.duckdb_path), read_only=True) as conn:
        rows = conn.execute(
            "SELECT count(*), sum(CASE WHEN pass_math THEN 1 ELSE 0 END) FROM exampass.students "
            "WHERE source = 'production'"
        ).fetchone()
    assert rows == (25, 15)  # math 50..64 pass, 40..49 fail


def test_training_rows_name_their_source_and_client(exampass_home: Settings) -> None:
    log = predlog.PredictionLog(exampass_home.logs_dir)
    for i, reporter in enumerate(["grades-export", "grades-export", "school-2"]):
        pid = log.log_prediction(STUDENT, 0.7, True, "1", client="public", at=at(DAY))["prediction_id"]
        log.log_feedback(pid, 60 + i, client=reporter, at=at(DAY, 20))
    with dg.instance_for_test() as instance:
        ingest(instance, exampass_home)
        dg.materialize(
            materializable(), selection=STUDENTS, instance=instance,
            resources=build_resources(exampass_home),
        )  # fmt: skip
    with duckdb.connect(str(exampass_home.duckdb_path), read_only=True) as conn:
        by_client = conn.execute(
            "SELECT source, client, count(*) FROM exampass.students GROUP BY 1, 2 ORDER BY 1, 2"
        ).fetchall()
        batch = conn.execute(
            "SELECT DISTINCT client, feedback_client FROM exampass.prediction_batches"
        ).fetchall()
    assert by_client == [
        ("kaggle", "curated", 1000),
        ("production", "grades-export", 2),
        ("production", "school-2", 1),
    ]
    assert sorted(batch) == [("public", "grades-export"), ("public", "school-2")]


def test_an_older_warehouse_gains_the_new_columns_and_keeps_its_rows(exampass_home: Settings) -> None:
    """A warehouse written before clients were recorded: the upgrade adds the columns, rows stay."""
    exampass_home.duckdb_path.parent.mkdir(parents=True, exist_ok=True)
    with duckdb.connect(str(exampass_home.duckdb_path)) as conn:
        conn.execute("CREATE SCHEMA exampass")
        conn.execute(
            "CREATE TABLE exampass.students AS SELECT 'female' AS gender, 'kaggle' AS source, 1 AS old_only"
        )
    with dg.instance_for_test() as instance:
        result = dg.materialize(
            materializable(), selection=STUDENTS, instance=instance,
            resources=build_resources(exampass_home),
        )  # fmt: skip
        assert result.success
    with duckdb.connect(str(exampass_home.duckdb_path), read_only=True) as conn:
        columns = [
            c
            for (c,) in conn.execute(
                "SELECT column_name FROM information_schema.columns "
                "WHERE table_name = 'students' ORDER BY ordinal_position"
            ).fetchall()
        ]
        assert conn.execute("SELECT count(*) FROM exampass.students").fetchone() == (1000,)
    assert "client" in columns and "old_only" not in columns


def test_log_retention_deletes_only_ingested_old_day_files(
    exampass_home: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    today = datetime.now(UTC).date()
    old, older, recent = today - timedelta(days=30), today - timedelta(days=50), today - timedelta(days=2)
    log = predlog.PredictionLog(exampass_home.logs_dir)
    for day in (older, old, recent):
        pid = log.log_prediction(STUDENT, 0.6, True, "1", client="public", at=at(day))["prediction_id"]
        log.log_feedback(pid, 55, client="school-1", at=at(day, 12))
    log.close()
    monkeypatch.setenv("EXAMPASS_LOG_RETENTION_DAYS", "8")
    settings = Settings.from_env()
    with dg.instance_for_test() as instance:
        # Every reader of the `old` files (the week before for its feedback, the week after for its
        # predictions) has ingested them; `older`'s partitions never ran, so its files must stay.
        for offset in range(-7, 8):
            ingest(instance, settings, old + timedelta(days=offset))
        kept = predlog.day_file(exampass_home.logs_dir / predlog.PREDICTIONS, older)
        gone = predlog.day_file(exampass_home.logs_dir / predlog.PREDICTIONS, old)
        assert kept.exists() and not gone.exists()
        assert not predlog.day_file(exampass_home.logs_dir / predlog.FEEDBACK, old).exists()
        assert predlog.day_file(exampass_home.logs_dir / predlog.PREDICTIONS, recent).exists()
        with duckdb.connect(str(exampass_home.duckdb_path), read_only=True) as conn:
            deleted = conn.execute("SELECT kind, day FROM exampass.log_retention ORDER BY kind").fetchall()
            stored = conn.execute(
                "SELECT count(*) FROM exampass.prediction_batches WHERE partition_date = ?", [old]
            ).fetchone()
        assert deleted == [("feedback", old), ("predictions", old)]
        assert stored == (1,)
        again = dg.materialize(
            materializable(), selection=["prediction_batches"], partition_key=old.isoformat(), instance=instance,
            resources=build_resources(settings), raise_on_error=False,
        )  # fmt: skip
        assert not again.success
        with duckdb.connect(str(exampass_home.duckdb_path), read_only=True) as conn:
            assert conn.execute(
                "SELECT count(*) FROM exampass.prediction_batches WHERE partition_date = ?", [old]
            ).fetchone() == (1,), "a refused re-ingestion keeps the stored rows"
