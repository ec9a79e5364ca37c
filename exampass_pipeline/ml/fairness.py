"""Fairness: who gets flagged, group by group, and the equal-opportunity decision rule. No dagster.

The outcome ExamPass must catch is a *fail*, and the flag is ``not predicted_pass``. With pass = 1 (the
label's orientation everywhere in ExamPass), "a failing student is flagged as often whatever their group"
is **true-negative-rate parity**: fairlearn's ``true_negative_rate`` with ``pos_label=True`` is the
fail-class recall, and ``false_negative_rate`` is the false-alarm rate (a passing student flagged).

Two halves:

* **Assessment** (``assess``, ``group_metrics``): fairlearn's ``MetricFrame`` over every categorical
  feature at once. Per group: n, fails, fail-class recall with its 95 % Wilson interval, false-alarm rate,
  flag rate, precision and accuracy, and calibration (mean P(fail) against the observed fail rate). Used by
  ``model_evaluation`` (``Assessment.metrics/table/markdown``), the segment check and the daily report.
* **The decision rule** (``fit_rule``): one pass-probability cut-off per group, chosen so that the
  *expected* fail-class recall is the same in every group. Expected, because it is computed from the model's
  own calibrated P(fail) over a large reference sample, with no labels: at cut-off t, group g's expected
  recall is sum(P(fail) of its students flagged) / sum(P(fail) of its students). The few labelled fails of a
  100-row split (13) would set a cut-off per group by chance; the model's probabilities over 100,000
  reference students do not. The common target recall is the one with the largest expected F1(fail). The
  rule is deterministic: the same student always gets the same answer (a randomised ``ThresholdOptimizer``
  would not).

The reference sample (``reference_students``) is drawn from the population model of
``exampass_pipeline.ml.synthetic`` refitted on the training rows themselves (never the test rows): it keeps the
training table's category mix and score structure, but is large enough that every lunch x gender x
race/ethnicity group holds thousands of students. ``docs/model.md`` has the measured alternatives.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from exampass_pipeline.contract import schema
from exampass_pipeline.contract.decision import EQUAL_FAIL_RECALL, MAX_F1, DecisionRule
from exampass_pipeline.ml import synthetic

FAIRNESS_FEATURES: tuple[str, ...] = (
    schema.GENDER,
    schema.RACE_ETHNICITY,
    schema.PARENTAL_EDUCATION,
    schema.LUNCH,
    schema.TEST_PREP,
)
# The groups the served rule equalises (see docs/model.md for why these three, race/ethnicity included).
RULE_FEATURES: tuple[str, ...] = (schema.LUNCH, schema.GENDER, schema.RACE_ETHNICITY)
REFERENCE_ROWS = 100_000
TARGET_GRID: np.ndarray = np.round(np.arange(0.50, 0.9851, 0.005), 3)
MIN_FAIL_FOR_GAP = 5  # a group needs this many fails before its recall enters a gap (see Assessment)
GROUP_COLUMNS: tuple[str, ...] = (
    "n",
    "n_fail",
    "fail_recall",
    "fail_recall_low",
    "fail_recall_high",
    "false_alarm_rate",
    "flag_rate",
    "precision_fail",
    "accuracy",
    "mean_p_fail",
    "fail_rate",
)


# -----------------------------------------------------------------------------------------------------------
# The reference sample
# -----------------------------------------------------------------------------------------------------------


def reference_students(
    table: pd.DataFrame, *, n: int = REFERENCE_ROWS, seed: int = 0
) -> tuple[pd.DataFrame, str]:
    """A large, label-free sample of the population the training table comes from, and how it was made.

    ``synthetic.fit_params`` refitted on ``table`` (category shares, score effects, residual copula), then
    ``n`` students drawn from it. A table the population model cannot be fitted on (no maths score, under 50
    rows) is used as it is.
    """
    try:
        params = synthetic.fit_params(table)
    except (ValueError, KeyError, np.linalg.LinAlgError) as exc:
        return table.reset_index(drop=True), f"the {len(table)} training rows themselves ({exc})"
    frame = synthetic.sample(int(n), seed=int(seed), params=params)
    return frame, f"{n} students drawn from the population model refitted on {len(table)} training rows"


# -----------------------------------------------------------------------------------------------------------
# Fitting the rule
# -----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Curve:
    """Expected fail-class recall of one group as its cut-off rises (students sorted by P(pass))."""

    p_sorted: np.ndarray
    cum_fails: np.ndarray  # expected fails among the k most likely to fail

    @classmethod
    def of(cls, p_pass: np.ndarray) -> _Curve:
        p = np.sort(np.asarray(p_pass, dtype=float))
        return cls(p, np.cumsum(1.0 - p))

    @property
    def expected_fails(self) -> float:
        return float(self.cum_fails[-1]) if len(self.cum_fails) else 0.0

    def at_recall(self, target: float) -> tuple[float, float, int]:
        """(cut-off, expected fails caught, students flagged) for the smallest cut-off reaching ``target``."""
        total = self.expected_fails
        if total <= 0:
            return 0.0, 0.0, 0
        k = min(int(np.searchsorted(self.cum_fails / total, target)), len(self.p_sorted) - 1)
        # Flag the k + 1 most likely to fail: the cut-off sits half-way to the next student.
        upper = self.p_sorted[k + 1] if k + 1 < len(self.p_sorted) else min(1.0, self.p_sorted[k] + 1e-9)
        return float((self.p_sorted[k] + upper) / 2), float(self.cum_fails[k]), k + 1


def _group_codes(frame: pd.DataFrame, features: Sequence[str]) -> tuple[np.ndarray, list[tuple[str, ...]]]:
    """An integer per row naming its combination of ``features``, and the combinations in code order."""
    if not features:
        return np.zeros(len(frame), dtype=np.int64), [()]
    parts = [pd.Categorical(frame[f].astype(str), categories=list(schema.CATEGORIES[f])) for f in features]
    code = np.zeros(len(frame), dtype=np.int64)
    for part in parts:
        code = code * len(part.categories) + part.codes.astype(np.int64)
    sizes = [len(schema.CATEGORIES[f]) for f in features]
    cells = [
        tuple(schema.CATEGORIES[f][i] for f, i in zip(features, idx, strict=True))
        for idx in np.ndindex(*sizes)
    ]
    return code, cells


def fit_rule(
    p_pass: Any,
    reference: pd.DataFrame,
    features: Sequence[str] = RULE_FEATURES,
    *,
    grid: np.ndarray = TARGET_GRID,
    fitted_on: str = "",
) -> DecisionRule:
    """The decision rule with the largest expected F1(fail), under equal expected fail recall per group.

    ``p_pass`` are the model's pass probabilities for the ``reference`` students. With no ``features`` this
    is the single cut-off with the largest expected F1(fail). Otherwise every combination of ``features``
    gets its own cut-off at the common target recall, and the rule's ``threshold`` (its fallback, never
    needed once every combination has a cut-off) is the single cut-off reaching the same recall overall.
    Expected F1 = 2 E[caught] / (E[flagged] + E[fails]), all from the probabilities.
    """
    p = np.asarray(p_pass, dtype=float)
    if p.shape != (len(reference),):
        raise ValueError(f"p_pass: expected {len(reference)} probabilities, got shape {p.shape}")
    codes, cells = _group_codes(reference, features)
    curves = {i: _Curve.of(p[codes == i]) for i in np.unique(codes)}
    total = sum(c.expected_fails for c in curves.values())
    best: tuple[float, float] | None = None
    for target in grid:
        caught = flagged = 0.0
        for curve in curves.values():
            _, c, k = curve.at_recall(float(target))
            caught, flagged = caught + c, flagged + k
        f1 = 2 * caught / (flagged + total) if flagged + total > 0 else 0.0
        if best is None or f1 > best[0]:
            best = (f1, float(target))
    assert best is not None
    target = best[1]
    single = _Curve.of(p).at_recall(target)[0]
    if not features:
        return DecisionRule.single(single, criterion=MAX_F1, fitted_on=fitted_on)
    cutoffs = {cells[i]: curve.at_recall(target)[0] for i, curve in curves.items() if len(curve.p_sorted)}
    return DecisionRule(
        threshold=single,
        features=tuple(features),
        cutoffs=cutoffs,
        criterion=EQUAL_FAIL_RECALL,
        target_fail_recall=target,
        fitted_on=fitted_on,
    )


def expected_figures(
    p_pass: Any, reference: pd.DataFrame, rule: DecisionRule, features: Sequence[str] = FAIRNESS_FEATURES
) -> dict[str, float]:
    """What a rule should do on the population, from the model's own probabilities (no labels).

    Expected F1(fail), fail recall and flag rate overall, and per feature the largest gap in expected fail
    recall between its groups. The model card shows these side by side for the rules compared.
    """
    p = np.asarray(p_pass, dtype=float)
    q = 1.0 - p
    flagged = p < rule.for_frame(reference)
    caught = float((q * flagged).sum())
    out = {
        "expected_f1_fail": 2 * caught / (float(flagged.sum()) + float(q.sum())),
        "expected_fail_recall": caught / float(q.sum()),
        "expected_flag_rate": float(flagged.mean()),
    }
    for feature in features:
        values = reference[feature].astype(str).to_numpy()
        recalls = [
            float((q * flagged)[values == g].sum() / q[values == g].sum())
            for g in schema.CATEGORIES[feature]
            if q[values == g].sum() > 0
        ]
        out[f"expected_fail_recall_gap_{feature}"] = max(recalls) - min(recalls) if recalls else math.nan
    return out


# -----------------------------------------------------------------------------------------------------------
# Assessment: fairlearn's MetricFrame
# -----------------------------------------------------------------------------------------------------------


def _n_fail(y_true: Any, y_pred: Any) -> float:
    return float((~np.asarray(y_true, dtype=bool)).sum())


def _flag_rate(y_true: Any, y_pred: Any) -> float:
    return float((~np.asarray(y_pred, dtype=bool)).mean())


def _precision_fail(y_true: Any, y_pred: Any) -> float:
    flagged = ~np.asarray(y_pred, dtype=bool)
    return float((~np.asarray(y_true, dtype=bool))[flagged].mean()) if flagged.any() else math.nan


def _accuracy(y_true: Any, y_pred: Any) -> float:
    return float((np.asarray(y_true, dtype=bool) == np.asarray(y_pred, dtype=bool)).mean())


def _fail_rate(y_true: Any, y_pred: Any) -> float:
    return float((~np.asarray(y_true, dtype=bool)).mean())


def _mean_p_fail(y_true: Any, y_pred: Any, p_fail: Any) -> float:
    return float(np.mean(p_fail))


def wilson_interval(
    successes: np.ndarray, n: np.ndarray, level: float = 0.95
) -> tuple[np.ndarray, np.ndarray]:
    """Two-sided Wilson score interval of a proportion, elementwise (NaN where n is 0)."""
    z = float(stats.norm.ppf(0.5 + level / 2))
    k, m = np.asarray(successes, dtype=float), np.asarray(n, dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = k / m
        centre = (p + z * z / (2 * m)) / (1 + z * z / m)
        half = z * np.sqrt(p * (1 - p) / m + z * z / (4 * m * m)) / (1 + z * z / m)
    return np.clip(centre - half, 0.0, 1.0), np.clip(centre + half, 0.0, 1.0)


def group_metrics(
    y_pass: Any, predicted_pass: Any, groups: pd.DataFrame, p_pass: Any | None = None
) -> pd.DataFrame:
    """Per (feature, group) figures from one fairlearn ``MetricFrame`` over every column of ``groups``.

    The rows are stacked once per feature with the group label "feature=value", so one MetricFrame covers
    all features (a frame per feature costs five times as long for the same numbers). Index: (feature,
    group) in schema order; columns: GROUP_COLUMNS (mean_p_fail is NaN without ``p_pass``). Recall is NaN in
    a group without fails, the false-alarm rate in one without passes.
    """
    from fairlearn.metrics import MetricFrame, count, false_negative_rate, true_negative_rate

    y = np.asarray(y_pass, dtype=bool)
    pred = np.asarray(predicted_pass, dtype=bool)
    q = np.full(len(y), np.nan) if p_pass is None else 1.0 - np.asarray(p_pass, dtype=float)
    features = list(groups.columns)
    if len(pred) != len(y) or len(q) != len(y) or len(groups) != len(y):
        raise ValueError("group_metrics: labels, decisions, probabilities and groups differ in length")
    if not len(y) or not features:
        return pd.DataFrame(
            columns=list(GROUP_COLUMNS), index=pd.MultiIndex.from_tuples([], names=["feature", "group"])
        )
    label = np.concatenate([(f + "=" + groups[f].astype(str)).to_numpy(dtype=object) for f in features])
    k = len(features)
    frame = MetricFrame(
        metrics={
            "n": count,
            "n_fail": _n_fail,
            "fail_recall": functools.partial(true_negative_rate, pos_label=True),
            "false_alarm_rate": functools.partial(false_negative_rate, pos_label=True),
            "flag_rate": _flag_rate,
            "precision_fail": _precision_fail,
            "accuracy": _accuracy,
            "mean_p_fail": _mean_p_fail,
            "fail_rate": _fail_rate,
        },
        y_true=np.tile(y, k),
        y_pred=np.tile(pred, k),
        sensitive_features=pd.Series(label, name="group"),
        sample_params={"mean_p_fail": {"p_fail": np.tile(q, k)}},
    )
    table = frame.by_group.astype(float)
    split = [str(s).split("=", 1) for s in table.index]
    table.index = pd.MultiIndex.from_tuples([(f, g) for f, g in split], names=["feature", "group"])
    table.loc[table["n_fail"] == 0, "fail_recall"] = np.nan
    table.loc[table["n"] == table["n_fail"], "false_alarm_rate"] = np.nan
    caught = np.rint(table["fail_recall"].fillna(0) * table["n_fail"])
    table["fail_recall_low"], table["fail_recall_high"] = wilson_interval(caught, table["n_fail"])
    order = sorted(table.index, key=lambda fg: _group_order(features, fg))
    out: pd.DataFrame = table.loc[order, list(GROUP_COLUMNS)]
    return out


def _group_order(features: Sequence[str], key: tuple[str, str]) -> tuple[int, int, str]:
    feature, group = key
    levels = schema.CATEGORIES.get(feature, ())
    return features.index(feature), levels.index(group) if group in levels else len(levels), group


@dataclass
class Assessment:
    """Per-group figures of one scored table (``group_metrics``), with the gaps and flat metrics derived.

    A gap is the largest minus the smallest value among groups holding at least ``min_fail`` fails: one
    missed student among three moves a recall by a third, which is noise, not a finding. The table keeps
    every group, with its Wilson interval, so the small ones are visible.
    """

    by_group: pd.DataFrame
    overall: dict[str, float]
    features: tuple[str, ...]
    min_fail: int = MIN_FAIL_FOR_GAP

    def gap(self, feature: str, column: str = "fail_recall") -> float:
        rows = self.by_group.loc[feature]
        values = rows.loc[rows["n_fail"] >= self.min_fail, column].dropna()
        return float(values.max() - values.min()) if len(values) >= 2 else math.nan

    def calibration_gap(self, feature: str) -> float:
        """The largest |mean P(fail) - observed fail rate| among the feature's groups."""
        rows = self.by_group.loc[feature]
        return float((rows["mean_p_fail"] - rows["fail_rate"]).abs().max())

    def metrics(self, prefix: str = "test_") -> dict[str, float]:
        """Flat numbers for MLflow (``test_fail_recall_gap_lunch`` ...); NaN where a gap is undefined."""
        out: dict[str, float] = {}
        for feature in self.features:
            out[f"{prefix}fail_recall_gap_{feature}"] = self.gap(feature)
            out[f"{prefix}false_alarm_gap_{feature}"] = self.gap(feature, "false_alarm_rate")
            out[f"{prefix}flag_rate_gap_{feature}"] = self.gap(feature, "flag_rate")
            out[f"{prefix}calibration_gap_{feature}"] = self.calibration_gap(feature)
        recall_gaps = [out[f"{prefix}fail_recall_gap_{f}"] for f in self.features]
        out[f"{prefix}fail_recall_gap_max"] = (
            float(np.nanmax(recall_gaps)) if not all(map(math.isnan, recall_gaps)) else math.nan
        )
        return out

    def table(self) -> pd.DataFrame:
        """One row per (feature, group), flat columns: what ``mlflow.log_table`` stores."""
        return self.by_group.reset_index()

    def markdown(self) -> str:
        """The per-group table and the gaps, for Dagster metadata and the model card."""
        shown = self.table().copy()
        for column in GROUP_COLUMNS[2:]:
            shown[column] = shown[column].map(lambda v: "n/a" if pd.isna(v) else f"{v:.2f}")
        shown["recall (95% CI)"] = (
            shown["fail_recall"] + " (" + shown["fail_recall_low"] + "-" + shown["fail_recall_high"] + ")"
        )
        shown["n"] = shown["n"].astype(int)
        shown["n_fail"] = shown["n_fail"].astype(int)
        columns = [
            "feature",
            "group",
            "n",
            "n_fail",
            "recall (95% CI)",
            "false_alarm_rate",
            "flag_rate",
            "mean_p_fail",
            "fail_rate",
        ]
        header = [
            "feature",
            "group",
            "n",
            "fails",
            "fail recall (95% CI)",
            "false alarms",
            "flag rate",
            "mean P(fail)",
            "fail rate",
        ]
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(str(row[c]) for c in columns) + " |" for _, row in shown.iterrows()]
        gaps = ", ".join(
            f"{f} {self.gap(f):.2f}" if not math.isnan(self.gap(f)) else f"{f} n/a" for f in self.features
        )
        lines += ["", f"Largest fail-recall gap (groups with >= {self.min_fail} fails): {gaps}."]
        return "\n".join(lines)


def assess(
    y_pass: Any,
    p_pass: Any,
    predicted_pass: Any,
    frame: pd.DataFrame,
    *,
    features: Sequence[str] = FAIRNESS_FEATURES,
    min_fail: int = MIN_FAIL_FOR_GAP,
) -> Assessment:
    """Fairness of one scored table: ``y_pass`` the true labels, ``p_pass`` the served probabilities,
    ``predicted_pass`` the served decisions (``LoadedModel.predicted_pass``), ``frame`` the students."""
    missing = [f for f in features if f not in frame.columns]
    if missing:
        raise ValueError(f"assess: missing column(s) {', '.join(missing)}")
    y = np.asarray(y_pass, dtype=bool)
    pred = np.asarray(predicted_pass, dtype=bool)
    p = np.asarray(p_pass, dtype=float)
    by_group = group_metrics(y, pred, frame[list(features)].reset_index(drop=True), p)
    fails = ~y
    overall = {
        "n": float(len(y)),
        "n_fail": float(fails.sum()),
        "fail_recall": float((~pred)[fails].mean()) if fails.any() else math.nan,
        "false_alarm_rate": float((~pred)[~fails].mean()) if (~fails).any() else math.nan,
        "flag_rate": float((~pred).mean()) if len(y) else math.nan,
        "mean_p_fail": float((1 - p).mean()) if len(y) else math.nan,
        "fail_rate": float(fails.mean()) if len(y) else math.nan,
    }
    return Assessment(by_group, overall, tuple(features), min_fail)


def compare_rules(p_pass: Any, reference: pd.DataFrame, rules: Mapping[str, DecisionRule]) -> pd.DataFrame:
    """Expected figures (``expected_figures``) of several rules on the same reference, one row per rule."""
    return pd.DataFrame({name: expected_figures(p_pass, reference, rule) for name, rule in rules.items()}).T
