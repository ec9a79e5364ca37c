"""The drift rule: is today's batch of students drawn from the population the champion was trained on?

Why not Evidently's default rule
--------------------------------
Evidently's DataDriftPreset tests every column at p < 0.05, and read as "any column drifted" it alarms as
soon as one of the seven features crosses that line. Seven tests at 5 % each give up to ~30 % false alarms,
and its chi-square treats the reference frequencies as the true population (goodness of fit), ignoring that
the 700-row reference is itself a sample. On undrifted batches of this dataset that rule fires on 28-40 %
of days (n = 50-300), which teaches people to ignore the alert. ``benchmarks/drift_checks.py`` measures both.

The rule (``METHOD``)
---------------------
A batch is asked two questions, with half of the error budget ``alpha`` each:

1. *Did the mix of students change?* One Pearson chi-square test of **homogeneity** per categorical
   feature, on the 2 x k table of reference and current counts, so the sampling noise of both samples
   counts. Small counts: the rarest categories are pooled with the next rarest until every cell of the
   smaller sample expects at least 5 students, the classical condition for the chi-square approximation.
   Without it, at 50 rows ``group A`` (9 %) and ``master's degree`` (6 %) expect 3-4 students.

2. *Did students score differently from students of the same background?* For each score a linear model
   ``score ~ categorical features`` is fitted on the reference; the mean residual of the current batch is
   compared with the reference's by Welch's t-test. Residuals, because the background explains part of the
   score spread (SD 14.6 -> 12.4 points): a 5-point decline is 0.33 SD of raw scores but 0.40 SD of
   residuals, and a score change caused only by a new mix is already question 1's. A test of level,
   because that is what moves this model's predictions (pass probability rises monotonically with the
   scores); changes of spread or shape surface in ``prediction_drift``. Measured power on the synthetic
   5-point ``score_decline`` at n = 100: KS on raw scores 54 %, Anderson-Darling on residuals ~91 %, this
   test 93.6 %. KS is also a poor fit for whole-point scores: with ties its p-values are conservative (3.4 %
   rejections at a nominal 5 % here), which wastes power.

The seven p-values are combined with **weighted Holm** (Holm 1979): in Holm's step-down order, hypothesis i
is tested at the share ``w_i / sum(remaining w)`` of ``alpha``. The weights are fixed in advance, 1 per
categorical and 2.5 per score, i.e. half of ``alpha`` per question; the scores get the larger share per test
because they are the model's strongest inputs. The batch fails when any weighted-Holm adjusted p-value is
below ``alpha``; those columns are reported as drifted.

Why the false-alarm rate is controlled: weighted Holm bounds the probability that *any* column is flagged
when none drifted (the family-wise error rate) by ``alpha``, under *arbitrary* dependence between the
tests, provided each p-value is valid. That matters here: the reading and writing residuals are strongly
correlated and all tests share one reference, so a combination that assumes independence (Fisher's) would
not hold. Per-test validity comes from the pooling rule (chi-square) and the central limit theorem for
means of >= 50 residuals (Welch). The benchmark measures 3.5 %, 3.3 % and 2.6 % false alarms at n = 50,
100 and 300 on disjoint random splits of the real file with ``alpha`` = 5 %; against one *fixed* training
split (as in production) and fresh synthetic students at n = 100, it stayed within 1.7-3.7 % for each of
10 splits.

3. A minimum sample size. Below ``min_rows`` current (or reference) rows the batch is not judged: status
   ``"warn"`` (which counts as passed) with a reason saying so, because with a handful of students the
   pooled tables leave almost nothing to test and a pass would be false reassurance. The per-column
   figures are still computed for the trend tables.

``prediction_drift`` asks the same of the single column ``pass_probability`` with a two-sample KS test at
``alpha`` (conservative with ties, so still valid). Its reference should be the serving model's scores on
rows it was *not* fitted on (validation/test split): in-sample probabilities are more confident than
anything the model will see in production and would read as drift.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd
from scipy import special, stats

from exampass_pipeline.contract import schema

Status = Literal["pass", "fail", "warn"]

METHOD = "weighted-holm(chi2 homogeneity x5 @ alpha/2; welch-t of residuals given background x2 @ alpha/2)"
PREDICTION_METHOD = "ks"
PROBABILITY = "pass_probability"
MIN_EXPECTED = 5.0
# Half of alpha to the five categoricals, half to the two scores (see module docstring).
WEIGHTS: dict[str, float] = {
    **{name: 1.0 for name in schema.CATEGORICAL_FEATURES},
    **{name: 2.5 for name in schema.NUMERIC_FEATURES},
}
_LEVELS: dict[str, dict[str, int]] = {
    name: {level: i for i, level in enumerate(levels)} for name, levels in schema.CATEGORIES.items()
}
_COLUMN_KEYS = ("test", "statistic", "p_value", "adjusted_p_value", "drifted", "weight")


@dataclass
class DriftDecision:
    """The verdict of one drift check, with every per-column figure needed to explain it."""

    status: Status
    passed: bool
    n_reference: int
    n_current: int
    alpha: float
    method: str
    drifted_columns: list[str]
    columns: dict[str, dict[str, Any]] = field(default_factory=dict)
    reason: str = ""

    def to_metadata(self) -> dict[str, float | int | str]:
        """Flat scalars only, because Dagster metadata and alert payloads cannot nest.

        NaN figures are left out so an alert payload stays valid JSON.
        """
        out: dict[str, float | int | str] = {
            "status": self.status,
            "passed": int(self.passed),
            "n_reference": self.n_reference,
            "n_current": self.n_current,
            "alpha": self.alpha,
            "method": self.method,
            "n_drifted_columns": len(self.drifted_columns),
            "drifted_columns": ", ".join(self.drifted_columns) or "none",
            "reason": self.reason,
        }
        if self.columns:
            out["min_adjusted_p_value"] = min(c["adjusted_p_value"] for c in self.columns.values())
        for name, col in self.columns.items():
            out[f"{name}_test"] = col["test"]
            out[f"{name}_drifted"] = int(col["drifted"])
            for key in ("statistic", "p_value", "adjusted_p_value"):
                out[f"{name}_{key}"] = col[key]
            for key, value in col.items():
                if key not in _COLUMN_KEYS and isinstance(value, int | float):
                    out[f"{name}_{key}"] = value
        return {k: v for k, v in out.items() if not (isinstance(v, float) and v != v)}


# ---------------------------------------------------------------------------------------------------------
# Statistics
# ---------------------------------------------------------------------------------------------------------


def weighted_holm(p_values: Sequence[float], weights: Sequence[float] | None = None) -> np.ndarray:
    """Weighted Holm adjusted p-values (equal weights: plain Holm).

    Family-wise error control at any alpha under arbitrary dependence: hypothesis i is rejected at step j when
    p_i / w_i * (sum of the weights still in play) <= alpha.
    """
    p = np.asarray(p_values, dtype=float)
    m = p.size
    if m == 0:
        return p
    w = np.ones(m) if weights is None else np.asarray(weights, dtype=float)
    if w.shape != p.shape or (w <= 0).any():
        raise ValueError(f"weights: need {m} positive weights, got {list(w)}")
    w = w * m / w.sum()
    q = p / w
    order = np.argsort(q, kind="stable")
    remaining = np.cumsum(w[order][::-1])[::-1]
    adjusted = np.empty(m)
    adjusted[order] = np.maximum.accumulate(np.minimum(1.0, q[order] * remaining))
    return adjusted


def holm(p_values: Sequence[float]) -> np.ndarray:
    """Plain Holm step-down adjusted p-values."""
    return weighted_holm(p_values)


def chi2_homogeneity(
    reference: np.ndarray, current: np.ndarray, *, min_expected: float = MIN_EXPECTED
) -> tuple[float, float, int]:
    """Chi-square homogeneity test of two category-count vectors, pooling sparse categories first.

    Returns (statistic, p_value, degrees_of_freedom); p = 1 when fewer than two bins remain, since one bin
    cannot show a difference in shape.
    """
    ref = np.asarray(reference, dtype=float)
    cur = np.asarray(current, dtype=float)
    n_ref, n_cur = ref.sum(), cur.sum()
    if n_ref == 0 or n_cur == 0:
        return 0.0, 1.0, 0
    share_small = min(n_ref, n_cur) / (n_ref + n_cur)
    bins = sorted((r + c, r, c) for r, c in zip(ref.tolist(), cur.tolist(), strict=True) if r + c > 0)
    # Pool the rarest bin into the next rarest until every cell of the smaller sample expects min_expected.
    while len(bins) > 1 and bins[0][0] * share_small < min_expected:
        (t0, r0, c0), (t1, r1, c1) = bins[0], bins[1]
        bins = sorted([(t0 + t1, r0 + r1, c0 + c1), *bins[2:]])
    if len(bins) < 2:
        return 0.0, 1.0, 0
    observed = np.array([[b[1] for b in bins], [b[2] for b in bins]])
    expected = np.outer([n_ref, n_cur], observed.sum(axis=0)) / (n_ref + n_cur)
    statistic = float(((observed - expected) ** 2 / expected).sum())
    dof = len(bins) - 1
    return statistic, float(special.chdtrc(dof, statistic)), dof


def welch_t(reference: np.ndarray, current: np.ndarray) -> tuple[float, float]:
    """Welch's two-sample t-test of the current level against the reference's (two-sided).

    Written out rather than via scipy.stats.ttest_ind, whose input handling costs ~30x the arithmetic and
    the benchmark runs this thousands of times.
    """
    n_ref, n_cur = reference.size, current.size
    if n_ref < 2 or n_cur < 2:
        return 0.0, 1.0
    var_ref = reference.var(ddof=1) / n_ref
    var_cur = current.var(ddof=1) / n_cur
    diff = current.mean() - reference.mean()
    se2 = var_ref + var_cur
    if se2 <= 0:
        return 0.0, 1.0 if diff == 0 else 0.0
    t = diff / math.sqrt(se2)
    dof = se2 * se2 / (var_ref * var_ref / (n_ref - 1) + var_cur * var_cur / (n_cur - 1))
    return float(t), float(2.0 * special.stdtr(dof, -abs(t)))


def ks_test(reference: np.ndarray, current: np.ndarray) -> tuple[float, float]:
    """Two-sample KS; with ties its p-value is conservative (module docstring), so still valid."""
    if reference.size == 0 or current.size == 0:
        return 0.0, 1.0
    result = stats.ks_2samp(reference, current, method="asymp")
    return float(result.statistic), float(result.pvalue)


# ---------------------------------------------------------------------------------------------------------
# Input handling
# ---------------------------------------------------------------------------------------------------------


def _require_columns(frame: pd.DataFrame, columns: Sequence[str], which: str) -> None:
    if not isinstance(frame, pd.DataFrame):
        raise TypeError(f"{which}: expected a pandas DataFrame, got {type(frame).__name__}")
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(
            f"{which}: missing column(s) {', '.join(missing)}; drift is tested on {list(columns)}"
        )


def _scores(frame: pd.DataFrame, name: str, which: str) -> np.ndarray:
    series = frame[name]
    if pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series):
        return series.to_numpy(dtype=float, na_value=np.nan)
    values = pd.to_numeric(series, errors="coerce")
    bad = values.isna() & series.notna()
    if bad.any():
        raise ValueError(f"{which}.{name}: {series[bad].iloc[0]!r} is not a number")
    return values.to_numpy(dtype=float)


def _codes(frame: pd.DataFrame, name: str, which: str) -> np.ndarray:
    """Level positions in schema order (-1 = missing); an unknown spelling is an error, not a new level.

    A dict lookup per value: pandas' Categorical costs ~1 ms of setup per column, most of a batch's budget.
    """
    lookup = _LEVELS[name]
    values = frame[name].tolist()
    codes = np.array([lookup.get(v, -1) for v in values], dtype=np.int64)
    if (codes < 0).any():
        for value, code in zip(values, codes.tolist(), strict=True):
            if code < 0 and not pd.isna(value):
                raise ValueError(
                    f"{which}.{name}: unknown category {value!r}; allowed: "
                    f"{', '.join(map(repr, schema.CATEGORIES[name]))}"
                )
    return codes


def _counts(codes: np.ndarray, name: str) -> np.ndarray:
    return np.bincount(codes[codes >= 0], minlength=len(schema.CATEGORIES[name])).astype(float)


def _design(codes: dict[str, np.ndarray], n: int) -> np.ndarray:
    """Intercept plus one indicator per non-baseline level: the additive 'background' model of a score."""
    columns = [np.ones((n, 1))]
    for name, c in codes.items():
        columns.append((c[:, None] == np.arange(1, len(schema.CATEGORIES[name]))[None, :]).astype(float))
    return np.hstack(columns)


def _fit(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Least squares through the normal equations with a whisper of ridge.

    The ridge keeps the system solvable when a level is absent from the reference; np.linalg.lstsq would do
    the same but spins up every BLAS thread for a 700 x 14 problem, 100x slower on a shared 2-core box.
    """
    gram = x.T @ x
    gram[np.diag_indices_from(gram)] += 1e-9 * max(len(x), 1)
    return np.linalg.solve(gram, x.T @ y)


# ---------------------------------------------------------------------------------------------------------
# Decisions
# ---------------------------------------------------------------------------------------------------------


def _judge(
    columns: dict[str, dict[str, Any]],
    *,
    n_reference: int,
    n_current: int,
    alpha: float,
    min_rows: int,
    method: str,
    what: str,
) -> DriftDecision:
    adjusted = weighted_holm(
        [c["p_value"] for c in columns.values()], [c["weight"] for c in columns.values()]
    )
    too_few = min(n_reference, n_current) < min_rows
    for col, adj in zip(columns.values(), adjusted, strict=True):
        col["adjusted_p_value"] = float(adj)
        col["drifted"] = bool(adj < alpha) and not too_few
    drifted = [name for name, col in columns.items() if col["drifted"]]
    if too_few:
        side, n = ("current", n_current) if n_current < min_rows else ("reference", n_reference)
        reason = (
            f"{what} drift not judged: only {n} {side} rows, fewer than the {min_rows} needed for a test "
            f"with a controlled false-alarm rate"
        )
        return DriftDecision("warn", True, n_reference, n_current, alpha, method, [], columns, reason)
    if drifted:
        detail = ", ".join(f"{c} (adjusted p={columns[c]['adjusted_p_value']:.2g})" for c in drifted)
        reason = (
            f"{what} drift in {len(drifted)} of {len(columns)} column(s) at alpha={alpha:g}: {detail}; "
            f"{n_current} current vs {n_reference} reference rows"
        )
        return DriftDecision("fail", False, n_reference, n_current, alpha, method, drifted, columns, reason)
    smallest = min(columns, key=lambda c: columns[c]["adjusted_p_value"])
    reason = (
        f"no {what} drift at alpha={alpha:g} over {len(columns)} column(s): smallest adjusted p="
        f"{columns[smallest]['adjusted_p_value']:.2g} ({smallest}); {n_current} current vs "
        f"{n_reference} reference rows"
    )
    return DriftDecision("pass", True, n_reference, n_current, alpha, method, [], columns, reason)


def _check_args(alpha: float, min_rows: int) -> None:
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha: {alpha!r} must be strictly between 0 and 1")
    if min_rows < 2:
        raise ValueError(f"min_rows: {min_rows!r} must be at least 2")


def data_drift(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    *,
    alpha: float = 0.05,
    min_rows: int = 50,
) -> DriftDecision:
    """Test the features of ``current`` against ``reference`` with the rule in the module docstring.

    Both frames need the columns schema.FEATURES (extra columns are ignored). Rows missing a value are left
    out of that column's test (and, for the score tests, of the background model).
    """
    _check_args(alpha, min_rows)
    _require_columns(reference, schema.FEATURES, "reference")
    _require_columns(current, schema.FEATURES, "current")
    results: dict[str, dict[str, Any]] = {}
    codes_ref = {c: _codes(reference, c, "reference") for c in schema.CATEGORICAL_FEATURES}
    codes_cur = {c: _codes(current, c, "current") for c in schema.CATEGORICAL_FEATURES}
    for name in schema.CATEGORICAL_FEATURES:
        statistic, p_value, _ = chi2_homogeneity(
            _counts(codes_ref[name], name), _counts(codes_cur[name], name)
        )
        results[name] = {"test": "chi2_homogeneity", "statistic": statistic, "p_value": p_value}

    x_ref = _design(codes_ref, len(reference))
    x_cur = _design(codes_cur, len(current))
    for name in schema.NUMERIC_FEATURES:
        y_ref, y_cur = _scores(reference, name, "reference"), _scores(current, name, "current")
        ok_ref, ok_cur = np.isfinite(y_ref), np.isfinite(y_cur)
        if ok_ref.sum() > x_ref.shape[1]:
            coef = _fit(x_ref[ok_ref], y_ref[ok_ref])
            res_ref = y_ref[ok_ref] - x_ref[ok_ref] @ coef
            res_cur = y_cur[ok_cur] - x_cur[ok_cur] @ coef
        else:  # too few reference rows to fit the background model: compare raw scores
            res_ref, res_cur = y_ref[ok_ref], y_cur[ok_cur]
        statistic, p_value = welch_t(res_ref, res_cur)
        results[name] = {
            "test": "welch_t_residual",
            "statistic": statistic,
            "p_value": p_value,
            # Which way and how far scores moved, in points, for students of the same background.
            "mean_shift": float(res_cur.mean() - res_ref.mean())
            if res_cur.size and res_ref.size
            else math.nan,
        }
    for name, col in results.items():
        col["weight"] = WEIGHTS[name]
    return _judge(
        results,
        n_reference=len(reference),
        n_current=len(current),
        alpha=alpha,
        min_rows=min_rows,
        method=METHOD,
        what="data",
    )


def _probabilities(values: Any, which: str) -> np.ndarray:
    try:
        arr = np.asarray(values, dtype=float).ravel()
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{which}.{PROBABILITY}: not numeric ({exc})") from exc
    bad = ~np.isfinite(arr) | (arr < 0.0) | (arr > 1.0)
    if bad.any():
        raise ValueError(f"{which}.{PROBABILITY}: {arr[bad][0]!r} is not a probability in [0, 1]")
    return arr


def prediction_drift(
    reference_probs: Any,
    current_probs: Any,
    *,
    alpha: float = 0.05,
    min_rows: int = 50,
) -> DriftDecision:
    """KS test on the distribution of predicted pass probabilities: catches shifts the model amplifies."""
    _check_args(alpha, min_rows)
    ref = _probabilities(reference_probs, "reference")
    cur = _probabilities(current_probs, "current")
    statistic, p_value = ks_test(ref, cur)
    results = {
        PROBABILITY: {
            "test": "ks",
            "statistic": statistic,
            "p_value": p_value,
            "weight": 1.0,
            "reference_mean": float(ref.mean()) if ref.size else float("nan"),
            "current_mean": float(cur.mean()) if cur.size else float("nan"),
        }
    }
    return _judge(
        results,
        n_reference=int(ref.size),
        n_current=int(cur.size),
        alpha=alpha,
        min_rows=min_rows,
        method=PREDICTION_METHOD,
        what="prediction",
    )
