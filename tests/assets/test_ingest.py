"""prediction_batches: a day of the log in DuckDB, exactly once, with quarantine, late feedback and orphans."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, date, datetime, timedelta

import dagster as dg
import duckdb

from exampass_pipeline import predlog
from exampass_pipeline.definitions import ASSETS
from exampass_pipeline.resources import build_resources
from exampass_pipeline.settings import Settings

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
        [*ASSETS],
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
        log.log_prediction(STUDENT, 0.4 + i / 100, i % 2 == 0, "1", at=at(DAY))["prediction_id"]
        for i in range(20)
    ]
    log.log_prediction(STUDENT, 0.9, True, "1", at=at(DAY + timedelta(days=1)))  # another day's partition
    for pid in ids[:5]:
        log.log_feedback(pid, 62, at=at(DAY, 18))
    log.log_feedback(str(uuid.uuid4()), 30, at=at(DAY, 19))
    with open(predlog.day_file(exampass_home.logs_dir / "predictions", DAY), "a") as fh:
        fh.write('{"prediction_id": "cut off mid-')
    with dg.instance_for_test() as instance:
        first = meta(ingest(instance, exampass_home))
        assert first["dagster/row_count"] == 20
        assert first["labelled_rows"] == 5
        assert first["quarantined_lines"] == 1
        assert first["orphan_feedback"] == 1

        for pid in ids[5:12]:  # feedback that arrives three days later
            log.log_feedback(pid, 35, at=at(DAY + timedelta(days=3)))
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
        pid = log.log_prediction(STUDENT, 0.7, True, "1", at=at(DAY))["prediction_id"]
        if i < 25:
            log.log_feedback(pid, 40 + i, at=at(DAY, 20))
    with dg.instance_for_test() as instance:
        ingest(instance, exampass_home)
        result = dg.materialize(
            [*ASSETS],
            selection=["raw_students", "students"],
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
