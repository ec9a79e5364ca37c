"""The two-sample KS test of ``drift.ks_test``, exact, with the current sample left in DuckDB.

Why: ``prediction_drift`` compares a few hundred held-out reference probabilities with every prediction of the
day. Loading ten million probabilities into pandas to hand them to ``scipy.stats.ks_2samp`` costs memory that
grows with the day; the statistic needs far less. scipy's D is ``max |F_ref(x) - F_cur(x)|`` over the pooled
points (right-continuous empirical CDFs). Between two consecutive distinct reference values ``r_i <= x <
r_{i+1}`` the reference CDF is constant and the current CDF only grows, so ``|F_ref - F_cur|`` over the
current points of that interval is largest at one of its ends: at ``r_i`` itself, or at the last current point
below ``r_{i+1}``, whose CDF is ``count(current < r_{i+1}) / n``. Before ``r_1`` the reference CDF is 0. So D
needs, per distinct reference value, the number of current values below it and equal to it: one ASOF join
and a GROUP BY over the day, whose result has as many rows as the reference has distinct values. The
p-value is scipy's own asymptotic formula on the same D, so the verdict is exactly ``drift.ks_test``'s
(``tests/monitoring/test_ks_sql.py``), however large the day.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import stats


def ks_counts(
    conn: Any, reference: np.ndarray, relation: str, column: str
) -> tuple[np.ndarray, np.ndarray, int]:
    """Per sorted distinct reference value: (current values <= it, current values < it), and the current size.

    ``relation`` is a table name or a parenthesised query the caller built (never user input).
    """
    values = np.unique(np.asarray(reference, dtype=float))
    rows = conn.execute(
        f"""WITH ref AS (SELECT unnest(?::DOUBLE[]) AS r),
                 cur AS (SELECT CAST("{column}" AS DOUBLE) AS c FROM {relation})
            SELECT ref.r, count(*) AS n_bin, count(*) FILTER (WHERE cur.c = ref.r) AS n_eq
            FROM cur ASOF LEFT JOIN ref ON cur.c >= ref.r
            GROUP BY ref.r""",
        [values.tolist()],
    ).fetchall()
    below = 0
    in_bin = np.zeros(values.size, dtype=np.int64)
    equal = np.zeros(values.size, dtype=np.int64)
    for r, n_bin, n_eq in rows:
        if r is None:
            below = int(n_bin)
            continue
        at = int(np.searchsorted(values, r))
        in_bin[at], equal[at] = n_bin, n_eq
    # Bin i holds r_i <= c < r_{i+1}: the values below r_i are those of the earlier bins.
    under = below + np.concatenate([[0], np.cumsum(in_bin)[:-1]])
    return under + equal, under, int(below + in_bin.sum())


def ks_test_sql(conn: Any, reference: np.ndarray, relation: str, column: str) -> tuple[float, float]:
    """``drift.ks_test(reference, current)`` where current is ``column`` of ``relation`` in DuckDB."""
    ref = np.sort(np.asarray(reference, dtype=float))
    at_most, below, n = ks_counts(conn, ref, relation, column)
    if ref.size == 0 or n == 0:
        return 0.0, 1.0
    values = np.unique(ref)
    f_ref = np.searchsorted(ref, values, side="right") / ref.size
    f_ref_before = np.concatenate([[0.0], f_ref[:-1]])  # the reference CDF just below each distinct value
    d = max(
        float(np.max(np.abs(f_ref - at_most / n))),  # at each reference value
        float(np.max(np.abs(f_ref_before - below / n))),  # at the last current value below it
    )
    m, k = sorted([float(ref.size), float(n)], reverse=True)
    p = float(np.clip(stats.kstwo.sf(d, np.round(m * k / (m + k))), 0, 1))
    return d, p
