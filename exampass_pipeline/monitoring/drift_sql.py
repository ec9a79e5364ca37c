"""``drift.data_drift`` with the day left in DuckDB: the same tests on the full day, from a few hundred rows.

Why: every statistic of the data-drift rule is a function of small aggregates of the day. The chi-square
tests need category counts; the Welch tests need the mean and variance of each score's residual under the
reference's background model, and a residual depends on the row only through its five categories (the cell)
and its score. So per cell (at most 2 x 5 x 6 x 2 x 2 = 240) the count, the sum and the sum of squares of
each score give every residual moment exactly: for a cell with fitted value f, ``sum(y - f) = S - n f`` and
``sum((y - f)^2) = Q - 2 f S + n f^2``. The verdict is the full day's, never a sample's, so it is exactly as
strict as ``data_drift`` on any day (up to float rounding of the moments;
``tests/monitoring/test_drift_sql.py``), and the memory is that of 240 rows however large the day.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
from scipy import special

from exampass_pipeline.contract import schema
from exampass_pipeline.monitoring import drift, ks_sql


def cell_aggregates(conn: Any, relation: str) -> pd.DataFrame:
    """Count, sum and sum of squares of each score per combination of the categorical features."""
    cats = ", ".join(f'"{c}"' for c in schema.CATEGORICAL_FEATURES)
    sums = ", ".join(
        f'sum("{s}")::DOUBLE AS "{s}__sum", sum("{s}"::DOUBLE * "{s}") AS "{s}__sq"'
        for s in schema.NUMERIC_FEATURES
    )
    frame: pd.DataFrame = conn.execute(
        f"SELECT {cats}, count(*) AS n, {sums} FROM {relation} GROUP BY {cats}"
    ).df()
    return frame


def _welch_moments(ref: np.ndarray, mean: float, var: float, n: int) -> tuple[float, float]:
    """``drift.welch_t`` with the current sample given by its mean, variance (ddof=1) and size."""
    n_ref = ref.size
    if n_ref < 2 or n < 2:
        return 0.0, 1.0
    var_ref, var_cur = ref.var(ddof=1) / n_ref, var / n
    diff = mean - ref.mean()
    se2 = var_ref + var_cur
    if se2 <= 0:
        return 0.0, 1.0 if diff == 0 else 0.0
    t = diff / math.sqrt(se2)
    dof = se2 * se2 / (var_ref * var_ref / (n_ref - 1) + var_cur * var_cur / (n - 1))
    return float(t), float(2.0 * special.stdtr(dof, -abs(t)))


def data_drift_sql(
    reference: pd.DataFrame, conn: Any, relation: str, *, alpha: float = 0.05, min_rows: int = 50
) -> drift.DriftDecision:
    """``drift.data_drift(reference, current)`` where current is ``relation`` (complete, validated rows)."""
    drift._check_args(alpha, min_rows)
    cells = cell_aggregates(conn, relation)
    counts = cells["n"].to_numpy(dtype=float)
    n_cur = int(counts.sum())
    codes_ref = {c: drift._codes(reference, c, "reference") for c in schema.CATEGORICAL_FEATURES}
    codes_cell = {c: drift._codes(cells, c, "current") for c in schema.CATEGORICAL_FEATURES}
    results: dict[str, dict[str, Any]] = {}
    for name in schema.CATEGORICAL_FEATURES:
        cur = np.bincount(codes_cell[name], weights=counts, minlength=len(schema.CATEGORIES[name]))
        statistic, p_value, _ = drift.chi2_homogeneity(drift._counts(codes_ref[name], name), cur)
        results[name] = {"test": "chi2_homogeneity", "statistic": statistic, "p_value": p_value}
    x_ref = drift._design(codes_ref, len(reference))
    x_cell = drift._design(codes_cell, len(cells))
    for name in schema.NUMERIC_FEATURES:
        y_ref = drift._scores(reference, name, "reference")
        ok_ref = np.isfinite(y_ref)
        s, q = cells[f"{name}__sum"].to_numpy(dtype=float), cells[f"{name}__sq"].to_numpy(dtype=float)
        if ok_ref.sum() > x_ref.shape[1]:
            coef = drift._fit(x_ref[ok_ref], y_ref[ok_ref])
            res_ref = y_ref[ok_ref] - x_ref[ok_ref] @ coef
            fitted = x_cell @ coef
        else:  # as data_drift: too few reference rows for the background model, compare raw scores
            res_ref, fitted = y_ref[ok_ref], np.zeros(len(cells))
        total = float((s - counts * fitted).sum())
        squares = float((q - 2 * fitted * s + counts * fitted * fitted).sum())
        mean = total / n_cur if n_cur else math.nan
        var = (squares - n_cur * mean * mean) / (n_cur - 1) if n_cur > 1 else math.nan
        statistic, p_value = _welch_moments(res_ref, mean, var, n_cur)
        results[name] = {
            "test": "welch_t_residual",
            "statistic": statistic,
            "p_value": p_value,
            "mean_shift": float(mean - res_ref.mean()) if n_cur and res_ref.size else math.nan,
        }
    for name, col in results.items():
        col["weight"] = drift.WEIGHTS[name]
    return drift._judge(
        results,
        n_reference=len(reference),
        n_current=n_cur,
        alpha=alpha,
        min_rows=min_rows,
        method=drift.METHOD,
        what="data",
    )


def prediction_drift_sql(
    reference_probs: Any, conn: Any, relation: str, *, alpha: float = 0.05, min_rows: int = 50
) -> drift.DriftDecision:
    """``drift.prediction_drift(reference_probs, relation's pass_probability)``: the KS test exact from
    counts (``ks_sql``), the same refusal of a value that is not a probability, the same decision."""
    drift._check_args(alpha, min_rows)
    ref = drift._probabilities(reference_probs, "reference")
    column = drift.PROBABILITY
    n, missing, mean, bad = conn.execute(
        f'SELECT count(*), count(*) - count("{column}"), avg("{column}"), '
        f'min("{column}") FILTER (WHERE NOT ("{column}" BETWEEN 0 AND 1) OR isnan("{column}")) FROM {relation}'
    ).fetchone() or (0, 0, None, None)
    if missing or bad is not None:  # as drift._probabilities: fail closed, never judge around a bad value
        raise ValueError(f"current.{column}: {math.nan if missing else bad!r} is not a probability in [0, 1]")
    statistic, p_value = ks_sql.ks_test_sql(conn, ref, relation, column)
    results = {
        column: {
            "test": "ks",
            "statistic": statistic,
            "p_value": p_value,
            "weight": 1.0,
            "reference_mean": float(ref.mean()) if ref.size else math.nan,
            "current_mean": float(mean) if n and mean is not None else math.nan,
        }
    }
    return drift._judge(
        results,
        n_reference=int(ref.size),
        n_current=int(n),
        alpha=alpha,
        min_rows=min_rows,
        method=drift.PREDICTION_METHOD,
        what="prediction",
    )
