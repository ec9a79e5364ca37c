"""A day of ``prediction_batches`` as the monitoring steps read it: in DuckDB, never loaded whole into pandas.

Why: a national day is ten million rows; the checks need only aggregates of it (``drift_sql``, ``ks_sql``)
and the Evidently pages need only enough rows to draw their histograms. So the day is a SQL relation, and
what leaves DuckDB is small: the served model version, a seeded sample for the reports, the labelled rows'
columns the quality checks need.

The report sample is ``SAMPLE_ROWS`` rows. Why 20,000: a histogram bin of share p drawn from n rows is off by
``sqrt(p (1 - p) / n)``, at most 0.35 percentage points at n = 20,000, well below what a reader can see on
the page, while Evidently's run time and memory grow with the rows it is given (about 1 s and 0.2 GB at
20,000 here, minutes and gigabytes at ten million). The verdicts never come from the sample.
"""

from __future__ import annotations

from datetime import date
from typing import Any

import pandas as pd

from exampass_pipeline.contract import schema

SAMPLE_ROWS = 20_000
SAMPLE_SEED = 21


def day_relation(table: str, day: date) -> str:
    """The day's partition as a parenthesised query (``table`` is a constant of ours, never user input)."""
    return f"(SELECT * FROM {table} WHERE partition_date = DATE '{day.isoformat()}')"


def row_count(conn: Any, relation: str) -> int:
    row = conn.execute(f"SELECT count(*) FROM {relation}").fetchone()
    return int(row[0]) if row else 0


def served_version(conn: Any, relation: str) -> str | None:
    """The model version that answered most of the day's requests (ties: the smallest, as pandas' mode)."""
    row = conn.execute(
        f"SELECT model_version FROM {relation} WHERE model_version IS NOT NULL "
        "GROUP BY model_version ORDER BY count(*) DESC, model_version LIMIT 1"
    ).fetchone()
    return None if row is None else str(row[0])


def sample(
    conn: Any,
    relation: str,
    columns: list[str],
    *,
    rows: int = SAMPLE_ROWS,
    seed: int = SAMPLE_SEED,
    where: str = "true",
) -> pd.DataFrame:
    """``rows`` rows drawn uniformly at random, the same ones every run: those whose seeded hash of the
    prediction id is smallest. A day of at most ``rows`` rows is returned whole.

    A hash order rather than ``USING SAMPLE ... REPEATABLE``: DuckDB documents its seeded sampling as
    repeatable only on one thread, and a re-materialized day must draw the identical report. The top-N
    keeps ``rows`` rows in memory.
    """
    cols = ", ".join(f'"{c}"' for c in columns)
    frame: pd.DataFrame = conn.execute(
        f"SELECT {cols} FROM {relation} WHERE {where} ORDER BY hash(prediction_id, ?::BIGINT), prediction_id "
        "LIMIT ?",
        [seed, rows],
    ).df()
    return frame


def sample_note(drawn: int, total: int, what: str = "rows") -> str:
    """The sentence each report carries, so a reader knows the pictures are of a sample and the verdict is not."""
    if drawn >= total:
        return f"Evidently was given all {total:,} {what} of the day."
    return (
        f"Evidently was given a seeded random sample of {drawn:,} of the day's {total:,} {what} (the standard "
        f"error of a histogram bin's share is then at most {100 * (0.25 / drawn) ** 0.5:.2f} percentage "
        "points); the ExamPass verdict above is computed on all of them."
    )


def labelled_rows(conn: Any, relation: str) -> pd.DataFrame:
    """The day's rows with a reported outcome, every column, in a fixed order (time, then id)."""
    frame: pd.DataFrame = conn.execute(
        f"SELECT * FROM {relation} WHERE {schema.MATH_SCORE} IS NOT NULL ORDER BY timestamp, prediction_id"
    ).df()
    return frame
