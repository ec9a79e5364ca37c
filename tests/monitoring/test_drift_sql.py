"""data_drift from DuckDB cell aggregates gives data_drift's verdict, p-values and shifts on the full day."""

from __future__ import annotations

import duckdb
import numpy as np
import pandas as pd
import pytest

from exampass_pipeline.contract import schema
from exampass_pipeline.ml import synthetic
from exampass_pipeline.monitoring import drift, drift_sql


@pytest.mark.parametrize(
    ("scenario", "n"),
    [("none", 60), ("none", 5000), ("score_decline", 400), ("lunch_shift", 3000), ("none", 20)],
)
def test_aggregates_give_the_same_decision_as_the_full_frame(scenario: str, n: int) -> None:
    reference = synthetic.sample(700, seed=1)[list(schema.FEATURES)]
    current = synthetic.sample(n, seed=2, scenario=scenario)[list(schema.FEATURES)]
    expected = drift.data_drift(reference, current)
    with duckdb.connect() as conn:
        conn.register("day_rows", current)
        conn.execute("CREATE TABLE day AS SELECT * FROM day_rows")
        got = drift_sql.data_drift_sql(reference, conn, "day")
    assert (got.status, got.passed, got.drifted_columns) == (
        expected.status,
        expected.passed,
        expected.drifted_columns,
    )
    assert got.n_current == expected.n_current == n
    for name, column in expected.columns.items():
        for key in ("statistic", "p_value", "adjusted_p_value", "mean_shift"):
            if key in column:
                assert got.columns[name][key] == pytest.approx(column[key], rel=1e-7, abs=1e-9), (name, key)


def test_an_empty_day_is_not_judged() -> None:
    reference = synthetic.sample(300, seed=1)[list(schema.FEATURES)]
    with duckdb.connect() as conn:
        conn.register("day_rows", reference.iloc[:0])
        conn.execute("CREATE TABLE day AS SELECT * FROM day_rows")
        got = drift_sql.data_drift_sql(reference, conn, "day")
    assert got.status == "warn" and got.passed and got.n_current == 0
    assert pd.isna(got.columns[schema.READING_SCORE]["mean_shift"])


@pytest.mark.parametrize(("shift", "n"), [(0.0, 80), (0.0, 20_000), (0.05, 3000), (0.0, 10)])
def test_prediction_drift_from_counts_is_prediction_drift(shift: float, n: int) -> None:
    rng = np.random.default_rng(3)
    reference = np.round(rng.beta(4, 2, 400), 3)  # ties, as the held-out probabilities have
    current = np.clip(np.round(rng.beta(4, 2, n), 6) - shift, 0, 1)
    expected = drift.prediction_drift(reference, current)
    with duckdb.connect() as conn:
        conn.register("day_rows", pd.DataFrame({"pass_probability": current}))
        conn.execute("CREATE TABLE day AS SELECT * FROM day_rows")
        got = drift_sql.prediction_drift_sql(reference, conn, "day")
    assert (got.status, got.passed, got.n_current) == (expected.status, expected.passed, expected.n_current)
    for key in ("statistic", "p_value", "adjusted_p_value", "reference_mean", "current_mean"):
        assert got.columns["pass_probability"][key] == pytest.approx(
            expected.columns["pass_probability"][key], rel=1e-9, abs=1e-12
        ), key


@pytest.mark.parametrize("bad", [1.5, -0.1, None])
def test_a_value_that_is_not_a_probability_fails_closed(bad: float | None) -> None:
    with duckdb.connect() as conn:
        conn.execute("CREATE TABLE day (pass_probability DOUBLE)")
        conn.execute("INSERT INTO day SELECT 0.5 FROM range(100)")
        conn.execute("INSERT INTO day VALUES (?)", [bad])
        with pytest.raises(ValueError, match="current.pass_probability: .* is not a probability"):
            drift_sql.prediction_drift_sql(np.linspace(0, 1, 100), conn, "day")
