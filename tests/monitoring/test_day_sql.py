"""day_sql: the day read in DuckDB; a seeded sample that repeats on any thread count, and says what it is."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import duckdb
import pandas as pd
import pytest

from exampass_pipeline.contract import schema
from exampass_pipeline.ml import synthetic
from exampass_pipeline.monitoring import day_sql, drift, reports

DAY = date(2026, 11, 20)


def _day_table(conn: duckdb.DuckDBPyConnection, n: int) -> str:
    rows = synthetic.sample(n, seed=5)[list(schema.FEATURES)]
    rows["prediction_id"] = [f"{i:08x}-0000-4000-8000-000000000000" for i in range(n)]
    rows["timestamp"] = pd.Timestamp(DAY.isoformat()) + pd.to_timedelta(range(n), unit="s")
    rows["partition_date"] = pd.Timestamp(DAY.isoformat())
    rows["model_version"] = ["3" if i % 3 else "4" for i in range(n)]
    rows["pass_probability"] = (rows[schema.READING_SCORE] / 100).clip(0, 1)
    rows[schema.MATH_SCORE] = [None if i % 10 else 60 for i in range(n)]
    conn.register("rows", rows)
    conn.execute(
        "CREATE TABLE batches AS SELECT * REPLACE (CAST(partition_date AS DATE) AS partition_date) FROM rows"
    )
    conn.execute("INSERT INTO batches SELECT * REPLACE (DATE '2026-11-21' AS partition_date) FROM batches")
    return day_sql.day_relation("batches", DAY)


def test_the_sample_is_the_same_rows_on_one_thread_and_two_and_uniform() -> None:
    with duckdb.connect() as conn:
        day = _day_table(conn, 30_000)
        assert day_sql.row_count(conn, day) == 30_000, "only the day's partition"
        conn.execute("SET threads = 2")
        two = day_sql.sample(conn, day, ["prediction_id", schema.LUNCH])
        conn.execute("SET threads = 1")
        one = day_sql.sample(conn, day, ["prediction_id", schema.LUNCH])
        other = day_sql.sample(conn, day, ["prediction_id"], seed=day_sql.SAMPLE_SEED + 1)
        whole = conn.execute(f"SELECT {schema.LUNCH} FROM {day}").df()
    assert len(two) == day_sql.SAMPLE_ROWS and two["prediction_id"].is_unique
    pd.testing.assert_frame_equal(one, two)
    assert set(other["prediction_id"]) != set(two["prediction_id"]), "the seed decides the rows"
    # A uniform draw: the sample's lunch shares match the day's (a biased draw would fail drift itself).
    share = two[schema.LUNCH].value_counts(normalize=True)
    full = whole[schema.LUNCH].value_counts(normalize=True)
    assert (share - full).abs().max() < 0.02


def test_a_small_day_is_given_whole_and_the_served_version_is_the_most_frequent() -> None:
    with duckdb.connect() as conn:
        day = _day_table(conn, 300)
        drawn = day_sql.sample(conn, day, ["prediction_id"])
        assert day_sql.served_version(conn, day) == "3"
        labelled = day_sql.labelled_rows(conn, day)
        assert day_sql.served_version(conn, "(SELECT * FROM batches WHERE false)") is None
    assert sorted(drawn["prediction_id"]) == [f"{i:08x}-0000-4000-8000-000000000000" for i in range(300)]
    assert len(labelled) == 30 and labelled[schema.MATH_SCORE].notna().all()
    assert labelled["timestamp"].is_monotonic_increasing


def test_the_drift_page_says_it_was_drawn_from_a_sample(tmp_path: Path) -> None:
    reference = synthetic.sample(500, seed=1)[list(schema.FEATURES)]
    drawn = synthetic.sample(400, seed=2)[list(schema.FEATURES)]
    html = tmp_path / "drift.html"
    numbers = reports.drift_report(
        reference, drawn, html, decisions=[drift.data_drift(reference, drawn)], day_rows=9000
    )
    text = html.read_text()
    assert "seeded random sample of 400 of the day&#x27;s 9,000 rows" in text
    assert numbers["n_current"] == 400 and numbers["n_day"] == 9000
    whole = reports.drift_report(reference, drawn, tmp_path / "whole.html")
    assert (
        "n_day" not in whole
        and "sample" not in (tmp_path / "whole.html").read_text().split("<h2>Evidently")[0]
    )


@pytest.mark.parametrize(("drawn", "total"), [(20_000, 10_000_000), (500, 500)])
def test_the_sample_note(drawn: int, total: int) -> None:
    note = day_sql.sample_note(drawn, total)
    assert f"{total:,}" in note
    assert ("sample" in note) == (drawn < total)
