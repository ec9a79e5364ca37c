"""How a model is scored: one definition of the figures, shared by selection, the training asset's test
evaluation, monitoring and the benchmarks, so "recall" means the same thing in MLflow, in an alert and in a
benchmark table. Fail is the positive class throughout.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import (
    balanced_accuracy_score,
    brier_score_loss,
    f1_score,
    precision_score,
    recall_score,
    roc_auc_score,
)

from exampass_pipeline.contract import schema
from exampass_pipeline.contract.decision import DecisionRule
from exampass_pipeline.ml.modeling.splits import _require_columns, label_array

METRIC_NAMES: tuple[str, ...] = tuple(m.removeprefix("test_") for m in schema.TEST_METRICS)


def _check_scores(y_pass: Any, p_pass: Any, threshold: Any = None) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_pass)
    p = np.asarray(p_pass, dtype=float)
    if y.ndim != 1 or p.ndim != 1:
        raise ValueError(f"y_pass/p_pass: expected 1-D arrays, got shapes {y.shape} and {p.shape}")
    if len(y) != len(p):
        raise ValueError(f"y_pass/p_pass: lengths differ ({len(y)} labels, {len(p)} probabilities)")
    if len(y) == 0:
        raise ValueError("y_pass: no rows to score")
    if pd.isna(y).any():
        raise ValueError("y_pass: contains missing labels")
    if y.dtype != bool and not set(np.unique(y).tolist()) <= {0, 1}:
        raise ValueError(f"y_pass: labels must be True/False or 1/0, got {np.unique(y)[:5].tolist()}")
    if not np.isfinite(p).all() or (p < 0).any() or (p > 1).any():
        raise ValueError("p_pass: probabilities must be finite and within [0, 1]")
    if threshold is not None:
        cut = np.asarray(threshold, dtype=float)
        if cut.ndim > 1 or (cut.ndim == 1 and len(cut) != len(p)):
            raise ValueError(
                f"threshold: expected one number or one per row ({len(p)}), got shape {cut.shape}"
            )
        if not np.isfinite(cut).all() or (cut < 0).any() or (cut > 1).any():
            shown = threshold if cut.ndim == 0 else cut[(~np.isfinite(cut)) | (cut < 0) | (cut > 1)][0]
            raise ValueError(f"threshold: {shown!r} is outside [0, 1]")
    return y.astype(bool), p


def classification_metrics(y_pass: Any, p_pass: Any, threshold: float | np.ndarray) -> dict[str, float]:
    """Quality of pass probabilities under a threshold (one, or one per row), "fail" as the positive class.

    Fail is the class users act on (which students need help), so F1/recall/precision are the fail class's.
    ROC-AUC is on the pass probability (identical to the fail probability's AUC). A batch holding only one
    class has no ROC-AUC: it is NaN rather than an exception, since monitoring meets such batches in
    production. Keys are schema.TEST_METRICS without the "test_" prefix.
    """
    y, p = _check_scores(y_pass, p_pass, threshold)
    pred_pass = p >= threshold
    fail_true, fail_pred = ~y, ~pred_pass
    both_classes = bool(y.any() and (~y).any())
    return {
        "roc_auc": float(roc_auc_score(y, p)) if both_classes else float("nan"),
        "f1_fail": float(f1_score(fail_true, fail_pred, zero_division=0)),
        "recall_fail": float(recall_score(fail_true, fail_pred, zero_division=0)),
        "precision_fail": float(precision_score(fail_true, fail_pred, zero_division=0)),
        "balanced_accuracy": float(balanced_accuracy_score(y, pred_pass)) if both_classes else float("nan"),
        "accuracy": float(np.mean(pred_pass == y)),
        "brier": float(brier_score_loss(y, p, pos_label=True)),
    }


def pass_probability(pipeline: Any, df: pd.DataFrame) -> np.ndarray:
    """predict_proba's pass column, after checking class 1 really is "pass" for this fitted model."""
    _require_columns(df, schema.FEATURES, "pass_probability")
    classes = list(getattr(pipeline, "classes_", [False, True]))
    if len(classes) != 2 or not bool(classes[1]) or bool(classes[0]):
        raise ValueError(
            f"pipeline: classes_ {classes!r} are not [False, True]; cannot tell which column is pass"
        )
    return np.asarray(pipeline.predict_proba(df[list(schema.FEATURES)])[:, 1], dtype=float)


def evaluate(
    pipeline: Any, threshold: float | np.ndarray | DecisionRule, df: pd.DataFrame
) -> dict[str, float]:
    """schema.TEST_METRICS for a fitted pipeline and its decision on a labelled table (normally test).

    ``threshold`` is one cut-off, one per row, or the model's DecisionRule (applied to ``df``'s rows): pass
    a loaded model's ``rule`` so the figures are those of the served decision.
    """
    y = label_array(df, "evaluate")
    cut = threshold.for_frame(df) if isinstance(threshold, DecisionRule) else threshold
    metrics = classification_metrics(y, pass_probability(pipeline, df), cut)
    return {f"test_{name}": metrics[name] for name in METRIC_NAMES}
