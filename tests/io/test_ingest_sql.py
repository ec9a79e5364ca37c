"""The DuckDB ingestion gives exactly the reference reader's day: same rows, reasons, orphans and duplicates."""

from __future__ import annotations

import json
import random
import uuid
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd
import pytest

from exampass_pipeline.contract import predlog
from exampass_pipeline.io import ingest_sql

DAY = date(2026, 11, 20)
STUDENT = {
    "gender": "female",
    "race_ethnicity": "group B",
    "parental_level_of_education": "associate's degree",
    "lunch": "free/reduced",
    "test_preparation_course": "none",
    "reading_score": 72,
    "writing_score": 74,
}


def at(day: date, hour: int = 10, us: int = 0) -> datetime:
    return datetime(day.year, day.month, day.day, hour, tzinfo=UTC) + timedelta(microseconds=us)


def _fuzzed_day(logs: Path, day: date, rng: random.Random, earlier_ids: list[str]) -> list[str]:
    """A day with every kind of damage: torn, duplicated, late, orphan, mistyped, out of range, odd forms."""
    log = predlog.PredictionLog(logs)
    ids = []
    for i in range(300):
        row = dict(STUDENT, reading_score=rng.randint(0, 100), writing_score=rng.randint(0, 100))
        p = rng.choice([0.0, 1.0, 1e-5, rng.random(), 0.5])
        rec = log.log_prediction(
            row,
            p,
            p >= 0.5,
            str(rng.randint(1, 3)),
            client="school-1",
            at=at(day, 8, i * 1000 + rng.choice([0, 1])),
        )
        ids.append(rec["prediction_id"])
    good = json.loads(predlog.encode_record(rec))
    path = predlog.day_file(logs / predlog.PREDICTIONS, day)
    odd = [
        "",
        "not json",
        "[1, 2]",
        json.dumps(good),  # spaced JSON: valid, and a duplicate id
        json.dumps(dict(good, prediction_id=str(uuid.uuid4()).upper())),
        json.dumps(dict(good, prediction_id=str(uuid.uuid4()), inputs=dict(STUDENT, lunch="caviar"))),
        json.dumps(dict(good, prediction_id=str(uuid.uuid4()), inputs=dict(STUDENT, reading_score="50"))),
        json.dumps(dict(good, prediction_id=str(uuid.uuid4()), inputs=dict(STUDENT, reading_score=50.5))),
        json.dumps(dict(good, prediction_id=str(uuid.uuid4()), inputs=dict(STUDENT, writing_score=101))),
        json.dumps(dict(good, prediction_id=str(uuid.uuid4()), pass_probability=1.5)),
        json.dumps(dict(good, prediction_id=str(uuid.uuid4()), pass_probability=True)),
        json.dumps(dict(good, prediction_id=str(uuid.uuid4()), predicted_pass=1)),
        json.dumps(dict(good, prediction_id=str(uuid.uuid4()), timestamp="2026-11-20T10:00:00")),
        json.dumps(dict(good, prediction_id=str(uuid.uuid4()), timestamp="2026-11-20T12:00:00+02:00")),
        json.dumps(dict(good, prediction_id=str(uuid.uuid4()), timestamp="2026-02-30T10:00:00+00:00")),
        json.dumps(dict(good, prediction_id=str(uuid.uuid4()), client="Bad Client")),
        json.dumps({k: v for k, v in good.items() if k != "client"} | {"prediction_id": str(uuid.uuid4())}),
        json.dumps({k: v for k, v in good.items() if k != "inputs"}),
        json.dumps(dict(good, prediction_id="not-a-uuid")),
        json.dumps(dict(good, prediction_id=str(uuid.uuid4()), model_version=7)),
        predlog.encode_record(dict(good, prediction_id=str(uuid.uuid4()))).decode().rstrip("\n") + "\r",
        '{"prediction_id": "\xff\xfe broken',
    ]
    with open(path, "a", encoding="utf-8") as fh:
        for line in odd:
            fh.write(line + "\n")
        fh.write(predlog.encode_record(good).decode()[:40])  # torn last line
    for pid in rng.sample(ids, 90) + rng.sample(earlier_ids, min(10, len(earlier_ids))):
        later = day + timedelta(days=rng.choice([0, 0, 1, 3, 7, 8]))
        log.log_feedback(
            pid,
            rng.randint(0, 100),
            client=rng.choice(["school-1", "school-2"]),
            at=at(later, rng.randint(0, 23)),
        )
    for _ in range(5):
        log.log_feedback(str(uuid.uuid4()), 40, client="school-1", at=at(day, 20))  # orphans
    fpath = predlog.day_file(logs / predlog.FEEDBACK, day)
    with open(fpath, "a") as fh:
        fh.write(f'{{"prediction_id":"{ids[0]}","timestamp":"x","client":"a","math_score":5}}\n')
        fh.write(
            f'{{"prediction_id":"{ids[1]}","timestamp":"2026-11-20T10:00:00+00:00","math_score":"61"}}\n'
        )
        fh.write(f'{{"prediction_id":"{ids[2]}","timestamp":"2026-11-20T10:00:00+00:00","math_score":-1}}\n')
    log.close()
    return ids


def _reference(batch: predlog.DayBatch) -> pd.DataFrame:
    frame: pd.DataFrame = batch.frame
    return frame.sort_values("prediction_id").reset_index(drop=True)


def _ingested(conn: Any, day: date) -> pd.DataFrame:
    frame: pd.DataFrame = conn.execute(
        f"SELECT * FROM {ingest_sql.BATCHES} WHERE partition_date = ? ORDER BY prediction_id", [day]
    ).df()
    return frame


def _same(reference: pd.DataFrame, ingested: pd.DataFrame) -> None:
    assert list(ingested.columns) == list(reference.columns)
    assert len(ingested) == len(reference)
    for column in reference.columns:
        left = [None if pd.isna(v) else v for v in reference[column].tolist()]
        right = [None if pd.isna(v) else v for v in ingested[column].tolist()]
        if column == "partition_date":
            left, right = [str(v) for v in left], [str(v)[:10] for v in right]
        if column.endswith("timestamp"):
            left = [None if v is None else pd.Timestamp(v) for v in left]
            right = [None if v is None else pd.Timestamp(v) for v in right]
        assert left == right, column


@pytest.mark.parametrize("seed", [0, 1])
def test_sql_ingestion_equals_the_reference_reader_on_a_fuzzed_log(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    days = [DAY - timedelta(days=2), DAY - timedelta(days=1), DAY]
    earlier: list[str] = []
    for day in days:
        earlier += _fuzzed_day(tmp_path, day, rng, earlier)
    with duckdb.connect(str(tmp_path / "w.duckdb")) as conn:
        for day in days:  # ingested in order, so the id index knows the earlier days
            counts = ingest_sql.ingest_day(conn, tmp_path, day)
            reference = predlog.day_batch(tmp_path, day)
            _same(_reference(reference), _ingested(conn, day))
            assert counts.orphan_feedback == reference.orphan_feedback
            assert counts.duplicate_predictions == reference.duplicate_predictions
            assert counts.feedback_lines == reference.feedback_lines
            stored = conn.execute(
                f"SELECT file, line_no, raw, reason FROM {ingest_sql.QUARANTINE} WHERE partition_date = ? "
                "ORDER BY file, line_no",
                [day],
            ).fetchall()
            expected = sorted((q["file"], q["line_no"], q["raw"], q["reason"]) for q in reference.quarantined)
            assert stored == expected
            assert counts.quarantined == len(expected) > 15
            assert counts.duplicate_predictions >= 1 and counts.orphan_feedback >= 5


def test_rematerializing_gives_the_same_partition(tmp_path: Path) -> None:
    _fuzzed_day(tmp_path, DAY, random.Random(3), [])
    with duckdb.connect(str(tmp_path / "w.duckdb")) as conn:
        ingest_sql.ingest_day(conn, tmp_path, DAY)
        first = _ingested(conn, DAY)
        ingest_sql.ingest_day(conn, tmp_path, DAY)
        assert _ingested(conn, DAY).equals(first)
        for table in (ingest_sql.QUARANTINE, ingest_sql.PREDICTION_IDS):
            n = conn.execute(f"SELECT count(*) FROM {table} WHERE partition_date = ?", [DAY]).fetchone()
            assert n is not None and n[0] > 0
            total = conn.execute(f"SELECT count(*), count(DISTINCT ({table})) FROM {table}").fetchone()
            assert total is not None and (table == ingest_sql.QUARANTINE or total[0] == total[1])


def test_segments_and_gzip_are_read_like_one_file(tmp_path: Path) -> None:
    import gzip

    _fuzzed_day(tmp_path, DAY, random.Random(4), [])
    plain = predlog.day_file(tmp_path / predlog.PREDICTIONS, DAY)
    lines = plain.read_bytes().split(b"\n")
    folder = tmp_path / predlog.PREDICTIONS / DAY.isoformat()
    folder.mkdir()
    half = len(lines) // 2
    with gzip.open(folder / "00-1-0.jsonl.gz", "wb") as gz:
        gz.write(b"\n".join(lines[:half]) + b"\n")
    (folder / "00-1-1.jsonl").write_bytes(b"\n".join(lines[half:]))
    plain.unlink()
    reference = predlog.day_batch(tmp_path, DAY)
    with duckdb.connect() as conn:
        counts = ingest_sql.ingest_day(conn, tmp_path, DAY)
        _same(_reference(reference), _ingested(conn, DAY))
    assert counts.quarantined == len(reference.quarantined)
