"""Edges where DuckDB and the reference reader could disagree: lenient casts, and days ingested out of order."""

from __future__ import annotations

import math
import uuid
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import duckdb
import pandas as pd

from exampass_pipeline.contract import predlog
from exampass_pipeline.io import ingest_sql

DAY = date(2026, 11, 20)
STUDENT = {
    "gender": "male",
    "race_ethnicity": "group E",
    "parental_level_of_education": "master's degree",
    "lunch": "standard",
    "test_preparation_course": "completed",
    "reading_score": 81,
    "writing_score": 79,
}


def _canonical(stamp: str, probability: str = "0.5") -> str:
    """A line byte-for-byte in the writer's layout, with a chosen timestamp text and probability literal."""
    record = predlog.encode_record(
        {
            "prediction_id": str(uuid.uuid4()),
            "timestamp": "@STAMP@",
            "model_version": "1",
            "client": "school-1",
            "inputs": STUDENT,
            "pass_probability": 0.25,
            "predicted_pass": True,
        }
    ).decode()
    return record.replace("@STAMP@", stamp).replace(
        '"pass_probability":0.25', f'"pass_probability":{probability}'
    )


def test_timestamps_duckdb_would_cast_but_python_refuses_are_quarantined_with_the_reference_reason(
    tmp_path: Path,
) -> None:
    # DuckDB casts hour 24 to the next midnight and year 0000 to 1 BC; datetime.fromisoformat refuses both.
    odd = ["2026-11-20T24:00:00+00:00", "0000-11-20T10:00:00+00:00", "2026-11-20T10:00:60+00:00"]
    path = predlog.day_file(tmp_path / predlog.PREDICTIONS, DAY)
    path.parent.mkdir(parents=True)
    path.write_text("".join(_canonical(stamp) for stamp in [*odd, "2026-11-20T10:00:00+00:00"]))
    reference = predlog.day_batch(tmp_path, DAY)
    assert len(reference.frame) == 1 and len(reference.quarantined) == len(odd)
    with duckdb.connect() as conn:
        counts = ingest_sql.ingest_day(conn, tmp_path, DAY)
        stored = conn.execute(
            f"SELECT line_no, reason FROM {ingest_sql.QUARANTINE} ORDER BY line_no"
        ).fetchall()
    assert counts.rows == 1
    assert stored == [(q["line_no"], q["reason"]) for q in reference.quarantined]


def test_a_negative_zero_probability_is_stored_as_the_reference_reads_it(tmp_path: Path) -> None:
    # JSON -0 is the integer 0 to Python (float 0.0); a cast of the text '-0' to DOUBLE would give -0.0.
    path = predlog.day_file(tmp_path / predlog.PREDICTIONS, DAY)
    path.parent.mkdir(parents=True)
    path.write_text(_canonical("2026-11-20T10:00:00+00:00", probability="-0"))
    expected = predlog.day_batch(tmp_path, DAY).frame["pass_probability"].iloc[0]
    with duckdb.connect() as conn:
        ingest_sql.ingest_day(conn, tmp_path, DAY)
        row = conn.execute(f"SELECT pass_probability FROM {ingest_sql.BATCHES}").fetchone()
    assert row is not None and math.copysign(1.0, row[0]) == math.copysign(1.0, expected)


def test_feedback_for_a_window_day_not_yet_ingested_is_not_an_orphan(tmp_path: Path) -> None:
    # A backfill may ingest a day before the days of its window; the reference reads those days' logs.
    log = predlog.PredictionLog(tmp_path)
    yesterday = DAY - timedelta(days=1)
    earlier = log.log_prediction(
        STUDENT, 0.7, True, "1", client="school-1", at=datetime(2026, 11, 19, 9, tzinfo=UTC)
    )
    log.log_prediction(STUDENT, 0.6, True, "1", client="school-1", at=datetime(2026, 11, 20, 9, tzinfo=UTC))
    log.log_feedback(
        earlier["prediction_id"], 70, client="school-1", at=datetime(2026, 11, 20, 11, tzinfo=UTC)
    )
    log.log_feedback(str(uuid.uuid4()), 70, client="school-1", at=datetime(2026, 11, 20, 11, tzinfo=UTC))
    log.close()
    reference = predlog.day_batch(tmp_path, DAY)
    assert reference.orphan_feedback == 1
    with duckdb.connect() as conn:
        assert ingest_sql.ingest_day(conn, tmp_path, DAY).orphan_feedback == reference.orphan_feedback
        # ... and indexing yesterday on the way did not stand in for ingesting it.
        assert ingest_sql.ingest_day(conn, tmp_path, yesterday).rows == 1
        assert ingest_sql.ingest_day(conn, tmp_path, DAY).orphan_feedback == reference.orphan_feedback


def _mutations(seed: int, n: int) -> list[str]:
    """Canonical lines with one random byte-level edit each: the fast path must never accept what Python would
    refuse or read differently, whatever the edit hits (a digit, a quote, a brace, a key)."""
    import random

    rng = random.Random(seed)
    alphabet = '0123456789abcdefABCDEF-:.T+Z"{}[],\\ e\t\u00e9\ufffd'
    out = []
    for i in range(n):
        line = _canonical(f"2026-11-20T{i % 24:02d}:{i % 60:02d}:{(7 * i) % 60:02d}.{i:06d}+00:00", "0.5")
        at = rng.randrange(len(line))
        edit = rng.choice(["replace", "insert", "delete"])
        ch = rng.choice(alphabet)
        if edit == "replace":
            line = line[:at] + ch + line[at + 1 :]
        elif edit == "insert":
            line = line[:at] + ch + line[at:]
        else:
            line = line[:at] + line[at + 1 :]
        out.append(line.replace("\n", "") + "\n")
    return out


def test_randomly_edited_lines_are_judged_exactly_as_the_reference_judges_them(tmp_path: Path) -> None:
    path = predlog.day_file(tmp_path / predlog.PREDICTIONS, DAY)
    path.parent.mkdir(parents=True)
    path.write_text("".join(_mutations(5, 3000)))
    reference = predlog.day_batch(tmp_path, DAY)
    with duckdb.connect() as conn:
        counts = ingest_sql.ingest_day(conn, tmp_path, DAY)
        stored = conn.execute(
            f"SELECT line_no, raw, reason FROM {ingest_sql.QUARANTINE} ORDER BY line_no"
        ).fetchall()
        rows = conn.execute(
            f"SELECT prediction_id, timestamp, model_version, client, reading_score, writing_score, "
            f"pass_probability, predicted_pass FROM {ingest_sql.BATCHES} ORDER BY prediction_id"
        ).fetchall()
    assert stored == [(q["line_no"], q["raw"], q["reason"]) for q in reference.quarantined]
    assert counts.rows == len(reference.frame) and 100 < counts.rows < 3000
    frame = reference.frame.sort_values("prediction_id")
    expected = [
        (
            r.prediction_id,
            r.timestamp.to_pydatetime(),
            r.model_version,
            r.client,
            r.reading_score,
            r.writing_score,
            r.pass_probability,
            r.predicted_pass,
        )
        for r in frame.itertuples()
    ]
    assert rows == expected


def test_randomly_edited_feedback_lines_are_judged_exactly_as_the_reference_judges_them(
    tmp_path: Path,
) -> None:
    import random

    rng = random.Random(9)
    log = predlog.PredictionLog(tmp_path)
    ids = [
        log.log_prediction(
            STUDENT, 0.5, True, "1", client="school-1", at=datetime(2026, 11, 20, 9, tzinfo=UTC)
        )["prediction_id"]
        for _ in range(200)
    ]
    log.close()
    lines = []
    for i in range(3000):
        line = predlog.encode_record(
            {
                "prediction_id": rng.choice(ids),
                "timestamp": f"2026-11-20T{i % 24:02d}:{i % 60:02d}:00.{i:06d}+00:00",
                "client": "school-2",
                "math_score": rng.randint(0, 100),
            }
        ).decode()
        at = rng.randrange(len(line) - 1)
        year = line.index('"timestamp":"') + 13
        if year <= at < year + 4:  # a valid year outside pandas' range would crash the reference's frame
            at += 4
        ch = rng.choice('0123456789abcdef-:.T+"{},\\ e')
        line = rng.choice(
            [line[:at] + ch + line[at + 1 :], line[:at] + ch + line[at:], line[:at] + line[at + 1 :]]
        )
        lines.append(line.replace("\n", "") + "\n")
    path = predlog.day_file(tmp_path / predlog.FEEDBACK, DAY)
    path.parent.mkdir(parents=True)
    path.write_text("".join(lines))
    reference = predlog.day_batch(tmp_path, DAY)
    with duckdb.connect() as conn:
        counts = ingest_sql.ingest_day(conn, tmp_path, DAY)
        stored = conn.execute(
            f"SELECT line_no, raw, reason FROM {ingest_sql.QUARANTINE} ORDER BY line_no"
        ).fetchall()
        joined = conn.execute(
            f"SELECT prediction_id, math_score, feedback_timestamp, feedback_client FROM {ingest_sql.BATCHES} "
            "ORDER BY prediction_id"
        ).fetchall()
    assert stored == [(q["line_no"], q["raw"], q["reason"]) for q in reference.quarantined]
    assert (counts.feedback_lines, counts.orphan_feedback) == (
        reference.feedback_lines,
        reference.orphan_feedback,
    )
    assert 100 < counts.feedback_lines < 3000 and counts.orphan_feedback > 0
    frame = reference.frame.sort_values("prediction_id")
    assert joined == [
        (
            r.prediction_id,
            None if pd.isna(r.math_score) else int(r.math_score),
            None if pd.isna(r.feedback_timestamp) else r.feedback_timestamp.to_pydatetime(),
            None if pd.isna(r.feedback_client) else r.feedback_client,
        )
        for r in frame.itertuples()
    ]


def test_a_valid_timestamp_past_pandas_nanosecond_range_is_read_by_both(tmp_path: Path) -> None:
    path = predlog.day_file(tmp_path / predlog.PREDICTIONS, DAY)
    path.parent.mkdir(parents=True)
    path.write_text(_canonical("2826-11-20T10:00:00+00:00") + _canonical("2026-11-20T10:00:00+00:00"))
    reference = predlog.day_batch(tmp_path, DAY)
    with duckdb.connect() as conn:
        counts = ingest_sql.ingest_day(conn, tmp_path, DAY)
        stamps = conn.execute(f"SELECT timestamp FROM {ingest_sql.BATCHES} ORDER BY timestamp").fetchall()
    assert counts.rows == len(reference.frame) == 2
    assert [s for (s,) in stamps] == sorted(t.to_pydatetime() for t in reference.frame["timestamp"])
