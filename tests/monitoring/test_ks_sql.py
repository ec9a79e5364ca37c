"""The KS test with the current sample left in DuckDB gives drift.ks_test's statistic and p-value exactly."""

from __future__ import annotations

import duckdb
import numpy as np
import pytest

from exampass_pipeline.monitoring import drift, ks_sql


def _cases() -> list[tuple[str, np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(0)
    ref = rng.beta(2, 2, 300)
    return [
        ("same population", ref, rng.beta(2, 2, 5000)),
        ("shifted", ref, rng.beta(2.6, 2, 5000)),
        ("ties on a coarse grid", np.round(ref, 1), np.round(rng.beta(2, 2, 4000), 1)),
        ("current below and above every reference value", ref, np.concatenate([[0.0, 1.0], rng.random(999)])),
        ("tiny current", ref, rng.random(3)),
        ("one reference value", np.array([0.5]), rng.random(100)),
    ]


@pytest.mark.parametrize(("name", "reference", "current"), _cases(), ids=[c[0] for c in _cases()])
def test_ks_from_sql_counts_equals_scipy_on_the_full_sample(
    name: str, reference: np.ndarray, current: np.ndarray
) -> None:
    with duckdb.connect() as conn:
        conn.execute("CREATE TABLE day (pass_probability DOUBLE)")
        conn.executemany("INSERT INTO day VALUES (?)", [[float(v)] for v in current])
        got = ks_sql.ks_test_sql(conn, reference, "day", "pass_probability")
    expected = drift.ks_test(reference, current)
    assert got[0] == pytest.approx(expected[0], abs=1e-12)
    assert got[1] == pytest.approx(expected[1], rel=1e-9, abs=1e-300)


def test_an_empty_day_is_not_judged() -> None:
    with duckdb.connect() as conn:
        conn.execute("CREATE TABLE day (pass_probability DOUBLE)")
        assert ks_sql.ks_test_sql(conn, np.array([0.2, 0.4]), "day", "pass_probability") == (0.0, 1.0)
