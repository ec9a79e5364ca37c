"""Is the serving model still as good as its test figures promised, overall and for every group of students?

``model_quality`` compares the day's labelled rows with the champion's test figures. A point estimate below
the champion's is not enough to raise an alarm: with ~13 % fails, a day with 100 labelled rows holds about 13
failing students, and the fail-class recall of a perfectly healthy model then swings by +-0.2 from day to
day. So the check fails only when the *upper* one-sided confidence bound of today's figure is below the
champion's figure, i.e. when the shortfall is statistically significant given today's sample size:

* fail-class recall: Clopper-Pearson (exact binomial) upper bound over the n_fail true fails;
* ROC-AUC: DeLong's variance of the empirical AUC (a normal bound, which needs a few fails and passes);
* the two bounds are at level ``1 - alpha/2`` each (Bonferroni), so a healthy model fails the check on at most
  ``alpha`` of days whatever the correlation between the two metrics.

If the champion's figures come with their own sample sizes (``test_n_fail``/``test_n_pass`` in ``champion``),
the comparison becomes two-sample (Newcombe's hybrid score interval for the recall difference, DeLong +
Hanley-McNeil for the AUC difference), which also absorbs the luck of a small test split. Too few labelled
rows or fails give ``"warn"``: not judged, counted as passed, with the reason.

``segment_quality`` is the fairness view (fail-class recall per lunch, gender and race/ethnicity group, with a
noise-aware rule): it lives in ``exampass_pipeline.monitoring.segments`` and is re-exported here, where callers have
always found it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import stats

from exampass_pipeline.ml.modeling import classification_metrics
from exampass_pipeline.monitoring.segments import (
    DEFAULT_JUDGED_SEGMENTS,
    PREDICTED,
    SegmentDecision,
    Status,
    _flat,
    group_figures,
    holm,
    recall_gap_pvalue,
    segment_quality,
)

__all__ = [
    "DEFAULT_JUDGED_SEGMENTS",
    "PREDICTED",
    "QualityDecision",
    "SegmentDecision",
    "Status",
    "clopper_pearson_upper",
    "delong_auc",
    "group_figures",
    "hanley_mcneil_se",
    "holm",
    "model_quality",
    "recall_gap_pvalue",
    "segment_quality",
    "wilson_bounds",
]
RECALL = "recall_fail"
AUC = "roc_auc"
CHAMPION_KEYS = {RECALL: "test_recall_fail", AUC: "test_roc_auc"}
METHOD = "one-sided upper bounds at alpha/2 each: clopper-pearson (recall_fail), delong (roc_auc)"


# -----------------------------------------------------------------------------------------------------------
# Confidence bounds
# -----------------------------------------------------------------------------------------------------------


def _unit(value: float) -> float:
    """A bound of a proportion clipped to [0, 1]; clipping never changes a verdict (targets lie in [0, 1])."""
    return min(1.0, max(0.0, value))


def clopper_pearson_upper(successes: int, n: int, alpha: float) -> float:
    """Exact one-sided upper (1 - alpha) bound of a binomial proportion; 1.0 when nothing was observed."""
    if n <= 0 or successes >= n:
        return 1.0
    return float(stats.beta.ppf(1.0 - alpha, successes + 1, n - successes))


def wilson_bounds(successes: int, n: int, alpha: float) -> tuple[float, float]:
    """One-sided (1 - alpha) Wilson score bounds: the pieces of Newcombe's difference interval."""
    if n <= 0:
        return 0.0, 1.0
    z = float(stats.norm.ppf(1.0 - alpha))
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def delong_auc(y_pass: np.ndarray, p_pass: np.ndarray) -> tuple[float, float]:
    """Empirical ROC-AUC and its DeLong standard error (ties count one half).

    Placement values: for each passing student, the share of failing students scored below them, and the other
    way round; the AUC's variance is the sum of their variances over the two class sizes.
    """
    pos = np.sort(p_pass[y_pass])
    neg = np.sort(p_pass[~y_pass])
    m, n = pos.size, neg.size
    if m == 0 or n == 0:
        return float("nan"), float("nan")
    below_pos = (np.searchsorted(neg, pos, side="left") + np.searchsorted(neg, pos, side="right")) / 2.0
    above_neg = (
        m - np.searchsorted(pos, neg, side="right") + m - np.searchsorted(pos, neg, side="left")
    ) / 2.0
    v10 = below_pos / n  # per passing student
    v01 = above_neg / m  # per failing student
    auc = float(v10.mean())
    var = (v10.var(ddof=1) / m if m > 1 else 0.0) + (v01.var(ddof=1) / n if n > 1 else 0.0)
    return auc, float(math.sqrt(max(var, 0.0)))


def hanley_mcneil_se(auc: float, n_pass: int, n_fail: int) -> float:
    """Standard error of an AUC known only as a number with its class sizes (the champion's test figure)."""
    q1 = auc / (2 - auc)
    q2 = 2 * auc * auc / (1 + auc)
    var = (auc * (1 - auc) + (n_pass - 1) * (q1 - auc**2) + (n_fail - 1) * (q2 - auc**2)) / (n_pass * n_fail)
    return math.sqrt(max(var, 0.0))


# -----------------------------------------------------------------------------------------------------------
# Model quality
# -----------------------------------------------------------------------------------------------------------


@dataclass
class QualityDecision:
    """The verdict of the model-quality check with every figure needed to explain it."""

    status: Status
    passed: bool
    n_labelled: int
    n_fail: int
    alpha: float
    method: str
    degraded: list[str]
    figures: dict[str, float] = field(default_factory=dict)
    reason: str = ""

    def to_metadata(self) -> dict[str, float | int | str]:
        """Flat scalars for Dagster metadata, alerts and the DuckDB trend table."""
        return _flat(
            {
                "status": self.status,
                "passed": self.passed,
                "n_labelled": self.n_labelled,
                "n_fail": self.n_fail,
                "alpha": self.alpha,
                "method": self.method,
                "degraded": ", ".join(self.degraded) or "none",
                "reason": self.reason,
                **self.figures,
            }
        )


def _champion_figure(champion: dict[str, float], key: str) -> float | None:
    value = champion.get(key)
    if value is None:
        return None
    value = float(value)
    if math.isnan(value):
        return None
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"champion.{key}: {value!r} is not a rate in [0, 1]")
    return value


def _champion_sizes(champion: dict[str, float]) -> tuple[float, float] | None:
    """The champion's test (n_fail, n_pass) when both are known and positive, else None.

    Only with its class sizes can the champion's own sampling luck be estimated, which turns the comparison
    into a two-sample one.
    """
    champ_n_fail = champion.get("test_n_fail")
    champ_n_pass = champion.get("test_n_pass")
    if champ_n_fail is not None and champ_n_pass is not None and champ_n_fail > 0 and champ_n_pass > 0:
        return champ_n_fail, champ_n_pass
    return None


def _not_judged_reason(
    n: int, n_fail: int, champ: dict[str, float | None], min_labelled: int, min_fail: int
) -> str | None:
    """Why today cannot be judged at all, or None when it can.

    A bound from a handful of rows or fails is so wide that it would never fail; calling such a day "pass"
    would claim more than the data says, so it is a "warn" with the reason instead.
    """
    if n < min_labelled:
        return f"model quality not judged: {n} labelled rows, fewer than the {min_labelled} needed"
    if n_fail < min_fail:
        return (
            f"model quality not judged: {n_fail} failing students among {n} labelled rows, fewer than the "
            f"{min_fail} needed to estimate fail-class recall"
        )
    if all(v is None for v in champ.values()):
        return (
            "model quality not judged: no champion test figures (test_recall_fail, test_roc_auc) to compare"
        )
    return None


def _recall_bound(
    caught: int, n_fail: int, target: float, level: float, champ_sizes: tuple[float, float] | None
) -> tuple[dict[str, float], str]:
    """Upper bound of today's fail-class recall (and the sentence explaining it) at one-sided ``1 - level``.

    Exact Clopper-Pearson against the champion's figure taken as known; with the champion's class sizes,
    Newcombe's hybrid score bound on the difference, which also charges the champion's own test-split luck.
    """
    figures: dict[str, float] = {}
    recall = caught / n_fail
    if champ_sizes is not None:
        champ_n_fail = champ_sizes[0]
        # Newcombe's hybrid score bound on (today - champion), expressed back on today's scale.
        lo_c = wilson_bounds(round(target * float(champ_n_fail)), int(champ_n_fail), level)[0]
        hi = wilson_bounds(caught, n_fail, level)[1]
        diff_upper = (recall - target) + math.sqrt((hi - recall) ** 2 + (target - lo_c) ** 2)
        figures["recall_fail_diff_upper"] = diff_upper
        # A bound of a proportion: the difference bound added back can pass 1 when today's recall is high.
        figures["recall_fail_upper"] = _unit(target + diff_upper)
    else:
        figures["recall_fail_upper"] = clopper_pearson_upper(caught, n_fail, level)
    part = (
        f"fail-class recall {recall:.2f} ({caught}/{n_fail} fails caught, upper bound "
        f"{figures['recall_fail_upper']:.2f}) vs champion {target:.2f}"
    )
    return figures, part


def _auc_bound(
    y: np.ndarray, p: np.ndarray, target: float, level: float, champ_sizes: tuple[float, float] | None
) -> tuple[dict[str, float], str]:
    """Upper bound of today's ROC-AUC (and the sentence explaining it) at one-sided ``1 - level``.

    DeLong's standard error makes a normal bound; with the champion's class sizes, Hanley-McNeil gives the
    champion figure a standard error too and the bound is on the difference.
    """
    z = float(stats.norm.ppf(1.0 - level))
    auc, se = delong_auc(y, p)
    figures: dict[str, float] = {"roc_auc_se": se}
    if champ_sizes is not None:
        champ_n_fail, champ_n_pass = champ_sizes
        se_c = hanley_mcneil_se(target, int(champ_n_pass), int(champ_n_fail))
        figures["roc_auc_diff_upper"] = (auc - target) + z * math.sqrt(se * se + se_c * se_c)
        figures["roc_auc_upper"] = _unit(target + figures["roc_auc_diff_upper"])
    else:
        figures["roc_auc_upper"] = _unit(auc + z * se)
    part = f"ROC-AUC {auc:.3f} (upper bound {figures['roc_auc_upper']:.3f}) vs champion {target:.3f}"
    return figures, part


def _verdict(
    n: int,
    n_fail: int,
    alpha: float,
    level: float,
    degraded: list[str],
    parts: list[str],
    figures: dict[str, float],
) -> QualityDecision:
    """Fail only on a significant shortfall.

    Either way the reason carries every bound and the sample size, so an alert reads on its own.
    """
    figures["confidence"] = 1.0 - level
    sample = f"{n} labelled rows, {n_fail} fails, {1 - level:.1%} one-sided bounds"
    if degraded:
        reason = f"model quality degraded ({', '.join(degraded)}): {'; '.join(parts)}; {sample}"
        return QualityDecision("fail", False, n, n_fail, alpha, METHOD, degraded, figures, reason)
    reason = f"model quality consistent with the champion: {'; '.join(parts)}; {sample}"
    return QualityDecision("pass", True, n, n_fail, alpha, METHOD, [], figures, reason)


def model_quality(
    y_pass: Any,
    p_pass: Any,
    threshold: float | np.ndarray,
    champion: dict[str, float],
    *,
    alpha: float = 0.05,
    min_labelled: int = 50,
    min_fail: int = 5,
) -> QualityDecision:
    """Fail when fail-class recall or ROC-AUC is significantly below the champion's test figures.

    ``y_pass``: true labels (True = passed) of the day's labelled rows; ``p_pass``: the served pass
    probabilities; ``threshold``: the served cut-off, one number or one per row (``LoadedModel.thresholds``);
    ``champion``: at least ``test_recall_fail`` and/or ``test_roc_auc`` (optionally ``test_n_fail`` and
    ``test_n_pass``, see the module docstring).
    """
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha: {alpha!r} must be strictly between 0 and 1")
    y = np.asarray(y_pass)
    p = np.asarray(p_pass, dtype=float)
    n = int(y.size)

    def warn(reason: str, figures: dict[str, float], n_fail: int) -> QualityDecision:
        return QualityDecision("warn", True, n, n_fail, alpha, METHOD, [], figures, reason)

    if n == 0:
        if p.size:
            raise ValueError(f"y_pass/p_pass: lengths differ (0 labels, {p.size} probabilities)")
        return warn("model quality not judged: no labelled rows yet", {}, 0)
    point = classification_metrics(y, p, threshold)  # validates shapes, labels, probabilities, threshold
    y = y.astype(bool)
    n_fail = int((~y).sum())
    n_pass = n - n_fail
    caught = int(((~y) & (p < threshold)).sum())
    figures: dict[str, float] = {**point, "n_pass": float(n_pass), "fails_caught": float(caught)}
    champ = {metric: _champion_figure(champion, key) for metric, key in CHAMPION_KEYS.items()}
    for metric, value in champ.items():
        figures[f"champion_{metric}"] = float("nan") if value is None else value
    not_judged = _not_judged_reason(n, n_fail, champ, min_labelled, min_fail)
    if not_judged is not None:
        return warn(not_judged, figures, n_fail)

    judged = [m for m, v in champ.items() if v is not None and not (m == AUC and n_pass == 0)]
    level = alpha / len(judged)
    champ_sizes = _champion_sizes(champion)
    degraded: list[str] = []
    parts: list[str] = []
    if RECALL in judged:
        target = champ[RECALL]
        assert target is not None
        bounds, part = _recall_bound(caught, n_fail, target, level, champ_sizes)
        figures.update(bounds)
        if figures["recall_fail_upper"] < target:
            degraded.append(RECALL)
        parts.append(part)
    if AUC in judged:
        target = champ[AUC]
        assert target is not None
        bounds, part = _auc_bound(y, p, target, level, champ_sizes)
        figures.update(bounds)
        if figures["roc_auc_upper"] < target:
            degraded.append(AUC)
        parts.append(part)
    elif champ[AUC] is not None:
        parts.append("ROC-AUC not judged (no passing students)")
    return _verdict(n, n_fail, alpha, level, degraded, parts, figures)
