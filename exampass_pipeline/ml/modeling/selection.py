"""Choosing the model to register: cross-validate every candidate of a set on train + validation, refit the
best on all of it, and fit its decision rule. This is the one procedure the training asset and the
benchmarks run, so "how a model is chosen" exists exactly once.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from sklearn.base import clone
from sklearn.metrics import log_loss
from sklearn.pipeline import Pipeline
from threadpoolctl import threadpool_limits

from exampass_pipeline.contract import schema
from exampass_pipeline.contract.decision import DecisionRule
from exampass_pipeline.ml import fairness
from exampass_pipeline.ml.modeling.candidates import (
    CANDIDATE_SETS,
    SOFT_LABEL_SCALE,
    build_candidates,
    fit_pipeline,
    fits_math_score,
)
from exampass_pipeline.ml.modeling.metrics import classification_metrics, pass_probability
from exampass_pipeline.ml.modeling.out_of_fold import OOF_FOLDS, out_of_fold_pass_probability
from exampass_pipeline.ml.modeling.splits import _require_columns, label_array

# The decision rules compared for every version (expected figures on its reference sample, no labels):
# the one served, and the alternatives the model card shows beside it.
COMPARED_RULES: dict[str, tuple[str, ...]] = {
    "single threshold": (),
    "per lunch x gender": (schema.LUNCH, schema.GENDER),
    "per lunch x gender x race/ethnicity": fairness.RULE_FEATURES,
    "per all five categorical features": fairness.FAIRNESS_FEATURES,
}


@dataclass
class Selection:
    """The chosen candidate refitted on train + validation, its decision rule, and how both were chosen.

    ``candidate_scores[name]`` holds every candidate's *cross-validated* figures on train + validation
    (out-of-fold predictions, ``classification_metrics`` at 0.5 so candidates compare on equal terms) plus
    ``log_loss`` (the selection criterion) and ``fit_seconds`` (mean per fold). ``rule`` is the served
    decision; ``threshold`` is its single fallback cut-off (``rule.threshold``), kept for the registry tag
    and for callers that predate rules. ``validation_metrics`` are the chosen model's out-of-fold figures
    under its rule; ``alternatives`` the COMPARED_RULES fitted for the same model (for benchmarks), and
    ``rule_comparison`` their expected figures on the reference sample (for the model card).
    """

    name: str
    pipeline: Pipeline
    threshold: float
    candidate_scores: dict[str, dict[str, float]]
    validation_metrics: dict[str, float] = field(default_factory=dict)
    tuning: dict[str, float] = field(default_factory=dict)
    rule: DecisionRule = field(default_factory=lambda: DecisionRule.single(0.5))
    rule_comparison: pd.DataFrame = field(default_factory=pd.DataFrame)
    alternatives: dict[str, DecisionRule] = field(default_factory=dict)


def _check_tables(train: pd.DataFrame, validation: pd.DataFrame, candidate_set: str) -> None:
    if candidate_set not in CANDIDATE_SETS:
        raise ValueError(f"candidate_set: unknown {candidate_set!r}; known: {', '.join(CANDIDATE_SETS)}")
    _require_columns(train, schema.FEATURES, "train")
    _require_columns(validation, schema.FEATURES, "validation")
    y_train = label_array(train, "train")
    y_val = label_array(validation, "validation")
    for what, y in (("train", y_train), ("validation", y_val)):
        if int(y.sum()) < 2 or int((~y).sum()) < 2:
            raise ValueError(
                f"{schema.LABEL}: {what} needs at least 2 passing and 2 failing students "
                f"(has {int(y.sum())} pass / {int((~y).sum())} fail); cannot train or compare candidates"
            )
    if int((~y_train).sum()) < OOF_FOLDS or int(y_train.sum()) < OOF_FOLDS:
        raise ValueError(f"{schema.LABEL}: train needs at least {OOF_FOLDS} students of each class")


def _cross_validate(
    candidates: dict[str, Pipeline], pool: pd.DataFrame, seed: int, soft_label_scale: float
) -> tuple[dict[str, dict[str, float]], dict[str, np.ndarray]]:
    """Out-of-fold P(pass) and CV figures of every candidate on the pool (same seeded folds for all)."""
    y = label_array(pool, "train + validation")
    scores: dict[str, dict[str, float]] = {}
    oof: dict[str, np.ndarray] = {}
    for name, pipeline in candidates.items():
        if fits_math_score(pipeline) and schema.MATH_SCORE not in pool.columns:
            continue  # a score model needs the maths score; without it the other candidates compete
        started = time.perf_counter()
        oof[name] = out_of_fold_pass_probability(pipeline, pool, seed, soft_label_scale=soft_label_scale)
        elapsed = (time.perf_counter() - started) / OOF_FOLDS
        clipped = np.clip(oof[name], 1e-15, 1 - 1e-15)
        scores[name] = {
            **classification_metrics(y, oof[name], 0.5),
            "log_loss": float(log_loss(y, clipped, labels=[False, True])),
            "fit_seconds": elapsed,
        }
    if not scores:
        raise ValueError(f"{schema.MATH_SCORE}: every candidate of the set needs it, and the table has none")
    return scores, oof


def train_and_select(
    train: pd.DataFrame,
    validation: pd.DataFrame,
    *,
    candidate_set: str = "default",
    seed: int = 42,
    soft_label_scale: float = SOFT_LABEL_SCALE,
    rule_features: tuple[str, ...] = fairness.RULE_FEATURES,
    reference_rows: int = fairness.REFERENCE_ROWS,
) -> Selection:
    """Cross-validate the candidates on train + validation, refit the best on it, fit its decision rule.

    Selection: 5-fold stratified cross-validation (seeded, the same folds for every candidate) on the 800
    rows of train + validation, not on the 100 of validation, where 13 fails decide. The criterion is the
    out-of-fold log loss: the decision rule below trusts the model's probabilities, and log loss rewards
    calibration as well as ranking (on the 20 benchmark splits it picked the same model as CV ROC-AUC
    every time). An exact tie keeps the earlier candidate of the set. The chosen candidate is then refitted
    on all of train + validation, so no labelled row is wasted; its out-of-fold figures are the honest
    estimate of how it does on rows it has not seen.

    The decision rule (``fairness.fit_rule``) is fitted on a 100,000-student reference sample from the
    population model refitted on the same rows, using the model's own probabilities and no labels: one
    cut-off per ``rule_features`` group, all with the same expected fail-class recall, at the recall with
    the largest expected F1(fail). ``rule_features=()`` gives the single F1-optimal cut-off instead.
    """
    _check_tables(train, validation, candidate_set)
    pool = pd.concat([train, validation], ignore_index=True)
    y_pool = label_array(pool, "train + validation")
    # One thread each: HistGradientBoosting's OpenMP pool thrashes on a shared 2-core box and is slower than
    # a single thread on 800 rows.
    with threadpool_limits(limits=1):
        candidates = build_candidates(CANDIDATE_SETS[candidate_set], seed)
        scores, oof = _cross_validate(candidates, pool, seed, soft_label_scale)
        best = min(scores, key=lambda n: scores[n]["log_loss"])  # min() keeps the first of equals
        pipeline = fit_pipeline(clone(candidates[best]), pool, soft_label_scale=soft_label_scale)
        reference, described = fairness.reference_students(pool, n=reference_rows, seed=seed)
        p_reference = pass_probability(pipeline, reference)
    rules = {
        name: fairness.fit_rule(p_reference, reference, features, fitted_on=described)
        for name, features in COMPARED_RULES.items()
    }
    same = [rules[n] for n, features in COMPARED_RULES.items() if features == tuple(rule_features)]
    rule = same[0] if same else fairness.fit_rule(p_reference, reference, rule_features, fitted_on=described)
    comparison = fairness.compare_rules(p_reference, reference, {**rules, "served": rule})
    served = comparison.loc["served"]
    tuning = {
        "pool_rows": float(len(pool)),
        "pool_fails": float((~y_pool).sum()),
        "cv_folds": float(OOF_FOLDS),
        "reference_rows": float(len(reference)),
        "target_fail_recall": float(rule.target_fail_recall or served["expected_fail_recall"]),
        "expected_f1_fail": float(served["expected_f1_fail"]),
        "soft_label_scale": float(max(soft_label_scale, 0.0) if schema.MATH_SCORE in pool.columns else 0.0),
    }
    return Selection(
        name=best,
        pipeline=pipeline,
        threshold=rule.threshold,
        candidate_scores=scores,
        validation_metrics=classification_metrics(y_pool, oof[best], rule.for_frame(pool)),
        tuning=tuning,
        rule=rule,
        rule_comparison=comparison.drop(index="served"),
        alternatives=rules,
    )
