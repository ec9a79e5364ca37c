"""The prediction log: whole lines under concurrency, untrusted reading, and the day join with late feedback."""

from __future__ import annotations

import json
import multiprocessing
import threading
import uuid
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pandas as pd

from exampass_pipeline.contract import predlog, schema

STUDENT = {
    "gender": "female",
    "race_ethnicity": "group C",
    "parental_level_of_education": "some college",
    "lunch": "standard",
    "test_preparation_course": "none",
    "reading_score": 71,
    "writing_score": 70,
}
DAY = date(2026, 11, 20)


def at(day: date, hour: int = 12) -> datetime:
    return datetime(day.year, day.month, day.day, hour, tzinfo=UTC)


def _write_many(logs_dir: str, n: int) -> None:
    log = predlog.PredictionLog(Path(logs_dir))
    for i in range(n):
        log.log_prediction(STUDENT, 0.5 + i / (10 * n), True, "1", client="school-1", at=at(DAY))
    log.close()


def test_a_logged_batch_is_byte_identical_to_logging_each_row(tmp_path: Path) -> None:
    rows = [{**STUDENT, "reading_score": r, "extra": "dropped"} for r in (0, 55, 100)]
    probabilities = [1e-5, 0.5, 0.9999]  # 1e-5 takes the json.dumps path, the others orjson
    decisions = [False, True, True]
    ids = [str(uuid.uuid4()) for _ in rows]
    when = datetime(2026, 11, 20, 23, 59, 59, 999_999, tzinfo=UTC)
    one, many = predlog.PredictionLog(tmp_path / "one"), predlog.PredictionLog(tmp_path / "many")
    for row, p, d, pid in zip(rows, probabilities, decisions, ids, strict=True):
        one.log_prediction(row, p, d, "7", prediction_id=pid, client="school-1", at=when)
    many.log_predictions(rows, probabilities, decisions, "7", ids, when, client="school-1")
    one.close()
    many.close()
    name = predlog.day_file(Path(predlog.PREDICTIONS), DAY)
    expected = (tmp_path / "one" / name).read_bytes()
    assert (tmp_path / "many" / name).read_bytes() == expected
    assert expected.count(b"\n") == 3 and b"dropped" not in expected


def test_concurrent_threads_and_processes_never_tear_lines(tmp_path: Path) -> None:
    log = predlog.PredictionLog(tmp_path)
    threads = [
        threading.Thread(
            target=lambda: [
                log.log_prediction(STUDENT, 0.9, True, "1", client="school-1", at=at(DAY)) for _ in range(300)
            ]
        )
        for _ in range(4)
    ]
    procs = [
        multiprocessing.get_context("spawn").Process(target=_write_many, args=(str(tmp_path), 300))
        for _ in range(2)
    ]
    for worker in [*threads, *procs]:
        worker.start()
    for worker in [*threads, *procs]:
        worker.join()
    log.close()
    result = predlog.read_day(tmp_path, predlog.PREDICTIONS, DAY)
    assert len(result.records) == 4 * 300 + 2 * 300
    assert result.quarantined == []
    assert len({r["prediction_id"] for r in result.records}) == len(result.records)


def test_files_are_cut_by_utc_day(tmp_path: Path) -> None:
    log = predlog.PredictionLog(tmp_path)
    late_evening_elsewhere = datetime(2026, 11, 20, 23, 30, tzinfo=UTC) + timedelta(hours=1)
    log.log_prediction(STUDENT, 0.2, False, "1", client="school-1", at=late_evening_elsewhere)
    log.close()
    assert (tmp_path / "predictions" / "2026-11-21.jsonl").exists()


def test_malformed_lines_are_quarantined_with_reasons(tmp_path: Path) -> None:
    log = predlog.PredictionLog(tmp_path)
    good = log.log_prediction(STUDENT, 0.8, True, "1", client="school-1", at=at(DAY))
    log.close()
    path = predlog.day_file(tmp_path / "predictions", DAY)
    bad_category = dict(good, prediction_id=str(uuid.uuid4()), inputs=dict(STUDENT, lunch="caviar"))
    no_prob = {k: v for k, v in good.items() if k != "pass_probability"}
    with open(path, "a") as fh:
        fh.write("this is not json\n")
        fh.write(json.dumps(bad_category) + "\n")
        fh.write(json.dumps(no_prob) + "\n")
        fh.write(json.dumps(dict(good, pass_probability=1.5)) + "\n")
        fh.write('{"prediction_id": "truncated')
    result = predlog.read_day(tmp_path, predlog.PREDICTIONS, DAY)
    assert len(result.records) == 1
    reasons = [q["reason"] for q in result.quarantined]
    assert len(reasons) == 5
    assert "lunch: unknown category 'caviar'" in reasons[1]
    assert reasons[2] == "missing field 'pass_probability'"
    assert "not a probability" in reasons[3]
    assert reasons[4] == "truncated line (no newline)"
    assert [q["line_no"] for q in result.quarantined] == [2, 3, 4, 5, 6]


def test_day_batch_joins_late_feedback_and_counts_orphans(tmp_path: Path) -> None:
    log = predlog.PredictionLog(tmp_path)
    first = log.log_prediction(STUDENT, 0.9, True, "3", client="school-1", at=at(DAY))
    second = log.log_prediction(STUDENT, 0.3, False, "3", client="school-1", at=at(DAY, 13))
    log.log_prediction(STUDENT, 0.6, True, "3", client="school-1", at=at(DAY, 14))
    log.log_feedback(first["prediction_id"], 40, client="school-1", at=at(DAY, 15))
    log.log_feedback(
        first["prediction_id"], 45, client="school-1", at=at(DAY + timedelta(days=1))
    )  # correction wins
    log.log_feedback(
        second["prediction_id"], 81, client="school-1", at=at(DAY + timedelta(days=6))
    )  # late but inside the window
    log.log_feedback(str(uuid.uuid4()), 70, client="school-1", at=at(DAY, 16))  # matches nothing: orphan
    log.log_feedback(
        second["prediction_id"], 12, client="school-1", at=at(DAY + timedelta(days=9))
    )  # outside the window
    log.close()
    batch = predlog.day_batch(tmp_path, DAY)
    frame = batch.frame.set_index("prediction_id")
    assert len(frame) == 3
    assert frame.loc[first["prediction_id"], schema.MATH_SCORE] == 45
    assert not frame.loc[first["prediction_id"], schema.LABEL]
    assert frame.loc[second["prediction_id"], schema.MATH_SCORE] == 81
    assert bool(frame.loc[second["prediction_id"], schema.LABEL])
    assert int(batch.frame[schema.MATH_SCORE].notna().sum()) == 2
    assert batch.orphan_feedback == 1
    assert batch.feedback_lines == 2


def test_feedback_for_an_earlier_days_prediction_is_not_an_orphan(tmp_path: Path) -> None:
    log = predlog.PredictionLog(tmp_path)
    earlier = log.log_prediction(STUDENT, 0.9, True, "3", client="school-1", at=at(DAY - timedelta(days=2)))
    log.log_feedback(earlier["prediction_id"], 77, client="school-1", at=at(DAY))
    log.close()
    assert predlog.day_batch(tmp_path, DAY).orphan_feedback == 0


def test_empty_day_still_has_typed_columns(tmp_path: Path) -> None:
    import duckdb

    frame = predlog.day_batch(tmp_path, DAY).frame
    assert list(frame.columns) == list(predlog.BATCH_COLUMNS)
    with duckdb.connect() as conn:
        conn.execute("CREATE TABLE t AS SELECT * FROM frame")
        types = dict((row[0], row[1]) for row in conn.execute("DESCRIBE t").fetchall())
    assert types["partition_date"] == "DATE"
    assert types["reading_score"] == "BIGINT"
    assert types["pass_probability"] == "DOUBLE"
    assert isinstance(frame, pd.DataFrame)


def test_day_files_and_retention_see_segments(tmp_path: Path) -> None:
    """A day may be an old day file plus segments; a segment being compressed is read once, plain."""
    folder = tmp_path / predlog.PREDICTIONS
    old = DAY - timedelta(days=40)
    seg = folder / old.isoformat()
    seg.mkdir(parents=True)
    for name in ("01-7-0.jsonl.gz", "00-7-0.jsonl", "00-7-1.jsonl", "00-7-1.jsonl.gz", "notes.txt"):
        (seg / name).write_bytes(b"")
    predlog.day_file(folder, old).write_bytes(b"")
    assert [p.name for p in predlog.day_files(folder, old)] == [
        f"{old.isoformat()}.jsonl",
        "00-7-0.jsonl",
        "00-7-1.jsonl",
        "01-7-0.jsonl.gz",
    ]
    expired = predlog.expired_day_files(tmp_path, keep_days=30, today=DAY)
    assert {p.name for _, day, p in expired if day == old} == {
        f"{old.isoformat()}.jsonl",
        "00-7-0.jsonl",
        "00-7-1.jsonl",
        "00-7-1.jsonl.gz",
        "01-7-0.jsonl.gz",
    }
    assert predlog.expired_day_files(tmp_path, keep_days=60, today=DAY) == []
