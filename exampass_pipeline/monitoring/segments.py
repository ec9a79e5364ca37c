"""Segment quality: is a failing student flagged as often in every group? The daily fairness check.

Per group the figures come from fairlearn's ``MetricFrame`` (``fairness.group_metrics``): n, fails,
fail-class recall (true-negative rate with pass = 1), false-alarm and flag rates, precision, accuracy.

**The rule.** A day of 200 students holds about 27 failing ones, split e.g. 17/10 between the lunch groups.
A fair model's fail recall then differs between the two by +-0.2 from day to day by chance alone, so the
old rule ("warn when the gap exceeds 0.2") fired on most ordinary days, and a warning that fires every day
teaches people to ignore it. A segment now warns only when both hold:

* the gap is **statistically significant**: a permutation test of "every group has the same fail recall",
  conditional on each group's number of fails and the day's total caught (exact, hypergeometric, for two
  groups; 20,000 seeded multivariate-hypergeometric draws for more), with the gap itself (largest minus
  smallest recall) as the statistic; the p-values of the judged segments are Holm-adjusted, so the chance
  that a fair model warns on a given day stays within ``alpha`` whichever segments are judged;
* the gap is **large enough to matter**: above ``max_gap`` (``EXAMPASS_SEGMENT_MAX_GAP``), so a huge day
  (or a backfill of many) does not warn over a gap nobody would act on.

Groups with fewer than ``min_fail_per_group`` fails are reported, never judged. ``benchmarks/segment_
warnings.py`` measures how often ordinary simulated days warn, and how often a model with a real gap is
caught.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd
from scipy import stats

from exampass_pipeline.contract import schema
from exampass_pipeline.ml import fairness

Status = Literal["pass", "fail", "warn"]

PREDICTED = "predicted_pass"
DEFAULT_JUDGED_SEGMENTS: tuple[str, ...] = (schema.LUNCH, schema.GENDER, schema.RACE_ETHNICITY)
PERMUTATION_DRAWS = 20_000
PERMUTATION_SEED = 20_261_201  # fixed: the same day always gets the same verdict
SEGMENT_METHOD = (
    "permutation test of equal fail-class recall (exact for two groups), Holm-adjusted across segments, "
    "and a gap above max_gap"
)
_FIGURES = ("n", "n_fail", "recall_fail", "precision_fail", "accuracy", "false_alarm_rate", "flag_rate")


def _flat(out: dict[str, Any]) -> dict[str, float | int | str]:
    """Drop NaN (not valid JSON in an alert payload) and turn bools into 0/1 for numeric trend tables."""
    flat: dict[str, float | int | str] = {}
    for key, value in out.items():
        if isinstance(value, bool | np.bool_):
            flat[key] = int(value)
        elif isinstance(value, int | np.integer):
            flat[key] = int(value)
        elif isinstance(value, float | np.floating):
            if not math.isnan(value):
                flat[key] = float(value)
        elif isinstance(value, str):
            flat[key] = value
    return flat


def recall_gap_pvalue(caught: Sequence[int], n_fail: Sequence[int]) -> float:
    """P(a gap in fail recall at least this wide | every group has the same recall).

    Conditional on each group's fails and the total caught, the caught counts are (multivariate)
    hypergeometric under the null. Two groups: summed exactly. More: PERMUTATION_DRAWS seeded draws, with
    the +1 correction that keeps a Monte Carlo p-value valid.
    """
    caught_a = np.asarray(caught, dtype=np.int64)
    sizes = np.asarray(n_fail, dtype=np.int64)
    if len(sizes) < 2 or (sizes <= 0).any() or ((caught_a < 0) | (caught_a > sizes)).any():
        raise ValueError(f"recall_gap_pvalue: caught {caught_a.tolist()} of {sizes.tolist()} is not valid")
    total = int(caught_a.sum())
    observed = float(np.ptp(caught_a / sizes)) - 1e-12
    if len(sizes) == 2:
        c1 = np.arange(max(0, total - sizes[1]), min(total, sizes[0]) + 1)
        gaps = np.abs(c1 / sizes[0] - (total - c1) / sizes[1])
        pmf = stats.hypergeom.pmf(c1, int(sizes.sum()), int(sizes[0]), total)
        return float(min(1.0, pmf[gaps >= observed].sum()))
    rng = np.random.default_rng(PERMUTATION_SEED)
    draws = rng.multivariate_hypergeometric(sizes, total, size=PERMUTATION_DRAWS)
    gaps = np.ptp(draws / sizes, axis=1)
    return float((1 + int((gaps >= observed).sum())) / (PERMUTATION_DRAWS + 1))


def holm(pvalues: dict[str, float]) -> dict[str, float]:
    """Holm's step-down adjusted p-values: reject where adjusted < alpha keeps the family-wise error."""
    order = sorted(pvalues, key=lambda k: pvalues[k])
    m = len(order)
    adjusted: dict[str, float] = {}
    running = 0.0
    for i, key in enumerate(order):
        running = max(running, min(1.0, (m - i) * pvalues[key]))
        adjusted[key] = running
    return adjusted


@dataclass
class SegmentDecision:
    """Per-group figures for every reported segment, the judged gaps, their tests and the verdict."""

    status: Status
    passed: bool
    max_gap: float
    min_fail_per_group: int
    judged_segments: list[str]
    failing_segments: list[str]
    small_groups: list[str]
    segments: dict[str, dict[str, Any]] = field(default_factory=dict)
    reason: str = ""
    alpha: float = 0.05
    method: str = SEGMENT_METHOD

    def to_metadata(self) -> dict[str, float | int | str]:
        """Flat scalars: the gaps and tests, then one key per group and figure (``lunch=standard_recall_fail``)."""
        out: dict[str, Any] = {
            "status": self.status,
            "passed": self.passed,
            "max_gap": self.max_gap,
            "alpha": self.alpha,
            "method": self.method,
            "min_fail_per_group": self.min_fail_per_group,
            "judged_segments": ", ".join(self.judged_segments),
            "failing_segments": ", ".join(self.failing_segments) or "none",
            "small_groups": ", ".join(self.small_groups) or "none",
            "reason": self.reason,
        }
        for name, seg in self.segments.items():
            out[f"{name}_recall_gap"] = seg["gap"]
            out[f"{name}_p_value"] = seg.get("p_value", math.nan)
            out[f"{name}_p_holm"] = seg.get("p_holm", math.nan)
            for group, fig in seg["groups"].items():
                for key in _FIGURES:
                    out[f"{name}={group}_{key}"] = fig[key]
        return _flat(out)


def _bool_column(df: pd.DataFrame, name: str) -> pd.Series:
    col = df[name]
    if col.dtype == bool:
        return col
    bad = sorted({repr(v) for v in col.dropna().unique() if v not in (True, False, 0, 1)})
    if bad:
        raise ValueError(f"{name}: values {', '.join(bad[:5])} are not True/False or 1/0")
    return col.astype("boolean")


def group_figures(y_pass: np.ndarray, predicted_pass: np.ndarray) -> dict[str, float]:
    """n, n_fail, fail-class recall and precision, accuracy of one group (NaN where undefined)."""
    fail, pred_fail = ~y_pass, ~predicted_pass
    n_fail = int(fail.sum())
    n_pred_fail = int(pred_fail.sum())
    caught = int((fail & pred_fail).sum())
    return {
        "n": int(y_pass.size),
        "n_fail": n_fail,
        "recall_fail": caught / n_fail if n_fail else float("nan"),
        "precision_fail": caught / n_pred_fail if n_pred_fail else float("nan"),
        "accuracy": float((y_pass == predicted_pass).mean()) if y_pass.size else float("nan"),
    }


def _labelled(df: pd.DataFrame, judged: list[str]) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """The labelled rows with their labels and decisions, refusing what cannot be judged at all."""
    if not isinstance(df, pd.DataFrame):
        raise TypeError(f"df: expected a pandas DataFrame, got {type(df).__name__}")
    missing = [c for c in [schema.LABEL, PREDICTED, *judged] if c not in df.columns]
    if missing:
        raise ValueError(f"segment_quality: missing column(s) {', '.join(missing)}")
    label = _bool_column(df, schema.LABEL)
    labelled = df[label.notna()].reset_index(drop=True)
    predicted = _bool_column(labelled, PREDICTED)
    if predicted.isna().any():
        raise ValueError(f"{PREDICTED}: {int(predicted.isna().sum())} labelled row(s) have no prediction")
    return labelled, label[label.notna()].to_numpy(dtype=bool), predicted.to_numpy(dtype=bool)


def _segment(table: pd.DataFrame, name: str, min_fail: int) -> dict[str, Any]:
    """One segment's groups (MetricFrame rows), its eligible-group gap and, when defined, its p-value."""
    groups: dict[str, dict[str, Any]] = {}
    for group, row in table.loc[name].iterrows():
        fig = {
            "n": int(row["n"]),
            "n_fail": int(row["n_fail"]),
            "recall_fail": float(row["fail_recall"]),
            "precision_fail": float(row["precision_fail"]),
            "accuracy": float(row["accuracy"]),
            "false_alarm_rate": float(row["false_alarm_rate"]),
            "flag_rate": float(row["flag_rate"]),
        }
        fig["judged"] = fig["n_fail"] >= min_fail
        groups[str(group)] = fig
    eligible = {g: f for g, f in groups.items() if f["judged"]}
    seg: dict[str, Any] = {"judged": len(eligible) >= 2, "gap": math.nan, "groups": groups}
    if len(eligible) >= 2:
        recall = {g: f["recall_fail"] for g, f in eligible.items()}
        seg["lowest_group"] = min(recall, key=lambda g: recall[g])
        seg["highest_group"] = max(recall, key=lambda g: recall[g])
        seg["gap"] = recall[seg["highest_group"]] - recall[seg["lowest_group"]]
        caught = [round(f["recall_fail"] * f["n_fail"]) for f in eligible.values()]
        seg["p_value"] = recall_gap_pvalue(caught, [f["n_fail"] for f in eligible.values()])
    return seg


def _describe(name: str, seg: dict[str, Any]) -> str:
    low, high = seg["lowest_group"], seg["highest_group"]
    g = seg["groups"]
    return (
        f"{name} gap {seg['gap']:.2f} ({low} {g[low]['recall_fail']:.2f} of {g[low]['n_fail']} fails vs "
        f"{high} {g[high]['recall_fail']:.2f} of {g[high]['n_fail']}; p={seg['p_holm']:.3f} Holm)"
    )


def _verdict(
    result: dict[str, dict[str, Any]], judged: list[str], max_gap: float, alpha: float, min_fail: int, n: int
) -> tuple[Status, list[str], list[str], str]:
    """Holm across the judged segments, then the two-part rule; the reason names every figure used."""
    judged_ok = [s for s in judged if result[s]["judged"]]
    adjusted = holm({s: result[s]["p_value"] for s in judged_ok})
    for s in judged_ok:
        result[s]["p_holm"] = adjusted[s]
    small = [
        f"{s}={g} ({f['n_fail']} fails)"
        for s in judged
        for g, f in result[s]["groups"].items()
        if not f["judged"]
    ]
    small_note = f"; too few fails to judge: {', '.join(small)}" if small else ""
    failing = [s for s in judged_ok if adjusted[s] < alpha and result[s]["gap"] > max_gap]
    parts = "; ".join(_describe(s, result[s]) for s in judged_ok)
    if failing:
        reason = (
            f"fail-class recall differs between groups in {', '.join(failing)} (significant at alpha "
            f"{alpha:g} and above the {max_gap:.2f} gap worth acting on): {parts}{small_note}"
        )
        return "fail", failing, small, reason
    if not judged_ok:
        reason = (
            f"segment quality not judged: no segment of {', '.join(judged)} has two groups with at least "
            f"{min_fail} failing students ({n} labelled rows){small_note}"
        )
        return "warn", [], small, reason
    reason = (
        f"no group's fail-class recall differs significantly and by more than {max_gap:.2f}: {parts}"
        f"{small_note}"
    )
    return "pass", [], small, reason


def segment_quality(
    df: pd.DataFrame,
    *,
    segments: Sequence[str] = DEFAULT_JUDGED_SEGMENTS,
    max_gap: float = 0.10,
    min_fail_per_group: int = 5,
    alpha: float = 0.05,
    report_segments: Sequence[str] = schema.SEGMENTS,
) -> SegmentDecision:
    """Fail (a WARN-severity check) when a judged segment's fail-recall gap is significant *and* large.

    ``df`` holds ``pass_math`` and ``predicted_pass`` plus the segment columns; rows without a label (no
    feedback yet) are left out. Every segment of ``report_segments`` and ``segments`` is reported; only
    ``segments`` are judged, and within them only groups with at least ``min_fail_per_group`` fails.
    """
    if not 0.0 <= max_gap <= 1.0:
        raise ValueError(f"max_gap: {max_gap!r} must be within [0, 1]")
    if min_fail_per_group < 1:
        raise ValueError(f"min_fail_per_group: {min_fail_per_group!r} must be at least 1")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha: {alpha!r} must be strictly between 0 and 1")
    judged = list(dict.fromkeys(segments))
    labelled, y, pred = _labelled(df, judged)
    shown = [s for s in dict.fromkeys([*report_segments, *judged]) if s in labelled.columns]
    table = fairness.group_metrics(y, pred, labelled[shown]) if len(y) and shown else None
    result = {
        name: _segment(table, name, min_fail_per_group)
        if table is not None
        else {"judged": False, "gap": math.nan, "groups": {}}
        for name in shown
    }
    status, failing, small, reason = _verdict(result, judged, max_gap, alpha, min_fail_per_group, len(y))
    return SegmentDecision(
        status=status,
        passed=status != "fail",
        max_gap=max_gap,
        min_fail_per_group=min_fail_per_group,
        judged_segments=judged,
        failing_segments=failing,
        small_groups=small,
        segments=result,
        reason=reason,
        alpha=alpha,
    )
